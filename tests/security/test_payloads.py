"""Untrusted files never run code: real pickle payloads through every route st4r loads them.

Each payload would create a marker file when unpickled; each test proves the command refused the file
with a one-line error naming the refused type, and that the marker does not exist.
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from security_helpers import REFUSED_NAMES, micro_model, payloads
from st4r_cli.cli.app import run as cli_run
from st4r_cli.errors import St4rError
from st4r_cli.formats.scene import write_scene


def one_error_line(capsys: pytest.CaptureFixture, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def names_refused(line: str, kind: str) -> bool:
    return "refused" in line and any(name in line for name in REFUSED_NAMES[kind])


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def evil_checkpoint(path: Path, payload: object, legacy: bool = False) -> Path:
    """A torch checkpoint that looks like St4RTrack's ({'model', 'args'}) with a payload inside."""
    state = {k: v for k, v in micro_model().state_dict().items()}
    torch.save({"model": state, "args": payload}, path, _use_new_zipfile_serialization=not legacy)
    return path


# -- torch checkpoints ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(REFUSED_NAMES))
def test_adapt_model_payload_is_refused_before_any_stage(tmp_path, marker, capsys, clip_folder, kind):
    evil = evil_checkpoint(tmp_path / "st4rtrack.pth", payloads(marker)[kind])
    run_dir = tmp_path / "run"
    code = cli_run(["adapt", str(clip_folder), "--out", str(run_dir), "--model", str(evil),
                    "--device", "cpu", "-q"])
    line = one_error_line(capsys, code)
    assert names_refused(line, kind), line
    assert not marker.exists()
    assert not run_dir.exists()          # refused before the run directory was created


@pytest.mark.parametrize("legacy", [False, True])
def test_weights_import_and_load_model_refuse_payloads(tmp_path, marker, capsys, legacy):
    evil = evil_checkpoint(tmp_path / "evil.pth", payloads(marker)["os.system"], legacy=legacy)
    code = cli_run(["weights", "import", str(evil), str(tmp_path / "out.safetensors"), "-q"])
    line = one_error_line(capsys, code)
    assert "refused" in line and "system" in line, line
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    from st4r_cli.model.io import load_model

    with pytest.raises(St4rError, match="refused"):
        load_model(evil)
    assert not marker.exists()


def test_pretrain_init_payload_is_refused(tmp_path, marker, capsys):
    evil = evil_checkpoint(tmp_path / "init.pth", payloads(marker)["builtins.exec"])
    code = cli_run(["pretrain", str(tmp_path / "pre"), "--init", str(evil), "--steps", "1", "--clips", "2",
                    "--device", "cpu", "-q"])
    line = one_error_line(capsys, code)
    assert names_refused(line, "builtins.exec"), line
    assert not marker.exists()


def test_pretrain_resume_checkpoint_payload_is_refused(tmp_path, marker):
    from st4r_cli.train.loop import _resume_from

    model = micro_model()
    optimizer = torch.optim.AdamW(model.parameters())
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 3,
                "elapsed_s": 1.0, "x": payloads(marker)["subprocess.call"]}, ckpt)
    with pytest.raises(St4rError, match=r"refused to load .*(subprocess|commands)\.call"):
        _resume_from(ckpt, model, optimizer)
    assert not marker.exists()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 3,
                "elapsed_s": 1.5, "train_config": {"sizes_hw": ((32, 48),)}}, ckpt)
    assert _resume_from(ckpt, model, optimizer) == (3, 1.5)   # a genuine one still resumes


def test_doctor_does_not_run_weights_payloads(tmp_path, marker, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    evil_checkpoint(weights / "st4rtrack.pth", payloads(marker)["os.system"])
    torch.save({"model": payloads(marker)["subprocess.call"]}, weights / "scaled_offline.pth")
    torch.save({"model_config": {}, "model": payloads(marker)["builtins.exec"]}, weights / "model.pt")
    cli_run(["doctor", "--weights", str(weights), "--device", "cpu"])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    assert not marker.exists()
    assert "3 problem(s) found" in out.err


def test_tracker_and_depth_loaders_refuse_payloads(tmp_path, marker):
    pytest.importorskip("cotracker")
    pytest.importorskip("moge")
    from st4r_cli.depth.moge import load_moge
    from st4r_cli.tracking.cotracker3 import load_predictor

    cotracker = tmp_path / "scaled_offline.pth"
    torch.save({"model": payloads(marker)["os.system"]}, cotracker)
    with pytest.raises(St4rError, match=r"refused to load .*system"):
        load_predictor("offline", cotracker, "cpu")
    moge = tmp_path / "model.pt"
    torch.save({"model_config": payloads(marker)["builtins.exec"], "model": {}}, moge)
    with pytest.raises(St4rError, match=r"refused to load builtins\.exec"):
        load_moge(moge, "cpu")
    assert not marker.exists()


def test_official_st4rtrack_layout_with_namespace_args_loads(tmp_path):
    """The allowlist is wide enough for St4RTrack's {'model': 'module.'-prefixed sd, 'args': Namespace}."""
    from st4r_cli.model.io import check_checkpoint_file, load_model

    model = micro_model(seed=3)
    path = tmp_path / "official.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 7,
                "args": argparse.Namespace(lr=1e-4, batch_size=4, train_dataset="1000 @ X", seed=0,
                                           names=["a", "b"])}, path)
    check_checkpoint_file(path)
    loaded = load_model(path, "cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_model_checked_before_any_stage(tmp_path, capsys, clip_folder):
    run_dir = tmp_path / "run"
    for model, pattern in [(tmp_path / "missing.pth", "not found"),
                           (tmp_path, "not a regular file"),
                           (Path(__file__), "not a checkpoint")]:
        code = cli_run(["adapt", str(clip_folder), "--out", str(run_dir), "--model", str(model), "-q"])
        assert re.search(pattern, one_error_line(capsys, code))
        assert not run_dir.exists()


# -- TAP-Vid pickles -------------------------------------------------------------------------------
def test_tapvid_pickle_with_numpy_arrays_loads(tmp_path):
    from st4r_cli.formats.tapvid2d import read_tapvid_pickle

    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (3, 8, 10, 3), dtype=np.uint8)
    points = rng.random((4, 3, 2)).astype(np.float32)
    occluded = rng.random((4, 3)) > 0.5
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f"davis{protocol}.pkl"
        data = {"bear": {"video": video, "points": points, "occluded": occluded, "scale": np.float32(2.0),
                         "meta": ["x", 1, 2.5, (1, 2)]}}
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        (clip,) = read_tapvid_pickle(path)
        assert clip.name == "bear" and np.array_equal(clip.frames, video)
        np.testing.assert_allclose(clip.tracks_xy, points * [10, 8] - 0.5, rtol=1e-6)
        assert np.array_equal(clip.visible, ~occluded)


