"""TAPVid-3D, depth and camera metrics on hand-computed cases and controlled perturbations."""

import numpy as np
import pytest

from st4r_cli.geometry.align import apply_sim3_to_poses
from st4r_cli.metrics.camera import camera_metrics, rotation_angle_deg
from st4r_cli.metrics.depth import depth_metrics
from st4r_cli.metrics.tapvid3d import compute_tapvid3d_metrics, intrinsics_at_256, world_to_camera_tracks
from st4r_cli.synthetic.scene import axis_angle_to_matrix

# ---------------------------------------------------------------------------------------- TAPVid-3D
FXFY = np.array([100.0, 100.0, 128.0, 128.0])  # at 256 px: 1 px at depth z is z / 100


def test_tapvid3d_hand_computed():
    gt = np.zeros((1, 4, 3))
    gt[..., 2] = 1.0                                    # 1 px = 0.01 at every frame
    pred = gt.copy()
    pred[0, :, 0] = [0.0, 0.015, 0.05, 0.5]            # 0, 1.5, 5, 50 px
    vis = np.array([[True, True, True, False]])
    pred_vis = np.array([[True, True, False, True]])
    m = compute_tapvid3d_metrics(gt, vis, pred, pred_vis, FXFY, scaling="none")
    assert m["occlusion_accuracy"] == pytest.approx(2 / 4)
    assert m["pts_within_1"] == pytest.approx(1 / 3)
    assert m["pts_within_2"] == pytest.approx(2 / 3)
    assert m["pts_within_8"] == pytest.approx(3 / 3)
    # J_1: TP = 1 (frame 0); FP = frame 1 (too far), frame 3 (gt occluded) -> 1 / (3 + 2)
    assert m["jaccard_1"] == pytest.approx(1 / 5)
    # J_8: TP = frames 0, 1 (frame 2 predicted occluded); FP = frame 3 -> 2 / (3 + 1)
    assert m["jaccard_8"] == pytest.approx(2 / 4)
    assert m["average_pts_within_thresh"] == pytest.approx((1 / 3 + 2 / 3 + 2 / 3 + 1 + 1) / 5)


def test_tapvid3d_scalings_and_depth_adaptive_threshold():
    rng = np.random.default_rng(0)
    gt = rng.uniform([-1, -1, 1], [1, 1, 8], size=(30, 5, 3))
    vis = np.ones((30, 5), bool)
    for scaling in ("median", "mean", "per_trajectory"):
        m = compute_tapvid3d_metrics(gt, vis, 0.25 * gt, vis, FXFY, scaling=scaling, query_t=np.zeros(30))
        assert m["average_jaccard"] == pytest.approx(1.0) and m["occlusion_accuracy"] == 1.0
    assert compute_tapvid3d_metrics(gt, vis, 0.25 * gt, vis, FXFY, scaling="none")["average_jaccard"] < 0.1
    # the same lateral error counts as smaller at larger depth
    near = np.array([[[0.0, 0.0, 1.0]]])
    far = np.array([[[0.0, 0.0, 10.0]]])
    offset = np.array([0.03, 0.0, 0.0])
    one = np.ones((1, 1), bool)
    assert compute_tapvid3d_metrics(near, one, near + offset, one, FXFY, "none")["pts_within_4"] == 1.0
    assert compute_tapvid3d_metrics(near, one, near + offset, one, FXFY, "none")["pts_within_2"] == 0.0
    assert compute_tapvid3d_metrics(far, one, far + offset, one, FXFY, "none")["pts_within_1"] == 1.0
    np.testing.assert_allclose(intrinsics_at_256([512, 512, 256, 128], (256, 512)), [512, 512, 256, 128])
    np.testing.assert_allclose(intrinsics_at_256([600, 600, 320, 240], (480, 640)), [320, 320, 512 / 3, 128])


def test_world_to_camera_tracks():
    c2w = np.tile(np.eye(4), (2, 1, 1))
    c2w[1, :3, 3] = [1.0, 0.0, 0.0]
    world = np.array([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]])
    np.testing.assert_allclose(world_to_camera_tracks(world, c2w), [[[1, 2, 3], [0, 2, 3]]])


