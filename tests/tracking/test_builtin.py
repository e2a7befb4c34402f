"""The built-in tracker on synthetic sequences with exact known motion."""

from __future__ import annotations

import numpy as np
import pytest

from st4r_cli.stages.tracks import TracksConfig, camera_tracks, compute_tracks
from st4r_cli.tracking.builtin import BuiltinTrackerParams, track_points

SIZE_HW = (120, 160)
NUM_FRAMES = 14
VELOCITY = np.array([1.37, 0.61])           # px / frame, sub-pixel on purpose


def _texture(seed: int, size_hw: tuple[int, int]) -> np.ndarray:
    """A smooth random RGB texture (band-limited, so sub-pixel shifts are well defined)."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (size_hw[0] // 4, size_hw[1] // 4, 3)).astype(np.float32)
    fine = cv2.resize(coarse, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(fine, (0, 0), 1.2)


def _shifted(texture: np.ndarray, shift_xy: np.ndarray) -> np.ndarray:
    """`texture` moved by `shift_xy` (content at p goes to p + shift), cropped to SIZE_HW."""
    import cv2

    offset = np.array([40.0, 40.0])              # crop origin in the big texture at shift 0
    matrix = np.array([[1, 0, -(offset[0] - shift_xy[0])], [0, 1, -(offset[1] - shift_xy[1])]],
                      dtype=np.float64)
    return cv2.warpAffine(texture, matrix, (SIZE_HW[1], SIZE_HW[0]), flags=cv2.INTER_CUBIC)


def _occluder_box(t: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of an opaque textured box sweeping left to right over rows 24..96."""
    x0 = -70 + 16 * t
    return x0, 24, x0 + 64, 96


def depth_inside_occluder(true_xy: np.ndarray) -> np.ndarray:
    """`(N, T)` distance (px) of each true position inside the occluder box (<= 0: outside)."""
    inside = np.zeros(true_xy.shape[:2])
    for t in range(true_xy.shape[1]):
        x0, y0, x1, y1 = _occluder_box(t)
        x, y = true_xy[:, t, 0], true_xy[:, t, 1]
        inside[:, t] = np.minimum.reduce([x - x0, x1 - x, y - y0, y1 - y])
    return inside


