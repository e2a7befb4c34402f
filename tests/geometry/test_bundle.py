"""Bundle adjustment on exact synthetic tracks: Jacobians, recovery from perturbed cameras, outliers."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from st4r_cli.geometry.bundle import BundleOptions, _Problem, bundle_adjust
from st4r_cli.synthetic.point_tracks import travelling_camera_tracks

HW = (120, 160)
FOCAL = 140.0
PP = ((HW[1] - 1) / 2, (HW[0] - 1) / 2)




def _scene(num_frames=12, num_points=400, seed=0):
    """GT w2c (T,4,4), world points (P,3) in front of every camera, their query frames and tracks."""
    rng = np.random.default_rng(seed)
    w2c = np.tile(np.eye(4), (num_frames, 1, 1))
    for t in range(num_frames):
        c2w = np.eye(4)
        c2w[:3, :3] = Rotation.from_rotvec(np.array([0.01, 0.035, -0.005]) * t).as_matrix()
        c2w[:3, 3] = np.array([0.12, 0.02, 0.03]) * t
        w2c[t] = np.linalg.inv(c2w)
    query_t = rng.choice([0, num_frames // 3, 2 * num_frames // 3], size=num_points)
    # points on query rays at depth 3..8
    query_xy = rng.uniform([5, 5], [HW[1] - 6, HW[0] - 6], size=(num_points, 2))
    depth = rng.uniform(3.0, 8.0, size=num_points)
    ray = np.concatenate([(query_xy - PP) / FOCAL, np.ones((num_points, 1))], 1)
    cam = ray * depth[:, None]
    c2w_q = np.linalg.inv(w2c[query_t])
    world = np.einsum("nij,nj->ni", c2w_q[:, :3, :3], cam) + c2w_q[:, :3, 3]
    cam_all = np.einsum("tij,nj->nti", w2c[:, :3, :3], world) + w2c[None, :, :3, 3]
    xy = FOCAL * cam_all[..., :2] / cam_all[..., 2:3] + PP
    visible = ((cam_all[..., 2] > 0) & (xy[..., 0] >= 0) & (xy[..., 0] <= HW[1] - 1)
               & (xy[..., 1] >= 0) & (xy[..., 1] <= HW[0] - 1) & (np.arange(num_frames)[None] >= query_t[:, None]))
    return w2c, query_t, query_xy, 1.0 / depth, xy, visible


def _perturb(w2c, inv_depth, seed=1, rot_deg=2.0, trans=0.05, depth_noise=0.3):
    rng = np.random.default_rng(seed)
    out = w2c.copy()
    for t in range(1, len(w2c)):
        noise = np.eye(4)
        noise[:3, :3] = Rotation.from_rotvec(rng.normal(size=3) * np.radians(rot_deg)).as_matrix()
        noise[:3, 3] = rng.normal(size=3) * trans
        out[t] = noise @ w2c[t]
    return out, inv_depth * rng.uniform(1 - depth_noise, 1 + depth_noise, size=inv_depth.shape)


def _pose_errors(w2c, gt_w2c):
    """(max rotation error in degrees, max centre error after the best scale about frame 0)."""
    rot_err = max(np.degrees(np.arccos(np.clip((np.trace(a[:3, :3] @ b[:3, :3].T) - 1) / 2, -1, 1)))
                  for a, b in zip(w2c, gt_w2c))
    centres = np.linalg.inv(w2c)[:, :3, 3]
    gt_centres = np.linalg.inv(gt_w2c)[:, :3, 3]
    scale = (centres * gt_centres).sum() / (centres * centres).sum()
    return rot_err, np.abs(scale * centres - gt_centres).max()


def test_analytic_jacobian_matches_finite_differences():
    w2c, query_t, query_xy, inv_depth, xy, visible = _scene(num_frames=6, num_points=30)
    init_w2c, init_rho = _perturb(w2c, inv_depth)
    obs_n, obs_t = np.nonzero(visible & (np.arange(6)[None] != query_t[:, None]))
    prob = _Problem(torch.as_tensor(init_w2c), FOCAL * 1.05, PP, torch.as_tensor(query_t), torch.as_tensor(query_xy),
                    torch.as_tensor(init_rho), torch.as_tensor(obs_n), torch.as_tensor(obs_t),
                    torch.as_tensor(xy[obs_n, obs_t]), {0})
    _, jac = prob._linearise()
    from st4r_cli.geometry.lie import so3_exp

    eps = 1e-6
    base = prob.residuals()
    for m in (0, 7, len(obs_n) - 1):
        t, s, n = int(obs_t[m]), int(query_t[obs_n[m]]), int(obs_n[m])
        for k in range(14):
            probe = _Problem(prob.w2c, float(prob.focal), PP, prob.query_t, prob.query_xy, prob.rho, prob.obs_n,
                             prob.obs_t, prob.obs_xy, {0})
            if k < 12:
                frame = t if k < 6 else s
                xi = torch.zeros(6, dtype=torch.float64)
                xi[k % 6] = eps
                rot = so3_exp(xi[:3])
                probe.w2c = probe.w2c.clone()
                probe.w2c[frame, :3, :3] = rot @ prob.w2c[frame, :3, :3]
                probe.w2c[frame, :3, 3] = rot @ prob.w2c[frame, :3, 3] + xi[3:]
            elif k == 12:
                probe.rho = prob.rho.clone()
                probe.rho[n] += eps
            else:
                probe.focal = prob.focal + eps
            numeric = (probe.residuals()[m] - base[m]) / eps
            assert torch.allclose(numeric, jac[m, :, k], rtol=1e-3, atol=1e-3), (m, k)


def test_recovers_cameras_and_depths_from_perturbed_start():
    w2c, query_t, query_xy, inv_depth, xy, visible = _scene()
    init_w2c, init_rho = _perturb(w2c, inv_depth)
    before = _pose_errors(init_w2c, w2c)
    result = bundle_adjust(init_w2c, FOCAL, PP, query_t, query_xy, init_rho, xy, visible, chunk=4)
    rot_err, centre_err = _pose_errors(result.cam_w2c, w2c)
    assert before[0] > 1.0 and rot_err < 1e-3
    assert centre_err < 1e-4
    assert np.median(result.residual_px) < 1e-4 < np.median(result.initial_residual_px)
    # inverse depths of observed tracks exact up to the scale of the solution (median depth kept)
    observed = np.bincount(result.obs_track, minlength=len(inv_depth)) >= 2
    assert observed.mean() > 0.8
    ratio = result.inv_depth[observed] / inv_depth[observed]
    assert np.abs(ratio / np.median(ratio) - 1).max() < 1e-4
    assert np.median(1 / result.inv_depth) == pytest.approx(np.median(1 / init_rho), rel=1e-9)


def test_ignores_tracks_that_jump_to_random_pixels():
    w2c, query_t, query_xy, inv_depth, xy, visible = _scene(seed=3)
    rng = np.random.default_rng(5)
    bad = rng.random(len(xy)) < 0.15  # 15% of the tracks jump to random pixels after their query frame
    later = (np.arange(xy.shape[1])[None] > query_t[:, None]) & bad[:, None]
    xy = xy.copy()
    xy[later] = rng.uniform([0, 0], [HW[1] - 1, HW[0] - 1], size=xy.shape)[later]
    init_w2c, init_rho = _perturb(w2c, inv_depth, seed=4, rot_deg=1.0)
    result = bundle_adjust(init_w2c, FOCAL, PP, query_t, query_xy, init_rho, xy, visible, chunk=4)
    rot_err, centre_err = _pose_errors(result.cam_w2c, w2c)
    assert rot_err < 1e-3 and centre_err < 1e-4
    assert not bad[result.obs_track].any()  # the jumping tracks were all rejected


def test_refines_the_focal_despite_drifting_tracks():
    w2c, query_t, query_xy, inv_depth, xy, visible = _scene(seed=3)
    rng = np.random.default_rng(5)
    bad = rng.random(len(xy)) < 0.15  # 15% of the tracks drift away at ~2 px per frame
    drift = rng.normal(size=(len(xy), 2)) * 2.0
    frames_since = np.clip(np.arange(xy.shape[1])[None] - query_t[:, None], 0, None)
    xy = xy + bad[:, None, None] * drift[:, None, :] * frames_since[..., None]
    init_w2c, init_rho = _perturb(w2c, inv_depth, seed=4, rot_deg=1.0)
    result = bundle_adjust(init_w2c, FOCAL * 0.92, PP, query_t, query_xy, init_rho, xy, visible,
                           BundleOptions(refine_focal=True), chunk=4)
    assert result.focal == pytest.approx(FOCAL, rel=5e-3)   # from 8% off
    rot_err, centre_err = _pose_errors(result.cam_w2c, w2c)
    assert rot_err < 0.2 and centre_err < 0.01
    good = ~bad[result.obs_track]
    assert np.median(result.residual_px[good]) < 0.05


def test_a_point_behind_its_camera_does_not_count_as_fitting():
    """A point behind a camera still projects onto some pixel (mirrored through the camera centre it
    would land on its own): with camera 5 turned half a circle about its y axis, every point it sees
    is behind it, its residuals are reported as inf, and the solution turns it back."""
    w2c, query_t, query_xy, inv_depth, xy, visible = _scene()
    visible = visible & (query_t[:, None] == 0)           # one component: every track starts at frame 0
    turned = w2c.copy()
    turned[5] = np.diag([-1.0, 1.0, -1.0, 1.0]) @ w2c[5]  # x -> -x, z -> -z in camera 5
    result = bundle_adjust(turned, FOCAL, PP, query_t, query_xy, inv_depth, xy, visible, chunk=4)
    at_5 = result.obs_frame == 5
    initial = result.initial_residual_px
    assert at_5.any() and np.isinf(initial[at_5]).all() and np.isfinite(initial[~at_5]).all()
    assert np.isfinite(result.residual_px).all() and np.median(result.residual_px) < 1e-3
    rot_err, centre_err = _pose_errors(result.cam_w2c, w2c)
    assert rot_err < 1e-2 and centre_err < 1e-3


def test_sparse_schur_reduction_matches_the_dense_product():
    """The blockwise H_cp H_pp^-1 H_cp^T (and H_cp x, H_cp^T y) equal the dense products, across many
    reduction blocks (40 moving frames, blocks of 16) and with tracks spanning several blocks."""
    from st4r_cli.geometry import bundle

    w2c, query_t, query_xy, inv_depth, xy, visible = _scene(num_frames=41, num_points=300, seed=2)
    init_w2c, init_rho = _perturb(w2c, inv_depth)
    obs_n, obs_t = np.nonzero(visible & (np.arange(41)[None] != query_t[:, None]))
    prob = _Problem(torch.as_tensor(init_w2c), FOCAL, PP, torch.as_tensor(query_t), torch.as_tensor(query_xy),
                    torch.as_tensor(init_rho), torch.as_tensor(obs_n), torch.as_tensor(obs_t),
                    torch.as_tensor(xy[obs_n, obs_t]), {0})
    res, jac = prob._linearise()
    weights = 1.0 / (1.0 + (res.norm(dim=-1) / 2.0) ** 2)
    system = prob._normal_equations(res, jac, weights)
    # dense H_cp (C, N) and H_cc from the per-observation Jacobians
    size, num_pts = prob.num_cam, len(query_t)
    h_cp = torch.zeros(size, num_pts, dtype=torch.float64)
    h_cc = torch.zeros(size, size, dtype=torch.float64)
    for m in range(len(obs_n)):
        full = torch.zeros(2, size, dtype=torch.float64)
        for frame, cols in ((int(obs_t[m]), slice(0, 6)), (int(query_t[obs_n[m]]), slice(6, 12))):
            if prob.cam_col[frame] >= 0:
                full[:, prob.cam_col[frame]:prob.cam_col[frame] + 6] += jac[m, :, cols]
        full[:, -1] = jac[m, :, 13]
        h_cc += weights[m] * full.T @ full
        h_cp[:, obs_n[m]] += weights[m] * full.T @ jac[m, :, 12]
    assert torch.allclose(system.h_cc, h_cc, rtol=1e-9, atol=1e-6)
    inv_pp = 1.0 / (system.h_pp + 1e-12)
    dense = (h_cp * inv_pp) @ h_cp.T
    assert (41 - 1) > 2 * bundle.REDUCTION_BLOCK
    assert torch.allclose(system.reduction(inv_pp), dense, rtol=1e-9, atol=1e-6 * dense.abs().max())
    vec = torch.linspace(-1, 1, num_pts, dtype=torch.float64)
    assert torch.allclose(system.cp_times(vec), h_cp @ vec, rtol=1e-9, atol=1e-8)
    cam = torch.linspace(-1, 1, size, dtype=torch.float64)
    assert torch.allclose(system.pc_times(cam), h_cp.T @ cam, rtol=1e-9, atol=1e-8)
    # built in chunks of 100 observations (bounded memory), the system is the same
    whole = prob._linearised_system(2.0, with_focal=True)
    bundle.OBS_CHUNK, saved = 100, bundle.OBS_CHUNK
    try:
        chunked = prob._linearised_system(2.0, with_focal=True)
    finally:
        bundle.OBS_CHUNK = saved
    assert len(prob._chunks()) == 1 and len(obs_n) > 300
    for name in ("h_cc", "b_c", "h_pp", "b_p", "h_pf"):
        assert torch.allclose(getattr(chunked, name), getattr(whole, name), rtol=1e-10, atol=1e-8), name
    assert torch.allclose(chunked.reduction(inv_pp), whole.reduction(inv_pp), rtol=1e-9, atol=1e-6 * dense.abs().max())


def _long_scene():
    """A camera travelling 200 frames past a wide scene: local tracks seeded every 8 frames plus far
    points tracked the whole way (they tie the early cameras to the late ones), with pixel noise."""
    return travelling_camera_tracks(200, hw=HW, focal=FOCAL)


def _centre_errors(w2c, gt_w2c):
    """(T,) camera-centre errors after the best scale about frame 0."""
    centres = np.linalg.inv(w2c)[:, :3, 3]
    gt_centres = np.linalg.inv(gt_w2c)[:, :3, 3]
    scale = (centres * gt_centres).sum() / (centres * centres).sum()
    return np.linalg.norm(scale * centres - gt_centres, axis=1)


def test_global_solve_over_200_frames_refines_the_early_cameras():
    """200 frames, no cap: the final solve moves every camera against every track. Against the capped
    solve (the behaviour before: beyond 64 frames only the last 16 move, the others keep what their
    local solves gave them), the trajectory's drift is gone (mean centre error about halved) and the
    early cameras are no worse; the far points seen to the end tie them to the late ones."""
    w2c, query_t, query_xy, inv_depth, xy, visible = _long_scene()
    assert visible[-80:, -1].mean() > 0.5 and np.median(visible[:-80].sum(1)) < 60  # long + local tracks
    init_w2c, init_rho = _perturb(w2c, inv_depth, seed=7, rot_deg=0.5, trans=0.02, depth_noise=0.2)
    options = BundleOptions(refine_focal=False, reject_track_px=0.0)
    capped = bundle_adjust(init_w2c, FOCAL, PP, query_t, query_xy, init_rho, xy, visible,
                           BundleOptions(refine_focal=False, reject_track_px=0.0, global_max_frames=64))
    full = bundle_adjust(init_w2c, FOCAL, PP, query_t, query_xy, init_rho, xy, visible, options)
    err_capped = _centre_errors(capped.cam_w2c, w2c)
    err_full = _centre_errors(full.cam_w2c, w2c)
    travel = np.linalg.norm(np.linalg.inv(w2c)[-1, :3, 3])
    early = slice(1, 100)
    assert err_full.mean() < 0.75 * err_capped.mean()
    assert err_full[early].mean() <= err_capped[early].mean()
    assert err_full.max() < 0.001 * travel
    assert np.median(full.residual_px) < np.median(capped.residual_px)
