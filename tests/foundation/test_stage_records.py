"""`st4r tracks` and `st4r depth` go through the pipeline's orchestrator (`pipeline.run_pipeline`): their
stages are recorded in run.json as `st4r adapt` records them (same fields, same cache keys and digests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from st4r_cli.cli.app import run as st4r

RECORD_FIELDS = {"key", "digest", "file", "reused", "seconds", "peak_rss_mb"}


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


def test_tracks_and_depth_record_their_stages_as_adapt_does(tmp_path: Path, fake_moge: None, make_plane_clip) -> None:
    clip = make_plane_clip(tmp_path / "clip", num_frames=4, hw=(64, 96))
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


def test_commands_on_a_run_dir_record_reused_stages_and_keep_its_status(tmp_path: Path, fake_moge: None,
                                                                         make_plane_clip) -> None:
    clip, run_dir = make_plane_clip(tmp_path / "clip", num_frames=4, hw=(64, 96)), tmp_path / "run"
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
