"""World-frame chaining (cameras stage without bundle adjustment, then the fuse stage) of exact synthetic
per-window predictions with random per-window Sim(3) gauges."""

from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from st4r_cli.errors import St4rError
from st4r_cli.formats.scene import validate_scene
from st4r_cli.configs import CamerasConfig, FuseConfig, PredictConfig, VisibilityConfig
from st4r_cli.geometry.camera_np import sample_bilinear
from st4r_cli.model.windows import window_frames, window_starts
from st4r_cli.stages.cameras import check_cameras_config, compute_cameras
from st4r_cli.stages.fuse import check_fuse_config, fuse_scene
from st4r_cli.stages.predict import check_predict_config

HW = (24, 32)
FOCAL = 28.0
K = np.array([[FOCAL, 0, (HW[1] - 1) / 2], [0, FOCAL, (HW[0] - 1) / 2], [0, 0, 1]])
NORMAL = np.array([0.1, -0.05, 1.0]) / np.linalg.norm([0.1, -0.05, 1.0])
PLANE_D = 5.0
VELOCITY = np.array([0.03, -0.01, 0.02])  # the whole surface moves: every track is dynamic


def _rot(omega):
    return Rotation.from_rotvec(omega).as_matrix()


def _c2w(t, speed=1.0):
    t = t * speed
    pose = np.eye(4)
    pose[:3, :3] = _rot(np.array([0.004, 0.008, -0.003]) * t)
    pose[:3, 3] = np.array([0.04, 0.01, 0.03]) * t
    return pose


def _frame_points(t, speed=1.0):
    """World points seen at each pixel of frame t (ray / moving-plane intersection), (H, W, 3)."""
    c2w = _c2w(t, speed)
    t = t * speed
    ys, xs = np.mgrid[0:HW[0], 0:HW[1]].astype(np.float64)
    rays_cam = np.stack([(xs - K[0, 2]) / FOCAL, (ys - K[1, 2]) / FOCAL, np.ones_like(xs)], -1)
    rays = rays_cam @ c2w[:3, :3].T
    centre = c2w[:3, 3]
    offset = PLANE_D + NORMAL @ VELOCITY * t
    lam = (offset - NORMAL @ centre) / (rays @ NORMAL)
    return centre + lam[..., None] * rays


def _apply(pose, pts):
    return pts @ pose[:3, :3].T + pose[:3, 3]


def _predictions(num_frames, window, overlap, seed=0, speed=1.0, head1_depth_scale=1.0):
    """Exact adapt-stage arrays, each window in its anchor camera under a random Sim(3) gauge
    (head 1's points pushed along the anchor's rays by `head1_depth_scale`)."""
    rng = np.random.default_rng(seed)
    starts = window_starts(num_frames, window, overlap)
    length = min(window, num_frames)
    total = len(starts) * length
    out = {"track_pts": np.zeros((total, *HW, 3), np.float32), "recon_pts": np.zeros((total, *HW, 3), np.float32),
           "track_conf": np.ones((total, *HW), np.float32), "recon_conf": np.ones((total, *HW), np.float32)}
    slots = np.full((len(starts), length), -1)
    for w, start in enumerate(starts):
        omega = rng.normal(size=3) * 0.3
        gauge_r, gauge_s, gauge_t = _rot(omega), float(rng.uniform(0.3, 3.0)), rng.normal(size=3)
        w2c_anchor = np.linalg.inv(_c2w(start, speed))
        anchor_pts = _frame_points(start, speed)
        for k, j in enumerate(window_frames(start, num_frames, window)):
            slots[w, k] = j
            head1 = _apply(w2c_anchor, anchor_pts + VELOCITY * (j - start) * speed) * head1_depth_scale
            head2 = _apply(w2c_anchor, _frame_points(j, speed))
            out["track_pts"][w * length + k] = gauge_s * head1 @ gauge_r.T + gauge_t
            out["recon_pts"][w * length + k] = gauge_s * head2 @ gauge_r.T + gauge_t
    out.update(window_start=np.asarray(starts), window_frames=slots, intrinsics=K.astype(np.float32))
    return out


def _gt_tracks(query_xy, num_frames):
    """World tracks of frame-0 query pixels (N, T, 3), their pixels (N, T, 2) and in-image flags."""
    pts0 = _frame_points(0)
    ys, xs = query_xy[:, 1].astype(int), query_xy[:, 0].astype(int)
    start = pts0[ys, xs]
    tracks3d = start[:, None, :] + VELOCITY[None, None, :] * np.arange(num_frames)[None, :, None]
    pix = np.zeros((len(start), num_frames, 2))
    for t in range(num_frames):
        cam = _apply(np.linalg.inv(_c2w(t)), tracks3d[:, t])
        pix[:, t] = (cam[:, :2] / cam[:, 2:3]) * FOCAL + K[:2, 2]
    inside = (pix[..., 0] >= 0) & (pix[..., 0] <= HW[1] - 1) & (pix[..., 1] >= 0) & (pix[..., 1] <= HW[0] - 1)
    return tracks3d, pix, inside