# -------------------------------------------------------------------------------------------- depth
def test_depth_hand_computed_and_alignments():
    gt = np.array([1.0, 2.0, 4.0, 0.0])
    pred = np.array([1.0, 2.0, 2.0, 5.0])     # the last pixel is invalid (gt = 0)
    m = depth_metrics(pred, gt, alignment="none")
    assert m["abs_rel"] == pytest.approx(1 / 6) and m["delta_1.25"] == pytest.approx(2 / 3)
    assert m["num_pixels"] == 3
    depth = np.random.default_rng(0).uniform(1, 5, size=(3, 4, 5))
    assert depth_metrics(depth / 7, depth, alignment="median")["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert depth_metrics(depth / 7, depth, alignment="none")["abs_rel"] == pytest.approx(6 / 7)
    affine = 0.5 * depth + 2.0
    assert depth_metrics(affine, depth, alignment="scale_shift")["abs_rel"] == pytest.approx(0.0, abs=1e-9)
    assert depth_metrics(affine, depth, alignment="median")["abs_rel"] > 0.05
    noisy = [depth_metrics(depth * np.exp(s * np.random.default_rng(1).normal(size=depth.shape)), depth)
             for s in (0.01, 0.1, 0.3)]
    assert noisy[0]["abs_rel"] < noisy[1]["abs_rel"] < noisy[2]["abs_rel"]
    assert noisy[0]["delta_1.25"] >= noisy[1]["delta_1.25"] > noisy[2]["delta_1.25"]
    valid = np.zeros(depth.shape, bool)
    assert np.isnan(depth_metrics(depth, depth, valid=valid)["abs_rel"])


# ------------------------------------------------------------------------------------------- camera
def _line_poses(num=4):
    poses = np.tile(np.eye(4), (num, 1, 1))
    poses[:, 0, 3] = np.arange(num, dtype=float)
    return poses


def test_camera_hand_computed_without_alignment():
    gt = _line_poses()
    pred = gt.copy()
    pred[2, 1, 3] = 0.1
    m = camera_metrics(pred, gt, align=False)
    assert m["ate"] == pytest.approx(np.sqrt(0.01 / 4))
    assert m["rpe_trans"] == pytest.approx(np.sqrt(0.02 / 3))
    assert m["rpe_rot"] == pytest.approx(0.0, abs=1e-9)
    turned = gt.copy()
    turned[3, :3, :3] = axis_angle_to_matrix(np.array([0.0, 0.0, 1.0]), np.array([np.deg2rad(10.0)]))[0]
    m = camera_metrics(turned, gt, align=False)
    assert m["rpe_rot"] == pytest.approx(np.sqrt(100.0 / 3)) and m["rpe_trans"] == pytest.approx(0.0, abs=1e-12)
    assert m["ate"] == 0.0


def test_camera_similarity_is_aligned_away_and_noise_is_not():
    rng = np.random.default_rng(0)
    gt = np.tile(np.eye(4), (10, 1, 1))
    for i in range(10):
        gt[i, :3, :3] = axis_angle_to_matrix(rng.normal(size=3), np.array([0.1 * i]))[0]
        gt[i, :3, 3] = [0.3 * i, 0.05 * i ** 1.5, np.sin(i)]
    rotation = axis_angle_to_matrix(np.array([1.0, 0.0, 1.0]), np.array([1.0]))[0]
    pred = apply_sim3_to_poses(gt, 3.0, rotation, np.array([2.0, 2.0, 2.0]))
    m = camera_metrics(pred, gt)
    assert m["ate"] == pytest.approx(0.0, abs=1e-9) and m["rpe_rot"] == pytest.approx(0.0, abs=1e-6)
    assert m["align_scale"] == pytest.approx(1 / 3)
    noisy = pred.copy()
    noisy[:, :3, 3] += rng.normal(scale=0.3, size=(10, 3))
    assert camera_metrics(noisy, gt)["ate"] > 0.01
    assert camera_metrics(noisy, gt)["rpe_trans"] > 0.01
    np.testing.assert_allclose(rotation_angle_deg(np.stack([np.eye(3), rotation])), [0.0, np.degrees(1.0)])
