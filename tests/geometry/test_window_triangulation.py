"""Movers by windowed triangulation: a point moving along its epipolar lines is caught, static ones are not."""

from __future__ import annotations

import numpy as np

from st4r_cli.geometry.window_triangulation import WindowOptions, moving_by_windows, window_points

K = np.array([[200.0, 0, 127.5], [0, 200.0, 95.5], [0, 0, 1]])
T = 24


def cameras() -> np.ndarray:
    """(T, 4, 4) w2c of a camera sliding right and forward while turning a little (as a hand-held one)."""
    c2w = np.stack([np.eye(4) for _ in range(T)])
    s = np.linspace(0, 1, T)
    c2w[:, 0, 3] = 0.6 * s
    c2w[:, 2, 3] = 0.2 * np.sin(np.pi * s)
    angle = 0.15 * np.sin(2 * np.pi * s)
    c2w[:, 0, 0] = c2w[:, 2, 2] = np.cos(angle)
    c2w[:, 0, 2], c2w[:, 2, 0] = np.sin(angle), -np.sin(angle)
    return np.linalg.inv(c2w)


def project(points: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    """(N, T, 2) pixels of world points (N, T, 3) (a point per frame)."""
    cam = np.einsum("tij,ntj->nti", w2c[:, :3, :3], points) + w2c[:, :3, 3]
    return cam[..., :2] / cam[..., 2:] * K[0, 0] + K[:2, 2]


def test_static_points_triangulate_exactly_from_every_window():
    w2c = cameras()
    rng = np.random.default_rng(0)
    points = rng.uniform([-1, -1, 3], [1.5, 1, 6], (50, 3))
    xy = project(np.repeat(points[:, None], T, 1), w2c)
    found, count, widest = window_points(xy, np.ones((50, T), bool), w2c, K, 8, 16)
    assert np.allclose(found, points, atol=1e-6) and (count == 8).all() and (widest > 1).all()


def test_a_point_following_the_camera_is_moving_and_noisy_static_points_are_not():
    w2c = cameras()
    c2w = np.linalg.inv(w2c)
    rng = np.random.default_rng(1)
    static = np.repeat(rng.uniform([-1, -1, 3], [1.5, 1, 6], (300, 3))[:, None], T, 1)
    # a card held 2 m in front of the camera, drifting 10 cm: in the image it hardly moves, so every two
    # frames see it as a static point at some depth: the epipolar test cannot tell
    offsets = np.array([[-0.2, 0.1, 2.0], [0.0, 0.0, 2.0], [0.2, -0.1, 2.0]])
    drift = np.linspace(0, 0.1, T)[:, None] * np.array([1.0, 0, 0])
    follower = np.stack([np.einsum("tij,tj->ti", c2w[:, :3, :3], o + drift) + c2w[:, :3, 3] for o in offsets])
    xy = project(np.concatenate([static, follower]), w2c)
    xy += rng.normal(0, 0.5, xy.shape)                                           # tracker noise
    moving, score = moving_by_windows(xy, np.ones(xy.shape[:2], bool), w2c, K, WindowOptions(k_sigma=6.0))
    assert moving[300:].all()
    assert moving[:300].mean() <= 0.01
    assert np.nanmedian(score[:300]) < 3 < np.nanmin(score[300:])


def test_cameras_stage_reports_a_follower_as_moving():
    """compute_cameras on exact tracks of a hand-held camera's static scene plus a group held in front of it."""
    from st4r_cli.configs import CamerasConfig
    from st4r_cli.geometry.camera_np import in_image
    from st4r_cli.stages.cameras import compute_cameras

    hw = (192, 256)
    w2c = cameras()
    c2w = np.linalg.inv(w2c)
    rng = np.random.default_rng(2)
    static = np.repeat(rng.uniform([-2.5, -1.5, 4], [3.5, 1.5, 8], (400, 3))[:, None], T, 1)
    offsets = np.concatenate([rng.uniform([-0.3, -0.2], [0.3, 0.2], (40, 2)), np.full((40, 1), 2.0)], 1)
    drift = np.linspace(0, 0.1, T)[:, None] * np.array([1.0, 0, 0])
    follower = np.einsum("tij,ntj->nti", c2w[:, :3, :3], offsets[:, None] + drift) + c2w[:, :3, 3]
    xy = project(np.concatenate([static, follower]), w2c) + rng.normal(0, 0.3, (440, T, 2))
    xy[:, 0] = project(np.concatenate([static, follower]), w2c)[:, 0]           # exact queries
    visible = in_image(xy, hw) & np.cumprod(in_image(xy, hw), axis=1).astype(bool)
    keep = visible[:, 0]
    tracks = {"queries": np.concatenate([np.zeros((keep.sum(), 1)), xy[keep, 0]], 1), "tracks_xy": xy[keep],
              "visible": visible[keep]}
    is_follower = np.arange(440)[keep] >= 400
    out = compute_cameras(tracks, hw, T, CamerasConfig(ba_focal="fixed", window_k_sigma=6.0), focal=K[0, 0])
    assert bool(out["ba_accepted"]), out["camera_status"]
    moving = out["track_moving"]
    assert moving[is_follower].mean() >= 0.9 and moving[~is_follower].mean() <= 0.05
    assert not (out["track_bundle_fixed"] & moving).any()
    at_5 = out["moving_obs"][out["moving_obs"][:, 0] == 5, 1:]                 # the depth stage's motion cue
    gaps = np.linalg.norm(xy[keep][moving & is_follower, 5][:, None] - at_5[None], axis=-1).min(1)
    assert gaps.max() < 1e-3
    off = compute_cameras(tracks, hw, T, CamerasConfig(ba_focal="fixed"), focal=K[0, 0])
    assert not off["track_moving"].any()                       # off by default
