"""WorldTrack (St4RTrack protocol) metrics on hand-computed cases and controlled perturbations."""

import numpy as np
import pytest

from st4r_cli.geometry.align import apply_sim3
from st4r_cli.metrics.worldtrack import dynamic_tracks, error_decomposition, evaluate_worldtrack, worldtrack_metrics
from st4r_cli.synthetic.scene import axis_angle_to_matrix


def _tracks(num=40, frames=6, seed=0):
    rng = np.random.default_rng(seed)
    start = rng.uniform([-2, -1, 2], [2, 1, 6], size=(num, 1, 3))
    motion = np.zeros((num, frames, 3))
    motion[: num // 2] = np.linspace(0, 1, frames)[None, :, None] * rng.normal(size=(num // 2, 1, 3))
    return start + motion


def test_hand_computed_no_alignment():
    gt = np.zeros((2, 2, 3))
    gt[..., 2] = 1.0
    pred = gt.copy()
    pred[0, 1, 0] = 0.2
    pred[1, 0, 1] = 0.05
    pred[1, 1, 2] += 0.7
    m = worldtrack_metrics(pred, gt, alignment="none")
    # distances 0, 0.2, 0.05, 0.7
    assert m["pts_within_0.1"] == 0.5
    assert m["pts_within_0.3"] == 0.75 and m["pts_within_0.5"] == 0.75 and m["pts_within_1"] == 1.0
    assert m["apd"] == pytest.approx(0.75)
    assert m["epe"] == pytest.approx(0.2375)
    boundary = worldtrack_metrics(gt + np.array([0.0, 0.0, 0.5]), gt, alignment="none")
    assert boundary["pts_within_0.5"] == 1.0  # St4RTrack counts d <= threshold


def test_error_decomposition_separates_start_and_motion():
    gt = _tracks()
    rng = np.random.default_rng(5)
    # every track starts 0.3 off along its own direction and then moves exactly as the ground truth
    offset = rng.normal(size=(len(gt), 1, 3))
    offset *= 0.3 / np.linalg.norm(offset, axis=-1, keepdims=True)
    m = worldtrack_metrics(gt + offset, gt, "none")
    assert m["epe_anchor"] == pytest.approx(0.3) and m["epe_motion"] == pytest.approx(0.0, abs=1e-12)
    assert m["epe"] == pytest.approx(0.3)
    # exact frame 0, motion doubled: the motion error is the ground-truth displacement itself
    doubled = gt + (gt - gt[:, :1])
    d = error_decomposition(doubled, gt)
    assert d["epe_anchor"] == pytest.approx(0.0, abs=1e-12)
    assert d["epe_motion"] == pytest.approx(np.linalg.norm(gt - gt[:, :1], axis=-1).mean())
    # both: the triangle inequality bounds the EPE, on a hand case with both parts
    both = worldtrack_metrics(doubled + offset, gt, "none")
    assert both["epe"] <= both["epe_anchor"] + both["epe_motion"] + 1e-12
    assert both["epe"] >= abs(both["epe_anchor"] - both["epe_motion"]) - 1e-12
    hand = error_decomposition(np.array([[[0.0, 0, 1], [0, 0.5, 1]]]), np.array([[[0.0, 0, 2], [0, 0, 2]]]))
    assert hand == {"epe_anchor": 1.0, "epe_motion": 0.25}  # frame 1 moved 0.5 where gt stood still


def test_alignments_undo_their_transform_only():
    gt = _tracks()
    for alignment in ("global", "per_traj", "sim3", "none"):
        m = worldtrack_metrics(gt, gt, alignment, relative=True)
        assert m["apd"] == 1.0 and m["epe"] == pytest.approx(0.0, abs=1e-9) and m["apd_rel"] == 1.0
    scaled = 0.3 * gt
    assert worldtrack_metrics(scaled, gt, "global")["epe"] == pytest.approx(0.0, abs=1e-9)
    assert worldtrack_metrics(scaled, gt, "none")["apd"] < 0.2
    per_track = gt * np.linspace(0.5, 2.0, len(gt))[:, None, None]
    assert worldtrack_metrics(per_track, gt, "per_traj")["epe"] == pytest.approx(0.0, abs=1e-9)
    assert worldtrack_metrics(per_track, gt, "global")["epe"] > 0.5
    rotation = axis_angle_to_matrix(np.array([0.2, 1.0, 0.1]), np.array([0.5]))[0]
    moved = apply_sim3(gt, 0.5, rotation, np.array([1.0, 0.0, -2.0]))
    assert worldtrack_metrics(moved, gt, "sim3")["epe"] == pytest.approx(0.0, abs=1e-9)
    assert worldtrack_metrics(moved, gt, "global")["epe"] > 0.5


def test_noise_monotone_and_relative_thresholds_scale_free():
    gt = _tracks()
    rng = np.random.default_rng(3)
    noise = rng.normal(size=gt.shape)
    epes = [worldtrack_metrics(gt + s * noise, gt, "none")["epe"] for s in (0.01, 0.1, 0.5)]
    apds = [worldtrack_metrics(gt + s * noise, gt, "none")["apd"] for s in (0.01, 0.1, 0.5)]
    assert epes[0] < epes[1] < epes[2] and apds[0] > apds[1] > apds[2]
    a = worldtrack_metrics(gt + 0.1 * noise, gt, "none", relative=True)
    b = worldtrack_metrics(10 * (gt + 0.1 * noise), 10 * gt, "none", relative=True)
    assert a["apd_rel"] == pytest.approx(b["apd_rel"]) and a["epe_rel"] == pytest.approx(b["epe_rel"])
    assert a["apd"] != pytest.approx(b["apd"])


def test_protocol_query_visibility_and_dynamic_subset():
    gt = _tracks()
    dynamic = dynamic_tracks(gt)
    np.testing.assert_array_equal(dynamic, np.arange(len(gt)) < len(gt) // 2)
    pred = gt.copy()
    pred[dynamic] += 0.2                       # only moving tracks are wrong
    visible = np.ones(gt.shape[:2], bool)
    visible[-5:, 0] = False                    # queries not visible at frame 0 are dropped
    report = evaluate_worldtrack(pred, gt, visible, alignments=("none",))
    assert report["num_tracks"] == len(gt) - 5 and report["num_dynamic"] == dynamic.sum()
    assert report["none_dyn/epe"] == pytest.approx(0.2 * np.sqrt(3))
    assert report["none/epe"] == pytest.approx(0.2 * np.sqrt(3) * dynamic.sum() / (len(gt) - 5))
    assert report["none/apd"] > report["none_dyn/apd"]
    empty = evaluate_worldtrack(pred[~dynamic], gt[~dynamic], alignments=("global",))
    assert np.isnan(empty["global_dyn/apd"])
