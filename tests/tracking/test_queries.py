"""Query modes of the track stage: grid on frame 0, grid every k frames, points from a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from st4r_cli.errors import St4rError
from st4r_cli.stages.tracks import TracksConfig, compute_tracks
from st4r_cli.tracking.queries import grid_points_xy, load_query_file, make_queries


def test_grid_points_are_cell_centres() -> None:
    xy = grid_points_xy(2, (10, 20))
    # cells of a 20x10 image split 2x2: centres at x = 4.5, 14.5 and y = 2, 7 (pixel centres at integers)
    assert np.allclose(xy, [[4.5, 2.0], [14.5, 2.0], [4.5, 7.0], [14.5, 7.0]])


def test_grid_on_frame_zero() -> None:
    queries = make_queries("grid", num_frames=5, size_hw=(48, 64), grid_size=4)
    assert queries.shape == (16, 3) and queries.dtype == np.float32
    assert (queries[:, 0] == 0).all()
    assert queries[:, 1].min() == pytest.approx(7.5) and queries[:, 1].max() == pytest.approx(55.5)
    assert queries[:, 2].min() == pytest.approx(5.5) and queries[:, 2].max() == pytest.approx(41.5)


def test_grid_every_k_frames() -> None:
    queries = make_queries("grid_every_k", num_frames=10, size_hw=(48, 64), grid_size=3, every_k=4)
    assert queries.shape == (27, 3)
    assert np.array_equal(np.unique(queries[:, 0]), [0, 4, 8])
    per_frame = [queries[queries[:, 0] == t, 1:] for t in (0, 4, 8)]
    assert all(np.array_equal(per_frame[0], other) for other in per_frame[1:])


def test_query_file_text_and_npy(tmp_path: Path) -> None:
    text = tmp_path / "points.txt"
    text.write_text("# t, x, y\n0, 10.5, 20\n2 3 4  # a comment\n\n")
    assert np.array_equal(load_query_file(text), np.array([[0, 10.5, 20], [2, 3, 4]], np.float32))
    xy_only = tmp_path / "xy.csv"
    xy_only.write_text("1,2\n3,4\n")
    assert np.array_equal(load_query_file(xy_only), np.array([[0, 1, 2], [0, 3, 4]], np.float32))
    npy = tmp_path / "points.npy"
    np.save(npy, np.array([[1, 5.25, 6.0]]))
    queries = make_queries("file", num_frames=3, size_hw=(20, 20), query_file=str(npy))
    assert np.array_equal(queries, np.array([[1, 5.25, 6.0]], np.float32))


@pytest.mark.parametrize("content, message", [
    ("0, 1, 2, 3\n", "t,x,y or x,y"),
    ("zero, one\n", "cannot read"),
    ("5, 1, 1\n", "must be an integer in"),
    ("0, 99, 1\n", "outside"),
    ("# nothing\n", "no points"),
])
def test_bad_query_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(St4rError, match=message):
        make_queries("file", num_frames=3, size_hw=(20, 20), query_file=str(path))


def test_bad_query_settings() -> None:
    with pytest.raises(St4rError, match="not found"):
        make_queries("file", 3, (20, 20), query_file="/nonexistent/q.txt")
    with pytest.raises(St4rError, match="needs a query file"):
        make_queries("file", 3, (20, 20))
    with pytest.raises(St4rError, match="unknown tracks query mode"):
        make_queries("random", 3, (20, 20))
    with pytest.raises(St4rError, match="unknown tracker backend"):
        compute_tracks(np.zeros((3, 8, 8, 3), np.uint8), TracksConfig(backend="magic"))
    with pytest.raises(St4rError, match="at least 2 frames"):
        compute_tracks(np.zeros((1, 8, 8, 3), np.uint8), TracksConfig())


def test_stage_tracks_file_queries_through_known_motion(tmp_path: Path) -> None:
    """Points from a file, queried on different frames, follow an exact integer translation."""
    import cv2

    rng = np.random.default_rng(3)
    big = cv2.GaussianBlur(rng.uniform(0, 255, (120, 140, 3)).astype(np.float32), (0, 0), 1.5)
    frames = np.stack([big[20 + 2 * t:20 + 2 * t + 64, 30 + 3 * t:30 + 3 * t + 80] for t in range(6)])
    frames = np.clip(frames, 0, 255).astype(np.uint8)        # content moves by (-3, -2) px per frame
    path = tmp_path / "q.txt"
    path.write_text("0, 40, 30\n2, 20.5, 25\n")
    out = compute_tracks(frames, TracksConfig(query_mode="file", query_file=str(path)))
    expected_0 = np.array([[40 - 3 * t, 30 - 2 * t] for t in range(6)])
    assert np.abs(out["tracks_xy"][0] - expected_0).max() < 0.3
    expected_1 = np.array([[20.5 - 3 * (t - 2), 25 - 2 * (t - 2)] for t in range(2, 6)])
    assert np.abs(out["tracks_xy"][1, 2:] - expected_1).max() < 0.3
    assert not out["visible"][1, :2].any() and out["visible"][1, 2:].all()
