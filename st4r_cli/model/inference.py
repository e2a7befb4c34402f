"""Batched pair inference for `St4rNet`.

- `frames_to_tensor`: uint8 frames -> model input in [-1, 1] (DUSt3R's Normalize(0.5, 0.5)).
- `forward_pairs`: differentiable forward on frame tensors (for test-time adaptation).
- `predict_pairs`: no-grad, batched, optional mixed precision on CUDA, numpy out.

Frames whose size is not a multiple of the patch size are resized (bilinear) to the nearest
multiple for the network, and the outputs are resized back to the frame size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from st4r_cli import progress
from st4r_cli.errors import St4rError

if TYPE_CHECKING:
    import torch

    from st4r_cli.model.net import St4rNet


def frames_to_tensor(frames_u8: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """(T, H, W, 3) uint8 RGB -> (T, 3, H, W) float32 in [-1, 1] on `device`."""
    import torch

    frames = torch.as_tensor(np.asarray(frames_u8) if not torch.is_tensor(frames_u8) else frames_u8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise St4rError(f"frames must be (T, H, W, 3), got {tuple(frames.shape)}")
    return frames.to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def network_size(frame_hw: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """The multiple-of-patch size closest to frame_hw (at least one patch)."""
    return tuple(max(patch_size, int(round(s / patch_size)) * patch_size) for s in frame_hw)  # type: ignore[return-value]


def forward_pairs(model: St4rNet, images: torch.Tensor, anchors: torch.Tensor | Sequence[int],
                  targets: torch.Tensor | Sequence[int], checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Differentiable forward of pairs (anchor a, target j), gradients on.

    images: (T, 3, H, W) in [-1, 1] (H, W multiples of the patch size); anchors, targets: (P,) indices;
    checkpoint: activation checkpointing (`St4rNet.forward`).
    Returns track_pts (P,H,W,3), track_conf (P,H,W), recon_pts (P,H,W,3), recon_conf (P,H,W), all in
    the anchor camera frame.
    """
    import torch

    a = torch.as_tensor(anchors, device=images.device, dtype=torch.long)
    j = torch.as_tensor(targets, device=images.device, dtype=torch.long)
    img1, img2 = images[a], images[j]
    res1, res2 = model(img1, img2, checkpoint=checkpoint)
    return {"track_pts": res1["pts3d"], "track_conf": res1["conf"],
            "recon_pts": res2["pts3d_in_other_view"], "recon_conf": res2["conf"]}


def predict_pairs(model: St4rNet, frames_u8: np.ndarray, pairs: Sequence[tuple[int, int]],
                  batch_size: int = 4, device: str | torch.device | None = None,
                  amp: bool = True, show_progress: bool = False) -> dict[str, np.ndarray]:
    """Run the network on pairs (a, j) of `frames_u8` (T, H, W, 3) uint8.

    Returns float32 numpy: track_pts (P,H,W,3), track_conf (P,H,W), recon_pts (P,H,W,3),
    recon_conf (P,H,W), in the camera frame of each pair's anchor `a`. `amp` enables float16
    autocast on CUDA (heads always run in float32); it is ignored on CPU.
    """
    import torch
    import torch.nn.functional as F

    frames_u8 = np.asarray(frames_u8)
    if frames_u8.ndim != 4 or frames_u8.shape[-1] != 3 or frames_u8.dtype != np.uint8:
        raise St4rError(f"frames must be (T, H, W, 3) uint8, got {frames_u8.shape} {frames_u8.dtype}")
    num_frames, height, width = frames_u8.shape[:3]
    pairs = [(int(a), int(j)) for a, j in pairs]
    if any(not (0 <= a < num_frames and 0 <= j < num_frames) for a, j in pairs):
        raise St4rError(f"pair index out of range for {num_frames} frames")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device)
    was_training = model.training
    model.eval()
    net_hw = network_size((height, width), model.config.patch_size)
    images = frames_to_tensor(frames_u8, "cpu")
    if net_hw != (height, width):
        images = F.interpolate(images, size=net_hw, mode="bilinear", align_corners=False)
    outputs: dict[str, list[np.ndarray]] = {k: [] for k in ("track_pts", "track_conf", "recon_pts", "recon_conf")}
    batches = [pairs[i:i + batch_size] for i in range(0, len(pairs), max(1, batch_size))]
    iterator = progress.track(batches, "network") if show_progress else batches
    use_amp = bool(amp) and device.type == "cuda"
    try:
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            for batch in iterator:
                a = [p[0] for p in batch]
                j = [p[1] for p in batch]
                used = sorted(set(a) | set(j))
                local = {frame: k for k, frame in enumerate(used)}
                out = forward_pairs(model, images[used].to(device), [local[x] for x in a], [local[x] for x in j])
                for key, value in out.items():
                    value = value.float()
                    if net_hw != (height, width):
                        value = _resize_map(value, (height, width))
                    outputs[key].append(value.cpu().numpy())
    finally:
        model.train(was_training)
    return {k: np.concatenate(v, axis=0).astype(np.float32) for k, v in outputs.items()}


def _resize_map(value: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B,H,W[,C]) maps."""
    import torch.nn.functional as F

    channels_last = value.ndim == 4
    x = value.permute(0, 3, 1, 2) if channels_last else value[:, None]
    x = F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1) if channels_last else x[:, 0]
