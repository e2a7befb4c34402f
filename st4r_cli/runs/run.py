"""Run directories.

    runs/NAME/
      config.yaml      the full RunConfig, written before anything else
      run.json         status (running | complete | failed | interrupted), per-stage record, outputs
      cache/           stage artifacts: <stage>-<key16>.npz + .json (see runs/cache.py)
      scene.npz ...    published outputs (listed in run.json; removed when a new run starts)
      .lock            held (flock) while a process works in the run

`Run.create(out_dir, config)` starts (or restarts) a run; `Run.open(run_dir)` is for later commands
(`export`, `eval`, `tracks RUN_DIR`). `run.stage(...)` runs a stage through the cache.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from st4r_cli import progress
from st4r_cli.errors import St4rError
from st4r_cli.runs.atomic import atomic_save_npz, atomic_write_text, remove_stale_temps
from st4r_cli.runs.cache import Artifact, StageCache
from st4r_cli.runs.config import RunConfig, load_config, save_config

CONFIG_NAME = "config.yaml"
STATUS_NAME = "run.json"


class Run:
    """One run directory: its config, status and stage cache."""

    def __init__(self, directory: Path, config: RunConfig, force: Iterable[str] = ()) -> None:
        self.dir = Path(directory)
        self.config = config
        self.cache = StageCache(self.dir / "cache")
        self.force = set(force)
        self._lock_fd: int | None = None

    # -- creation -------------------------------------------------------------------------------
    @classmethod
    def create(cls, out_dir: Path, config: RunConfig, force: Iterable[str] = ()) -> Run:
        """Start a run in `out_dir`: write config.yaml first, then mark the run `running`.

        An existing run directory is reused (its cache makes unchanged stages free); outputs it had
        published are removed, so nothing stale looks finished if this run fails.
        """
        out_dir = Path(out_dir)
        _make_writable_dir(out_dir)
        run = cls(out_dir, config, force)
        run._acquire_lock()
        try:
            save_config(config, out_dir / CONFIG_NAME)
        except OSError as err:
            run.close()
            raise St4rError(f"cannot write {out_dir / CONFIG_NAME}: {err.strerror or err}") from None
        previous = run._read_status()
        for name in previous.get("outputs", []):
            (out_dir / name).unlink(missing_ok=True)
        remove_stale_temps(out_dir)
        remove_stale_temps(run.cache.directory)
        run._write_status({"status": "running", "started": _now(), "pid": os.getpid(),
                           "stages": {}, "outputs": []})
        return run

    @classmethod
    def open(cls, run_dir: Path) -> Run:
        """Open an existing run directory (read its config.yaml)."""
        run_dir = Path(run_dir)
        if not run_dir.exists():
            raise St4rError(f"run directory not found: {run_dir}")
        if not (run_dir / CONFIG_NAME).is_file():
            raise St4rError(f"{run_dir} is not a st4r run directory (no {CONFIG_NAME})")
        return cls(run_dir, load_config(run_dir / CONFIG_NAME))

    # -- stages ---------------------------------------------------------------------------------
    def stage(self, name: str, version: int | str, config: Any, inputs: Sequence[str],
              compute: Callable[[], Mapping[str, Any]], force: bool = False) -> Artifact:
        """Run stage `name` through the cache and record it in run.json.

        config:  the stage's config (dataclass or JSON-able dict; include the seed if it matters)
        inputs:  content digests the stage depends on (`Artifact.digest` of upstream stages,
                 `digest_path(file)` for files)
        compute: returns the stage's arrays, dict[str, np.ndarray]
        force:   recompute even if cached (also when `name` or "all" is in `run.force`)
        """
        force = force or name in self.force or "all" in self.force
        artifact = self.cache.get_or_compute(name, version, config, inputs, compute, force=force)
        verb = "reused" if artifact.reused else f"computed in {artifact.seconds:.1f} s"
        progress.log(f"[green]✓[/green] {name}: {verb}")
        progress.debug(f"{name}: key {artifact.key[:16]} digest {artifact.digest[:16]}")
        self._record_stage(artifact)
        return artifact

    def artifact(self, name: str) -> Artifact:
        """The artifact a finished stage `name` recorded in this run (for later commands)."""
        record = self._read_status().get("stages", {}).get(name)
        found = self.cache.lookup(name, record["key"]) if record else None
        if found is None:
            raise St4rError(f"run {self.dir} has no finished '{name}' stage; run `st4r adapt` first")
        return found

    def has_artifact(self, name: str) -> bool:
        record = self._read_status().get("stages", {}).get(name)
        return bool(record) and self.cache.lookup(name, record["key"]) is not None

    # -- outputs and status ---------------------------------------------------------------------
    def publish(self, filename: str, arrays: Mapping[str, Any]) -> Path:
        """Write an output `.npz` (e.g. scene.npz) into the run directory atomically."""
        path = self.dir / filename
        atomic_save_npz(path, dict(arrays))
        status = self._read_status()
        status["outputs"] = sorted(set(status.get("outputs", [])) | {filename})
        self._write_status(status)
        return path

    @property
    def status(self) -> str:
        return str(self._read_status().get("status", "unknown"))

    def require_complete(self) -> None:
        """St4rError unless the run finished (for commands that read a run's outputs)."""
        status = self._read_status()
        if status.get("status") != "complete":
            detail = f": {status['error']}" if status.get("error") else ""
            raise St4rError(f"run {self.dir} is not complete (status {status.get('status', 'unknown')}"
                            f"{detail}); rerun `st4r adapt` with --out {self.dir}")

    def mark_complete(self) -> None:
        self._update_status(status="complete", finished=_now(), error=None)

    def mark_failed(self, message: str, interrupted: bool = False) -> None:
        self._update_status(status="interrupted" if interrupted else "failed", finished=_now(),
                            error=" ".join(message.split()))

    def close(self) -> None:
        """Release the run lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------
    def _record_stage(self, artifact: Artifact) -> None:
        status = self._read_status()
        status.setdefault("stages", {})[artifact.stage] = {
            "key": artifact.key, "digest": artifact.digest, "file": f"cache/{artifact.path.name}",
            "reused": artifact.reused, "seconds": artifact.seconds}
        self._write_status(status)

    def _update_status(self, **fields: Any) -> None:
        status = self._read_status()
        status.update(fields)
        self._write_status(status)

    def _read_status(self) -> dict[str, Any]:
        try:
            return json.loads((self.dir / STATUS_NAME).read_text())
        except (OSError, ValueError):
            return {}

    def _write_status(self, status: dict[str, Any]) -> None:
        status["updated"] = _now()
        atomic_write_text(self.dir / STATUS_NAME, json.dumps(status, indent=1, default=str))

    def _acquire_lock(self) -> None:
        import fcntl

        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise St4rError(f"run directory {self.dir} is in use by another st4r process") from None
        self._lock_fd = fd


def _make_writable_dir(path: Path) -> None:
    """Create `path` (and parents) or raise a one-line St4rError saying why not."""
    if path.exists() and not path.is_dir():
        raise St4rError(f"output path exists and is not a directory: {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise St4rError(f"cannot create output directory {path}: {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise St4rError(f"output directory is not writable: {path}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
