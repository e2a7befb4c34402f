"""TTA losses on hand-built pointmaps with hand-computed answers."""

import math

import pytest
import torch

from st4r_cli.geometry.camera import make_intrinsics, unproject_depth
from st4r_cli.losses.tta import TrackBatch, TTALossConfig, depth_loss, prior_loss, tta_loss

HW = (8, 10)
FOCAL = 10.0
K = make_intrinsics(torch.tensor(FOCAL, dtype=torch.float64), HW)  # centre (4.5, 3.5)
CENTRE = torch.tensor([4.5, 3.5], dtype=torch.float64)


def _plane(z: float, pairs: int = 1):
    """Fronto-parallel plane at depth z seen from the anchor; camera j == anchor (w2c = I)."""
    depth = torch.full(HW, z, dtype=torch.float64)
    pts = unproject_depth(depth, K)[None].repeat(pairs, 1, 1, 1)
    conf = torch.full((pairs, *HW), 1e9, dtype=torch.float64)
    pred = {"track_pts": pts.clone(), "track_conf": conf.clone(), "recon_pts": pts.clone(),
            "recon_conf": conf.clone()}
    w2c = torch.eye(4, dtype=torch.float64).expand(pairs, 4, 4).clone()
    return pred, w2c


def _tracks(query, target, visible=None):
    query = torch.tensor(query, dtype=torch.float64)
    target = torch.tensor(target, dtype=torch.float64)[None]
    vis = torch.ones(target.shape[:2], dtype=torch.bool) if visible is None else torch.tensor([visible])
    return TrackBatch(query, target, vis)


def _only(kind, **kw):
    kw.setdefault("outlier_gate", 0.0)  # the hand values below are without the gate unless a test sets it
    cfg = TTALossConfig(loss=kind, traj_weight=1.0, align_weight=0.0, depth_weight=0.0, **kw)
    return cfg


def test_perfect_prediction_scores_zero_baseline():
    pred, w2c = _plane(2.0)
    tracks = _tracks([[1.0, 2.0], [7.0, 5.0]], [[1.0, 2.0], [7.0, 5.0]])
    depth = torch.full((1, *HW), 6.0, dtype=torch.float64)  # 3x the prediction: alpha* absorbs it
    total, parts = tta_loss(pred, K, w2c, tracks, depth, None, TTALossConfig(loss="baseline"))
    assert parts["traj"] == pytest.approx(0.0, abs=1e-5)  # eq. 7's +1e-6 in the scale denominator
    assert parts["align"] == pytest.approx(0.0, abs=1e-9)
    assert parts["depth"] == pytest.approx(0.0, abs=1e-9)
    assert total.item() == pytest.approx(0.0, abs=1e-5)


def test_baseline_traj_scale_alignment_about_centre():
    pred, w2c = _plane(2.0)
    # The pseudo-tracks are the predicted pixels shrunk 2x towards the centre: eq. 7 aligns them away.
    query = torch.tensor([[1.0, 2.0], [8.0, 6.0], [3.0, 7.0]], dtype=torch.float64)
    target = CENTRE + (query - CENTRE) * 0.5
    tracks = TrackBatch(query, target[None], torch.ones(1, 3, dtype=torch.bool))
    _, parts = tta_loss(pred, K, w2c, tracks, None, None, _only("baseline"))
    assert parts["traj"] == pytest.approx(0.0, abs=1e-5)


