"""TAP-Vid 2D metrics on hand-computed cases."""

import numpy as np
import pytest

from st4r_cli.metrics.tapvid2d import (compute_tapvid2d_metrics, evaluate_tapvid2d_pixels,
                                       evaluation_mask, queries_first, queries_strided,
                                       scale_tracks_to_256)


def _two_track_case():
    """Two tracks, four frames; every value below is worked out by hand in the test bodies."""
    gt = np.zeros((2, 4, 2))
    gt_vis = np.array([[True, True, True, True], [False, True, False, True]])
    pred = gt.copy()
    pred[0, 1, 0] = 0.5    # within every threshold
    pred[0, 2, 1] = 3.0    # within 4, 8, 16
    pred[0, 3, 0] = 20.0   # within none
    pred[1, 3, 0] = 1.5    # within 2, 4, 8, 16 (but predicted occluded)
    pred_vis = np.array([[True, True, True, True], [False, True, True, False]])
    query_t = np.array([0, 1])
    return gt, gt_vis, pred, pred_vis, query_t


def test_hand_computed_first_mode():
    m = compute_tapvid2d_metrics(*_two_track_case(), query_mode="first")
    # scored: track 0 frames 1,2,3; track 1 frames 2,3 -> 5 points, 4 of them gt-visible
    assert m["occlusion_accuracy"] == pytest.approx(3 / 5)
    assert m["pts_within_1"] == pytest.approx(1 / 4)
    assert m["pts_within_2"] == pytest.approx(2 / 4)
    for d in (4, 8, 16):
        assert m[f"pts_within_{d}"] == pytest.approx(3 / 4)
    assert m["average_pts_within_thresh"] == pytest.approx(12 / 20)
    # J_1 = J_2 = 1 TP / (4 gt-visible + 3 FP); J_4.. = 2 / (4 + 2)
    assert m["jaccard_1"] == pytest.approx(1 / 7)
    assert m["jaccard_2"] == pytest.approx(1 / 7)
    assert m["jaccard_4"] == pytest.approx(1 / 3)
    assert m["average_jaccard"] == pytest.approx(9 / 35)


def test_hand_computed_strided_mode_adds_frames_before_query():
    m = compute_tapvid2d_metrics(*_two_track_case(), query_mode="strided")
    # track 1 frame 0 is now scored: gt occluded, predicted occluded -> one more correct
    assert m["occlusion_accuracy"] == pytest.approx(4 / 6)
    assert m["pts_within_4"] == pytest.approx(3 / 4)
    assert m["average_jaccard"] == pytest.approx(9 / 35)


def test_per_track():
    m = compute_tapvid2d_metrics(*_two_track_case(), query_mode="first", per_track=True)
    np.testing.assert_allclose(m["occlusion_accuracy"], [1.0, 0.0])
    np.testing.assert_allclose(m["pts_within_2"], [1 / 3, 1.0])
    np.testing.assert_allclose(m["jaccard_16"], [2 / 4, 0.0])  # track 0: 2 TP / (3 visible + 1 FP)


def test_perfect_prediction_and_noise_monotone():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 256, (50, 10, 2))
    vis = rng.uniform(size=(50, 10)) > 0.2
    vis[:, 0] = True
    q = queries_first(vis)
    perfect = compute_tapvid2d_metrics(gt, vis, gt, vis, q)
    assert all(v == pytest.approx(1.0) for v in perfect.values())
    scores = []
    for sigma in (0.5, 2.0, 8.0):
        pred = gt + rng.normal(0, sigma, gt.shape)
        scores.append(compute_tapvid2d_metrics(gt, vis, pred, vis, q)["average_jaccard"])
    assert scores[0] > scores[1] > scores[2]
    flipped = compute_tapvid2d_metrics(gt, vis, gt, ~vis, q)
    assert flipped["occlusion_accuracy"] == 0.0 and flipped["average_jaccard"] == 0.0
    assert flipped["average_pts_within_thresh"] == 1.0  # position accuracy ignores predicted visibility


def test_query_sampling():
    vis = np.array([[False, True, True, False, True, True],
                    [True, False, False, False, False, True],
                    [False, False, False, False, False, False]])
    np.testing.assert_array_equal(queries_first(vis), [1, 0, -1])
    index, qt = queries_strided(vis, stride=5)
    np.testing.assert_array_equal(index, [1, 0, 1])
    np.testing.assert_array_equal(qt, [0, 5, 5])
    mask = evaluation_mask(np.array([1, 0]), 3, "first")
    np.testing.assert_array_equal(mask, [[False, False, True], [False, True, True]])
    with pytest.raises(ValueError):
        evaluation_mask(np.array([0]), 3, "middle")


def test_pixel_wrapper_rescales_to_256():
    # a 512x1024 (HxW) image: a 4 px error in x becomes 1 px at 256x256
    np.testing.assert_allclose(scale_tracks_to_256(np.array([[1024.0, 512.0]]), (512, 1024)), [[256, 256]])
    gt = np.zeros((1, 3, 2))
    pred = gt.copy()
    pred[0, 1:, 0] = 4.0
    vis = np.ones((1, 3), bool)
    m = evaluate_tapvid2d_pixels(gt, vis, pred, vis, size_hw=(512, 1024))
    assert m["pts_within_1"] == 0.0   # exactly 1 px is not strictly within 1
    assert m["pts_within_2"] == 1.0
    assert m["average_pts_within_thresh"] == pytest.approx(4 / 5)