def make_sequence(with_occluder: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frames `(T, H, W, 3)`, queries `(N, 3)` on frame 0, true tracks `(N, T, 2)`, true visible `(N, T)`."""
    background = _texture(0, (SIZE_HW[0] + 100, SIZE_HW[1] + 100))
    occluder = _texture(1, (80, 80))
    ys, xs = np.meshgrid(np.arange(20, 101, 10.0), np.arange(20, 111, 10.0), indexing="ij")
    query_xy = np.stack([xs.ravel(), ys.ravel()], axis=1)
    frames, true_xy, true_visible = [], [], []
    for t in range(NUM_FRAMES):
        shift = VELOCITY * t
        frame = _shifted(background, shift)
        positions = query_xy + shift
        visible = np.ones(len(query_xy), dtype=bool)
        if with_occluder:
            x0, y0, x1, y1 = _occluder_box(t)
            cx0, cx1 = max(x0, 0), min(x1, SIZE_HW[1])
            if cx1 > cx0:
                frame[y0:y1, cx0:cx1] = occluder[:y1 - y0, cx0 - x0:cx1 - x0]
            inside = ((positions[:, 0] > x0 - 1) & (positions[:, 0] < x1)
                      & (positions[:, 1] > y0 - 1) & (positions[:, 1] < y1))
            visible &= ~inside
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
        true_xy.append(positions)
        true_visible.append(visible)
    queries = np.concatenate([np.zeros((len(query_xy), 1)), query_xy], axis=1).astype(np.float32)
    return (np.stack(frames), queries, np.stack(true_xy, axis=1).astype(np.float32),
            np.stack(true_visible, axis=1))


def test_subpixel_accuracy_on_known_translation() -> None:
    frames, queries, true_xy, _ = make_sequence(with_occluder=False)
    out = track_points(frames, queries)
    error = np.linalg.norm(out["tracks_xy"] - true_xy, axis=-1)
    inside = (true_xy[..., 0] > 8) & (true_xy[..., 0] < SIZE_HW[1] - 8) & \
             (true_xy[..., 1] > 8) & (true_xy[..., 1] < SIZE_HW[0] - 8)
    assert np.median(error[inside]) < 0.15                     # sub-pixel, after 13 chained steps
    assert np.quantile(error[inside], 0.95) < 0.5
    assert out["visible"][inside].mean() > 0.97
    assert out["confidence"].min() >= 0 and out["confidence"].max() <= 1
    assert np.median(out["confidence"]) > 0.7


def test_occluder_is_flagged_and_points_come_back() -> None:
    frames, queries, true_xy, true_visible = make_sequence(with_occluder=True)
    out = track_points(frames, queries)
    visible = out["visible"][:, 1:]
    truth = true_visible[:, 1:]
    occluded_at_some_point = (~true_visible).any(axis=1)
    assert occluded_at_some_point.sum() >= 10                  # the test really occludes points
    # hidden frames are flagged, nearly always where the point is well inside the occluder (a cycle
    # check cannot see an occluder edge that covers only part of its window)
    deep = depth_inside_occluder(true_xy)[:, 1:] > 10
    assert deep.sum() >= 20
    assert (~visible[deep]).mean() > 0.85
    assert (~visible[~truth]).mean() > 0.7
    assert visible[truth].mean() > 0.93                        # visible frames stay visible
    # points come back where they reappear: visible again, at their true position
    back = occluded_at_some_point & true_visible[:, -1]
    assert back.sum() >= 20
    assert out["visible"][back, -1].mean() > 0.9
    final_error = np.linalg.norm(out["tracks_xy"][back, -1] - true_xy[back, -1], axis=-1)
    assert np.median(final_error) < 0.5


def _reappear_score(out: dict, true_xy: np.ndarray, true_visible: np.ndarray) -> float:
    """Fraction of frames after a point's occlusion where it is visible and within 2 px."""
    after = np.zeros_like(true_visible)
    for n in np.flatnonzero((~true_visible).any(axis=1)):
        after[n, np.flatnonzero(~true_visible[n]).max() + 1:] = True
    good = out["visible"] & (np.linalg.norm(out["tracks_xy"] - true_xy, axis=-1) < 2.0)
    return float(good[after].mean())


def test_design_choices_matter_on_occlusion() -> None:
    """Coasting + NCC-checked re-acquisition beat following the flow (which follows the occluder)."""
    frames, queries, true_xy, true_visible = make_sequence(with_occluder=True)
    default = track_points(frames, queries)
    follow_flow = track_points(frames, queries, BuiltinTrackerParams(lost_motion="flow"))
    no_reacquire = track_points(frames, queries, BuiltinTrackerParams(reacquire=False))
    score = _reappear_score(default, true_xy, true_visible)
    assert score > 0.85
    assert score > _reappear_score(follow_flow, true_xy, true_visible) + 0.1
    assert score > _reappear_score(no_reacquire, true_xy, true_visible) + 0.3


def test_queries_on_later_frames_start_there() -> None:
    frames, queries, true_xy, _ = make_sequence(with_occluder=False)
    late = queries[:6].copy()
    late[:, 0] = 5
    late[:, 1:] = true_xy[:6, 5]
    out = track_points(frames, late)
    assert np.array_equal(out["tracks_xy"][:, :5], np.repeat(late[:, None, 1:], 5, axis=1))
    assert not out["visible"][:, :5].any() and out["visible"][:, 5].all()
    assert np.isnan(out["cycle_error"][:, :5]).all()
    error = np.linalg.norm(out["tracks_xy"][:, 6:] - true_xy[:6, 6:], axis=-1)
    assert np.median(error) < 0.2


@pytest.mark.parametrize("occlusion", ["lk_fb", "dis_fb", "none"])
def test_occlusion_tests_all_track(occlusion: str) -> None:
    frames, queries, true_xy, _ = make_sequence(with_occluder=False)
    out = track_points(frames[:6], queries, BuiltinTrackerParams(occlusion=occlusion))
    error = np.linalg.norm(out["tracks_xy"] - true_xy[:, :6], axis=-1)
    assert np.median(error) < 0.2


def test_stage_contract_and_determinism() -> None:
    frames, _, _, _ = make_sequence(with_occluder=True)
    cfg = TracksConfig(grid_size=6)
    first = compute_tracks(frames, cfg, "cpu", seed=0)
    second = compute_tracks(frames, cfg, "cpu", seed=0)
    assert set(first) == {"tracks_xy", "visible", "confidence", "queries",
                          "camera_queries", "camera_tracks_xy", "camera_visible"}
    assert first["tracks_xy"].shape == (36, NUM_FRAMES, 2) and first["tracks_xy"].dtype == np.float32
    assert first["visible"].shape == (36, NUM_FRAMES) and first["visible"].dtype == bool
    assert first["confidence"].shape == (36,) and first["confidence"].dtype == np.float32
    assert first["queries"].shape == (36, 3) and first["queries"].dtype == np.float32
    for key in first:
        assert np.array_equal(first[key], second[key])
    assert np.array_equal(first["tracks_xy"][:, 0], first["queries"][:, 1:])
    # the camera solver's tracks: a 16x16 grid re-seeded every 8 frames after frame 0, same tracker
    seeds = list(range(8, NUM_FRAMES - 1, 8))
    assert first["camera_queries"].shape == (256 * len(seeds), 3)
    assert sorted(set(first["camera_queries"][:, 0].tolist())) == seeds
    assert first["camera_tracks_xy"].shape == (256 * len(seeds), NUM_FRAMES, 2)
    rows = np.arange(len(first["camera_queries"]))
    query_t = first["camera_queries"][:, 0].astype(int)
    assert np.allclose(first["camera_tracks_xy"][rows, query_t], first["camera_queries"][:, 1:])
    assert first["camera_visible"][rows, query_t].all()
    # tracked in one pass with the stage's own queries, yet the same as tracked alone (per-point tracker)
    alone = compute_tracks(frames, TracksConfig(grid_size=6, camera_every_k=0), "cpu", seed=0)
    assert len(alone["camera_queries"]) == 0
    for key in ("tracks_xy", "visible", "confidence", "queries"):
        assert np.array_equal(first[key], alone[key])
    camera_alone = camera_tracks(frames, cfg)
    for key in ("camera_queries", "camera_tracks_xy", "camera_visible"):
        assert np.array_equal(first[key], camera_alone[key])


def test_a_point_that_leaves_the_image_is_invisible_and_not_clamped_to_the_border():
    """The scene slides right by 4 px a frame: points near the right edge leave the image."""
    texture = _texture(3, (SIZE_HW[0] + 120, SIZE_HW[1] + 160))
    velocity = np.array([4.0, 0.0])
    frames = np.stack([_shifted(texture, velocity * t) for t in range(NUM_FRAMES)]).astype(np.uint8)
    query_xy = np.array([[x, y] for x in (120.0, 140.0, 150.0) for y in (40.0, 60.0, 80.0)])
    queries = np.column_stack([np.zeros(len(query_xy)), query_xy]).astype(np.float32)
    out = track_points(frames, queries)
    true_x = query_xy[:, 0:1] + velocity[0] * np.arange(NUM_FRAMES)[None]
    inside = true_x <= SIZE_HW[1] - 1.5                      # a margin for the sub-pixel boundary
    outside = true_x >= SIZE_HW[1] + 0.5
    x, visible = out["tracks_xy"][..., 0], out["visible"]
    assert outside.sum() > 20
    assert (x[visible] <= SIZE_HW[1] - 0.5).all()            # visible only where it is on the image
    assert visible[outside].mean() < 0.05                     # (one late false match is tolerated)
    assert visible[inside & (true_x < SIZE_HW[1] - 8)].mean() > 0.9
    # positions past the edge are extrapolated beyond it, not held on the border
    assert (x[outside & ~visible] > SIZE_HW[1] - 0.5).all()
