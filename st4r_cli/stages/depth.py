"""Depth stage: per-frame depth, from the solved cameras (multi-view) or a mono-depth network (MoGe).

Output arrays (docs/architecture.md, "Stage contracts"):
    depth       (T, H, W) float32  z-depth, 0 where invalid (metres with MoGe-2, up to scale with MoGe-1,
                                   the cameras stage's units with multiview)
    valid       (T, H, W) bool
    intrinsics  (3, 3)    float32  the backend's K in pixels of the frames (moge: median over frames;
                                   multiview: the solved cameras')
moge adds `intrinsics_per_frame (T, 3, 3)` and `metric ()` bool; multiview adds `conf (T, H, W)`,
`dynamic (T, H, W) bool` (pixels whose matches leave their epipolar lines, or where the tracks the
camera solver dropped crowd: moving), `parallax_deg (T,)`
`low_parallax (T,) bool` (frames with too little parallax of their own, e.g. a camera that only turns) and
`propagated (T, H, W) bool` (valid pixels whose depth came from the neighbouring frames' static points).

Backends (the registry, `st4r_cli/backends.py`: a backend is its module and one registration):
`multiview` (the default: `st4r_cli/depth/multiview.py` on the cameras stage's solution; when the cameras
were not solved there is no depth and the pipeline says so), `moge` (MoGe-2 or MoGe-1 from a local
official checkpoint, st4r_cli/depth/moge.py) and `none` (the pipeline skips the stage).

The config dataclass is a light import; a backend's module is imported when it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from st4r_cli import backends
from st4r_cli.configs import DepthConfig
from st4r_cli.errors import St4rError

DEPTH_VERSION = 5
# every depth array a backend gives (`st4r_cli.backends`: `compute`), and the one a motion mask adds
CONTRACT = ("depth", "valid", "intrinsics")
MOTION_MASK = "dynamic"


def input_files(cfg: DepthConfig) -> list[Path]:
    """Files besides the frames whose content the depth depends on (their digests join the cache key)."""
    backend = backends.get("depth", cfg.backend)
    return list(backend.load().input_files(cfg)) if backend.computes else []


def check_depth_config(cfg: DepthConfig) -> None:
    """St4rError for option values that cannot work."""
    backends.get("depth", cfg.backend)
    if not 0 <= cfg.resolution_level <= 9:
        raise St4rError(f"depth resolution_level must be in [0, 9], got {cfg.resolution_level}")
    if cfg.num_tokens < 0 or cfg.batch_size < 1:
        raise St4rError("depth num_tokens must be >= 0 and batch_size >= 1")
    if not cfg.mv_offsets or any(o == 0 for o in cfg.mv_offsets):
        raise St4rError(f"depth.mv_offsets must be non-zero frame offsets, got {cfg.mv_offsets}")
    if min(cfg.mv_min_parallax_deg, cfg.mv_consistency_rel, cfg.mv_max_fb_px) <= 0:
        raise St4rError("depth.mv_min_parallax_deg, mv_consistency_rel and mv_max_fb_px must be > 0")
    if cfg.mv_propagate_reach < 0:
        raise St4rError(f"depth.mv_propagate_reach must be >= 0 (0: off), got {cfg.mv_propagate_reach}")


def check_backend_available(cfg: DepthConfig) -> None:
    """St4rError (what to install, which file to put where) if the backend cannot run here."""
    check_depth_config(cfg)
    backend = backends.get("depth", cfg.backend)
    if backend.computes:
        backend.load().check(cfg)


def compute_depth(frames: Any, cfg: DepthConfig, device: str = "cpu",
                  cameras: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-frame depth of `frames (T, H, W, 3) uint8` with the configured backend (see module doc);
    `cameras`: the cameras stage's arrays (for a backend that needs them: multiview; solved)."""
    import numpy as np

    check_depth_config(cfg)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise St4rError(f"depth stage needs (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    backend = backends.get("depth", cfg.backend)
    if not backend.computes:
        raise St4rError(f"depth backend is '{cfg.backend}': there is no depth to compute (use --depth moge)")
    return _checked(backend, backend.load().compute(frames, cfg, device, cameras), frames.shape[:3])


def _checked(backend: backends.Backend, out: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
    """A backend's arrays, St4rError unless they keep the stage's contract (`CONTRACT`, and the motion
    mask a backend registered with `motion_mask` promises)."""
    wanted = CONTRACT + ((MOTION_MASK,) if backend.motion_mask else ())
    missing = [key for key in wanted if key not in out]
    if missing:
        raise St4rError(f"depth backend '{backend.name}' gave no {', '.join(missing)}")
    if tuple(out["depth"].shape) != tuple(shape):
        raise St4rError(f"depth backend '{backend.name}' gave depth of shape {tuple(out['depth'].shape)} "
                        f"for frames {tuple(shape)}")
    return out