@pytest.mark.parametrize("kind", sorted(REFUSED_NAMES))
def test_eval_tapvid_pickle_payload_is_refused(tmp_path, marker, capsys, kind):
    gt = tmp_path / "tapvid_davis.pkl"
    gt.write_bytes(pickle.dumps({"bear": {"video": np.zeros((2, 4, 4, 3), np.uint8),
                                          "points": payloads(marker)[kind], "occluded": np.zeros((1, 2), bool)}}))
    prediction = tmp_path / "pred"
    prediction.mkdir()
    code = cli_run(["eval", str(prediction), "--gt", str(gt), "-q"])
    line = one_error_line(capsys, code)
    assert names_refused(line, kind), line
    assert not marker.exists()


# -- TAPVid-3D npz ---------------------------------------------------------------------------------
def _tapvid3d_clip():
    from st4r_cli.formats.tapvid3d import TapVid3DClip

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (3, 16, 24, 3), dtype=np.uint8)
    tracks = np.concatenate([rng.uniform(-1, 1, (5, 3, 2)), rng.uniform(2, 4, (5, 3, 1))], axis=2)
    return TapVid3DClip(frames=frames, tracks_cam=tracks, visible=np.ones((5, 3), bool),
                        fx_fy_cx_cy=np.array([20.0, 20.0, 12.0, 8.0]), queries_xyt=None,
                        extrinsics_w2c=None, depth=None)


def test_official_tapvid3d_layout_loads_without_allow_pickle(tmp_path, monkeypatch):
    """Published files keep JPEG frames in an object array: read by the restricted unpickler."""
    from st4r_cli.formats.tapvid3d import read_tapvid3d, write_tapvid3d

    path = write_tapvid3d(tmp_path / "clip.npz", _tapvid3d_clip())
    real_load = np.load

    def no_pickle_load(*args, **kwargs):
        assert not kwargs.get("allow_pickle", False), "np.load called with allow_pickle=True"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", no_pickle_load)
    clip = read_tapvid3d(path)
    assert clip.frames.shape == (3, 16, 24, 3)
    np.testing.assert_allclose(clip.tracks_cam, _tapvid3d_clip().tracks_cam, rtol=1e-6)


@pytest.mark.parametrize("kind", sorted(REFUSED_NAMES))
def test_eval_tapvid3d_payload_is_refused(tmp_path, marker, capsys, kind):
    images = np.empty(2, dtype=object)
    images[0] = payloads(marker)[kind]
    images[1] = b"\xff\xd8"
    gt = tmp_path / "clip.npz"
    np.savez(gt, images_jpeg_bytes=images, tracks_XYZ=np.ones((2, 3, 3), np.float32),
             visibility=np.ones((2, 3), bool), fx_fy_cx_cy=np.ones(4, np.float32))
    prediction = tmp_path / "pred"
    prediction.mkdir()
    write_scene(prediction / "scene.npz", small_scene())
    code = cli_run(["eval", str(prediction), "--gt", str(gt), "-q"])
    line = one_error_line(capsys, code)
    assert names_refused(line, kind), line
    assert not marker.exists()


def small_scene(num_frames: int = 2, hw: tuple[int, int] = (16, 24), num_tracks: int = 3) -> dict:
    rng = np.random.default_rng(0)
    t, (h, w), n = num_frames, hw, num_tracks
    return {"tracks3d": rng.random((n, t, 3)).astype(np.float32), "tracks2d": rng.random((n, t, 2)).astype(np.float32),
            "visible": np.ones((n, t), bool), "query_xy": rng.random((n, 2)).astype(np.float32),
            "query_t": np.zeros(n, np.int32), "sigma": np.ones((n, t), np.float32),
            "pointmaps": rng.random((t, h, w, 3)).astype(np.float32), "conf": np.ones((t, h, w), np.float32),
            "colors": np.zeros((t, h, w, 3), np.uint8),
            "intrinsics": np.array([[20, 0, 12], [0, 20, 8], [0, 0, 1]], np.float32),
            "cam_c2w": np.tile(np.eye(4, dtype=np.float32), (t, 1, 1))}


def test_tapvid3d_object_array_of_other_objects_is_refused(tmp_path):
    from st4r_cli.safe_load import load_npz_untrusted

    images = np.empty(1, dtype=object)
    images[0] = {"not": "bytes"}
    path = tmp_path / "clip.npz"
    np.savez(path, images_jpeg_bytes=images)
    with pytest.raises(St4rError, match="holds dict objects"):
        load_npz_untrusted(path)
