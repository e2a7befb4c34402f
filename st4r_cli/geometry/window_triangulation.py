"""Which tracks move: a static point triangulates to the same place from every stretch of the video.

Given cameras (solved on all tracks, robustly), each track is triangulated separately from each window of
`window` consecutive frames where it is seen (the least-squares point nearest to its rays). A static
point's window points agree up to triangulation noise; a moving point's follow its motion. This also
catches an object moving along its epipolar lines, which two-view tests cannot: within one window it
looks like a static point at a wrong depth, but a different one in every window.

Noise model: a window point's error along its rays is about `sigma_px / f * z / sin(parallax)`
(z its depth, parallax the widest angle between its rays in the window). A track is `moving` when two
of its well-conditioned windows (parallax >= `min_parallax_deg`) disagree by more than `k_sigma` times
their combined noise and by more than `min_motion_rel` of the depth.

Shapes: tracks_xy (N, T, 2) pixels, visible (N, T) bool, cam_w2c (T, 4, 4), intrinsics (3, 3).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowOptions:
    window: int = 8                 # frames per window
    stride: int = 4                 # a window starts every `stride` frames
    min_views: int = 3              # observations a window needs to triangulate the track
    min_parallax_deg: float = 3.0   # widest ray angle a window needs to count
    sigma_px: float = 0.7           # tracker noise (pixels)
    k_sigma: float = 4.0            # disagreement, in combined noise, that calls a track moving ...
    min_motion_rel: float = 0.05    # ... when also over this share of its depth


def window_points(tracks_xy: np.ndarray, visible: np.ndarray, cam_w2c: np.ndarray, intrinsics: np.ndarray,
                  start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares points (N, 3) of every track from frames [start, stop), with their observation count
    (N,) and widest ray angle in degrees (N,); NaN where fewer than 2 observations."""
    frames = np.arange(start, stop)
    c2w = np.linalg.inv(cam_w2c[frames])                                         # (F, 4, 4)
    k_inv = np.linalg.inv(intrinsics)
    xy = tracks_xy[:, frames].astype(np.float64)                                 # (N, F, 2)
    seen = visible[:, frames] & np.isfinite(xy).all(-1)
    rays_cam = np.concatenate([xy, np.ones(xy.shape[:2] + (1,))], -1) @ k_inv.T
    rays = np.einsum("fij,nfj->nfi", c2w[:, :3, :3], rays_cam)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    centres = c2w[:, :3, 3]                                                      # (F, 3)
    proj = np.eye(3) - rays[..., :, None] * rays[..., None, :]                   # (N, F, 3, 3)
    weight = np.where(seen, 1.0, 0.0)[..., None, None]
    a_mat = (proj * weight).sum(1)
    b_vec = np.einsum("nfij,fj->nfi", proj * weight, centres).sum(1)
    count = seen.sum(1)
    points = np.full((len(xy), 3), np.nan)
    good = (count >= 2) & (np.abs(np.linalg.det(a_mat)) > 1e-12)
    points[good] = np.linalg.solve(a_mat[good], b_vec[good][..., None])[..., 0]
    cos = np.einsum("nfi,ngi->nfg", rays, rays)
    pair_seen = seen[:, :, None] & seen[:, None, :]
    widest = np.degrees(np.arccos(np.clip(np.where(pair_seen, cos, 1.0).min(axis=(1, 2)), -1.0, 1.0)))
    return points, count, widest


def moving_by_windows(tracks_xy: np.ndarray, visible: np.ndarray, cam_w2c: np.ndarray, intrinsics: np.ndarray,
                      options: WindowOptions | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(moving (N,) bool, score (N,) f32: the largest window disagreement in units of combined noise,
    NaN when the track has fewer than two well-conditioned windows)."""
    options = options or WindowOptions()
    num_frames = visible.shape[1]
    focal = float(intrinsics[0, 0])
    starts = range(0, max(1, num_frames - options.window + 1), options.stride)
    pts, sig, ok = [], [], []
    for start in starts:
        stop = min(num_frames, start + options.window)
        points, count, widest = window_points(tracks_xy, visible, cam_w2c, intrinsics, start, stop)
        centre = np.linalg.inv(cam_w2c[(start + stop - 1) // 2])[:3, 3]
        distance = np.linalg.norm(points - centre, axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            sigma = options.sigma_px / focal * distance / np.sin(np.radians(np.maximum(widest, 1e-3)))
        pts.append(points)
        sig.append(sigma)
        ok.append((count >= options.min_views) & (widest >= options.min_parallax_deg) & np.isfinite(points).all(-1))
    points, sigma, usable = np.stack(pts, 1), np.stack(sig, 1), np.stack(ok, 1)  # (N, W, ...)
    gap = np.linalg.norm(points[:, :, None] - points[:, None, :], axis=-1)       # (N, W, W)
    noise = np.sqrt(sigma[:, :, None] ** 2 + sigma[:, None, :] ** 2)
    both = usable[:, :, None] & usable[:, None, :]
    with warnings.catch_warnings():   # tracks without a usable window: NaN, on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        depth = np.nanmedian(np.where(usable[..., None], np.linalg.norm(points, axis=-1, keepdims=True), np.nan),
                             axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(both, gap / noise, np.nan)
        relative = np.where(both, gap / depth[:, None, None], np.nan)
        score = np.nanmax(np.where(both, ratio, -np.inf), axis=(1, 2))
        loud = np.nanmax(np.where(both & (relative > options.min_motion_rel), ratio, -np.inf), axis=(1, 2))
    score = np.where(np.isfinite(score), score, np.nan).astype(np.float32)
    moving = np.isfinite(loud) & (loud > options.k_sigma)
    return moving, score
