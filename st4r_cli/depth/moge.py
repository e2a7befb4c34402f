"""MoGe backend (Wang et al.: MoGe, CVPR 2025; MoGe-2, 2025): the official model code and checkpoints.

The code comes from PyPI `dlr-moge==2.0.0` (module `moge`) with `dlr-utils3d==1.3` and
`dlr-pipeline==1.0.0`, all installed with --no-deps; `moge.model.v1`/`v2` import `huggingface_hub` at
the top (only its downloader, which st4r never calls), so `huggingface_hub<1` must be installed too
(pure Python; it does not pull torch).

Checkpoints are the official files, `{'model_config': dict, 'model': state_dict}`, loaded from a
local path only (st4r never downloads):

    MoGe-2  weights/moge-2-vitl-normal/model.pt  https://huggingface.co/Ruicheng/moge-2-vitl-normal/resolve/main/model.pt
    MoGe-1  weights/moge-vitl/model.pt           https://huggingface.co/Ruicheng/moge-vitl/resolve/main/model.pt

The version is read from the config (MoGe-2 configs describe `encoder`/`neck`/heads as dicts, MoGe-1
names its `encoder` backbone by a string). Constructing the model from its config builds the DINOv2
backbone with `pretrained=False`, so nothing is fetched from torch hub.

Per frame, `MoGeModel.infer` gives a depth map (MoGe-2: metric, MoGe-1: up to scale), a validity mask
and normalised intrinsics (focal relative to the image size, principal point at the centre); they are
returned in pixels of the input frames (pixel centres at integers).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from st4r_cli.errors import St4rError

if TYPE_CHECKING:
    from st4r_cli.configs import DepthConfig

INSTALL_HINT = ("pip install --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3 dlr-pipeline==1.0.0 "
                "&& pip install 'huggingface_hub<1'")
DEFAULT_WEIGHTS = "weights/moge-2-vitl-normal/model.pt"
OFFICIAL_URLS = {
    "v2": "https://huggingface.co/Ruicheng/moge-2-vitl-normal/resolve/main/model.pt",
    "v1": "https://huggingface.co/Ruicheng/moge-vitl/resolve/main/model.pt",
}


def weights_path(given: str = "") -> Path:
    """The checkpoint: `given` if set, else weights/moge-2-vitl-normal/model.pt (cwd, then checkout)."""
    from st4r_cli.paths import resolve_model_path

    return Path(resolve_model_path(given or DEFAULT_WEIGHTS))


def require_moge(given: str = "") -> Path:
    """Check that the MoGe code imports and the checkpoint exists; returns the checkpoint path."""
    path = weights_path(given)
    try:
        import moge.model.v1  # noqa: F401
        import moge.model.v2  # noqa: F401
    except ImportError as err:
        raise St4rError(f"the moge depth backend needs the MoGe code, which does not import ({err}): "
                        f"install it with `{INSTALL_HINT}`") from None
    if not path.is_file():
        raise St4rError(f"the moge depth backend needs a MoGe checkpoint at {path}: download "
                        f"{OFFICIAL_URLS['v2']} (MoGe-2) and save it as {DEFAULT_WEIGHTS}, or a MoGe-1 "
                        f"checkpoint ({OFFICIAL_URLS['v1']}) and pass its path")
    return path


def moge_version(model_config: dict[str, Any]) -> str:
    """`v2` or `v1` from an official model_config (see module docstring)."""
    encoder = model_config.get("encoder")
    if isinstance(encoder, dict) or "neck" in model_config:
        return "v2"
    return "v1"


def load_moge(path: Path, device: str):  # -> (torch.nn.Module, version)
    """Build the official MoGe model described by the checkpoint and load its weights (strict)."""
    import importlib

    from st4r_cli.safe_load import load_torch_checkpoint

    checkpoint = load_torch_checkpoint(path, "MoGe checkpoint")  # weights_only=True: never runs code
    if not isinstance(checkpoint, dict) or "model_config" not in checkpoint or "model" not in checkpoint:
        raise St4rError(f"{path} is not a MoGe checkpoint (expected {{'model_config', 'model'}})")
    version = moge_version(checkpoint["model_config"])
    module = importlib.import_module(f"moge.model.{version}")
    try:
        model = module.MoGeModel(**checkpoint["model_config"])
        model.load_state_dict(checkpoint["model"], strict=True)
    except (RuntimeError, TypeError, KeyError, ValueError) as err:
        message = " ".join(str(err).split())[:300]
        raise St4rError(f"{path} does not load as MoGe-{version[1]}: {message}") from None
    return model.to(device).eval(), version


def estimate_depth_moge(frames: np.ndarray, checkpoint: str = "", device: str = "cpu",
                        resolution_level: int = 9, num_tokens: int = 0, batch_size: int = 4,
                        fp16: bool = True, progress_desc: str | None = None) -> dict[str, np.ndarray]:
    """Per-frame MoGe depth.

    Args:
        frames: `(T, H, W, 3)` uint8 RGB.
        checkpoint: official MoGe-1/MoGe-2 checkpoint path (default weights/moge-2-vitl-normal/model.pt).
        device: `cpu` or `cuda`.
        resolution_level: MoGe's 0..9 speed/detail knob (ignored when `num_tokens` > 0).
        num_tokens: ViT tokens per image (0: from `resolution_level`).
        batch_size: frames per forward pass.
        fp16: half precision on CUDA (always fp32 on the CPU).
        progress_desc: label of a progress bar (None: no bar).
    Returns:
        `depth (T, H, W)` float32 (0 where invalid), `valid (T, H, W)` bool, `intrinsics (3, 3)`
        float32 (median over frames, pixels), `intrinsics_per_frame (T, 3, 3)` float32 and
        `metric ()` bool (True for MoGe-2, whose depth is in metres).
    """
    import torch

    path = require_moge(checkpoint)
    model, version = load_moge(path, device)
    frames = np.asarray(frames)
    num_frames, height, width = frames.shape[:3]
    starts = list(range(0, num_frames, max(1, batch_size)))
    if progress_desc is not None:
        from st4r_cli.progress import track

        starts = track(starts, progress_desc, total=len(starts))
    depth = np.zeros((num_frames, height, width), dtype=np.float32)
    valid = np.zeros((num_frames, height, width), dtype=bool)
    intrinsics = np.zeros((num_frames, 3, 3), dtype=np.float32)
    pixel_scale = torch.tensor([[width, 0.0, -0.5], [0.0, height, -0.5], [0.0, 0.0, 1.0]])
    for start in starts:
        batch = frames[start:start + batch_size]
        image = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
        image = image.permute(0, 3, 1, 2).float() / 255.0             # (B, 3, H, W) in [0, 1]
        with warnings.catch_warnings():    # MoGe's fp32 autocast block warns on the CPU
            warnings.filterwarnings("ignore", message=".*autocast.*", category=UserWarning)
            out = model.infer(image, resolution_level=resolution_level,
                              num_tokens=num_tokens if num_tokens > 0 else None,
                              use_fp16=fp16 and device.startswith("cuda"))
        batch_depth = out["depth"].float().cpu()
        batch_valid = torch.isfinite(batch_depth) & (batch_depth > 0)
        if "mask" in out:
            batch_valid &= out["mask"].bool().cpu()
        depth[start:start + len(batch)] = torch.where(batch_valid, batch_depth, 0.0).numpy()
        valid[start:start + len(batch)] = batch_valid.numpy()
        # normalised K (x, y in [0, 1], corners) -> pixels with centres at integers
        k_pixels = pixel_scale[None] @ out["intrinsics"].float().cpu()
        intrinsics[start:start + len(batch)] = k_pixels.numpy()
    return {"depth": depth, "valid": valid, "intrinsics": _median_intrinsics(intrinsics),
            "intrinsics_per_frame": intrinsics, "metric": np.array(version == "v2")}


def _median_intrinsics(per_frame: np.ndarray) -> np.ndarray:
    """One `(3, 3)` K for the video: the per-element median of the finite per-frame estimates."""
    finite = np.isfinite(per_frame).all(axis=(1, 2))
    if not finite.any():
        return np.full((3, 3), np.nan, dtype=np.float32)
    return np.median(per_frame[finite], axis=0).astype(np.float32)


# -- the depth registry's entry points (st4r_cli/backends.py) ---------------------------------------
def compute(frames: np.ndarray, cfg: DepthConfig, device: str = "cpu", cameras: dict[str, Any] | None = None
            ) -> dict[str, np.ndarray]:
    """`estimate_depth_moge` with the depth stage's settings (the cameras are not used)."""
    return estimate_depth_moge(frames, checkpoint=cfg.moge_weights, device=device,
                               resolution_level=cfg.resolution_level, num_tokens=cfg.num_tokens,
                               batch_size=cfg.batch_size, fp16=cfg.fp16, progress_desc="depth (moge)")


def check(cfg: DepthConfig) -> None:
    """St4rError unless the MoGe code imports and the checkpoint exists."""
    require_moge(cfg.moge_weights)


def input_files(cfg: DepthConfig) -> list[Path]:
    return [weights_path(cfg.moge_weights)]


def describe_checkpoint(path: Path) -> str:
    """What `st4r doctor` says of a MoGe checkpoint (loaded on the CPU, as `--depth moge` would)."""
    model, version = load_moge(path, "cpu")
    return f"MoGe-{version[1]}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters"
