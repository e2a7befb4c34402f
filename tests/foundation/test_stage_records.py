"""`st4r tracks` and `st4r depth` go through the pipeline's orchestrator (`pipeline.run_pipeline`): their
stages are recorded in run.json as `st4r adapt` records them (same fields, same cache keys and digests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from st4r_cli.cli.app import run as st4r

RECORD_FIELDS = {"key", "digest", "file", "reused", "seconds", "peak_rss_mb"}


def _write_clip(folder: Path, num_frames: int = 4) -> None:
    """A textured image translated by (+2, +1) px per frame, as PNGs."""
    import cv2

    rng = np.random.default_rng(0)
    big = cv2.GaussianBlur(rng.uniform(0, 255, (120, 150, 3)).astype(np.float32), (0, 0), 1.5)
    folder.mkdir(parents=True)
    for t in range(num_frames):
        frame = big[20 - t:20 - t + 64, 30 - 2 * t:30 - 2 * t + 96]
        cv2.imwrite(str(folder / f"{t:05d}.png"), np.clip(frame, 0, 255).astype(np.uint8))


@pytest.fixture
def fake_moge(monkeypatch: pytest.MonkeyPatch) -> None:
    """The moge backend without its package or weights: a constant depth (the stage's contract)."""
    import st4r_cli.stages.depth as depth_stage

    def fake_depth(frames, cfg, device="cpu", cameras=None):
        shape = np.asarray(frames).shape[:3]
        return {"depth": np.full(shape, 2.0, np.float32), "valid": np.ones(shape, bool),
                "intrinsics": np.eye(3, dtype=np.float32)}

    monkeypatch.setattr(depth_stage, "check_backend_available", lambda cfg: None)
    monkeypatch.setattr(depth_stage, "compute_depth", fake_depth)


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_tracks_and_depth_record_their_stages_as_adapt_does(tmp_path: Path, fake_moge: None) -> None:
    clip = tmp_path / "clip"
    _write_clip(clip)
    small = ["--set", "tracks.grid_size=4", "--set", "tracks.camera_every_k=0"]
    assert st4r(["adapt", str(clip), "--out", str(tmp_path / "adapt"), "--until", "depth", "--depth", "moge",
                 "--set", "cameras.refine=none", *small, "-q"]) == 0
    assert st4r(["tracks", str(clip), "--out", str(tmp_path / "tracks"), *small, "-q"]) == 0
    assert st4r(["depth", str(clip), "--out", str(tmp_path / "depth"), "-q"]) == 0
    adapt, tracks, depth = (_status(tmp_path / name) for name in ("adapt", "tracks", "depth"))
    assert set(tracks["stages"]) == {"decode", "tracks"} and set(depth["stages"]) == {"decode", "depth"}
    for status, stages in ((tracks, ("decode", "tracks")), (depth, ("decode", "depth"))):
        assert status["status"] == "complete"
        for name in stages:
            record, reference = status["stages"][name], adapt["stages"][name]
            assert set(record) == set(reference) == RECORD_FIELDS
            assert (record["key"], record["digest"]) == (reference["key"], reference["digest"])
    assert tracks["outputs"] == ["tracks.npz"] and depth["outputs"] == ["depth.npz"]


def test_commands_on_a_run_dir_record_reused_stages_and_keep_its_status(tmp_path: Path, fake_moge: None) -> None:
    clip, run_dir = tmp_path / "clip", tmp_path / "run"
    _write_clip(clip)
    assert st4r(["tracks", str(clip), "--out", str(run_dir), "--grid-size", "4", "-q"]) == 0
    status = _status(run_dir)
    status["status"] = "failed"     # a status the command leaves as it is
    (run_dir / "run.json").write_text(json.dumps(status))
    assert st4r(["tracks", str(run_dir), "--grid-size", "4", "-q"]) == 0
    assert st4r(["depth", str(run_dir), "-q"]) == 0
    after = _status(run_dir)
    assert after["status"] == "failed"
    assert after["stages"]["tracks"]["reused"] is True and after["stages"]["depth"]["reused"] is False
    assert after["stages"]["decode"] == status["stages"]["decode"]   # the run's decode, not run again
    assert sorted(after["outputs"]) == ["depth.npz", "tracks.npz"]
