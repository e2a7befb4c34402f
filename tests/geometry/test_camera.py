"""Camera helpers against exact synthetic cameras."""

import math

import pytest
import torch

from st4r_cli.geometry.camera import (estimate_focal_weiszfeld, in_image, intrinsics_from_pointmap,
                                      invert_pose, make_intrinsics, pixel_grid, principal_point_center,
                                      project, sample_bilinear, transform_points, unproject_depth)
from st4r_cli.geometry.lie import make_pose, rotation_angle, so3_exp, so3_log

HW = (48, 64)


def _depth(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 2.0 + torch.rand(HW, generator=gen, dtype=torch.float64) * 3.0


def test_pixel_grid_follows_opencv_convention():
    grid = pixel_grid((3, 4))
    assert grid.shape == (3, 4, 2)
    assert grid[2, 1].tolist() == [1.0, 2.0]  # row 2, column 1 -> x=1, y=2
    assert principal_point_center((3, 4)) == (1.5, 1.0)


def test_unproject_then_project_is_identity():
    k_mat = make_intrinsics(torch.tensor(55.0, dtype=torch.float64), HW)
    depth = _depth()
    pts = unproject_depth(depth, k_mat)
    xy, z = project(pts, k_mat)
    assert torch.allclose(xy, pixel_grid(HW, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(z, depth)


def test_project_batched_intrinsics():
    pts = torch.tensor([[[1.0, 2.0, 4.0]], [[1.0, 2.0, 4.0]]], dtype=torch.float64)
    k_mat = torch.stack([make_intrinsics(10.0, (5, 5)), make_intrinsics(20.0, (5, 5))]).double()
    xy, z = project(pts, k_mat)
    assert xy[0, 0].tolist() == [2.0 + 2.5, 2.0 + 5.0]
    assert xy[1, 0].tolist() == [2.0 + 5.0, 2.0 + 10.0]
    assert z.tolist() == [[4.0], [4.0]]


def test_invert_and_transform_poses():
    rot = so3_exp(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))
    pose = make_pose(rot, torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64))
    pts = torch.randn(10, 3, dtype=torch.float64)
    back = transform_points(invert_pose(pose), transform_points(pose, pts))
    assert torch.allclose(back, pts, atol=1e-12)
    assert torch.allclose(invert_pose(pose), torch.linalg.inv(pose), atol=1e-12)


def test_so3_exp_log_round_trip_and_small_angles():
    omegas = torch.tensor([[0.0, 0.0, 0.0], [1e-7, 0, 0], [0.1, 0.2, -0.3], [2.0, -1.0, 0.5],
                           [0.0, 0.0, math.pi - 1e-5]], dtype=torch.float64)
    rots = so3_exp(omegas)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(rots @ rots.transpose(-1, -2), eye.expand(5, 3, 3), atol=1e-12)
    assert torch.allclose(so3_log(rots), omegas, atol=1e-6)
    assert rotation_angle(rots[2], rots[2]).item() == pytest.approx(0.0, abs=1e-6)


def test_so3_exp_gradient_at_zero_is_skew_generator():
    omega = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    rot = so3_exp(omega)
    rot[2, 1].backward()  # d R_21 / d omega_x = 1 at identity
    assert omega.grad.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("focal", [40.0, 90.0])
def test_weiszfeld_focal_exact_and_robust(focal):
    k_mat = make_intrinsics(torch.tensor(focal, dtype=torch.float64), HW)
    pts = unproject_depth(_depth(1), k_mat)
    assert estimate_focal_weiszfeld(pts).item() == pytest.approx(focal, rel=1e-9)
    # 15% of the points are garbage: the L1 fit still lands within 1%.
    gen = torch.Generator().manual_seed(3)
    bad = torch.rand(HW, generator=gen) < 0.15
    noisy = pts.clone()
    noisy[bad] = noisy[bad] * torch.tensor([2.5, -1.7, 1.0], dtype=torch.float64)
    assert estimate_focal_weiszfeld(noisy).item() == pytest.approx(focal, rel=1e-2)
    k_est = intrinsics_from_pointmap(noisy)
    assert k_est[0, 2].item() == pytest.approx((HW[1] - 1) / 2)
    assert k_est[1, 2].item() == pytest.approx((HW[0] - 1) / 2)


def test_weiszfeld_is_scale_invariant_and_differentiable():
    k_mat = make_intrinsics(torch.tensor(60.0, dtype=torch.float64), HW)
    pts = unproject_depth(_depth(2), k_mat).requires_grad_(True)
    focal = estimate_focal_weiszfeld(pts * 7.0)
    assert focal.item() == pytest.approx(60.0, rel=1e-9)
    focal.backward()
    assert torch.isfinite(pts.grad).all() and pts.grad.abs().sum() > 0


def test_intrinsics_from_degenerate_pointmap_is_clamped():
    pts = torch.zeros(*HW, 3)
    pts[..., 2] = 1.0  # every pixel on the optical axis: focal would be 0
    k_est = intrinsics_from_pointmap(pts)
    base = max(HW) / (2 * math.tan(math.radians(30)))
    assert k_est[0, 0].item() == pytest.approx(0.2 * base, rel=1e-5)


def test_sample_bilinear_matches_hand_values():
    img = torch.arange(12, dtype=torch.float64).reshape(3, 4, 1)  # value = 4*y + x
    xy = torch.tensor([[0.0, 0.0], [1.5, 0.5], [3.0, 2.0], [2.25, 1.75], [10.0, -3.0]], dtype=torch.float64)
    out = sample_bilinear(img, xy)[:, 0]
    assert out.tolist() == pytest.approx([0.0, 3.5, 11.0, 9.25, 3.0])
    assert in_image(xy, (3, 4)).tolist() == [True, True, True, True, False]
