"""adapt.tta_cameras=solved: the cameras stage's cameras in the TTA's reprojection loss, put into the
network's units by the median depth ratio at the anchor (`stages.adapt.solved_poses`)."""

import numpy as np
import pytest
import torch

from st4r_cli.configs import PredictConfig, VisibilityConfig
from st4r_cli.errors import St4rError
from st4r_cli.geometry.camera_np import project, to_camera
from st4r_cli.stages.adapt import (AdaptConfig, adapt_model, check_adapt_config, relative_w2c, solved_cameras,
                                   solved_poses)
from st4r_cli.synthetic import render_clip

SOLVER_UNITS = 0.37     # solver units per metre of the synthetic world (the bundle's median depth 1 is arbitrary)
NETWORK_UNITS = 2.5     # network units per metre


@pytest.fixture(scope="module")
def clip():
    return render_clip("fast-motion", 0, 6, (48, 64))


def _cameras(clip, accepted: bool = True, bundle_points: np.ndarray | None = None) -> dict:
    """The cameras stage's arrays for the exact cameras, in solver units (world = camera 0)."""
    cam_w2c = np.linalg.inv(clip.cam_c2w.astype(np.float64))
    cam_w2c[:, :3, 3] *= SOLVER_UNITS
    points = np.zeros((0, 3)) if bundle_points is None else bundle_points * SOLVER_UNITS
    return {"ba_accepted": np.bool_(accepted), "camera_status": np.str_("solved" if accepted else "rejected: test"),
            "cam_w2c": cam_w2c, "intrinsics": clip.intrinsics.astype(np.float64),
            "track_bundle_points": points, "track_bundle_depth": np.ones(len(points)),
            "track_bundle_fixed": np.ones(len(points), bool)}


def _multiview(clip) -> dict:
    """The multi-view depth stage's arrays: exact depth in solver units, moving pixels flagged."""
    return {"depth": clip.depth * SOLVER_UNITS, "valid": clip.valid & ~clip.dynamic_mask,
            "dynamic": clip.dynamic_mask, "intrinsics": clip.intrinsics}


def _network_anchor_points(clip, anchor: int) -> torch.Tensor:
    """Head 1 of the pair (a, a) as an exact network would give it: frame a's points in camera a, in
    network units (H, W, 3)."""
    w2c = np.linalg.inv(clip.cam_c2w[anchor].astype(np.float64))
    return torch.as_tensor(to_camera(clip.points_world[anchor].astype(np.float64), w2c) * NETWORK_UNITS,
                           dtype=torch.float32)


def _true_relative(clip, anchor: int, targets: list[int]) -> np.ndarray:
    w2c = np.linalg.inv(clip.cam_c2w.astype(np.float64))
    rel = w2c[targets] @ np.linalg.inv(w2c[anchor])[None]
    rel[:, :3, 3] *= NETWORK_UNITS
    return rel


def _static_reprojection_px(clip, anchor: int, targets: list[int], w2c: np.ndarray) -> np.ndarray:
    """(P, M) pixel distance between frame a's static points (network units) projected with w2c and
    their exact projections into every frame j."""
    static = clip.valid[anchor] & ~clip.dynamic_mask[anchor]
    pts_a = _network_anchor_points(clip, anchor).numpy().astype(np.float64)[static]
    world = clip.points_world[anchor][static].astype(np.float64)
    out = []
    for p, j in enumerate(targets):
        xy, _ = project(to_camera(pts_a, w2c[p]), clip.intrinsics.astype(np.float64))
        truth, _ = project(to_camera(world, np.linalg.inv(clip.cam_c2w[j].astype(np.float64))),
                           clip.intrinsics.astype(np.float64))
        out.append(np.linalg.norm(xy - truth, axis=-1))
    return np.stack(out)


@pytest.mark.parametrize("reference", ["multiview depth", "bundle points"])
def test_solved_cameras_in_network_units_reproject_exactly(clip, reference):
    anchor, targets = 2, [2, 0, 3, 5]
    static = clip.valid[anchor] & ~clip.dynamic_mask[anchor]
    if reference == "multiview depth":
        cameras, depth, tracks = _cameras(clip), _multiview(clip), None
    else:   # no multi-view depth: the bundle's static points seen at the anchor
        points = clip.points_world[anchor][static][::7].astype(np.float64)
        cameras, depth = _cameras(clip, bundle_points=points), None
        tracks = {"visible": np.ones((len(points), clip.num_frames), bool)}
    solved, why = solved_cameras(cameras, depth, tracks, [anchor], clip.size_hw)
    assert why == "" and solved.source[anchor] == reference
    w2c = solved_poses(solved, anchor, targets, _network_anchor_points(clip, anchor))
    assert w2c.shape == (4, 4, 4) and not w2c.requires_grad
    w2c = w2c.double().numpy()
    truth = _true_relative(clip, anchor, targets)
    np.testing.assert_allclose(w2c[:, :3, :3], truth[:, :3, :3], atol=1e-6)
    np.testing.assert_allclose(w2c[:, :3, 3], truth[:, :3, 3], atol=1e-4 * NETWORK_UNITS)
    assert np.linalg.norm(truth[1:, :3, 3], axis=-1).min() > 0.1 * NETWORK_UNITS   # the camera does move
    assert _static_reprojection_px(clip, anchor, targets, w2c).max() < 0.02
    # the same cameras left in the solver's units, or with a scale 20% off, miss by pixels
    unscaled = relative_w2c(solved.cam_w2c, anchor, targets)
    assert np.median(_static_reprojection_px(clip, anchor, targets, unscaled)[1:]) > 5.0
    off = relative_w2c(solved.cam_w2c, anchor, targets, 0.8 * NETWORK_UNITS / SOLVER_UNITS)
    assert np.median(_static_reprojection_px(clip, anchor, targets, off)[1:]) > 1.0


