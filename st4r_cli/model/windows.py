"""Running the network over a video in overlapping windows (shared by the adapt and predict stages).

Windows are `window` frames long, overlap by `overlap`, and are anchored on their first frame; the
network predicts every pair (anchor, j) of a window. `PairRunner` caches the encoder tokens of every
frame when the encoder does not adapt. Heavy imports (torch) happen inside functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from st4r_cli.configs import PredictConfig


def window_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """First frames of overlapping windows covering [0, num_frames).

    Windows are `window` frames long and advance by `window - overlap`; the last one is moved back so
    it ends at the last frame (it then overlaps its predecessor by more). One window if the video is
    not longer than `window`.
    """
    if num_frames <= window:
        return [0]
    stride = max(1, window - overlap)
    starts = list(range(0, num_frames - window, stride))
    starts.append(num_frames - window)
    return sorted(set(starts))


def window_frames(start: int, num_frames: int, window: int) -> list[int]:
    """Frame indices of the window starting at `start` (anchor first)."""
    return list(range(start, min(start + window, num_frames)))


@dataclass(frozen=True)
class RunOptions:
    """How `PairRunner` runs the network (the adapt stage's memory knobs, resolved: `stages.adapt.resolve`).

    checkpoint: activation checkpointing of the encoder / decoder blocks and the heads when gradients are
    on (same values, activations recomputed in the backward pass); micro_batch: pairs per forward pass
    (0: all of a call's pairs at once), the outputs concatenated, so a loss on them and its gradient are
    the whole batch's; amp: bfloat16 autocast of the encoder and decoders (the heads run in float32).
    """

    checkpoint: bool = False
    micro_batch: int = 0
    amp: bool = False


class PairRunner:
    """Runs pairs (a, j) of a fixed set of frames through the network.

    When the encoder does not adapt, its tokens are computed once per frame and reused by every
    step and by the final inference (the decoders and heads run as in `St4rNet.forward`).
    images: (T, 3, H, W) in [-1, 1] on the model's device, H and W multiples of the patch size.
    """

    def __init__(self, model: Any, images: torch.Tensor, cache_encoder: bool, chunk: int = 8,
                 options: RunOptions | None = None) -> None:
        import torch

        self.model = model
        self.images = images
        self.options = options or RunOptions()
        self.feats: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        if cache_encoder:
            feats, poss = [], []
            with torch.no_grad(), self._autocast():
                for start in range(0, images.shape[0], chunk):
                    feat, pos = model.encode(images[start:start + chunk])
                    feats.append(feat)
                    poss.append(pos)
            self.feats = torch.cat(feats)
            self.pos = torch.cat(poss)

    def _autocast(self) -> Any:
        """bfloat16 autocast on the images' device when `options.amp` (a no-op context otherwise)."""
        import torch

        return torch.autocast(device_type=self.images.device.type, dtype=torch.bfloat16, enabled=self.options.amp)

    def __call__(self, anchors: list[int], targets: list[int]) -> dict[str, torch.Tensor]:
        """forward_pairs-style dict: track_pts/recon_pts (P,H,W,3), track_conf/recon_conf (P,H,W), float32;
        in micro-batches of `options.micro_batch` pairs, concatenated."""
        import torch

        size = self.options.micro_batch
        if not size or len(anchors) <= size:
            return self._forward(anchors, targets)
        parts = [self._forward(anchors[k:k + size], targets[k:k + size]) for k in range(0, len(anchors), size)]
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def _forward(self, anchors: list[int], targets: list[int]) -> dict[str, torch.Tensor]:
        """One forward pass of the pairs (anchors[i], targets[i]): the `__call__` dict."""
        from st4r_cli.model.inference import forward_pairs

        checkpoint = self.options.checkpoint
        with self._autocast():
            if self.feats is None:
                return forward_pairs(self.model, self.images, anchors, targets, checkpoint=checkpoint)
            model = self.model
            hw = tuple(self.images.shape[-2:])
            dec1, dec2 = model.decode(self.feats[anchors], self.pos[anchors], self.feats[targets],
                                      self.pos[targets], checkpoint)
            res1, res2 = model.heads(dec1, dec2, hw, hw, checkpoint)
        return {"track_pts": res1["pts3d"], "track_conf": res1["conf"],
                "recon_pts": res2["pts3d"], "recon_conf": res2["conf"]}


def batch_size_for(batch_size: int, device: str) -> int:
    """Inference pairs per batch: the given size, or the device's default (4 on CPU, 16 on CUDA)."""
    return batch_size or (16 if str(device).startswith("cuda") else 4)


@contextmanager
def torch_threads(threads: int, device: str) -> Iterator[None]:
    """Run with `threads` torch threads on CPU (0: torch's default; restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    change = not str(device).startswith("cuda") and threads > 0
    if change:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)


def check_frames(model: Any, frames: np.ndarray) -> None:
    """St4rError unless the frames' H and W are multiples of the model's patch size."""
    from st4r_cli.errors import St4rError

    h, w = frames.shape[1:3]
    patch = model.config.patch_size
    if h % patch or w % patch:
        raise St4rError(f"frames of {h}x{w} are not a multiple of the model's patch size {patch}")


def given_focal(config: PredictConfig, depth: dict[str, np.ndarray] | None) -> float | None:
    """The user's focal, else the depth backend's (when allowed), else None (estimate)."""
    if config.focal > 0:
        return float(config.focal)
    if config.use_depth_intrinsics and depth is not None and "intrinsics" in depth:
        k_mat = depth["intrinsics"]
        if k_mat.shape == (3, 3) and float(k_mat[0, 0]) > 0:
            return float((k_mat[0, 0] + k_mat[1, 1]) / 2.0)
    return None


def predict_window_pairs(runner: PairRunner, starts: list[int], num_frames: int, window: int,
                         batch_size: int) -> dict[str, np.ndarray]:
    """No-grad predictions of every pair (anchor, j) of every window."""
    import numpy as np
    import torch

    from st4r_cli import progress

    length = min(window, num_frames)
    slots = np.full((len(starts), length), -1, dtype=np.int64)
    pairs: list[tuple[int, int, int]] = []  # (flat slot, anchor, frame)
    for w_idx, start in enumerate(starts):
        frames_w = window_frames(start, num_frames, window)
        slots[w_idx, :len(frames_w)] = frames_w
        pairs += [(w_idx * length + k, start, j) for k, j in enumerate(frames_w)]
    h, w = runner.images.shape[-2:]
    total = len(starts) * length
    out = {"track_pts": np.zeros((total, h, w, 3), np.float32), "track_conf": np.zeros((total, h, w), np.float32),
           "recon_pts": np.zeros((total, h, w, 3), np.float32), "recon_conf": np.zeros((total, h, w), np.float32)}
    batches = [pairs[i:i + batch_size] for i in range(0, len(pairs), batch_size)]
    with torch.no_grad():
        for batch in progress.track(batches, "predict windows"):
            pred = runner([p[1] for p in batch], [p[2] for p in batch])
            idx = [p[0] for p in batch]
            for key in out:
                out[key][idx] = pred[key].float().cpu().numpy()
    out["window_start"] = np.asarray(starts, dtype=np.int64)
    out["window_frames"] = slots
    return out


def apply_delta(model: Any, adapted: dict[str, np.ndarray]) -> None:
    """Add the adapt stage's `delta.<param>` arrays to the model's parameters (in place)."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in adapted.items():
            if key.startswith("delta."):
                name = key[len("delta."):]
                if name not in params:
                    from st4r_cli.errors import St4rError

                    raise St4rError(f"adapted weights do not match the model (no parameter {name}); "
                                    "rerun with --force adapt")
                params[name].add_(torch.as_tensor(value, device=params[name].device, dtype=params[name].dtype))


def network_focal(model: Any, frames: np.ndarray, device: str) -> float:
    """The focal (pixels of `frames (T, H, W, 3) uint8`) that the network's frame-0 pointmap implies: the
    pair (0, 0), head 1, as the predict stage estimates K (`geometry.camera.intrinsics_from_pointmap`)."""
    import torch

    from st4r_cli.geometry.camera import intrinsics_from_pointmap
    from st4r_cli.model.inference import predict_pairs

    out = predict_pairs(model, frames[:1], [(0, 0)], batch_size=1, device=device, amp=False)
    return float(intrinsics_from_pointmap(torch.as_tensor(out["track_pts"][0]))[0, 0])