def chain_windows(pred, frames, tracks, config, cameras=CamerasConfig(refine="none")):
    """The cameras stage (not run by default: the network's cameras) then the fuse stage."""
    solved = compute_cameras(tracks, frames.shape[1:3], len(frames), cameras, focal=FOCAL)
    return fuse_scene(frames, tracks, pred, solved, config, cameras, VisibilityConfig())


def _frames(num_frames):
    return np.zeros((num_frames, *HW, 3), np.uint8) + np.arange(num_frames, dtype=np.uint8)[:, None, None, None]


def _check(scene, num_frames, query_xy):
    gt3d, gt2d, inside = _gt_tracks(query_xy, num_frames)
    scale = np.median(np.linalg.norm(gt3d, axis=-1)) / np.median(np.linalg.norm(scene["tracks3d"], axis=-1))
    assert np.abs(scene["tracks3d"] * scale - gt3d).max() < 1e-3 * np.abs(gt3d).max()
    # poses: rotations exact, centres up to the same global scale
    gt_c2w = np.stack([_c2w(t) for t in range(num_frames)])
    assert np.abs(scene["cam_c2w"][:, :3, :3] - gt_c2w[:, :3, :3]).max() < 1e-4
    assert np.abs(scene["cam_c2w"][:, :3, 3] * scale - gt_c2w[:, :3, 3]).max() < 1e-3
    assert np.abs(scene["cam_c2w"][0] - np.eye(4)).max() < 1e-5  # world = camera of frame 0
    # 2D tracks and visibility
    assert np.nanmax(np.abs(scene["tracks2d"] - gt2d)[inside]) < 1e-2
    agree = (scene["visible"] == inside).mean()
    assert agree > 0.99
    # pointmaps in the world frame
    pm = np.stack([_frame_points(t) for t in range(num_frames)])
    assert np.abs(scene["pointmaps"] * scale - pm).max() < 1e-3 * np.abs(pm).max()
    validate_scene(scene)


def test_chaining_recovers_the_global_trajectory_from_tracks():
    num_frames, window, overlap = 40, 16, 4
    pred = _predictions(num_frames, window, overlap)
    assert len(pred["window_start"]) == 3
    qx, qy = np.meshgrid(np.arange(10, 23, 3), np.arange(8, 17, 3))
    query_xy = np.stack([qx.ravel(), qy.ravel()], -1).astype(np.float64)
    _, gt2d, inside = _gt_tracks(query_xy, num_frames)
    tracks = {"tracks_xy": gt2d.astype(np.float32), "visible": inside,
              "queries": np.concatenate([np.zeros((len(query_xy), 1)), query_xy], 1).astype(np.float32),
              "confidence": np.ones(len(query_xy), np.float32)}
    scene = chain_windows(pred, _frames(num_frames), tracks, FuseConfig())
    _check(scene, num_frames, query_xy)
    assert (scene["track_source"] == 1).all()  # every position came from head 1
    assert scene["colors"][7, 0, 0, 0] == 7


def test_visibility_is_the_trackers_for_its_tracks_and_the_z_buffer_test_on_request():
    num_frames, window, overlap = 40, 16, 4
    pred = _predictions(num_frames, window, overlap)
    qx, qy = np.meshgrid(np.arange(10, 23, 3), np.arange(8, 17, 3))
    query_xy = np.stack([qx.ravel(), qy.ravel()], -1).astype(np.float64)
    _, gt2d, inside = _gt_tracks(query_xy, num_frames)
    flags = inside & (np.random.default_rng(0).random(inside.shape) > 0.2)  # the tracker also calls 20% occluded
    flags[:, 0] = True
    tracks = {"tracks_xy": gt2d.astype(np.float32), "visible": flags,
              "queries": np.concatenate([np.zeros((len(query_xy), 1)), query_xy], 1).astype(np.float32),
              "confidence": np.ones(len(query_xy), np.float32)}
    cfg = FuseConfig()
    assert cfg.visibility == "tracker"
    np.testing.assert_array_equal(chain_windows(pred, _frames(num_frames), tracks, cfg)["visible"], flags)
    by_mask = chain_windows(pred, _frames(num_frames), tracks, replace(cfg, visibility="mask"))["visible"]
    assert (by_mask == inside).mean() > 0.99                                # the geometry: nothing occludes
    both = chain_windows(pred, _frames(num_frames), tracks, replace(cfg, visibility="both"))["visible"]
    np.testing.assert_array_equal(both, by_mask & flags)