def test_baseline_traj_hand_value():
    pred, w2c = _plane(2.0)
    # Predictions at c+(4,0), c+(0,3); pseudo-tracks at c+(0,4), c+(3,0): same radii, so the scale is 1
    # and the residuals are (-4, 4) and (3, -3): RMSE over the 4 coordinates = sqrt((16+16+9+9)/4).
    query = CENTRE + torch.tensor([[4.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    target = CENTRE + torch.tensor([[0.0, 4.0], [3.0, 0.0]], dtype=torch.float64)
    tracks = TrackBatch(query, target[None], torch.tensor([[False, False]]))  # visibility is ignored
    _, parts = tta_loss(pred, K, w2c, tracks, None, None, _only("baseline"))
    assert parts["traj"] == pytest.approx(math.sqrt(50 / 4), rel=1e-6)


def test_baseline_align_hand_value():
    pred, w2c = _plane(2.0)
    pred["recon_pts"] = pred["recon_pts"] + torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    # Track 0 visible (distance 0.5 along z), track 1 invisible (ignored), track 2 leaves the image.
    tracks = _tracks([[2.0, 2.0], [3.0, 3.0], [4.0, 4.0]], [[2.2, 1.9], [3.0, 3.0], [40.0, 4.0]],
                     [True, False, True])
    cfg = TTALossConfig(loss="baseline", traj_weight=0.0, align_weight=1.0, depth_weight=0.0)
    _, parts = tta_loss(pred, K, w2c, tracks, None, None, cfg)
    assert parts["align"] == pytest.approx(0.5, rel=1e-9)


def test_depth_loss_hand_value():
    pred, w2c = _plane(1.0)
    pred["recon_pts"][0, 0] *= 2.0  # first row at depth 2, the rest at depth 1
    depth = torch.ones(1, *HW, dtype=torch.float64)
    valid = torch.zeros(1, *HW, dtype=torch.bool)
    valid[0, 0, 0] = valid[0, 1, 0] = True  # predicted depths [2, 1] vs mono-depth [1, 1]
    # alpha* = (2+1)/(4+1) = 0.6 -> errors [0.2, -0.4] -> mse 0.1
    assert depth_loss(pred["recon_pts"], w2c, depth, valid).item() == pytest.approx(0.1, rel=1e-9)


def test_robust_mask_drops_occluded_tracks():
    pred, w2c = _plane(2.0)
    # Frame j's surface is at depth 1 around pixel (6, 4): a track behind it is occluded.
    pred["recon_pts"][0, 3:6, 5:8] *= 0.5
    tracks = _tracks([[1.0, 1.0], [6.0, 4.0]], [[4.0, 1.0], [0.0, 4.0]])  # residuals 3 and 6 px
    cfg = _only("robust", use_sigma=False)
    _, parts = tta_loss(pred, K, w2c, tracks, None, None, cfg)
    assert parts["traj"] == pytest.approx(3.0, rel=1e-9)
    assert parts["mask_frac"] == pytest.approx(0.5)
    _, parts = tta_loss(pred, K, w2c, tracks, None, None, _only("robust", use_sigma=False, use_mask=False))
    assert parts["traj"] == pytest.approx(math.sqrt((9 + 36) / 2), rel=1e-9)


def test_robust_projection_leaving_the_image_costs_the_cap():
    """The network cannot escape the loss by throwing a point out of the image or behind the camera."""
    pred, w2c = _plane(2.0)
    pred["track_pts"][0, 4, 6, 0] += 20.0  # projects 100 px to the right
    pred["track_pts"][0, 1, 1, 2] = -1.0   # behind the camera
    tracks = _tracks([[6.0, 4.0], [1.0, 1.0]], [[6.0, 4.0], [1.0, 1.0]])
    _, parts = tta_loss(pred, K, w2c, tracks, None, None, _only("robust", use_sigma=False))
    assert parts["mask_frac"] == pytest.approx(1.0)
    assert parts["traj"] == pytest.approx(10.0, rel=1e-9)  # both capped at max(H, W)^2 = 100


def test_robust_mask_and_tracker_visibility():
    pred, w2c = _plane(2.0)
    tracks = _tracks([[1.0, 1.0], [6.0, 4.0]], [[4.0, 1.0], [6.0, 4.0]], [False, True])
    _, parts = tta_loss(pred, K, w2c, tracks, None, None, _only("robust", use_sigma=False))
    assert parts["traj"] == pytest.approx(0.0, abs=1e-12)
    cfg = _only("robust", use_sigma=False, use_tracker_visibility=False)
    _, parts = tta_loss(pred, K, w2c, tracks, None, None, cfg)
    assert parts["traj"] == pytest.approx(math.sqrt(9 / 2), rel=1e-9)


def _conf_for_sigma(sigma: float, z: float = 2.0, alpha: float = 0.2) -> float:
    """Confidence giving sigma = sqrt(1 + (f alpha s / (c z))^2) on a plane (s = z)."""
    raw = math.sqrt(sigma**2 - 1.0)
    return FOCAL * alpha / raw if raw > 0 else 1e12


@pytest.mark.parametrize("mode", ["exp", "inv"])
def test_robust_nll_hand_value(mode):
    pred, w2c = _plane(2.0)
    pred["track_conf"][0, 1, 1] = _conf_for_sigma(1.0)
    pred["track_conf"][0, 4, 6] = _conf_for_sigma(2.0)
    tracks = _tracks([[1.0, 1.0], [6.0, 4.0]], [[1.0, 1.0], [8.0, 4.0]])  # residuals 0 and 2 px
    cfg = _only("robust", weight_mode=mode, calibrate_sigma=False)
    _, parts = tta_loss(pred, K, w2c, tracks, None, None, cfg)
    # exp: sigmas 1 and 2 over their (lower) median 1; inv: 1/(sigma^2 + 1); times sigma_bar = 1
    w1, w2 = (math.exp(-1), math.exp(-2)) if mode == "exp" else (1 / 2, 1 / 5)
    nll1, nll2 = 0.0, 4 / (2 * 4) + math.log(2.0)
    assert parts["traj"] == pytest.approx((w1 * nll1 + w2 * nll2) / (w1 + w2), rel=1e-6)
    assert parts["sigma_px"] == pytest.approx(1.5, rel=1e-6)


def test_robust_sigma_calibrated_to_the_residuals():
    """Confidence sets the relative sigmas (raw 1 : 2 : 4 px), the median residual (4 px) their size."""
    pred, w2c = _plane(2.0)
    for (col, row), raw in zip([(1, 1), (6, 4), (3, 6)], [1.0, 2.0, 4.0], strict=True):
        pred["track_conf"][0, row, col] = _conf_for_sigma(math.sqrt(1.0 + raw**2))
    # residuals 1, 4 and 6 px: median 4 px -> factor 4 / 2 = 2 -> raw sigmas 2, 4, 8
    tracks = _tracks([[1.0, 1.0], [6.0, 4.0], [3.0, 6.0]], [[2.0, 1.0], [6.0, 0.0], [9.0, 6.0]])
    _, parts = tta_loss(pred, K, w2c, tracks, None, None, _only("robust"))
    sigmas = [math.sqrt(1.0 + r**2) for r in (2.0, 4.0, 8.0)]
    weights = [math.exp(-s / sigmas[1]) for s in sigmas]
    nll = [r**2 / (2 * s**2) + math.log(s) for r, s in zip((1.0, 4.0, 6.0), sigmas, strict=True)]
    expected = sigmas[1] * sum(w * n for w, n in zip(weights, nll, strict=True)) / sum(weights)
    assert parts["sigma_px"] == pytest.approx(sum(sigmas) / 3, rel=1e-6)
    assert parts["traj"] == pytest.approx(expected, rel=1e-6)


def test_robust_outlier_gate_uniform_sigma():
    """Without sigma the gate is gate x the median residual: residuals 1, 1.5, 9 px, gate 2 -> the 9 px
    track is dropped from the masked RMSE."""
    pred, w2c = _plane(2.0)
    tracks = _tracks([[1.0, 1.0], [6.0, 4.0], [0.0, 6.0]], [[2.0, 1.0], [6.0, 5.5], [9.0, 6.0]])
    _, parts = tta_loss(pred, K, w2c, tracks, None, None, _only("robust", use_sigma=False, outlier_gate=2.0))
    assert parts["traj"] == pytest.approx(math.sqrt((1 + 2.25) / 2), rel=1e-9)
    assert parts["mask_frac"] == pytest.approx(2 / 3)
    _, parts = tta_loss(pred, K, w2c, tracks, None, None, _only("robust", use_sigma=False))
    assert parts["traj"] == pytest.approx(math.sqrt((1 + 2.25 + 81) / 3), rel=1e-9)


def test_robust_outlier_gate_per_point_sigma():
    """Calibrated sigmas sqrt(5), sqrt(17), sqrt(65) px for residuals 1, 4, 6 px: gate 0.9 drops only
    the middle track (4 > 0.9 sqrt(17) = 3.71; 1 < 2.01; 6 < 7.26)."""
    pred, w2c = _plane(2.0)
    for (col, row), raw in zip([(1, 1), (6, 4), (3, 6)], [1.0, 2.0, 4.0], strict=True):
        pred["track_conf"][0, row, col] = _conf_for_sigma(math.sqrt(1.0 + raw**2))
    tracks = _tracks([[1.0, 1.0], [6.0, 4.0], [3.0, 6.0]], [[2.0, 1.0], [6.0, 0.0], [9.0, 6.0]])
    _, parts = tta_loss(pred, K, w2c, tracks, None, None, _only("robust", outlier_gate=0.9))
    assert parts["mask_frac"] == pytest.approx(2 / 3)
    assert parts["sigma_px"] == pytest.approx((math.sqrt(5) + math.sqrt(65)) / 2, rel=1e-6)


def test_robust_nll_teaches_confidence():
    """A residual larger than sigma pushes the confidence down (sigma up); a zero residual pushes it up."""
    pred, w2c = _plane(2.0)
    conf = torch.full((1, *HW), _conf_for_sigma(2.0), dtype=torch.float64, requires_grad=True)
    pred["track_conf"] = conf
    tracks = _tracks([[1.0, 1.0], [6.0, 4.0]], [[1.0, 1.0], [0.0, 4.0]])  # residuals 0 and 6 px
    total, _ = tta_loss(pred, K, w2c, tracks, None, None, _only("robust"))
    total.backward()
    assert conf.grad[0, 1, 1].item() < 0   # residual 0 < sigma: raise the confidence
    assert conf.grad[0, 4, 6].item() > 0   # residual 6 > sigma: lower it


def test_robust_align_is_scale_invariant_and_masked():
    pred, w2c = _plane(2.0)
    pred["recon_pts"] = pred["recon_pts"] * 1.1
    tracks = _tracks([[2.0, 2.0], [5.0, 3.0]], [[2.0, 2.0], [5.0, 3.0]], [True, False])
    cfg = TTALossConfig(loss="robust", traj_weight=0.0, align_weight=1.0, depth_weight=0.0, use_sigma=False,
                        outlier_gate=0.0)
    _, parts = tta_loss(pred, K, w2c, tracks, None, None, cfg)
    # head 1 at (2,2) vs head 2 at (2,2): 0.1 x the point's distance, over the mean distance x 1.1
    point = pred["track_pts"][0, 2, 2]
    expected = (0.1 * point.norm() / (pred["recon_pts"][0].norm(dim=-1).mean())).item()
    assert parts["align"] == pytest.approx(expected, rel=1e-9)
    scaled = {k: (v * 3.0 if k.endswith("pts") else v) for k, v in pred.items()}
    _, parts_scaled = tta_loss(scaled, K, w2c, tracks, None, None, cfg)
    assert parts_scaled["align"] == pytest.approx(parts["align"], rel=1e-9)


def test_total_uses_the_weights():
    pred, w2c = _plane(2.0)
    pred["recon_pts"] = pred["recon_pts"] + torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    query = CENTRE + torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    target = CENTRE + torch.tensor([[0.0, 2.0], [2.0, 0.0]], dtype=torch.float64)
    tracks = TrackBatch(query, target[None], torch.ones(1, 2, dtype=torch.bool))
    depth = torch.ones(1, *HW, dtype=torch.float64)
    total, parts = tta_loss(pred, K, w2c, tracks, depth, None, TTALossConfig(loss="baseline"))
    assert total.item() == pytest.approx(0.5 * parts["traj"] + 5 * parts["align"] + 10 * parts["depth"])
    assert parts["traj"] == pytest.approx(2.0)


def test_unknown_kind_raises():
    pred, w2c = _plane(2.0)
    with pytest.raises(ValueError):
        tta_loss(pred, K, w2c, None, None, None, TTALossConfig(loss="magic"))


def _frozen_points(pred, stride):
    return {"track_pts": pred["track_pts"][:, ::stride, ::stride].clone(),
            "recon_pts": pred["recon_pts"][:, ::stride, ::stride].clone(), "stride": torch.tensor(stride)}


def test_points_prior_hand_value():
    frozen_pred, w2c = _plane(2.0)
    frozen = _frozen_points(frozen_pred, 2)
    pred = {k: v.clone() for k, v in frozen_pred.items()}
    assert prior_loss(pred, w2c, frozen, "points").item() == pytest.approx(0.0, abs=1e-12)
    # head 1 moved 0.3 along z everywhere, head 2 untouched: (0.3 / mean |X_frozen| + 0) / 2 heads
    pred["track_pts"] = pred["track_pts"] + torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64)
    mean_norm = frozen_pred["track_pts"][0, ::2, ::2].norm(dim=-1).mean().item()
    assert prior_loss(pred, w2c, frozen, "points").item() == pytest.approx(0.3 / mean_norm / 2, rel=1e-9)
    # in the total, with its weight, for either loss kind
    for kind in ("baseline", "robust"):
        cfg = TTALossConfig(loss=kind, traj_weight=0.0, align_weight=0.0, prior_weight=4.0)
        total, parts = tta_loss(pred, K, w2c, None, None, None, cfg, frozen)
        assert parts["prior"] == pytest.approx(0.3 / mean_norm / 2, rel=1e-9)
        assert total.item() == pytest.approx(4.0 * parts["prior"], rel=1e-9)


def test_anchor_prior_leaves_head_one_free_at_time_j():
    frozen_pred, w2c = _plane(2.0, pairs=3)
    frozen = dict(_frozen_points(frozen_pred, 2), is_anchor=torch.tensor([True, False, False]))
    mean_norm = frozen_pred["track_pts"][0, ::2, ::2].norm(dim=-1).mean().item()
    shift = torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64)
    # head 1 moved on the pairs (a, j), j != a: the motion; free under `anchor`, pulled under `points`
    moved = {k: v.clone() for k, v in frozen_pred.items()}
    moved["track_pts"][1:] += shift
    assert prior_loss(moved, w2c, frozen, "anchor").item() == pytest.approx(0.0, abs=1e-12)
    assert prior_loss(moved, w2c, frozen, "points").item() == pytest.approx(2 / 3 * 0.3 / mean_norm / 2, rel=1e-9)
    # head 1 on the (a, a) pair (frame a's geometry): (0.3 / mean |X| + 0 for head 2) / 2
    anchor_moved = {k: v.clone() for k, v in frozen_pred.items()}
    anchor_moved["track_pts"][0] += shift
    assert prior_loss(anchor_moved, w2c, frozen, "anchor").item() == pytest.approx(0.3 / mean_norm / 2, rel=1e-9)
    # head 2 on any pair: (0 + mean over the 3 pairs of 0.3 / mean |X| on one of them) / 2
    recon_moved = {k: v.clone() for k, v in frozen_pred.items()}
    recon_moved["recon_pts"][2] += shift
    assert prior_loss(recon_moved, w2c, frozen, "anchor").item() == pytest.approx(0.3 / mean_norm / 3 / 2, rel=1e-9)


def test_points_prior_gradient_pulls_towards_the_frozen_prediction():
    frozen_pred, w2c = _plane(2.0)
    frozen = _frozen_points(frozen_pred, 1)
    shifted = (frozen_pred["track_pts"] + torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)).requires_grad_(True)
    pred = dict(frozen_pred, track_pts=shifted)
    prior_loss(pred, w2c, frozen, "points").backward()
    assert (shifted.grad[..., 2] > 0).all()            # descending moves every point back along -z
    assert shifted.grad[..., :2].abs().max() < 1e-12   # and not sideways


def test_depth_prior_is_the_eq9_loss_against_the_frozen_depth():
    pred, w2c = _plane(1.0)
    pred["recon_pts"][0, 0] *= 2.0  # predicted depths: first row 2, the rest 1
    frozen_depth = torch.ones(1, *HW, dtype=torch.float64) * 3.0  # a plane, up to the alpha* scale
    value = prior_loss(pred, w2c, {"depth": frozen_depth}, "depth").item()
    assert value == pytest.approx(depth_loss(pred["recon_pts"], w2c, frozen_depth, None).item(), rel=1e-12)
    # alpha* = 3 (2*10 + 70) / (4*10 + 70) = 270/110; a proportional prediction would score 0
    alpha = 270 / 110
    expected = (10 * (2 * alpha - 3) ** 2 + 70 * (alpha - 3) ** 2) / 80
    assert value == pytest.approx(expected, rel=1e-9)
    assert prior_loss(_plane(1.0)[0], w2c, {"depth": frozen_depth}, "depth").item() == pytest.approx(0.0, abs=1e-12)
