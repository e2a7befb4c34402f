"""Two-view triangulation of dense correspondences along the reference rays (NumPy).

For a pixel `x_i` of frame i matched to `x_j` in frame j, with intrinsics `K` and the relative pose
`T_ji = w2c_j @ c2w_i` (frame-i camera coordinates -> frame-j camera coordinates):

- the 3D point is constrained to frame i's ray, `X_i(z) = z K^-1 [x_i, 1]` (z = depth in frame i);
- its projection into j, `u(z) = (z a + b)_{xy} / (z a + b)_z` with `a = K R K^-1 [x_i, 1]`, `b = K t`,
  must equal `x_j`; crossing out the denominator gives two linear equations `A_k z = B_k` (k = x, y),
  solved in the least-squares sense: `z = (A_x B_x + A_y B_y) / (A_x^2 + A_y^2)`.
- `parallax_deg`: the angle at the point between the rays from both camera centres (depth from small
  parallax is unreliable);
- `epipolar_px`: distance of `x_j` to the epipolar line of `x_i` in frame j (0 for a static point and exact
  cameras; a moving point leaves its epipolar line).
"""

from __future__ import annotations

import numpy as np

from st4r_cli.geometry.camera_np import pixel_rays


def triangulate_on_rays(xy_i: np.ndarray, xy_j: np.ndarray, intrinsics: np.ndarray,
                        cam_i_to_j: np.ndarray) -> dict[str, np.ndarray]:
    """Depth in frame i of correspondences `xy_i -> xy_j` (both `(..., 2)` pixels).

    Args:
        xy_i, xy_j: matched pixels in frames i and j.
        intrinsics: `(3, 3)` shared by both frames.
        cam_i_to_j: `(4, 4)` rigid transform from frame-i camera coordinates to frame-j's.
    Returns:
        `depth (...)` z-depth in frame i (NaN where undetermined), `depth_j (...)` the point's z in frame j,
        `parallax_deg (...)`, `epipolar_px (...)`.
    """
    k = np.asarray(intrinsics, dtype=np.float64)
    rot, trans = cam_i_to_j[:3, :3].astype(np.float64), cam_i_to_j[:3, 3].astype(np.float64)
    rays = pixel_rays(np.asarray(xy_i, np.float64), k)          # (..., 3), z = 1
    a = rays @ (k @ rot).T
    b = k @ trans
    u, v = np.asarray(xy_j[..., 0], np.float64), np.asarray(xy_j[..., 1], np.float64)
    a_x, b_x = u * a[..., 2] - a[..., 0], b[0] - u * b[2]
    a_y, b_y = v * a[..., 2] - a[..., 1], b[1] - v * b[2]
    denom = a_x**2 + a_y**2
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(denom > 1e-18, (a_x * b_x + a_y * b_y) / denom, np.nan)
        point_i = depth[..., None] * rays
        point_j = point_i @ rot.T + trans
        centre_j_in_i = -rot.T @ trans
        to_i = point_i / np.linalg.norm(point_i, axis=-1, keepdims=True)
        to_j = point_i - centre_j_in_i
        to_j = to_j / np.linalg.norm(to_j, axis=-1, keepdims=True)
        parallax = np.degrees(np.arccos(np.clip((to_i * to_j).sum(-1), -1.0, 1.0)))
    return {"depth": depth, "depth_j": point_j[..., 2], "parallax_deg": parallax,
            "epipolar_px": epipolar_distance(xy_i, xy_j, k, cam_i_to_j)}


def fundamental_matrix(intrinsics: np.ndarray, cam_i_to_j: np.ndarray) -> np.ndarray:
    """`F (3, 3)` with `[x_j, 1] F [x_i, 1]^T = 0` for a static point seen by both cameras."""
    k = np.asarray(intrinsics, dtype=np.float64)
    rot, trans = cam_i_to_j[:3, :3].astype(np.float64), cam_i_to_j[:3, 3].astype(np.float64)
    skew = np.array([[0.0, -trans[2], trans[1]], [trans[2], 0.0, -trans[0]], [-trans[1], trans[0], 0.0]])
    k_inv = np.linalg.inv(k)
    return k_inv.T @ skew @ rot @ k_inv


def epipolar_distance(xy_i: np.ndarray, xy_j: np.ndarray, intrinsics: np.ndarray,
                      cam_i_to_j: np.ndarray) -> np.ndarray:
    """Pixel distance `(...)` of `xy_j` to the epipolar line of `xy_i` (NaN when the baseline is zero)."""
    fmat = fundamental_matrix(intrinsics, cam_i_to_j)
    hom_i = np.concatenate([np.asarray(xy_i, np.float64), np.ones(np.shape(xy_i)[:-1] + (1,))], axis=-1)
    hom_j = np.concatenate([np.asarray(xy_j, np.float64), np.ones(np.shape(xy_j)[:-1] + (1,))], axis=-1)
    lines = hom_i @ fmat.T                                      # (..., 3) lines in frame j
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.hypot(lines[..., 0], lines[..., 1])
        return np.where(norm > 1e-18, np.abs((lines * hom_j).sum(-1)) / norm, np.nan)
