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

Backends: `multiview` (the default: `st4r_cli/depth/multiview.py` on the cameras stage's solution; when
the cameras were not solved there is no depth and the pipeline says so), `moge` (MoGe-2 or MoGe-1 from a
local official checkpoint, st4r_cli/depth/moge.py) and `none` (the pipeline skips the stage).

The config dataclass is a light import; torch/moge are imported inside the compute function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from st4r_cli.configs import DepthConfig
from st4r_cli.errors import St4rError

DEPTH_VERSION = 5
BACKENDS = ("multiview", "moge", "none")


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
    if not cfg.mv_offsets or any(o == 0 for o in cfg.mv_offsets):
        raise St4rError(f"depth.mv_offsets must be non-zero frame offsets, got {cfg.mv_offsets}")
    if min(cfg.mv_min_parallax_deg, cfg.mv_consistency_rel, cfg.mv_max_fb_px) <= 0:
        raise St4rError("depth.mv_min_parallax_deg, mv_consistency_rel and mv_max_fb_px must be > 0")
    if cfg.mv_propagate_reach < 0:
        raise St4rError(f"depth.mv_propagate_reach must be >= 0 (0: off), got {cfg.mv_propagate_reach}")


def check_backend_available(cfg: DepthConfig) -> None:
    """St4rError (what to install, which file to put where) if the backend cannot run here."""
    check_depth_config(cfg)
    if cfg.backend == "moge":
        from st4r_cli.depth.moge import require_moge

        require_moge(cfg.moge_weights)


def compute_depth(frames: Any, cfg: DepthConfig, device: str = "cpu",
                  cameras: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-frame depth of `frames (T, H, W, 3) uint8` with the configured backend (see module doc);
    `cameras`: the cameras stage's arrays (multiview only; solved)."""
    import numpy as np

    check_depth_config(cfg)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise St4rError(f"depth stage needs (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if cfg.backend == "none":
        raise St4rError("depth backend is 'none': there is no depth to compute (use --depth moge)")
    if cfg.backend == "multiview":
        return _multiview(frames, cfg, cameras)
    from st4r_cli.depth.moge import estimate_depth_moge

    return estimate_depth_moge(frames, checkpoint=cfg.moge_weights, device=device,
                               resolution_level=cfg.resolution_level, num_tokens=cfg.num_tokens,
                               batch_size=cfg.batch_size, fp16=cfg.fp16, progress_desc="depth (moge)")


def _multiview(frames: Any, cfg: DepthConfig, cameras: dict[str, Any] | None) -> dict[str, Any]:
    import numpy as np

    from st4r_cli import progress
    from st4r_cli.depth.multiview import MultiviewOptions, multiview_depth

    if cameras is None or not bool(cameras["ba_accepted"]):
        raise St4rError("depth backend 'multiview' needs solved cameras (the cameras stage)")
    opts = MultiviewOptions(offsets=tuple(int(o) for o in cfg.mv_offsets), max_fb_px=cfg.mv_max_fb_px,
                            min_parallax_deg=cfg.mv_min_parallax_deg, consistency_rel=cfg.mv_consistency_rel,
                            propagate_reach=cfg.mv_propagate_reach)
    k_mat = np.asarray(cameras["intrinsics"], np.float64)
    track_obs = (np.asarray(cameras["moving_obs"]), np.asarray(cameras["fitted_obs"]))
    out = multiview_depth(frames, k_mat, np.linalg.inv(np.asarray(cameras["cam_w2c"], np.float64)), opts,
                          progress=progress.track, track_obs=track_obs, scene_depth=_scene_depth(cameras))
    low = int(out["low_parallax"].sum())
    lent = int((out["low_parallax"] & out["propagated"].any(axis=(1, 2))).sum())
    progress.log(f"[green]✓[/green] depth (multiview): {100 * out['valid'].mean():.0f}% of the pixels, "
                 f"{100 * out['dynamic'].mean():.1f}% moving"
                 + (f"; {low} frame(s) with too little parallax of their own"
                    + (f", {lent} of them take depth from their neighbours" if lent else "") if low else ""))
    out["intrinsics"] = k_mat.astype(np.float32)
    return out


def _scene_depth(cameras: dict[str, Any]) -> float:
    """Median depth of the bundle's tracks in the solved cameras' units (the bundle sets it to 1)."""
    import numpy as np

    depth = np.asarray(cameras["track_bundle_depth"], np.float64)
    depth = depth[np.isfinite(depth) & (depth > 0)]
    return float(np.median(depth)) if depth.size else 1.0
