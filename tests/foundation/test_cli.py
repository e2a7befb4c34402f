"""The `st4r` CLI: bad input gives one `error:` line and a non-zero exit; adapt caches; fast --help."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from foundation_videos import gray_level_frames, noise_video, write_video
from st4r_cli.cli.app import run as cli_run


def st4r(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_run([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, pattern: str) -> str:
    assert code != 0
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    import re
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


def assert_not_complete(run_dir: Path) -> None:
    status_file = run_dir / "run.json"
    if status_file.exists():
        assert json.loads(status_file.read_text())["status"] != "complete"
    assert not (run_dir / "scene.npz").exists()


@pytest.fixture(scope="module")
def small_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("v") / "small.mp4", gray_level_frames(10, (48, 64)))


# -- bad input -------------------------------------------------------------------------------------
def test_missing_input(capsys, tmp_path):
    code, _, err = st4r(capsys, "adapt", tmp_path / "nope.mp4", "--out", tmp_path / "run")
    assert_one_line_error(code, err, r"input not found: .*nope\.mp4")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", [b"this is a text file, not a video\n" * 50, b""])
def test_file_that_is_not_a_video(capsys, tmp_path, content):
    path = tmp_path / "fake.mp4"
    path.write_bytes(content)
    code, _, err = st4r(capsys, "adapt", path, "--out", tmp_path / "run", "-q")
    assert_one_line_error(code, err, r"cannot read .*fake\.mp4 as a video")
    assert_not_complete(tmp_path / "run")
    assert (tmp_path / "run" / "config.yaml").is_file()      # config is written before anything else


@pytest.mark.parametrize("faststart, pattern", [(False, "cannot read .* as a video"),
                                                (True, "corrupt or truncated: decoding stopped after")])
def test_truncated_video(capsys, tmp_path, faststart, pattern):
    path = noise_video(tmp_path / "full.mp4", faststart=faststart)
    data = path.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    code, _, err = st4r(capsys, "adapt", tmp_path / "cut.mp4", "--out", tmp_path / "run", "-q")
    assert_one_line_error(code, err, pattern)
    assert_not_complete(tmp_path / "run")


def test_corrupt_video(capsys, tmp_path):
    path = noise_video(tmp_path / "full.mp4")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle: middle + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    (tmp_path / "bad.mp4").write_bytes(bytes(data))
    code, _, err = st4r(capsys, "adapt", tmp_path / "bad.mp4", "--out", tmp_path / "run", "-q")
    line = assert_one_line_error(code, err, r"corrupt or truncated")
    assert "--end" in line                                     # tells how to keep the good part
    assert_not_complete(tmp_path / "run")


def test_zero_and_one_decodable_frames(capsys, tmp_path, small_video):
    code, _, err = st4r(capsys, "adapt", small_video, "--out", tmp_path / "r0", "--start", "50", "-q")
    assert_one_line_error(code, err, r"0 decodable frame\(s\) in the selected range.*at least 2")
    assert_not_complete(tmp_path / "r0")
    one = write_video(tmp_path / "one.mp4", gray_level_frames(1))
    code, _, err = st4r(capsys, "adapt", one, "--out", tmp_path / "r1", "-q")
    assert_one_line_error(code, err, r"1 decodable frame\(s\); st4r needs at least 2")
    assert_not_complete(tmp_path / "r1")
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "still.png")
    code, _, err = st4r(capsys, "adapt", tmp_path / "still.png", "--out", tmp_path / "r3", "-q")
    assert_one_line_error(code, err, r"1 decodable frame\(s\); st4r needs at least 2 \(for a sequence of images")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    code, _, err = st4r(capsys, "adapt", empty, "--out", tmp_path / "r2", "-q")
    assert_one_line_error(code, err, r"no images")


@pytest.mark.parametrize("args, pattern", [
    (["--long-side", "100000"], r"long side 100000 is out of range"),
    (["--long-side", "0"], r"long side 0 is out of range"),
    (["--set", "decode.multiple=1000"], r"multiple(=1000:)? must be in"),
])
def test_absurd_processing_resolution(capsys, tmp_path, small_video, args, pattern):
    code, _, err = st4r(capsys, "adapt", small_video, "--out", tmp_path / "run", *args)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "run").exists()


def test_absurd_video_resolution(capsys, tmp_path):
    frames = np.zeros((3, 16, 512, 3), np.uint8)
    path = write_video(tmp_path / "thin.mkv", frames, codec="ffv1", pix_fmt="bgr0")
    code, _, err = st4r(capsys, "adapt", path, "--out", tmp_path / "run", "-q")
    assert_one_line_error(code, err, r"absurd frame size 512x16")
    assert_not_complete(tmp_path / "run")


def test_unwritable_output_directory(capsys, tmp_path, small_video):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = st4r(capsys, "adapt", small_video, "--out", blocker / "run")
    assert_one_line_error(code, err, r"cannot create output directory .*a_file/run")
    code, _, err = st4r(capsys, "adapt", small_video, "--out", blocker)
    assert_one_line_error(code, err, r"output path exists and is not a directory")
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("args, pattern", [
    (["--device", "gpu"], r"Invalid value for '--device'.*gpu"),
    (["--tracker", "magic"], r"Invalid value for '--tracker'"),
    (["--depth", "lidar"], r"Invalid value for '--depth'"),
    (["--set", "tracks.no_such_field=1"], r"no option 'no_such_field'"),
    (["--set", "tracks.grid_size=many"], r"expected an integer"),
    (["--set", "adapt.prior_kind=foo"], r"adapt.prior_kind must be points, anchor or depth"),
    (["--set", "cameras.refine=magic"], r"cameras.refine must be ba or none"),
    (["--force", "everything"], r"--force: unknown stage\(s\) everything"),
    (["--stride", "0"], r"--stride must be >= 1"),
    (["--max-frames", "1"], r"--max-frames must be >= 2"),
    (["--stride", "two"], r"Invalid value for '--stride'"),
    (["--no-such-flag"], r"No such option: --no-such-flag"),
    (["--quiet", "--verbose"], r"cannot be used together"),
])
def test_unknown_option_values(capsys, tmp_path, small_video, args, pattern):
    code, _, err = st4r(capsys, "adapt", small_video, "--out", tmp_path / "run", *args)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(capsys, tmp_path, small_video):
    code, _, err = st4r(capsys, "adapt", small_video, "--out", tmp_path / "run", "--device", "cuda")
    assert_one_line_error(code, err, r"--device cuda was requested but no CUDA device")


def test_unknown_command_and_run_dir(capsys, tmp_path):
    code, _, err = st4r(capsys, "frobnicate")
    assert_one_line_error(code, err, r"No such command 'frobnicate'")


def test_interrupt_and_unexpected_errors(capsys, tmp_path, small_video, monkeypatch):
    import st4r_cli.pipeline as pipeline

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "decode", interrupted)
    code, _, err = st4r(capsys, "adapt", small_video, "--out", tmp_path / "r1", "-q")
    assert code == 130
    assert_one_line_error(code, err, r"interrupted")
    assert json.loads((tmp_path / "r1" / "run.json").read_text())["status"] == "interrupted"

    def bug(*_args, **_kwargs):
        raise ValueError("a bug in st4r")

    monkeypatch.setattr(pipeline, "decode", bug)
    code, _, err = st4r(capsys, "adapt", small_video, "--out", tmp_path / "r2", "-q")
    assert code == 1
    assert_one_line_error(code, err, r"unexpected ValueError: a bug in st4r \(rerun with --verbose")
    assert json.loads((tmp_path / "r2" / "run.json").read_text())["status"] == "failed"
    code, _, err = st4r(capsys, "adapt", small_video, "--out", tmp_path / "r2", "--verbose")
    assert code == 1 and "Traceback" in err and "a bug in st4r" in err


# -- adapt through the cache ------------------------------------------------------------------------
def test_adapt_decode_is_cached_and_recomputed_on_change(capsys, tmp_path, small_video):
    run_dir = tmp_path / "run"
    base = ["adapt", small_video, "--out", run_dir, "--until", "decode"]
    code, _, err = st4r(capsys, *base)
    assert code == 0, err
    assert "decode: computed" in err
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "complete"
    frames = np.load(run_dir / status["stages"]["decode"]["file"])["frames"]
    assert frames.shape == (10, 48, 64, 3)
    code, _, err = st4r(capsys, *base)
    assert code == 0 and "decode: reused" in err
    code, _, err = st4r(capsys, *base, "--force", "decode")
    assert code == 0 and "decode: computed" in err
    code, _, err = st4r(capsys, *base, "--stride", "2")
    assert code == 0 and "decode: computed" in err
    status = json.loads((run_dir / "run.json").read_text())
    assert np.load(run_dir / status["stages"]["decode"]["file"])["frames"].shape[0] == 5
    config = (run_dir / "config.yaml").read_text()
    assert "stride: 2" in config and str(small_video.resolve()) in config


def test_pipeline_recomputes_only_what_depends_on_a_change(capsys, tmp_path, small_video, monkeypatch):
    """decode -> tracks/depth wiring with stand-in stage functions (the real ones live elsewhere)."""
    import st4r_cli.stages.depth as depth_stage
    import st4r_cli.stages.tracks as tracks_stage

    calls = {"tracks": 0, "depth": 0}

    def fake_tracks(frames, cfg, device, seed):
        calls["tracks"] += 1
        return {"tracks_xy": np.zeros((4, len(frames), 2), np.float32) + seed}

    def fake_depth(frames, cfg, device, cameras=None):
        calls["depth"] += 1
        return {"depth": np.ones(frames.shape[:3], np.float32)}

    from st4r_cli import backends

    monkeypatch.setattr(tracks_stage, "compute_tracks", fake_tracks, raising=False)
    monkeypatch.setattr(depth_stage, "compute_depth", fake_depth, raising=False)
    monkeypatch.setattr(depth_stage.DepthConfig, "backend", "fake", raising=False)
    # a registered backend passes the config check (a copy of the registry, restored after the test)
    monkeypatch.setattr(backends, "_REGISTRY", {kind: dict(found) for kind, found in backends._REGISTRY.items()})
    backends.register("depth", "fake", "st4r_cli.depth.multiview")
    run_dir = tmp_path / "run"
    base = ["adapt", small_video, "--out", run_dir, "--until", "depth", "--set", "depth.backend=fake",
            "--set", "cameras.refine=none"]
    assert st4r(capsys, *base)[0] == 0
    assert calls == {"tracks": 1, "depth": 1}
    assert st4r(capsys, *base)[0] == 0
    assert calls == {"tracks": 1, "depth": 1}                  # all reused
    assert st4r(capsys, *base, "--seed", "3")[0] == 0
    assert calls == {"tracks": 2, "depth": 1}                  # the seed only matters to tracks
    assert st4r(capsys, *base, "--seed", "3", "--set", "tracks.grid_size=8")[0] == 0
    assert calls == {"tracks": 3, "depth": 1}
    assert st4r(capsys, *base, "--seed", "3", "--set", "tracks.grid_size=8", "--stride", "2")[0] == 0
    assert calls == {"tracks": 4, "depth": 2}                  # new frames: both recompute


# -- the console script -----------------------------------------------------------------------------
def test_console_script_help_is_fast_and_light(tmp_path):
    exe = shutil.which("st4r") or str(Path(sys.executable).with_name("st4r"))
    start = time.perf_counter()
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and "adapt" in done.stdout and "doctor" in done.stdout
    assert elapsed < 2.0, f"st4r --help took {elapsed:.2f} s"
    probe = ("import sys, st4r_cli.cli.app; heavy = {'torch', 'cv2', 'av', 'scipy', 'trimesh'};"
             "print(sorted(heavy & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_console_script_error_is_one_line(tmp_path):
    exe = shutil.which("st4r") or str(Path(sys.executable).with_name("st4r"))
    done = subprocess.run([exe, "adapt", str(tmp_path / "missing.mp4")], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: input not found: {tmp_path / 'missing.mp4'}"]
