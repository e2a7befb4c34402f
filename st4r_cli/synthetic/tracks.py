"""Sparse ground-truth tracks sampled from a rendered clip's dense frame-0 tracks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from st4r_cli.synthetic.render import SyntheticClip

DYNAMIC_MOTION_THRESHOLD = 0.01  # St4RTrack: a track is dynamic when its summed frame-to-frame motion > this


@dataclass
class SparseTracks:
    """N tracks of frame-0 pixels (queries all at t = 0), world = frame-0 camera."""

    query_xy: np.ndarray     # (N, 2) float32 pixel centre (x, y) in frame 0
    query_t: np.ndarray      # (N,) int32, all 0
    tracks3d: np.ndarray     # (N, T, 3) float32 world positions
    tracks2d: np.ndarray     # (N, T, 2) float32 projections into each frame (NaN behind the camera)
    visible: np.ndarray      # (N, T) bool
    dynamic: np.ndarray      # (N,) bool, the point is on an object that moves or deforms
    object_id: np.ndarray    # (N,) int16


def project_points(points_world: np.ndarray, cam_c2w: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points `(N, T, 3)` into cameras `cam_c2w (T, 4, 4)` with `intrinsics (3, 3)`.

    Returns `xy (N, T, 2)` pixels (NaN where z <= 0) and camera z-depth `(N, T)`.
    """
    from st4r_cli.geometry.camera_np import project_tracks

    w2c = np.linalg.inv(cam_c2w.astype(np.float64))
    return project_tracks(points_world.astype(np.float64), w2c, intrinsics)


def summed_motion_dynamic(tracks3d: np.ndarray, threshold: float = DYNAMIC_MOTION_THRESHOLD) -> np.ndarray:
    """St4RTrack's dynamic flag: `(N,)` True when sum_t |X_{t+1} - X_t| > threshold (world units)."""
    steps = np.linalg.norm(np.diff(tracks3d.astype(np.float64), axis=1), axis=-1)
    return steps.sum(axis=1) > threshold


def sample_tracks(clip: SyntheticClip, num_tracks: int, seed: int = 0, mode: str = "random",
                  dynamic_fraction: float | None = None) -> SparseTracks:
    """Sample N frame-0 pixels with valid geometry and return their exact tracks.

    Args:
        clip: a rendered clip.
        num_tracks: N (fewer if the frame has fewer valid pixels; `grid` returns about N).
        seed: sampling seed.
        mode: `random` (uniform over valid pixels) or `grid` (a regular grid of pixel centres).
        dynamic_fraction: with `random`, draw this fraction from dynamic pixels (when there are any),
            so moving objects are not drowned by the background.
    """
    height, width = clip.size_hw
    valid0 = clip.valid[0]
    if mode == "grid":
        step = max(1, int(np.sqrt(height * width / max(num_tracks, 1))))
        ys, xs = np.mgrid[step // 2:height:step, step // 2:width:step]
        keep = valid0[ys, xs]
        ys, xs = ys[keep], xs[keep]
    elif mode == "random":
        rng = np.random.default_rng(seed)
        flat_valid = np.flatnonzero(valid0.ravel())
        dynamic = clip.dynamic_mask[0].ravel()[flat_valid]
        if dynamic_fraction is not None and dynamic.any():
            num_dynamic = min(int(round(num_tracks * dynamic_fraction)), int(dynamic.sum()))
            pool_dynamic, pool_static = flat_valid[dynamic], flat_valid[~dynamic]
            picks = np.concatenate([
                rng.choice(pool_dynamic, num_dynamic, replace=False),
                rng.choice(pool_static, min(num_tracks - num_dynamic, len(pool_static)), replace=False)])
        else:
            picks = rng.choice(flat_valid, min(num_tracks, len(flat_valid)), replace=False)
        ys, xs = np.divmod(np.sort(picks), width)
    else:
        raise ValueError(f"unknown sampling mode {mode!r}; expected random or grid")
    tracks3d = np.transpose(clip.tracks3d_dense[:, ys, xs], (1, 0, 2))          # (N, T, 3)
    visible = np.transpose(clip.visible_dense[:, ys, xs], (1, 0))               # (N, T)
    tracks2d, _ = project_points(tracks3d, clip.cam_c2w, clip.intrinsics.astype(np.float64))
    return SparseTracks(
        query_xy=np.stack([xs, ys], axis=1).astype(np.float32),
        query_t=np.zeros(len(xs), dtype=np.int32),
        tracks3d=tracks3d.astype(np.float32),
        tracks2d=tracks2d.astype(np.float32),
        visible=visible,
        dynamic=clip.dynamic_mask[0, ys, xs],
        object_id=clip.object_ids[0, ys, xs],
    )
