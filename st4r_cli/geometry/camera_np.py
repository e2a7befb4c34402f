"""Pinhole cameras in NumPy: the twin of `st4r_cli.geometry.camera` (torch) for the stages that run
without gradients (cameras, fuse, export, eval, synthetic data, dataset readers).

Same conventions (docs/architecture.md): OpenCV axes, pixel centres at integers, `w2c` maps world
points into a camera, K is (3, 3) in pixels. `tests/geometry/test_camera_np.py` checks that the twins
agree. Differences from the torch side, on purpose: points at or behind the camera (z <= 0) project
to NaN pixels here (torch clamps the depth and returns finite pixels, for gradients), and the
z-buffer and sigma helpers work on whole (N, T) track arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def to_camera(points: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    """World points (..., 3) in the camera w2c (4, 4): (..., 3)."""
    return points @ w2c[:3, :3].T + w2c[:3, 3]


def project(points_cam: np.ndarray, k_mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (..., 2) and z-depth (...,) of camera-frame points (..., 3); NaN pixels where z <= 0."""
    import numpy as np

    z = points_cam[..., 2]
    with np.errstate(all="ignore"):
        safe = np.where(z > 0, z, np.nan)
        xy = np.stack([k_mat[0, 0] * points_cam[..., 0] / safe + k_mat[0, 2],
                       k_mat[1, 1] * points_cam[..., 1] / safe + k_mat[1, 2]], -1)
    return xy, z


def project_world(points: np.ndarray, w2c: np.ndarray, k_mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 2) (NaN at or behind the camera) and depth (N,) of world points (N, 3) in one camera."""
    return project(to_camera(points, w2c), k_mat)


def project_tracks(tracks3d: np.ndarray, w2c: np.ndarray, k_mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, T, 2) (NaN at or behind the camera) and depth z (N, T) of world tracks (N, T, 3) in
    the cameras w2c (T, 4, 4): track n at time t in camera t."""
    import numpy as np

    cam = np.einsum("tij,ntj->nti", w2c[:, :3, :3], tracks3d) + w2c[None, :, :3, 3]
    return project(cam, k_mat)


def project_static(points: np.ndarray, w2c: np.ndarray, k_mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, T, 2) (NaN at or behind the camera) and depth (N, T) of fixed world points (N, 3) in
    every camera w2c (T, 4, 4)."""
    import numpy as np

    cam = np.einsum("tij,nj->nti", w2c[:, :3, :3], points) + w2c[None, :, :3, 3]
    return project(cam, k_mat)


def pixel_rays(xy: np.ndarray, k_mat: np.ndarray) -> np.ndarray:
    """(..., 3) camera-frame rays (x_n, y_n, 1) through pixels (..., 2)."""
    import numpy as np

    return np.stack([(xy[..., 0] - k_mat[0, 2]) / k_mat[0, 0], (xy[..., 1] - k_mat[1, 2]) / k_mat[1, 1],
                     np.ones(xy.shape[:-1])], -1)


def unproject(xy: np.ndarray, depth: np.ndarray, k_mat: np.ndarray) -> np.ndarray:
    """Camera-frame points (..., 3) at z-depth (...,) on the rays through pixels (..., 2)."""
    return pixel_rays(xy, k_mat) * depth[..., None]


def pixel_grid(hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 2) float64 pixel coordinates (x, y) of every pixel centre: grid[i, j] = (j, i)."""
    import numpy as np

    ys, xs = np.mgrid[0:hw[0], 0:hw[1]].astype(np.float64)
    return np.stack([xs, ys], -1)


def unproject_depth(depth: np.ndarray, k_mat: np.ndarray) -> np.ndarray:
    """Back-project a z-depth map (H, W) with K (3, 3) into camera-frame points (H, W, 3)."""
    return unproject(pixel_grid(depth.shape[:2]), depth, k_mat)


