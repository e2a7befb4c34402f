"""Track stage: 2D pseudo-tracks of query points through the video (owner: issue 4).

Output arrays (docs/architecture.md, "Stage contracts"):
    tracks_xy   (N, T, 2) float32  pixels of the decoded frames (pixel centres at integers)
    visible     (N, T)    bool
    confidence  (N,)      float32  in [0, 1]
    queries     (N, 3)    float32  (t, x, y)
  and the extra tracks of the camera solver (`camera_every_k`, `camera_grid_size`; B may be 0):
    camera_queries    (B, 3)    float64  (t, x, y): a grid re-seeded every k frames
    camera_tracks_xy  (B, T, 2) float32
    camera_visible    (B, T)    bool

Backends: `builtin` (OpenCV DIS flow chained with cycle checks, st4r_cli/tracking/builtin.py) and
`cotracker3` (official CoTracker3, st4r_cli/tracking/cotracker3.py). Query modes: `grid` on frame 0,
`grid_every_k` (the grid on every k-th frame) and `file` (st4r_cli/tracking/queries.py).

The config dataclass is a light import; OpenCV/torch are imported inside the compute function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from st4r_cli.configs import TracksConfig
from st4r_cli.errors import St4rError

TRACKS_VERSION = 3
BACKENDS = ("builtin", "cotracker3")


def input_files(cfg: TracksConfig) -> list[Path]:
    """Files besides the frames whose content the tracks depend on (their digests join the cache key)."""
    files = []
    if cfg.query_mode == "file" and cfg.query_file:
        files.append(Path(cfg.query_file))
    if cfg.backend == "cotracker3":
        from st4r_cli.tracking.cotracker3 import weights_path

        files.append(weights_path(cfg.cotracker_mode, cfg.cotracker_weights))
    return files


def check_tracks_config(cfg: TracksConfig) -> None:
    """St4rError for option values that cannot work (before any heavy work starts)."""
    if cfg.backend not in BACKENDS:
        raise St4rError(f"unknown tracker backend '{cfg.backend}' (use {', '.join(BACKENDS)})")
    if cfg.query_mode not in ("grid", "grid_every_k", "file"):
        raise St4rError(f"unknown tracks query mode '{cfg.query_mode}' (use grid, grid_every_k or file)")
    if cfg.camera_every_k < 0 or not 2 <= cfg.camera_grid_size <= 1024:
        raise St4rError("tracks camera_every_k must be >= 0 (0: none) and camera_grid_size in [2, 1024]")
    if not 1 <= cfg.grid_size <= 1024:
        raise St4rError(f"tracks grid size must be in [1, 1024], got {cfg.grid_size}")
    if cfg.query_every_k < 1:
        raise St4rError(f"tracks query_every_k must be >= 1, got {cfg.query_every_k}")
    if cfg.dis_preset not in ("ultrafast", "fast", "medium"):
        raise St4rError(f"unknown DIS preset '{cfg.dis_preset}' (use ultrafast, fast or medium)")
    if cfg.occlusion not in ("lk_fb", "dis_fb", "none"):
        raise St4rError(f"unknown occlusion test '{cfg.occlusion}' (use lk_fb, dis_fb or none)")
    if not cfg.fb_threshold > 0 or cfg.flow_long_side < 16:
        raise St4rError("tracks fb_threshold must be > 0 and flow_long_side >= 16")
    if cfg.lost_motion not in ("velocity", "flow"):
        raise St4rError(f"unknown lost_motion '{cfg.lost_motion}' (use velocity or flow)")
    if cfg.cotracker_mode not in ("offline", "online"):
        raise St4rError(f"unknown cotracker mode '{cfg.cotracker_mode}' (use offline or online)")


def check_backend_available(cfg: TracksConfig) -> None:
    """St4rError (what to install, which file to put where) if the backend cannot run here."""
    check_tracks_config(cfg)
    if cfg.query_mode == "file":
        from st4r_cli.tracking.queries import load_query_file

        if not cfg.query_file:
            raise St4rError("tracks query mode 'file' needs a query file (--queries FILE)")
        load_query_file(cfg.query_file)                 # readable and well formed (bounds: later)
    if cfg.backend == "cotracker3":
        from st4r_cli.tracking.cotracker3 import require_cotracker3

        require_cotracker3(cfg.cotracker_mode, cfg.cotracker_weights)


def compute_tracks(frames: Any, cfg: TracksConfig, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Track the configured query points through `frames`.

    Args:
        frames: `(T, H, W, 3)` uint8 RGB (the decoded frames).
        cfg: the stage config.
        device: `cpu` or `cuda` (used by cotracker3; the builtin tracker is CPU only).
        seed: seeds torch for learned backends (the builtin tracker is deterministic by itself).
    Returns:
        dict with `tracks_xy (N,T,2) f32`, `visible (N,T) bool`, `confidence (N,) f32`, `queries (N,3) f32`,
        and the camera solver's tracks `camera_queries (B,3) f64`, `camera_tracks_xy (B,T,2) f32`,
        `camera_visible (B,T) bool` (same tracker, a grid re-seeded every `camera_every_k` frames).
    """
    import numpy as np

    from st4r_cli.tracking.queries import make_queries

    check_tracks_config(cfg)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise St4rError(f"tracks stage needs (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if len(frames) < 2:
        raise St4rError(f"tracking needs at least 2 frames, got {len(frames)}")
    num_frames, height, width = frames.shape[:3]
    queries = make_queries(cfg.query_mode, num_frames, (height, width), cfg.grid_size,
                           cfg.query_every_k, cfg.query_file)
    if cfg.backend == "builtin":
        # one pass for both sets: the built-in tracker follows every point on its own (one flow field
        # per frame pair, per-point LK), so the stage's tracks are the same as tracked alone
        cam_queries = camera_queries(num_frames, (height, width), cfg)
        both = _run_tracker(frames, np.concatenate([np.asarray(queries, np.float32), cam_queries.astype(np.float32)]),
                            cfg, device, seed)
        count = len(queries)
        out = {key: both[key][:count] for key in ("tracks_xy", "visible", "confidence")}
        camera = {"camera_queries": cam_queries, "camera_tracks_xy": np.asarray(both["tracks_xy"][count:], np.float32),
                  "camera_visible": np.asarray(both["visible"][count:], bool)}
    else:  # a learned tracker attends across its points: the camera tracks must not change the stage's
        out = _run_tracker(frames, queries, cfg, device, seed)
        camera = camera_tracks(frames, cfg, device, seed)
    return {"tracks_xy": np.asarray(out["tracks_xy"], dtype=np.float32),
            "visible": np.asarray(out["visible"], dtype=bool),
            "confidence": np.clip(np.asarray(out["confidence"], dtype=np.float32), 0.0, 1.0),
            "queries": queries.astype(np.float32), **camera}


def _run_tracker(frames: Any, queries: Any, cfg: TracksConfig, device: str, seed: int,
                 label: str = "tracks") -> dict[str, Any]:
    if cfg.backend == "builtin":
        return _run_builtin(frames, queries, cfg, f"{label} (builtin)")
    return _run_cotracker3(frames, queries, cfg, device, seed)


def camera_tracks(frames: Any, cfg: TracksConfig, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """The camera solver's extra tracks: a `camera_grid_size` grid on every `camera_every_k`-th frame
    after frame 0 (and before the last), tracked by the configured tracker, so every part of the
    video has tracks that start in it."""
    import numpy as np

    num_frames, height, width = frames.shape[:3]
    queries = camera_queries(num_frames, (height, width), cfg)
    if not len(queries):
        return {"camera_queries": queries, "camera_tracks_xy": np.zeros((0, num_frames, 2), np.float32),
                "camera_visible": np.zeros((0, num_frames), bool)}
    out = _run_tracker(frames, queries.astype(np.float32), cfg, device, seed, "camera tracks")
    return {"camera_queries": queries, "camera_tracks_xy": np.asarray(out["tracks_xy"], np.float32),
            "camera_visible": np.asarray(out["visible"], bool)}


def camera_queries(num_frames: int, hw: tuple[int, int], cfg: TracksConfig) -> Any:
    """(B, 3) float64 (t, x, y): the `camera_grid_size` grid on every `camera_every_k`-th frame after
    frame 0 and before the last (B = 0 with camera_every_k 0 or a short video)."""
    import numpy as np

    from st4r_cli.tracking.queries import grid_queries

    seeds = list(range(cfg.camera_every_k, num_frames - 1, cfg.camera_every_k)) if cfg.camera_every_k else []
    if not seeds:
        return np.zeros((0, 3))
    return grid_queries(cfg.camera_grid_size, hw, seeds).astype(np.float64)


def builtin_params(cfg: TracksConfig):  # -> BuiltinTrackerParams
    from st4r_cli.tracking.builtin import BuiltinTrackerParams

    return BuiltinTrackerParams(flow_long_side=cfg.flow_long_side, dis_preset=cfg.dis_preset,
                                occlusion=cfg.occlusion, fb_threshold=cfg.fb_threshold,
                                reacquire=cfg.reacquire, reacquire_ncc=cfg.reacquire_ncc,
                                lost_motion=cfg.lost_motion)


def _run_builtin(frames: Any, queries: Any, cfg: TracksConfig, label: str) -> dict[str, Any]:
    from st4r_cli.tracking.builtin import track_points

    return track_points(frames, queries, builtin_params(cfg), progress_desc=label)


def _run_cotracker3(frames: Any, queries: Any, cfg: TracksConfig, device: str, seed: int) -> dict[str, Any]:
    import torch

    from st4r_cli import progress
    from st4r_cli.tracking.cotracker3 import track_points_cotracker3

    torch.manual_seed(seed)
    progress.log(f"tracks: CoTracker3 {cfg.cotracker_mode} on {device}, {len(queries)} points, "
                 f"{len(frames)} frames")
    return track_points_cotracker3(frames, queries, mode=cfg.cotracker_mode,
                                   checkpoint=cfg.cotracker_weights, device=device,
                                   backward_tracking=cfg.cotracker_backward,
                                   model_hw=tuple(cfg.cotracker_model_hw))