def test_no_solved_depth_at_the_anchor_gives_no_cameras(clip):
    solved, _ = solved_cameras(_cameras(clip), None, None, [2], clip.size_hw)   # no depth, no bundle points
    assert solved.source[2] == "none"
    assert solved_poses(solved, 2, [2, 3], _network_anchor_points(clip, 2)) is None


def test_unaccepted_or_missing_cameras_fall_back(clip):
    solved, why = solved_cameras(_cameras(clip, accepted=False), _multiview(clip), None, [0], clip.size_hw)
    assert solved is None and "did not solve the cameras (rejected: test)" in why
    solved, why = solved_cameras(None, None, None, [0], clip.size_hw)
    assert solved is None and why


def test_bad_tta_cameras_is_a_one_line_user_error():
    with pytest.raises(St4rError, match=r"^adapt.tta_cameras must be pnp or solved, got 'truth'$"):
        check_adapt_config(AdaptConfig(tta_cameras="truth"))
    check_adapt_config(AdaptConfig(tta_cameras="solved"))


def _plane_cameras(num_frames: int, accepted: bool, with_depth: bool) -> tuple[dict, dict | None]:
    """The plane clip's exact cameras (conftest: plane at depth 2, focal 40, camera moving right
    2 * 2 / 40 per frame) in solver units (plane depth 1), and its multi-view depth."""
    hw, focal, depth_m, shift_px = (32, 48), 40.0, 2.0, 2.0    # conftest's plane_clip / plane_targets
    cam_w2c = np.repeat(np.eye(4)[None], num_frames, 0)
    cam_w2c[:, 0, 3] = -np.arange(num_frames) * shift_px * depth_m / focal / depth_m
    k_mat = np.array([[focal, 0, (hw[1] - 1) / 2], [0, focal, (hw[0] - 1) / 2], [0, 0, 1]])
    cameras = {"ba_accepted": np.bool_(accepted), "camera_status": np.str_("solved" if accepted else "rejected: x"),
               "cam_w2c": cam_w2c, "intrinsics": k_mat, "track_bundle_points": np.zeros((0, 3)),
               "track_bundle_depth": np.zeros(0), "track_bundle_fixed": np.zeros(0, bool)}
    depth = None
    if with_depth:
        shape = (num_frames, *hw)
        depth = {"depth": np.ones(shape, np.float32), "valid": np.ones(shape, bool),
                 "dynamic": np.zeros(shape, bool), "intrinsics": k_mat.astype(np.float32)}
    return cameras, depth


def _adapt(make_clip, make_prefit_model, tta_cameras: str, cameras: dict | None, depth: dict | None) -> dict:
    frames, tracks = make_clip()
    cfg = AdaptConfig(loss="robust", iters=2, lr=2e-4, frames_per_step=4, pnp_stride=2, depth_weight=0.0,
                      tta_cameras=tta_cameras)
    predict = PredictConfig(window=24, overlap=4, focal=40.0)
    return adapt_model(make_prefit_model(), frames, tracks, depth, cfg, predict, VisibilityConfig(), "cpu", 0,
                       cameras)


def test_adapt_stage_uses_the_solved_cameras_or_says_why_not(make_clip, make_prefit_model):
    pnp = _adapt(make_clip, make_prefit_model, "pnp", None, None)
    assert "solved_camera_steps" not in pnp and "tta_cameras_fallback" not in pnp
    evaluations = len(pnp["loss_history"]) + 1          # the steps and the final check
    # rejected cameras: the PnP TTA, exactly, and the artifact says why
    cameras, depth = _plane_cameras(6, accepted=False, with_depth=True)
    rejected = _adapt(make_clip, make_prefit_model, "solved", cameras, depth)
    assert "rejected: x" in str(rejected["tta_cameras_fallback"])
    np.testing.assert_array_equal(rejected["loss_history"], pnp["loss_history"])
    assert int(rejected["solved_camera_steps"]) == 0
    # solved cameras without a solved depth at the anchor: every step falls back to PnP, counted
    cameras, _ = _plane_cameras(6, accepted=True, with_depth=False)
    no_scale = _adapt(make_clip, make_prefit_model, "solved", cameras, None)
    assert "tta_cameras_fallback" not in no_scale
    assert (int(no_scale["solved_camera_steps"]), int(no_scale["pnp_camera_steps"])) == (0, evaluations)
    np.testing.assert_array_equal(no_scale["loss_history"], pnp["loss_history"])
    # solved cameras with the multi-view depth: every step uses them, and the loss differs from PnP's
    cameras, depth = _plane_cameras(6, accepted=True, with_depth=True)
    solved = _adapt(make_clip, make_prefit_model, "solved", cameras, depth)
    assert (int(solved["solved_camera_steps"]), int(solved["pnp_camera_steps"])) == (evaluations, 0)
    assert np.isfinite(solved["loss_history"]).all()
    assert not np.array_equal(solved["loss_history"], pnp["loss_history"])
