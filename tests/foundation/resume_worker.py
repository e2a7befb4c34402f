"""Subprocess for the resume tests: runs a 3-stage toy pipeline in a run dir, optionally stalling.

    python resume_worker.py RUN_DIR MODE
MODE: normal | stall_compute | stall_write | stall_meta | slow (every stage sleeps 0.15 s).
Stalling modes touch RUN_DIR/../stalled and sleep, so the test can kill the process there.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import st4r_cli.runs.atomic as atomic
from st4r_cli.runs import Run, RunConfig


def stall(run_dir: Path) -> None:
    (run_dir.parent / "stalled").touch()
    time.sleep(120)


def main(run_dir: Path, mode: str) -> None:
    if mode == "stall_write":            # die while the arrays of stage b are half written
        real_savez = np.savez

        def half_savez(handle, **arrays):
            if "b_out" in arrays:
                handle.write(b"PK\x03\x04 half an npz")
                handle.flush()
                stall(run_dir)
            real_savez(handle, **arrays)
        np.savez = half_savez
    if mode == "stall_meta":             # die after stage b's arrays, before its metadata
        real_write = atomic.atomic_write_text

        def late_write(path, text):
            if path.name.startswith("b-") and path.suffix == ".json":
                stall(run_dir)
            real_write(path, text)
        import st4r_cli.runs.cache as cache
        cache.atomic_write_text = late_write

    def stage_b(a):
        if mode == "stall_compute":
            stall(run_dir)
        if mode == "slow":
            time.sleep(0.15)
        return {"b_out": a["a_out"] + 1.0}

    def stage(name, fn):
        def compute():
            if mode == "slow":
                time.sleep(0.15)
            return fn()
        return compute

    with Run.create(run_dir, RunConfig()) as run:
        x = np.arange(200_000, dtype=np.float64)
        a = run.stage("a", 1, {}, ["input"], stage("a", lambda: {"a_out": x * 2.0}))
        b = run.stage("b", 1, {}, [a.digest], lambda: stage_b(a))
        c = run.stage("c", 1, {}, [b.digest], stage("c", lambda: {"c_out": b["b_out"].sum(keepdims=True)}))
        run.mark_complete()
        print(float(c["c_out"][0]))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
