"""CoTracker3 backend end to end with random-weight checkpoints saved in the official format.

The official checkpoints are plain state dicts of `CoTrackerThreeOffline` / `CoTrackerThreeOnline`
(stride 4, correlation radius 3, windows 60 / 16); here they are built from seeded random weights.
The model runs at a reduced internal resolution (`cotracker_model_hw`) to keep the test fast on CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from st4r_cli.errors import St4rError
from st4r_cli.stages.tracks import TracksConfig, check_backend_available, compute_tracks

SMALL_HW = (64, 96)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    from cotracker.models.core.cotracker.cotracker3_offline import CoTrackerThreeOffline
    from cotracker.models.core.cotracker.cotracker3_online import CoTrackerThreeOnline

    folder = tmp_path_factory.mktemp("cotracker_weights")
    torch.manual_seed(0)
    paths = {"offline": folder / "scaled_offline.pth", "online": folder / "scaled_online.pth"}
    torch.save(CoTrackerThreeOffline(stride=4, corr_radius=3, window_len=60).state_dict(), paths["offline"])
    torch.save(CoTrackerThreeOnline(stride=4, corr_radius=3, window_len=16).state_dict(), paths["online"])
    return paths


def _clip() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 40, 56, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_cotracker3_end_to_end(checkpoints: dict[str, Path], tmp_path: Path, mode: str) -> None:
    queries = tmp_path / "q.txt"
    queries.write_text("0, 10, 12\n0, 30.5, 20\n2, 40, 30\n")
    cfg = TracksConfig(backend="cotracker3", cotracker_mode=mode, query_mode="file",
                       query_file=str(queries), cotracker_weights=str(checkpoints[mode]),
                       cotracker_model_hw=SMALL_HW)
    out = compute_tracks(_clip(), cfg, "cpu", seed=0)
    assert out["tracks_xy"].shape == (3, 5, 2) and out["tracks_xy"].dtype == np.float32
    assert out["visible"].shape == (3, 5) and out["visible"].dtype == bool
    assert np.isfinite(out["tracks_xy"]).all()
    # the query frame holds the query itself, visible; frames before a query repeat it, not visible
    assert np.allclose(out["tracks_xy"][[0, 1], 0], [[10, 12], [30.5, 20]])
    assert np.allclose(out["tracks_xy"][2, :3], [[40, 30]] * 3)
    assert out["visible"][[0, 1], 0].all() and out["visible"][2, 2] and not out["visible"][2, :2].any()
    assert ((out["confidence"] >= 0) & (out["confidence"] <= 1)).all()


def test_missing_weights_say_where_to_get_them(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "scaled_offline.pth"
    with pytest.raises(St4rError) as info:
        check_backend_available(TracksConfig(backend="cotracker3", cotracker_weights=str(missing)))
    message = str(info.value)
    assert str(missing) in message and "\n" not in message
    assert "https://huggingface.co/facebook/cotracker3/resolve/main/scaled_offline.pth" in message
    with pytest.raises(St4rError, match="scaled_online.pth"):
        check_backend_available(TracksConfig(backend="cotracker3", cotracker_mode="online",
                                             cotracker_weights=str(tmp_path / "x.pth")))


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "cotracker.predictor", None)   # import fails as if not installed
    with pytest.raises(St4rError, match=r"pip install --no-deps autosegmentor==3\.0\.1"):
        check_backend_available(TracksConfig(backend="cotracker3"))


def test_wrong_checkpoint_is_one_line_error(tmp_path: Path) -> None:
    import torch

    bad = tmp_path / "bad.pth"
    torch.save({"something": torch.zeros(3)}, bad)
    cfg = TracksConfig(backend="cotracker3", cotracker_weights=str(bad), cotracker_model_hw=SMALL_HW)
    with pytest.raises(St4rError, match="is not a CoTracker3 offline checkpoint"):
        compute_tracks(_clip(), cfg, "cpu")


def test_cli_missing_backend_exits_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import cv2

    from st4r_cli.cli.app import run

    folder = tmp_path / "clip"
    folder.mkdir()
    for t, frame in enumerate(_clip()):
        cv2.imwrite(str(folder / f"{t:05d}.png"), frame)
    code = run(["tracks", str(folder), "--tracker", "cotracker3", "--weights",
                str(tmp_path / "missing.pth"), "--out", str(tmp_path / "run"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("error: the cotracker3 tracker (offline) needs its checkpoint")
    assert not (tmp_path / "run" / "tracks.npz").exists()
