"""Exact 2D tracks of random 3D points seen by a travelling camera (no rendering): bundle-adjustment
problems with known cameras, for tests and solver benchmarks."""

from __future__ import annotations

import numpy as np


def travelling_camera_tracks(num_frames: int, per_seed: int = 60, far: int = 80, seed: int = 0,
                             noise_px: float = 0.3, hw: tuple[int, int] = (120, 160), focal: float = 140.0
                             ) -> tuple[np.ndarray, ...]:
    """A camera travelling past a wide scene (0.05 units and 0.03 deg of roll per frame): `per_seed` local
    points at depth 2-6 seeded every 8 frames, plus `far` points at depth 40-80 seeded in frame 0 (they
    stay in view and tie the early cameras to the late ones). A track is lost for good once it leaves the
    image; its positions carry `noise_px` of Gaussian noise except at its query frame (the query itself).

    Returns gt w2c (T, 4, 4), query_t (N,) int, query_xy (N, 2), inv_depth (N,) in the query camera,
    tracks_xy (N, T, 2) and visible (N, T) bool (True at the query frame), principal point at the centre.
    """
    from scipy.spatial.transform import Rotation

    from st4r_cli.geometry.camera_np import in_image

    height, width = hw
    principal = np.array([(width - 1) / 2, (height - 1) / 2])
    rng = np.random.default_rng(seed)
    w2c = np.tile(np.eye(4), (num_frames, 1, 1))
    for t in range(num_frames):
        c2w = np.eye(4)
        c2w[:3, :3] = Rotation.from_rotvec(np.array([0.0, 0.0, 0.0005]) * t).as_matrix()
        c2w[:3, 3] = np.array([0.05, 0.0, 0.01]) * t
        w2c[t] = np.linalg.inv(c2w)
    query_t = np.concatenate([np.full(per_seed, s) for s in range(0, num_frames - 1, 8)] + [np.zeros(far, int)])
    count = len(query_t)
    query_xy = rng.uniform([5, 5], [width - 6, height - 6], size=(count, 2))
    depth = np.concatenate([rng.uniform(2.0, 6.0, count - far), rng.uniform(40.0, 80.0, far)])
    ray = np.concatenate([(query_xy - principal) / focal, np.ones((count, 1))], 1)
    c2w_q = np.linalg.inv(w2c[query_t])
    world = np.einsum("nij,nj->ni", c2w_q[:, :3, :3], ray * depth[:, None]) + c2w_q[:, :3, 3]
    cam = np.einsum("tij,nj->nti", w2c[:, :3, :3], world) + w2c[None, :, :3, 3]
    xy = focal * cam[..., :2] / cam[..., 2:3] + principal
    after = np.arange(num_frames)[None] >= query_t[:, None]
    inside = (cam[..., 2] > 0) & in_image(xy, hw)
    visible = np.cumprod(inside | ~after, axis=1).astype(bool) & inside & after
    noisy = xy + rng.normal(size=xy.shape) * noise_px
    rows = np.arange(count)
    noisy[rows, query_t] = xy[rows, query_t]
    return w2c, query_t, xy[rows, query_t], 1.0 / depth, noisy, visible
