"""A depth backend is a module and one registration (`st4r_cli.backends`): this test module is a fake
backend (`compute`, `check`, `input_files` below), registered here, and the depth stage, `st4r depth`,
`st4r adapt` and the API run it without any other file knowing about it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from st4r_cli import backends
from st4r_cli.cli.app import run as st4r
from st4r_cli.errors import St4rError

CALLS: list[str] = []


# -- the fake backend's module: this one ----------------------------------------------------------------
def compute(frames, cfg, device="cpu", cameras=None):
    """Depth = 1 + the frame's brightness (so it depends on the frames); valid everywhere."""
    CALLS.append("compute")
    frames = np.asarray(frames)
    depth = 1.0 + frames.mean(axis=-1, dtype=np.float32) / 255.0
    h, w = frames.shape[1:3]
    k_mat = np.array([[w, 0, (w - 1) / 2], [0, w, (h - 1) / 2], [0, 0, 1]], np.float32)
    return {"depth": depth.astype(np.float32), "valid": np.ones(depth.shape, bool), "intrinsics": k_mat}


def check(cfg) -> None:
    CALLS.append("check")


def input_files(cfg) -> list[Path]:
    return []


# -- the test -------------------------------------------------------------------------------------------
@pytest.fixture
def fake_backend():
    CALLS.clear()
    backends.register("depth", "fake", __name__, metric_depth=True)   # the one registration line
    yield
    backends.unregister("depth", "fake")


def test_the_depth_stage_runs_a_backend_registered_here(fake_backend, tmp_path: Path) -> None:
    from st4r_cli.configs import DepthConfig
    from st4r_cli.stages.depth import check_backend_available, compute_depth

    frames = np.random.default_rng(1).integers(0, 255, (3, 16, 24, 3), dtype=np.uint8)
    cfg = DepthConfig(backend="fake")
    check_backend_available(cfg)
    out = compute_depth(frames, cfg, "cpu")
    np.testing.assert_array_equal(out["depth"], compute(frames, cfg)["depth"])
    assert CALLS == ["check", "compute", "compute"]
    assert "fake" in backends.names("depth") and backends.get("depth", "fake").metric_depth


def test_st4r_depth_adapt_and_the_api_run_it(fake_backend, tmp_path: Path, make_plane_clip) -> None:
    from st4r_cli.api import build_config

    clip = make_plane_clip(tmp_path / "clip", num_frames=4, hw=(48, 64))
    assert st4r(["depth", str(clip), "--out", str(tmp_path / "depth"), "--set", "depth.backend=fake", "-q"]) == 0
    written = np.load(tmp_path / "depth" / "depth.npz")
    status = json.loads((tmp_path / "depth" / "run.json").read_text())
    assert set(status["stages"]) == {"decode", "depth"} and written["valid"].all()
    assert st4r(["adapt", str(clip), "--out", str(tmp_path / "adapt"), "--until", "depth", "--set",
                 "depth.backend=fake", "--set", "cameras.refine=none", "--set", "tracks.grid_size=4", "-q"]) == 0
    adapted = json.loads((tmp_path / "adapt" / "run.json").read_text())
    assert adapted["stages"]["depth"]["key"] == status["stages"]["depth"]["key"]   # one stage, one key
    assert build_config(clip, depth="fake").depth.backend == "fake"


def test_a_backend_that_breaks_the_stage_contract_is_refused(fake_backend, monkeypatch) -> None:
    from st4r_cli.configs import DepthConfig
    from st4r_cli.stages.depth import compute_depth

    monkeypatch.setattr(backends.get("depth", "fake").load(), "compute",
                        lambda frames, cfg, device, cameras: {"depth": np.zeros(np.shape(frames)[:3], np.float32)})
    with pytest.raises(St4rError, match="depth backend 'fake' gave no valid, intrinsics"):
        compute_depth(np.zeros((2, 8, 8, 3), np.uint8), DepthConfig(backend="fake"), "cpu")
    backends.unregister("depth", "fake")
    with pytest.raises(St4rError, match="unknown depth backend 'fake' \\(use multiview, moge, none\\)"):
        compute_depth(np.zeros((2, 8, 8, 3), np.uint8), DepthConfig(backend="fake"), "cpu")
