"""Umeyama / scale alignment recovers known transforms exactly."""

import numpy as np
import pytest

from st4r_cli.geometry.align import (apply_sim3, apply_sim3_to_poses, median_depth_scale, median_norm_scale,
                                     per_track_median_norm_scale, scale_and_shift, umeyama)
from st4r_cli.synthetic.scene import axis_angle_to_matrix


def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(50, 3))
    rotation = axis_angle_to_matrix(np.array([1.0, 2.0, 0.5]), np.array([0.7]))[0]
    gt = apply_sim3(pred, 2.5, rotation, np.array([1.0, -2.0, 3.0]))
    scale, r, t = umeyama(pred, gt)
    assert scale == pytest.approx(2.5)
    np.testing.assert_allclose(r, rotation, atol=1e-10)
    np.testing.assert_allclose(t, [1.0, -2.0, 3.0], atol=1e-10)
    s1, r1, _ = umeyama(pred, gt, with_scale=False)
    assert s1 == 1.0 and np.linalg.det(r1) == pytest.approx(1.0)


def test_umeyama_weights_and_reflection():
    rng = np.random.default_rng(1)
    pred = rng.normal(size=(20, 3))
    gt = pred + np.array([0.0, 0.0, 1.0])
    gt_bad = gt.copy()
    gt_bad[0] += 100.0
    weights = np.ones(20)
    weights[0] = 0.0
    scale, rotation, translation = umeyama(pred, gt_bad, weights=weights)
    np.testing.assert_allclose(apply_sim3(pred[1:], scale, rotation, translation), gt[1:], atol=1e-9)
    mirrored = pred * np.array([-1.0, 1.0, 1.0])
    _, rotation, _ = umeyama(pred, mirrored)
    assert np.linalg.det(rotation) == pytest.approx(1.0)  # best proper rotation, never a reflection
    with pytest.raises(ValueError):
        umeyama(pred[:2], gt[:2])


def test_scales():
    gt = np.array([[[0.0, 0.0, 1.0], [0.0, 0.0, 2.0]], [[0.0, 0.0, 3.0], [0.0, 0.0, 4.0]]])
    assert median_norm_scale(gt / 4.0, gt) == pytest.approx(4.0)
    per_track = gt * np.array([2.0, 0.5])[:, None, None]
    np.testing.assert_allclose(per_track_median_norm_scale(per_track, gt), [0.5, 2.0])
    depth = np.array([1.0, 2.0, 4.0])
    assert median_depth_scale(depth / 3, depth, np.ones(3, bool)) == pytest.approx(3.0)
    a, b = scale_and_shift(depth, 2.0 * depth + 1.0, np.ones(3, bool))
    assert (a, b) == (pytest.approx(2.0), pytest.approx(1.0))


def test_pose_alignment_keeps_poses_rigid():
    poses = np.tile(np.eye(4), (3, 1, 1))
    poses[:, :3, 3] = [[0, 0, 0], [1, 0, 0], [2, 0, 0]]
    rotation = axis_angle_to_matrix(np.array([0.0, 0.0, 1.0]), np.array([np.pi / 2]))[0]
    out = apply_sim3_to_poses(poses, 2.0, rotation, np.array([0.0, 0.0, 5.0]))
    np.testing.assert_allclose(out[2, :3, 3], [0.0, 4.0, 5.0], atol=1e-12)
    np.testing.assert_allclose(out[1, :3, :3], rotation, atol=1e-12)
