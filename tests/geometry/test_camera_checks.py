"""Camera-path checks: steps the image motion does not support, spikes repaired, breaks reported."""

import numpy as np

from st4r_cli.geometry.camera_checks import classify_jumps, repair_spikes, suspect_steps

FOCAL, DEPTH = 200.0, 4.0


def _smooth_path(num_frames: int = 20, step: float = 0.01) -> np.ndarray:
    poses = np.repeat(np.eye(4)[None], num_frames, 0)
    poses[:, 0, 3] = step * np.arange(num_frames)
    return poses


def _tracks_for(poses: np.ndarray, count: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact 2D tracks of static points at depth ~DEPTH seen by the (true) poses."""
    rng = np.random.default_rng(seed)
    points = np.column_stack([rng.uniform(-1, 1, count), rng.uniform(-1, 1, count), rng.uniform(3.5, 4.5, count)])
    w2c = np.linalg.inv(poses)
    cam = np.einsum("tij,nj->nti", w2c[:, :3, :3], points) + w2c[None, :, :3, 3]
    xy = FOCAL * cam[..., :2] / cam[..., 2:] + 64.0
    return xy, np.ones(xy.shape[:2], bool)


def test_a_smooth_path_has_no_suspect_step():
    poses = _smooth_path()
    xy, vis = _tracks_for(poses)
    assert suspect_steps(poses, FOCAL, DEPTH, xy, vis).size == 0


def test_a_spike_between_near_identical_frames_is_found_and_repaired():
    truth = _smooth_path()
    xy, vis = _tracks_for(truth)                       # the images: a smooth 0.01-unit-per-frame path
    solved = truth.copy()
    solved[7, :3, 3] += [0.28, 0.0, 0.0]              # the bundle put frame 7 off the path
    steps = suspect_steps(solved, FOCAL, DEPTH, xy, vis)
    assert steps.tolist() == [7, 8]
    jumps = classify_jumps(steps)
    assert jumps["spikes"].tolist() == [7] and jumps["breaks"].size == 0
    repaired = repair_spikes(solved, jumps["spikes"])
    np.testing.assert_allclose(repaired, truth, atol=1e-9)


def test_a_break_in_the_path_is_reported_not_repaired():
    truth = _smooth_path()
    xy, vis = _tracks_for(truth)
    solved = truth.copy()
    solved[12:, :3, 3] += [0.0, 0.3, 0.0]             # every frame from 12 on shifted
    jumps = classify_jumps(suspect_steps(solved, FOCAL, DEPTH, xy, vis))
    assert jumps["breaks"].tolist() == [12] and jumps["spikes"].size == 0


def test_a_real_fast_step_is_not_suspect():
    """A step 20x the median is fine when the images move as much."""
    truth = _smooth_path()
    truth[9:, 0, 3] += 0.2
    xy, vis = _tracks_for(truth)
    assert suspect_steps(truth, FOCAL, DEPTH, xy, vis).size == 0