def test_grid_visibility_tolerance_is_calibrated_on_the_trackers_tracks():
    """Head 1 puts every point 20% farther than head 2's surface (the heads of a small network disagree):
    a fixed 5% z-buffer tolerance calls every grid query occluded; calibrated on the tracker's tracks,
    which it sees, the tolerance accepts them."""
    num_frames = 16
    pred = _predictions(num_frames, 16, 4, head1_depth_scale=1.2)
    qx, qy = np.meshgrid(np.arange(4, 28, 3), np.arange(4, 20, 3))
    query_xy = np.stack([qx.ravel(), qy.ravel()], -1).astype(np.float64)
    _, gt2d, inside = _gt_tracks(query_xy, num_frames)
    tracks = {"tracks_xy": gt2d.astype(np.float32), "visible": inside,
              "queries": np.concatenate([np.zeros((len(query_xy), 1)), query_xy], 1).astype(np.float32)}
    cfg = FuseConfig(queries="grid", grid_size=6)
    fixed = chain_windows(pred, _frames(num_frames), tracks, replace(cfg, visibility_quantile=0.0))
    assert fixed["visibility_eps_rel"] == np.float32(VisibilityConfig().mask_eps_rel) and fixed["visible"][:, 1:].mean() < 0.05
    calibrated = chain_windows(pred, _frames(num_frames), tracks, cfg)
    assert 0.15 < float(calibrated["visibility_eps_rel"]) < 0.3
    _, _, grid_inside = _gt_tracks(calibrated["query_xy"].astype(np.float64), num_frames)
    assert (calibrated["visible"] == grid_inside).mean() > 0.85


def test_chaining_carries_grid_queries_by_projection():
    num_frames, window, overlap = 40, 16, 4
    pred = _predictions(num_frames, window, overlap, seed=1)
    cfg = FuseConfig(queries="grid", grid_size=8)
    scene = chain_windows(pred, _frames(num_frames), None, cfg)
    query_xy = scene["query_xy"].astype(np.float64)
    # grid queries sit at the centres of an 8x8 grid of cells
    gt_pts0 = _frame_points(0)
    assert np.allclose(query_xy[0], [(0.5 * 32 / 8) - 0.5, (0.5 * 24 / 8) - 0.5])
    # compare only tracks that stay visible at every anchor (the others are filled by interpolation)
    gt3d = np.stack([_bilinear_np(gt_pts0, query_xy)[:, None, :] + VELOCITY * t for t in range(num_frames)], 1)[:, :, 0]
    carried = (scene["track_source"] == 1).all(1)
    assert carried.sum() >= 30
    scale = np.median(np.linalg.norm(gt3d[carried], axis=-1)) / np.median(np.linalg.norm(scene["tracks3d"][carried], axis=-1))
    assert np.abs(scene["tracks3d"][carried] * scale - gt3d[carried]).max() < 2e-3 * np.abs(gt3d).max()


def _bilinear_np(img, xy):
    return sample_bilinear(img, xy)


def test_150_frame_video_chains():
    num_frames = 150
    pred = _predictions(num_frames, 24, 4, seed=2, speed=0.25)
    assert len(pred["window_start"]) == 8
    scene = chain_windows(pred, _frames(num_frames), None, FuseConfig(queries="grid", grid_size=4, pnp_stride=6),
                          CamerasConfig(refine="none"))
    assert scene["tracks3d"].shape == (16, 150, 3) and np.isfinite(scene["tracks3d"]).all()
    gt_c2w = np.stack([_c2w(t, 0.25) for t in range(num_frames)])
    assert np.abs(scene["cam_c2w"][:, :3, :3] - gt_c2w[:, :3, :3]).max() < 1e-4
    scale = np.linalg.norm(gt_c2w[-1, :3, 3]) / np.linalg.norm(scene["cam_c2w"][-1, :3, 3])
    assert np.abs(scene["cam_c2w"][:, :3, 3] * scale - gt_c2w[:, :3, 3]).max() < 1e-3


def test_bad_window_cameras_and_fuse_configs():
    for check, bad in ((check_predict_config, PredictConfig(overlap=0)),
                       (check_predict_config, PredictConfig(window=4, overlap=4)),
                       (check_fuse_config, FuseConfig(queries="all")), (check_fuse_config, FuseConfig(visibility="maybe")),
                       (check_cameras_config, CamerasConfig(refine="colmap")),
                       (check_cameras_config, CamerasConfig(ba_chunk=1)),
                       (check_cameras_config, CamerasConfig(focal_init=-1.0))):
        with pytest.raises(St4rError):
            check(bad)
    pred = _predictions(10, 16, 4)
    with pytest.raises(St4rError):
        chain_windows(pred, _frames(10), None, FuseConfig(queries="tracks"))
