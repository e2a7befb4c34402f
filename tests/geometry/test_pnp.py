"""Weighted differentiable PnP against exact synthetic cameras."""

import pytest
import torch

from st4r_cli.geometry.camera import make_intrinsics, pixel_grid, transform_points, unproject_depth
from st4r_cli.geometry.lie import make_pose, rotation_angle, so3_exp
from st4r_cli.geometry.pnp import PnPOptions, reprojection_residuals, solve_pnp

HW = (24, 32)


def _scene(seed: int, rot_scale: float = 0.2, trans_scale: float = 0.5):
    """Pointmap of camera j's pixels expressed in the anchor frame (what head 2 predicts), exact."""
    gen = torch.Generator().manual_seed(seed)
    k_mat = make_intrinsics(torch.tensor(30.0, dtype=torch.float64), HW)
    depth = 2.0 + 3.0 * torch.rand(HW, generator=gen, dtype=torch.float64)
    pts_cam_j = unproject_depth(depth, k_mat).reshape(-1, 3)
    omega = (torch.rand(3, generator=gen, dtype=torch.float64) - 0.5) * 2 * rot_scale
    trans = (torch.rand(3, generator=gen, dtype=torch.float64) - 0.5) * 2 * trans_scale
    w2c = make_pose(so3_exp(omega), trans)  # anchor -> camera j
    c2w = torch.linalg.inv(w2c)
    pts_anchor = transform_points(c2w, pts_cam_j)
    pixels = pixel_grid(HW, dtype=torch.float64).reshape(-1, 2)
    return pts_anchor, pixels, k_mat, w2c


def _pose_errors(est, ref):
    return rotation_angle(est[:3, :3], ref[:3, :3]).item(), (est[:3, 3] - ref[:3, 3]).norm().item()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_free_recovers_pose(seed):
    pts, pix, k_mat, w2c = _scene(seed)
    est = solve_pnp(pts, pix, k_mat)
    rot_err, trans_err = _pose_errors(est, w2c)
    assert rot_err < 1e-5 and trans_err < 1e-5


def test_batched_and_without_ransac_from_identity():
    scenes = [_scene(s, rot_scale=0.1, trans_scale=0.2) for s in (4, 5)]
    pts = torch.stack([s[0] for s in scenes])
    pix = torch.stack([s[1] for s in scenes])
    est = solve_pnp(pts, pix, scenes[0][2], options=PnPOptions(ransac=False))
    for b, scene in enumerate(scenes):
        rot_err, trans_err = _pose_errors(est[b], scene[3])
        assert rot_err < 1e-5 and trans_err < 1e-5


def test_outliers_and_noise_stay_close():
    pts, pix, k_mat, w2c = _scene(7)
    gen = torch.Generator().manual_seed(11)
    noisy = pix + 0.3 * torch.randn(pix.shape, generator=gen, dtype=torch.float64)
    bad = torch.rand(pix.shape[0], generator=gen) < 0.25
    noisy[bad] = torch.rand(int(bad.sum()), 2, generator=gen, dtype=torch.float64) * torch.tensor(
        [HW[1], HW[0]], dtype=torch.float64)
    est = solve_pnp(pts, noisy, k_mat)
    rot_err, trans_err = _pose_errors(est, w2c)
    assert rot_err < 5e-3 and trans_err < 2e-2
    # A plain least-squares fit from the true pose is pulled much further by the same outliers.
    res, _ = reprojection_residuals(pts[None], noisy[None], k_mat, est[None])
    inlier_res = res[0][~bad].norm(dim=-1)
    assert inlier_res.median() < 0.5


def test_weights_switch_off_outliers():
    pts, pix, k_mat, w2c = _scene(8)
    corrupted = pix.clone()
    corrupted[:200] += 15.0
    weights = torch.ones(pix.shape[0], dtype=torch.float64)
    weights[:200] = 0.0
    est = solve_pnp(pts, corrupted, k_mat, weights=weights)
    rot_err, trans_err = _pose_errors(est, w2c)
    assert rot_err < 1e-6 and trans_err < 1e-6


def test_non_finite_points_are_ignored():
    pts, pix, k_mat, w2c = _scene(9)
    pts = pts.clone()
    pts[:10] = float("nan")
    est = solve_pnp(pts, pix, k_mat)
    assert _pose_errors(est, w2c)[1] < 1e-5


def test_gradient_matches_finite_differences():
    """d(pose)/d(points) through the differentiable GN step equals the finite-difference derivative
    of the converged solver (noise-free problem, so the Gauss-Newton implicit derivative is exact)."""
    pts, pix, k_mat, _ = _scene(3)
    sub = torch.arange(0, pts.shape[0], 7)
    pts, pix = pts[sub].clone(), pix[sub].clone()
    opts = PnPOptions(ransac=False, lm_iters=50, tol=0.0)

    def objective(points):
        pose = solve_pnp(points, pix, k_mat, options=opts)
        return (pose[:3, :4] * torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4)).sum()

    var = pts.clone().requires_grad_(True)
    objective(var).backward()
    analytic = var.grad
    eps = 1e-6
    for idx, axis in [(0, 0), (5, 2), (17, 1), (30, 0)]:
        plus, minus = pts.clone(), pts.clone()
        plus[idx, axis] += eps
        minus[idx, axis] -= eps
        numeric = (objective(plus) - objective(minus)) / (2 * eps)
        assert analytic[idx, axis].item() == pytest.approx(numeric.item(), rel=1e-4, abs=1e-8)


def test_gradient_reaches_pixels_weights_and_intrinsics():
    pts, pix, k_mat, _ = _scene(6)
    pix = pix + 0.2 * torch.randn(pix.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pts = pts.clone().requires_grad_(True)
    weights = torch.ones(pix.shape[0], dtype=torch.float64, requires_grad=True)
    k_var = k_mat.clone().requires_grad_(True)
    pose = solve_pnp(pts, pix, k_var, weights=weights)
    pose[:3, 3].sum().backward()
    for grad in (pts.grad, weights.grad, k_var.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_float32_pointmap_scale_is_irrelevant():
    pts, pix, k_mat, w2c = _scene(10)
    est = solve_pnp((pts * 0.01).float(), pix.float(), k_mat.float())
    rot_err, trans_err = _pose_errors(est.double(), w2c)
    assert rot_err < 1e-4
    assert (est[:3, 3].double() / 0.01 - w2c[:3, 3]).norm().item() < 1e-3
