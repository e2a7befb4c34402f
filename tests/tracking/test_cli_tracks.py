"""`st4r tracks VIDEO|RUN_DIR`: run directory, stage cache shared with `st4r adapt`, flags, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from st4r_cli.cli.app import run as st4r


def _write_clip(folder: Path, num_frames: int = 5) -> None:
    """A textured image translated by (+2, +1) px per frame, as PNGs."""
    import cv2

    rng = np.random.default_rng(0)
    big = cv2.GaussianBlur(rng.uniform(0, 255, (120, 150, 3)).astype(np.float32), (0, 0), 1.5)
    folder.mkdir(parents=True)
    for t in range(num_frames):
        frame = big[20 - t:20 - t + 64, 30 - 2 * t:30 - 2 * t + 96]
        cv2.imwrite(str(folder / f"{t:05d}.png"), np.clip(frame, 0, 255).astype(np.uint8))


def test_tracks_on_video_then_run_dir(tmp_path: Path) -> None:
    from st4r_cli import pipeline
    from st4r_cli.runs import Run

    clip, run_dir = tmp_path / "clip", tmp_path / "run"
    _write_clip(clip)
    assert st4r(["tracks", str(clip), "--out", str(run_dir), "--grid-size", "4", "-q"]) == 0
    first = dict(np.load(run_dir / "tracks.npz"))
    assert first["tracks_xy"].shape == (16, 5, 2) and first["queries"].shape == (16, 3)
    # the content moves by (+2, +1) px per frame at the decoded resolution (96x64 is kept as is)
    steps = np.diff(first["tracks_xy"], axis=1)
    assert np.allclose(np.median(steps.reshape(-1, 2), axis=0), [2, 1], atol=0.1)

    # from the run directory: same config, cached
    assert st4r(["tracks", str(run_dir), "--grid-size", "4", "-q"]) == 0
    again = dict(np.load(run_dir / "tracks.npz"))
    assert all(np.array_equal(first[k], again[k]) for k in first)

    # `st4r adapt`'s tracks stage finds the same cache entry (same key)
    run = Run.open(run_dir)
    run.config.tracks.grid_size = 4
    artifact = pipeline.run_tracks(run, run.artifact("decode"), "cpu")
    assert artifact.reused and np.array_equal(artifact["tracks_xy"], first["tracks_xy"])

    # a flag changes the config: recomputed with the new grid
    assert st4r(["tracks", str(run_dir), "--grid-size", "3", "--query-mode", "grid_every_k",
                 "--every-k", "2", "-q"]) == 0
    every_k = np.load(run_dir / "tracks.npz")
    assert every_k["queries"].shape == (27, 3)
    assert np.array_equal(np.unique(every_k["queries"][:, 0]), [0, 2, 4])


def test_tracks_query_file_flag(tmp_path: Path) -> None:
    clip = tmp_path / "clip"
    _write_clip(clip)
    queries = tmp_path / "q.txt"
    queries.write_text("0, 40, 30\n1, 50, 20\n")
    assert st4r(["tracks", str(clip), "--out", str(tmp_path / "run"), "--queries", str(queries),
                 "-q"]) == 0
    out = np.load(tmp_path / "run" / "tracks.npz")
    assert np.array_equal(out["queries"], np.array([[0, 40, 30], [1, 50, 20]], np.float32))
    assert np.allclose(out["tracks_xy"][0, -1], [48, 34], atol=0.3)

    # same path, new contents: the cache key hashes the file's content, so the tracks are recomputed
    queries.write_text("0, 20, 10\n")
    assert st4r(["tracks", str(tmp_path / "run"), "--queries", str(queries), "-q"]) == 0
    edited = np.load(tmp_path / "run" / "tracks.npz")
    assert np.array_equal(edited["queries"], np.array([[0, 20, 10]], np.float32))


@pytest.mark.parametrize("args, message", [
    (["--tracker", "magic"], "magic"),
    (["--grid-size", "0"], "grid size"),
    (["--queries", "/nonexistent/q.txt"], "query file not found"),
    (["--long-side", "64"], "apply to a video input"),
])
def test_tracks_bad_input_on_run(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                 message: str) -> None:
    clip, run_dir = tmp_path / "clip", tmp_path / "run"
    _write_clip(clip, num_frames=3)
    assert st4r(["tracks", str(clip), "--out", str(run_dir), "--grid-size", "2", "-q"]) == 0
    capsys.readouterr()
    assert st4r(["tracks", str(run_dir), *args, "-q"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_tracks_missing_input(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert st4r(["tracks", str(tmp_path / "nothing.mp4"), "-q"]) != 0
    assert "input not found" in capsys.readouterr().err


def test_failed_tracks_leave_the_run_failed_and_no_output(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    import json

    clip, run_dir = tmp_path / "clip", tmp_path / "run"
    _write_clip(clip, num_frames=3)
    queries = tmp_path / "q.txt"
    queries.write_text("0, 500, 10\n")                     # outside the 96x64 frames
    assert st4r(["tracks", str(clip), "--out", str(run_dir), "--queries", str(queries), "-q"]) != 0
    assert "outside" in capsys.readouterr().err
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert not (run_dir / "tracks.npz").exists()
