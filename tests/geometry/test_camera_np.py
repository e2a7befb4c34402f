"""The NumPy camera helpers agree with their torch twins (st4r_cli.geometry.camera) and with hand values."""

import numpy as np
import pytest
import torch

from st4r_cli.geometry import camera as cam_t
from st4r_cli.geometry import camera_np as cam_np

K = np.array([[120.0, 0.0, 31.5], [0.0, 110.0, 23.5], [0.0, 0.0, 1.0]])
HW = (48, 64)


def _points(count: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(count, 3))
    pts[:, 2] = rng.uniform(0.5, 6.0, count)
    return pts


def test_project_matches_torch_in_front_of_the_camera_and_is_nan_behind():
    pts = _points()
    xy, z = cam_np.project(pts, K)
    xy_t, z_t = cam_t.project(torch.as_tensor(pts), torch.as_tensor(K))
    np.testing.assert_allclose(xy, xy_t.numpy(), rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(z, z_t.numpy())
    behind = np.array([[0.1, 0.2, -1.0], [0.0, 0.0, 0.0]])
    xy_b, z_b = cam_np.project(behind, K)
    assert np.isnan(xy_b).all() and z_b.tolist() == [-1.0, 0.0]
    # hand value: (1, 2, 4) -> (120 / 4 + 31.5, 110 * 2 / 4 + 23.5)
    np.testing.assert_allclose(cam_np.project(np.array([1.0, 2.0, 4.0]), K)[0], [61.5, 78.5])


def test_project_tracks_and_static_points_use_each_frames_camera():
    rng = np.random.default_rng(1)
    w2c = np.tile(np.eye(4), (3, 1, 1))
    w2c[:, :3, 3] = rng.normal(size=(3, 3)) * 0.1
    tracks = np.stack([_points(5, 2)] * 3, 1)                                   # (5, 3, 3), static
    xy, z = cam_np.project_tracks(tracks, w2c, K)
    xy_s, z_s = cam_np.project_static(tracks[:, 0], w2c, K)
    np.testing.assert_allclose(xy, xy_s)
    for t in range(3):
        ref, ref_z = cam_np.project_world(tracks[:, t], w2c[t], K)
        np.testing.assert_allclose(xy[:, t], ref, rtol=1e-12)
        np.testing.assert_allclose(z[:, t], ref_z)
        world_t = cam_t.transform_points(torch.as_tensor(w2c[t]), torch.as_tensor(tracks[:, t]))
        np.testing.assert_allclose(cam_np.to_camera(tracks[:, t], w2c[t]), world_t.numpy(), rtol=1e-12)


def test_unproject_inverts_project_and_matches_torch():
    depth = np.random.default_rng(3).uniform(1.0, 5.0, HW)
    pts = cam_np.unproject_depth(depth, K)
    np.testing.assert_allclose(pts, cam_t.unproject_depth(torch.as_tensor(depth), torch.as_tensor(K)).numpy(),
                               rtol=1e-12)
    xy, z = cam_np.project(pts, K)
    np.testing.assert_allclose(xy, cam_np.pixel_grid(HW), atol=1e-9)
    np.testing.assert_allclose(z, depth)
    np.testing.assert_array_equal(cam_np.pixel_grid(HW), cam_t.pixel_grid(HW, dtype=torch.float64).numpy())
    np.testing.assert_allclose(cam_np.pixel_rays(np.array([[31.5, 23.5]]), K), [[0.0, 0.0, 1.0]])


def test_bilinear_sampling_and_in_image_match_torch():
    rng = np.random.default_rng(4)
    image = rng.normal(size=(*HW, 3))
    xy = rng.uniform(-3, 70, size=(300, 2))
    ref = cam_t.sample_bilinear(torch.as_tensor(image), torch.as_tensor(xy)).numpy()
    np.testing.assert_allclose(cam_np.sample_bilinear(image, xy), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cam_np.sample_bilinear(image[..., 0], xy), ref[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cam_np.sample_bilinear(image, np.array([[2.0, 3.0]])), image[3:4, 2])
    inside_t = cam_t.in_image(torch.as_tensor(xy), HW).numpy()
    np.testing.assert_array_equal(cam_np.in_image(xy, HW), inside_t)
    assert not cam_np.in_image(np.array([[np.nan, 1.0]]), HW)[0]                 # NaN pixels are outside


def test_zbuffer_test_by_hand():
    surface = np.full((2, *HW), 2.0)                                             # a wall at z = 2 in both frames
    xy = np.array([[[10.0, 10.0], [10.0, 10.0]], [[10.0, 10.0], [-1.0, 5.0]], [[np.nan, np.nan], [3.0, 3.0]]])
    z = np.array([[2.09, 2.11], [1.0, 1.0], [1.0, -1.0]])
    visible = cam_np.zbuffer_visible(xy, z, surface, 0.05, HW)
    # 2.09 <= 2 * 1.05 visible, 2.11 behind the wall; in front; outside; NaN; behind the camera
    assert visible.tolist() == [[True, False], [True, False], [False, False]]


def test_sigma_from_confidence_is_the_robust_losses_sigma():
    from st4r_cli.losses.tta import raw_sigma_px

    rng = np.random.default_rng(5)
    conf = rng.uniform(1.0, 5.0, size=(1, 31))            # odd: torch and NumPy medians agree
    z = rng.uniform(1.0, 4.0, size=(1, 31))
    raw = raw_sigma_px(torch.as_tensor(conf), torch.as_tensor(z), torch.as_tensor(K), conf_alpha=0.2).numpy()
    sigma = cam_np.sigma_from_confidence(conf, z, float(np.median(z)), K[0, 0], conf_alpha=0.2, floor_px=1.5)
    np.testing.assert_allclose(sigma, np.sqrt(1.5**2 + raw**2), rtol=1e-12)
    # hand value: f 120, alpha 0.2, s 2, c 4, z 3 -> 4 px raw, sqrt(1 + 16) with a 1 px floor
    assert cam_np.sigma_from_confidence(np.array([4.0]), np.array([3.0]), 2.0, 120.0, 0.2, 1.0)[0] == \
        pytest.approx(np.sqrt(17.0))
