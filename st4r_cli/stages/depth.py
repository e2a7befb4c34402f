"""Depth stage: per-frame monocular depth (owner: issue 4).

Output arrays (docs/architecture.md, "Stage contracts"):
    depth       (T, H, W) float32  z-depth, 0 where invalid (metres with MoGe-2, up to scale with MoGe-1)
    valid       (T, H, W) bool
    intrinsics  (3, 3)    float32  the backend's K estimate in pixels of the frames (median over frames)
plus `intrinsics_per_frame (T, 3, 3)` and `metric ()` bool.

Backends: `none` (no depth: `compute_depth` is not called; the pipeline skips the stage) and `moge`
(MoGe-2 or MoGe-1 from a local official checkpoint, st4r_cli/depth/moge.py).

The config dataclass is a light import; torch/moge are imported inside the compute function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from st4r_cli.configs import DepthConfig
from st4r_cli.errors import St4rError

DEPTH_VERSION = 1
BACKENDS = ("none", "moge")


def input_files(cfg: DepthConfig) -> list[Path]:
    """Files besides the frames whose content the depth depends on (their digests join the cache key)."""
    if cfg.backend != "moge":
        return []
    from st4r_cli.depth.moge import weights_path

    return [weights_path(cfg.moge_weights)]


def check_depth_config(cfg: DepthConfig) -> None:
    """St4rError for option values that cannot work."""
    if cfg.backend not in BACKENDS:
        raise St4rError(f"unknown depth backend '{cfg.backend}' (use {', '.join(BACKENDS)})")
    if not 0 <= cfg.resolution_level <= 9:
        raise St4rError(f"depth resolution_level must be in [0, 9], got {cfg.resolution_level}")
    if cfg.num_tokens < 0 or cfg.batch_size < 1:
        raise St4rError("depth num_tokens must be >= 0 and batch_size >= 1")


def check_backend_available(cfg: DepthConfig) -> None:
    """St4rError (what to install, which file to put where) if the backend cannot run here."""
    check_depth_config(cfg)
    if cfg.backend == "moge":
        from st4r_cli.depth.moge import require_moge

        require_moge(cfg.moge_weights)


def compute_depth(frames: Any, cfg: DepthConfig, device: str = "cpu") -> dict[str, Any]:
    """Per-frame depth of `frames (T, H, W, 3) uint8` with the configured backend (see module doc)."""
    import numpy as np

    check_depth_config(cfg)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise St4rError(f"depth stage needs (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if cfg.backend == "none":
        raise St4rError("depth backend is 'none': there is no depth to compute (use --depth moge)")
    from st4r_cli.depth.moge import estimate_depth_moge

    return estimate_depth_moge(frames, checkpoint=cfg.moge_weights, device=device,
                               resolution_level=cfg.resolution_level, num_tokens=cfg.num_tokens,
                               batch_size=cfg.batch_size, fp16=cfg.fp16, progress_desc="depth (moge)")
