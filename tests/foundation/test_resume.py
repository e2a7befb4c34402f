"""Resume after a real kill (SIGKILL) at any point of a stage: no torn artifact is ever read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from st4r_cli.runs.atomic import TMP_MARK
from st4r_cli.runs.cache import StageCache, digest_arrays, load_npz

WORKER = Path(__file__).with_name("resume_worker.py")
EXPECTED = float((np.arange(200_000, dtype=np.float64) * 2.0 + 1.0).sum())


def start_worker(run_dir: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(run_dir), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "worker never reached its stall point"
        time.sleep(0.02)


def check_cache_consistent(run_dir: Path) -> set[str]:
    """Every artifact that has metadata loads fully and matches its digest; returns their stages.

    Temp files (`.<name>.tmp-<pid>-<rand>.json`) of a killed writer are not artifacts: the cache never
    reads them, and the next run removes them.
    """
    finished = set()
    for meta_path in (run_dir / "cache").glob("*.json"):
        if TMP_MARK in meta_path.name:
            continue
        meta = json.loads(meta_path.read_text())
        arrays = load_npz(meta_path.with_suffix(".npz"))
        assert digest_arrays(arrays) == meta["digest"]
        assert StageCache(run_dir / "cache").lookup(meta["stage"], meta["key"]) is not None
        finished.add(meta["stage"])
    return finished


def finish_and_check(run_dir: Path) -> None:
    done = subprocess.run([sys.executable, str(WORKER), str(run_dir), "normal"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip()) == EXPECTED
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert check_cache_consistent(run_dir) == {"a", "b", "c"}
    assert not [p for p in run_dir.rglob("*") if ".tmp-" in p.name]     # no temp leftovers


@pytest.mark.parametrize("mode", ["stall_compute", "stall_write", "stall_meta"])
def test_kill_mid_stage_then_resume(tmp_path, mode):
    run_dir = tmp_path / "run"
    proc = start_worker(run_dir, mode)
    wait_for(tmp_path / "stalled", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"   # never complete
    assert check_cache_consistent(run_dir) == {"a"}          # b never counts as finished
    if mode == "stall_write":
        assert [p for p in (run_dir / "cache").iterdir() if ".tmp-" in p.name]     # the torn temp
    if mode == "stall_meta":
        assert list((run_dir / "cache").glob("b-*.npz"))     # arrays there, but no metadata
    finish_and_check(run_dir)


def test_kill_at_random_moments_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    rng = np.random.default_rng(0)
    for delay in rng.uniform(0.2, 0.9, size=4):
        proc = start_worker(run_dir, "slow")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        check_cache_consistent(run_dir)
    finish_and_check(run_dir)


# -- the real CLI, killed inside the decode stage ---------------------------------------------------
def st4r_exe() -> str:
    import shutil

    return shutil.which("st4r") or str(Path(sys.executable).with_name("st4r"))


def adapt_command(folder: Path, run_dir: Path) -> list[str]:
    """`st4r adapt` up to decode; --device cpu skips importing torch, so the CLI starts quickly."""
    return [st4r_exe(), "adapt", str(folder), "--out", str(run_dir), "--until", "decode",
            "--device", "cpu", "-q"]


def image_folder(folder: Path, count: int) -> Path:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def blocked_in_decode(folder: Path, run_dir: Path) -> subprocess.Popen:
    """Start `st4r adapt` on a folder whose last image is a FIFO: the decode stage blocks reading it."""
    fifo = folder / "9999.png"
    os.mkfifo(fifo)
    proc = subprocess.Popen(adapt_command(folder, run_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(run_dir / "run.json", proc)
    time.sleep(0.3)                                          # inside decode, waiting on the FIFO
    assert proc.poll() is None
    return proc


def replace_fifo_with_image(folder: Path) -> None:
    from PIL import Image

    (folder / "9999.png").unlink()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(folder / "9999.png")


def resume_and_check(folder: Path, run_dir: Path) -> None:
    from st4r_cli.stages.decode import DecodeConfig, decode

    done = subprocess.run(adapt_command(folder, run_dir), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "complete"
    assert status["stages"]["decode"]["digest"] == digest_arrays(decode(folder, DecodeConfig()))
    assert not [p for p in run_dir.rglob("*") if ".tmp-" in p.name]


@pytest.mark.parametrize("sig, status, code", [(signal.SIGKILL, "running", -signal.SIGKILL),
                                                (signal.SIGTERM, "interrupted", 130)])
def test_st4r_adapt_killed_mid_stage_resumes(tmp_path, sig, status, code):
    folder = image_folder(tmp_path / "imgs", 12)
    run_dir = tmp_path / "run"
    proc = blocked_in_decode(folder, run_dir)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code
    if sig == signal.SIGTERM:
        assert err.strip().splitlines()[-1].startswith("error: interrupted")
    assert json.loads((run_dir / "run.json").read_text())["status"] == status
    assert check_cache_consistent(run_dir) == set()           # nothing finished, nothing torn
    replace_fifo_with_image(folder)
    resume_and_check(folder, run_dir)