def sample_bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(H, W, C) or (H, W) image sampled bilinearly at xy (N, 2) (clamped to the border)."""
    import numpy as np

    h, w = image.shape[:2]
    x = np.clip(xy[:, 0], 0, w - 1)
    y = np.clip(xy[:, 1], 0, h - 1)
    x0 = np.clip(np.floor(x).astype(np.int64), 0, max(w - 2, 0))
    y0 = np.clip(np.floor(y).astype(np.int64), 0, max(h - 2, 0))
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = x - x0
    fy = y - y0
    if image.ndim == 3:
        fx, fy = fx[:, None], fy[:, None]
    return (image[y0, x0] * (1 - fx) * (1 - fy) + image[y0, x1] * fx * (1 - fy)
            + image[y1, x0] * (1 - fx) * fy + image[y1, x1] * fx * fy)


def in_image(xy: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bool mask of finite pixel positions (..., 2) inside [0, W-1] x [0, H-1]."""
    import numpy as np

    return (np.isfinite(xy).all(-1) & (xy[..., 0] >= 0) & (xy[..., 0] <= hw[1] - 1)
            & (xy[..., 1] >= 0) & (xy[..., 1] <= hw[0] - 1))


def render_depth(points: np.ndarray, w2c: np.ndarray, k_mat: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) z-buffer render of world points (P, 3) into one camera (w2c (4, 4), k_mat (3, 3)): the
    nearest point's depth at the pixel each projects to (rounded), inf where none lands. One pixel per
    point, no splat radius (NumPy only: the depth stage is its one user)."""
    import numpy as np

    h, w = hw
    cam = to_camera(np.asarray(points, np.float64), w2c)
    cam = cam[cam[:, 2] > 1e-9]
    xy, z = project(cam, k_mat)
    col, row = np.rint(xy[:, 0]).astype(np.int64), np.rint(xy[:, 1]).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    out = np.full(h * w, np.inf)
    np.minimum.at(out, row[inside] * w + col[inside], z[inside])
    return out.reshape(h, w)


def surface_depths(pointmaps: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    """(T, H, W) z-depth of each frame's own pointmap (T, H, W, 3) (world) in its camera w2c (T, 4, 4)."""
    import numpy as np

    return (np.einsum("tj,thwj->thw", w2c[:, 2, :3], np.asarray(pointmaps, np.float64))
            + w2c[:, 2, 3][:, None, None])


def surface_z_at(tracks2d: np.ndarray, surface_z: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(N, T) depth of frame t's own surface (surface_z (T, H, W)) at the pixel nearest each track's
    (N, T, 2) position (clamped into the image; callers mask what is outside). Any per-frame map works
    (a static-pixel mask, a motion mask, ...): the result has its dtype."""
    import numpy as np

    col = np.clip(np.rint(np.nan_to_num(tracks2d[..., 0])).astype(int), 0, hw[1] - 1)
    row = np.clip(np.rint(np.nan_to_num(tracks2d[..., 1])).astype(int), 0, hw[0] - 1)
    t_idx = np.broadcast_to(np.arange(surface_z.shape[0])[None], col.shape)
    return surface_z[t_idx, row, col]


def zbuffer_visible(tracks2d: np.ndarray, z: np.ndarray, surface_z: np.ndarray, eps_rel: float,
                    hw: tuple[int, int]) -> np.ndarray:
    """(N, T) z-buffer test: the projection (N, T, 2) is inside frame t, in front of camera t, and not
    behind frame t's own surface (surface_z (T, H, W)) by more than `eps_rel` x its depth."""
    inside = in_image(tracks2d, hw) & (z > 0)
    return inside & (z <= surface_z_at(tracks2d, surface_z, hw) * (1.0 + eps_rel))


def sigma_from_confidence(conf: np.ndarray, depth: np.ndarray, scene_depth: float, focal: float,
                          conf_alpha: float, floor_px: float) -> np.ndarray:
    """Pixel sigma sqrt(floor^2 + (f * alpha * s / (c * z))^2) from a confidence c at depth z, scene
    depth s, as the robust TTA loss defines it (`st4r_cli.losses.tta.raw_sigma_px`, before calibration)."""
    import numpy as np

    raw = focal * conf_alpha * scene_depth / (np.clip(conf, 1e-6, None) * np.clip(depth, 1e-9, None))
    return np.sqrt(floor_px**2 + raw**2)
