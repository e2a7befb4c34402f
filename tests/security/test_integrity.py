"""A run never touches files outside itself; stale or unfinished results are never used; user mistakes
are one-line errors before any stage; non-regular inputs are refused; `st4r adapt --queries`."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from security_helpers import adapt_args, texture_frames
from st4r_cli.cli.app import run as cli_run
from st4r_cli.runs import Run


def one_error_line(capsys: pytest.CaptureFixture, code: int, pattern: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "unexpected" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory, clip_folder, micro_checkpoint) -> Path:
    run_dir = tmp_path_factory.mktemp("done") / "run"
    assert cli_run(adapt_args(clip_folder, run_dir, micro_checkpoint)) == 0
    return run_dir


def copy_run(run_dir: Path, dst: Path) -> Path:
    shutil.copytree(run_dir, dst)
    return dst


# -- 2. nothing outside the run is deleted or overwritten ---------------------------------------
def test_crafted_outputs_never_delete_outside_the_run(tmp_path, capsys, clip_folder, micro_checkpoint, complete_run):
    victims = tmp_path / "victims"
    victims.mkdir()
    relative, absolute = victims / "a.txt", victims / "b.txt"
    relative.write_text("keep me")
    absolute.write_text("keep me too")
    run_dir = copy_run(complete_run, tmp_path / "runs" / "run")
    status = json.loads((run_dir / "run.json").read_text())
    (run_dir / "link").symlink_to(victims)
    for crafted in (["scene.npz", "../../victims/a.txt"], [str(absolute)], ["cache/../../../victims/a.txt"],
                    ["link/a.txt"], ["scene.npz", "config.yaml"], ["cache"], [7]):
        status["outputs"] = crafted
        (run_dir / "run.json").write_text(json.dumps(status))
        code = cli_run(adapt_args(clip_folder, run_dir, micro_checkpoint))
        one_error_line(capsys, code, r"refusing to delete|'outputs' must be a list of file names")
        assert relative.read_text() == "keep me" and absolute.read_text() == "keep me too"
        assert (run_dir / "scene.npz").is_file()      # refused before anything was removed
        assert (run_dir / "config.yaml").is_file() and (run_dir / "cache").is_dir()


def test_cache_link_out_of_the_run_is_refused(tmp_path, capsys, clip_folder, micro_checkpoint, complete_run):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / ".x.npz.tmp-999999-abcd.npz").write_text("someone else's file")
    run_dir = copy_run(complete_run, tmp_path / "run")
    shutil.rmtree(run_dir / "cache")
    (run_dir / "cache").symlink_to(outside)
    code = cli_run(adapt_args(clip_folder, run_dir, micro_checkpoint))
    one_error_line(capsys, code, r"leads outside the run directory")
    assert [p.name for p in outside.iterdir()] == [".x.npz.tmp-999999-abcd.npz"]
    code = cli_run(["tracks", str(run_dir), "-q", "--device", "cpu"])
    one_error_line(capsys, code, r"leads outside the run directory")


# -- 4. stale results ------------------------------------------------------------------------------
def test_failed_rerun_leaves_nothing_export_or_eval_would_use(tmp_path, capsys, clip_folder, micro_checkpoint,
                                                              complete_run):
    run_dir = copy_run(complete_run, tmp_path / "run")
    old_scene = (run_dir / "scene.npz").read_bytes()
    queries = tmp_path / "outside.txt"
    queries.write_text("0, 5000, 5000\n")          # well formed, but outside the frames: fails in tracks
    code = cli_run(adapt_args(clip_folder, run_dir, micro_checkpoint, "--queries", str(queries)))
    one_error_line(capsys, code, r"outside the")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert not (run_dir / "scene.npz").exists()
    (run_dir / "scene.npz").write_bytes(old_scene)  # even a stale scene put back by hand is not used
    from st4r_cli.formats.clip import write_clip

    write_clip(tmp_path / "gt", texture_frames(), {"cam_c2w": np.tile(np.eye(4), (8, 1, 1))})
    for args in (["export", str(run_dir), "-q"], ["export", str(run_dir / "scene.npz"), "-q"],
                 ["eval", str(run_dir), "--gt", str(tmp_path / "gt"), "-q"]):
        code = cli_run(args)
        one_error_line(capsys, code, r"is not complete \(status failed")
    assert not (run_dir / "export").exists() and not (run_dir / "metrics.json").exists()


def test_running_or_unknown_runs_are_refused(tmp_path, capsys, complete_run):
    run_dir = copy_run(complete_run, tmp_path / "run")
    status = json.loads((run_dir / "run.json").read_text())
    status["status"] = "running"
    (run_dir / "run.json").write_text(json.dumps(status))
    one_error_line(capsys, cli_run(["export", str(run_dir), "-q"]), r"not complete \(status running")
    (run_dir / "run.json").unlink()
    one_error_line(capsys, cli_run(["export", str(run_dir), "-q"]), r"not complete \(status unknown")


def test_complete_run_exports_and_evaluates(tmp_path, capsys, complete_run):
    from st4r_cli.formats.clip import write_clip

    run_dir = copy_run(complete_run, tmp_path / "run")
    assert cli_run(["export", str(run_dir), "--tum", "-q"]) == 0, capsys.readouterr().err
    assert (run_dir / "export" / "trajectory_tum.txt").is_file()
    write_clip(tmp_path / "gt", texture_frames(), {"cam_c2w": np.tile(np.eye(4), (8, 1, 1))})
    assert cli_run(["eval", str(run_dir), "--gt", str(tmp_path / "gt"), "-q"]) == 0, capsys.readouterr().err
    assert "camera/ate" in json.loads((run_dir / "metrics.json").read_text())["mean"]


# -- 5. st4r tracks / st4r depth: lock and status ------------------------------------------------
def test_tracks_refuses_a_run_another_process_holds(tmp_path, capsys, complete_run):
    run_dir = copy_run(complete_run, tmp_path / "run")
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    with Run.open(run_dir, lock=True):           # as `st4r adapt` holds it while it works
        for command in ("tracks", "depth"):
            code = cli_run([command, str(run_dir), "-q", "--device", "cpu"])
            line = one_error_line(capsys, code, r"in use by another st4r process|moge")
            assert command == "depth" or "in use" in line
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
    assert cli_run(["tracks", str(run_dir), "-q", "--device", "cpu"]) == 0   # free again


def test_tracks_error_marks_the_run_failed(tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    run_dir = tmp_path / "run"
    code = cli_run(["tracks", str(bad), "--out", str(run_dir), "-q", "--device", "cpu"])
    one_error_line(capsys, code, r"cannot read .* as a video|corrupt")
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "failed" and status["error"]
    assert not (run_dir / "tracks.npz").exists()


def test_tracks_values_checked_before_the_run_is_created(tmp_path, capsys, clip_folder):
    run_dir = tmp_path / "run"
    code = cli_run(["tracks", str(clip_folder), "--out", str(run_dir), "--set", "adapt.lr=.nan", "-q"])
    one_error_line(capsys, code, r"adapt\.lr=\.nan: expected a finite number")
    assert not run_dir.exists()


# -- 6. user mistakes are one-line errors before any stage runs ----------------------------------
@pytest.mark.parametrize("override, pattern", [
    ("decode.end=abc", r"--set decode\.end=abc: expected an integer"),
    ("adapt.lr=.nan", r"--set adapt\.lr=\.nan: expected a finite number"),
    ("cameras.ba_accept_px=inf", r"expected a finite number"),
    ("decode.upscale=maybe", r"expected true or false"),
    ("tracks.cotracker_model_hw=[1,2,3]", r"expected a list of 2 values"),
])
def test_bad_set_values(tmp_path, capsys, clip_folder, override, pattern):
    run_dir = tmp_path / "run"
    code = cli_run(["adapt", str(clip_folder), "--out", str(run_dir), "--set", override, "-q"])
    one_error_line(capsys, code, pattern)
    assert not run_dir.exists()


def test_config_file_with_a_string_for_a_number(tmp_path, capsys, clip_folder):
    config = tmp_path / "config.yaml"
    config.write_text("decode:\n  long_side: large\n")
    code = cli_run(["adapt", str(clip_folder), "--out", str(tmp_path / "run"), "--config", str(config), "-q"])
    one_error_line(capsys, code, rf"config {re.escape(str(config))}: decode\.long_side='large': expected an integer")
    config.write_text("adapt:\n  lr: .nan\n")
    code = cli_run(["adapt", str(clip_folder), "--out", str(tmp_path / "run"), "--config", str(config), "-q"])
    one_error_line(capsys, code, r"adapt\.lr=nan: expected a finite number")
    config.write_text("seed: [1, 2]\n")
    code = cli_run(["adapt", str(clip_folder), "--out", str(tmp_path / "run"), "--config", str(config), "-q"])
    one_error_line(capsys, code, r"seed=\[1, 2\]: expected an integer")
    assert not (tmp_path / "run").exists()


def test_decompression_bomb_is_a_user_error(tmp_path, capsys, monkeypatch):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(2):
        Image.fromarray(np.full((64, 64, 3), 10 * t, np.uint8)).save(folder / f"{t}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)   # 4096 pixels > 2 x limit: a "bomb"
    code = cli_run(["adapt", str(folder), "--out", str(tmp_path / "run"), "--until", "decode", "-q",
                    "--device", "cpu"])
    one_error_line(capsys, code, rf"image {re.escape(str(folder / '0.png'))} is too large to read safely")


def test_full_disk_names_the_path(tmp_path, capsys, clip_folder, monkeypatch):
    real_savez = np.savez

    def no_space(file, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", no_space)
    run_dir = tmp_path / "run"
    code = cli_run(["adapt", str(clip_folder), "--out", str(run_dir), "--until", "decode", "-q", "--device", "cpu"])
    line = one_error_line(capsys, code, r"cannot write .*No space left on device")
    assert str(run_dir / "cache" / "decode-") in line
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert not [p for p in run_dir.rglob("*") if ".tmp-" in p.name]
    monkeypatch.setattr(np, "savez", real_savez)


def test_nan_poses_in_ground_truth(tmp_path, capsys, complete_run):
    from st4r_cli.formats.clip import write_clip

    run_dir = copy_run(complete_run, tmp_path / "run")
    frames = np.zeros((8, 32, 48, 3), np.uint8)
    poses = np.tile(np.eye(4), (8, 1, 1))
    poses[5, 0, 3] = np.nan
    write_clip(tmp_path / "gt", frames, {"cam_c2w": poses})
    code = cli_run(["eval", str(run_dir), "--gt", str(tmp_path / "gt"), "-q"])
    one_error_line(capsys, code, r"ground-truth cam_c2w of frame 5 is not finite")


# -- 7. non-regular inputs -------------------------------------------------------------------------
def test_dev_zero_is_refused_at_once(tmp_path):
    for command in ("adapt", "tracks", "depth"):
        done = subprocess.run([sys.executable, "-m", "st4r_cli.cli.app", command, "/dev/zero", "--out",
                               str(tmp_path / "run"), "--device", "cpu"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == "error: input /dev/zero is a character device, not a regular file or a folder of images"
    assert not (tmp_path / "run").exists()


def test_fifo_input_is_refused(tmp_path, capsys):
    fifo = tmp_path / "video.mp4"
    os.mkfifo(fifo)
    code = cli_run(["adapt", str(fifo), "--out", str(tmp_path / "run"), "-q"])
    one_error_line(capsys, code, r"is a FIFO, not a regular file")


# -- 8. st4r adapt --queries -----------------------------------------------------------------------
def test_adapt_queries_option(tmp_path, capsys, clip_folder, micro_checkpoint):
    points = np.array([[0, 10.0, 8.0], [0, 30.0, 20.0], [2, 24.0, 16.0]], np.float32)
    np.save(tmp_path / "queries.npy", points)
    run_dir = tmp_path / "run"
    code = cli_run(adapt_args(clip_folder, run_dir, micro_checkpoint, "--queries", str(tmp_path / "queries.npy")))
    assert code == 0, capsys.readouterr().err
    config = Run.open(run_dir).config
    assert config.tracks.query_mode == "file" and config.tracks.query_file == str(tmp_path / "queries.npy")
    tracks = Run.open(run_dir).artifact("tracks")
    np.testing.assert_array_equal(tracks["queries"], points)
    from st4r_cli.formats.scene import read_scene

    scene = read_scene(run_dir / "scene.npz")
    assert scene["tracks3d"].shape[0] == 3
    np.testing.assert_array_equal(scene["query_t"], [0, 0, 2])
    np.testing.assert_allclose(scene["query_xy"], points[:, 1:])


@pytest.mark.parametrize("content, pattern", [(None, r"query file not found"),
                                              ("0, nan, 3\n", r"non-finite"),
                                              ("1 2 3 4\n", r"must hold N rows")])
def test_adapt_queries_checked_before_any_stage(tmp_path, capsys, clip_folder, content, pattern):
    path = tmp_path / "q.txt"
    if content is not None:
        path.write_text(content)
    code = cli_run(["adapt", str(clip_folder), "--out", str(tmp_path / "run"), "--queries", str(path), "-q"])
    one_error_line(capsys, code, pattern)
    assert not (tmp_path / "run").exists()
