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
  and, when the queries are the user's (`query_mode=file`), the tracker's own `grid_size` grid on frame 0,
  which the TTA adapts on whatever the output queries are (G = grid_size**2):
    grid_queries (G, 3) float32, grid_tracks_xy (G, T, 2) float32, grid_visible (G, T) bool,
    grid_confidence (G,) float32

Tracking resolution (`long_side`, 0: the source's own capped at MAX_TRACK_LONG_SIDE): the tracker runs
on frames decoded at that size (the pipeline decodes the input a second time; `tracking_long_side`),
its queries mapped up from decoded-frame pixels and its tracks mapped back as float32, so the sub-pixel
precision of the larger frames is kept. Pixel centres map as x' = (x + 0.5) W' / W - 0.5 (`map_pixels`).
All arrays are in decoded-frame pixels whatever the tracking resolution.

Backends (the registry, `st4r_cli/backends.py`: a backend is its module and one registration): `builtin`
(OpenCV DIS flow chained with cycle checks, st4r_cli/tracking/builtin.py) and `cotracker3` (official
CoTracker3, st4r_cli/tracking/cotracker3.py). Query modes: `grid` on frame 0,
`grid_every_k` (the grid on every k-th frame) and `file` (st4r_cli/tracking/queries.py).

The config dataclass is a light import; OpenCV/torch are imported inside the compute function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from st4r_cli import backends
from st4r_cli.configs import TracksConfig
from st4r_cli.errors import St4rError

TRACKS_VERSION = 4
# `long_side: 0` tracks at the source's own resolution up to this long side: a 4K phone video is tracked
# at 1024 px (about 1.6x the cost of 854x480 per frame; the DIS flow runs at `flow_long_side` anyway,
# only the LK checks and re-acquisition see the full frames), which keeps the tracker's precision well
# below a pixel of the 256-px network frames
MAX_TRACK_LONG_SIDE = 1024


def input_files(cfg: TracksConfig) -> list[Path]:
    """Files besides the frames whose content the tracks depend on (their digests join the cache key)."""
    files = [Path(cfg.query_file)] if cfg.query_mode == "file" and cfg.query_file else []
    return files + list(backends.get("tracker", cfg.backend).load().input_files(cfg))


def check_tracks_config(cfg: TracksConfig) -> None:
    """St4rError for option values that cannot work (before any heavy work starts)."""
    backends.get("tracker", cfg.backend)
    if cfg.query_mode not in ("grid", "grid_every_k", "file"):
        raise St4rError(f"unknown tracks query mode '{cfg.query_mode}' (use grid, grid_every_k or file)")
    if cfg.camera_every_k < 0 or not 2 <= cfg.camera_grid_size <= 1024:
        raise St4rError("tracks camera_every_k must be >= 0 (0: none) and camera_grid_size in [2, 1024]")
    if not 0 <= cfg.long_side <= 8192:
        raise St4rError(f"tracks long_side must be in [0, 8192] (0: the source's resolution), got {cfg.long_side}")
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
    backends.get("tracker", cfg.backend).load().check(cfg)


def tracking_long_side(orig_hw: Any, decoded_hw: Any, cfg: TracksConfig) -> int:
    """Long side (px) of the frames the tracker runs on, or 0 for the decoded frames themselves.

    `cfg.long_side` (0: the source's own, capped at MAX_TRACK_LONG_SIDE), never above the source's
    (no enlarging); a size no larger than the decoded frames' tracks those (0).
    """
    source = int(max(orig_hw))
    wanted = min(source, MAX_TRACK_LONG_SIDE) if cfg.long_side == 0 else min(int(cfg.long_side), source)
    return wanted if wanted > int(max(decoded_hw)) else 0


def map_pixels(xy: Any, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Any:
    """Pixel positions `(..., 2)` (x, y) of a `src_hw` image -> the same points in a `dst_hw` image of the
    same picture, pixel centres at integers: x' = (x + 0.5) W' / W - 0.5, y' = (y + 0.5) H' / H - 0.5
    (independent x/y scales). float64 in, float64 out."""
    import numpy as np

    scale = np.array([dst_hw[1] / src_hw[1], dst_hw[0] / src_hw[0]])
    return (np.asarray(xy, dtype=np.float64) + 0.5) * scale - 0.5


def compute_tracks(frames: Any, cfg: TracksConfig, device: str = "cpu", seed: int = 0,
                   decoded_hw: tuple[int, int] | None = None) -> dict[str, Any]:
    """Track the configured query points through `frames`.

    Args:
        frames: `(T, h, w, 3)` uint8 RGB: the frames to track on (the decoded frames, or the input decoded
            at the tracking resolution), an array or a reader with the array's shape and dtype whose item
            t is frame t (the builtin tracker reads it frame by frame).
        cfg: the stage config.
        device: `cpu` or `cuda` (used by cotracker3; the builtin tracker is CPU only).
        seed: seeds torch for learned backends (the builtin tracker is deterministic by itself).
        decoded_hw: `(H, W)` of the decoded frames, whose pixels the queries and every output array use
            (None: the size of `frames`).
    Returns:
        dict with `tracks_xy (N,T,2) f32`, `visible (N,T) bool`, `confidence (N,) f32`, `queries (N,3) f32`,
        the camera solver's tracks `camera_queries (B,3) f64`, `camera_tracks_xy (B,T,2) f32`,
        `camera_visible (B,T) bool` (same tracker, a grid re-seeded every `camera_every_k` frames), and with
        `query_mode=file` the frame-0 grid `grid_queries (G,3) f32`, `grid_tracks_xy (G,T,2) f32`,
        `grid_visible (G,T) bool`, `grid_confidence (G,) f32`; positions in decoded-frame pixels.
    """
    import numpy as np

    from st4r_cli.tracking.queries import grid_queries, make_queries

    check_tracks_config(cfg)
    if not hasattr(frames, "shape"):   # a list; a frame reader (stages.decode.StoredFrames) stays one
        frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise St4rError(f"tracks stage needs (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if len(frames) < 2:
        raise St4rError(f"tracking needs at least 2 frames, got {len(frames)}")
    num_frames = len(frames)
    out_hw = tuple(int(v) for v in (decoded_hw or frames.shape[1:3]))
    queries = make_queries(cfg.query_mode, num_frames, out_hw, cfg.grid_size, cfg.query_every_k, cfg.query_file)
    sets = {"": queries, "camera_": camera_queries(num_frames, out_hw, cfg)}
    if cfg.query_mode == "file":       # the TTA's tracks: the tracker's own grid, whatever the user asked
        sets["grid_"] = grid_queries(cfg.grid_size, out_hw, [0])
    tracked = _track_sets(frames, sets, out_hw, cfg, device, seed)
    out: dict[str, Any] = {}
    for prefix, result in tracked.items():
        out[f"{prefix}tracks_xy"] = result["tracks_xy"]
        out[f"{prefix}visible"] = result["visible"]
        if prefix != "camera_":
            out[f"{prefix}confidence"] = np.clip(result["confidence"], 0.0, 1.0).astype(np.float32)
    out["queries"] = queries.astype(np.float32)
    out["camera_queries"] = sets["camera_"].astype(np.float64)
    if "grid_" in sets:
        out["grid_queries"] = sets["grid_"].astype(np.float32)
    return out


def _track_sets(frames: Any, sets: dict[str, Any], out_hw: tuple[int, int], cfg: TracksConfig, device: str,
                seed: int) -> dict[str, dict[str, Any]]:
    """Track each named query set `(N_k, 3)` (decoded-frame pixels) on `frames`; results in decoded-frame
    pixels: `tracks_xy (N_k,T,2) f32`, `visible (N_k,T) bool`, `confidence (N_k,) f32`.

    The built-in tracker follows every point on its own (one flow field per frame pair, per-point LK), so
    all sets go in one pass and each comes out as if tracked alone; a learned tracker attends across its
    points, so it tracks each set separately (the camera tracks must not change the stage's).
    """
    import numpy as np

    track_hw = tuple(int(v) for v in frames.shape[1:3])
    num_frames = len(frames)
    names = [name for name, q in sets.items() if len(q)]
    up = {name: _queries_to(np.asarray(sets[name], np.float64), out_hw, track_hw) for name in names}
    raw: dict[str, dict[str, Any]] = {}
    if backends.get("tracker", cfg.backend).joint_points and names:
        both = _run_tracker(frames, np.concatenate([up[name] for name in names]), cfg, device, seed)
        start = 0
        for name in names:
            stop = start + len(up[name])
            raw[name] = {key: both[key][start:stop] for key in ("tracks_xy", "visible", "confidence")}
            start = stop
    else:
        for name in names:
            raw[name] = _run_tracker(frames, up[name], cfg, device, seed, f"{name or 'stage '}tracks".strip())
    results = {}
    for name, queries in sets.items():
        if name not in raw:
            results[name] = {"tracks_xy": np.zeros((0, num_frames, 2), np.float32),
                             "visible": np.zeros((0, num_frames), bool), "confidence": np.zeros(0, np.float32)}
            continue
        xy = np.asarray(raw[name]["tracks_xy"], np.float64)
        if track_hw != out_hw:
            xy = map_pixels(xy, track_hw, out_hw)
        xy = xy.astype(np.float32)
        rows = np.arange(len(queries))
        xy[rows, np.round(queries[:, 0]).astype(np.int64)] = np.asarray(queries[:, 1:], np.float32)  # exact
        results[name] = {"tracks_xy": xy, "visible": np.asarray(raw[name]["visible"], bool),
                         "confidence": np.asarray(raw[name]["confidence"], np.float32)}
    return results


def _queries_to(queries: Any, out_hw: tuple[int, int], track_hw: tuple[int, int]) -> Any:
    """(N, 3) (t, x, y) queries in decoded-frame pixels -> float32 in the tracking frames' pixels."""
    import numpy as np

    mapped = np.array(queries, dtype=np.float64)
    if track_hw != out_hw:
        mapped[:, 1:] = map_pixels(mapped[:, 1:], out_hw, track_hw)
        # a query on the border stays on the image (float rounding)
        mapped[:, 1] = np.clip(mapped[:, 1], -0.5, track_hw[1] - 0.5)
        mapped[:, 2] = np.clip(mapped[:, 2], -0.5, track_hw[0] - 0.5)
    return mapped.astype(np.float32)


def _run_tracker(frames: Any, queries: Any, cfg: TracksConfig, device: str, seed: int,
                 label: str = "tracks") -> dict[str, Any]:
    """The configured tracker (`st4r_cli.backends`) on `queries` in pixels of `frames`."""
    return backends.get("tracker", cfg.backend).load().compute(frames, queries, cfg, device, seed, label)


def camera_tracks(frames: Any, cfg: TracksConfig, device: str = "cpu", seed: int = 0,
                  decoded_hw: tuple[int, int] | None = None) -> dict[str, Any]:
    """The camera solver's extra tracks: a `camera_grid_size` grid on every `camera_every_k`-th frame
    after frame 0 (and before the last), tracked by the configured tracker, so every part of the
    video has tracks that start in it. `frames` and `decoded_hw` as in `compute_tracks`."""
    import numpy as np

    out_hw = tuple(int(v) for v in (decoded_hw or frames.shape[1:3]))
    queries = camera_queries(len(frames), out_hw, cfg)
    result = _track_sets(frames, {"camera_": queries}, out_hw, cfg, device, seed)["camera_"]
    return {"camera_queries": queries.astype(np.float64), "camera_tracks_xy": result["tracks_xy"],
            "camera_visible": result["visible"]}


def camera_queries(num_frames: int, hw: tuple[int, int], cfg: TracksConfig) -> Any:
    """(B, 3) float64 (t, x, y): the `camera_grid_size` grid on every `camera_every_k`-th frame after
    frame 0 and before the last (B = 0 with camera_every_k 0 or a short video)."""
    import numpy as np

    from st4r_cli.tracking.queries import grid_queries

    seeds = list(range(cfg.camera_every_k, num_frames - 1, cfg.camera_every_k)) if cfg.camera_every_k else []
    if not seeds:
        return np.zeros((0, 3))
    return grid_queries(cfg.camera_grid_size, hw, seeds).astype(np.float64)
