"""Run directories.

    runs/NAME/
      config.yaml      the full RunConfig, written before anything else
      run.json         status (running | complete | failed | interrupted), per-stage record, outputs
      cache/           stage artifacts: <stage>-<key16>.npz + .json (see runs/cache.py)
      scene.npz ...    published outputs (OUTPUT_NAMES; run.json lists them with their sha256; a new run
                       removes them only when their bytes still match)
      .lock            held (flock) while a process works in the run

`Run.create(out_dir, config)` starts (or restarts) a run in a new or empty directory, or in a st4r run
(`check_run_dir_owned`: any other existing directory is refused); `Run.open(run_dir)` is for later commands
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
from st4r_cli.runs.config import CONFIG_HEADER, RunConfig, load_config, save_config

MAX_CONFIG_BYTES = 1 << 20   # a run's config.yaml is a few KiB

CONFIG_NAME = "config.yaml"
STATUS_NAME = "run.json"
RESERVED_NAMES = frozenset({CONFIG_NAME, STATUS_NAME, ".lock", "cache"})  # never an output
# every file st4r publishes into a run directory: a stale one is removed when a run restarts, and only
# when its bytes still hash to the sha256 run.json recorded for it (never because run.json lists it)
OUTPUT_NAMES = frozenset({"scene.npz", "tracks.npz", "depth.npz", "summary.png"})
# what a run directory may hold besides OUTPUT_NAMES and RESERVED_NAMES (`export/`, temp files)
RUN_STATUSES = frozenset({"running", "complete", "failed", "interrupted"})


class Run:
    """One run directory: its config, status and stage cache."""

    def __init__(self, directory: Path, config: RunConfig, force: Iterable[str] = ()) -> None:
        self.dir = Path(directory)
        self.config = config
        self.cache = StageCache(self.dir / "cache")
        self.force = set(force)
        self.recorded_stages: list[str] = []    # the stages this process recorded in run.json (`stage`)
        self.session_warnings: list[str] = []   # the warnings this process gave (`warn`)
        self._lock_fd: int | None = None

    # -- creation -------------------------------------------------------------------------------
    @classmethod
    def create(cls, out_dir: Path, config: RunConfig, force: Iterable[str] = ()) -> Run:
        """Start a run in `out_dir`: write config.yaml first, then mark the run `running`.

        An existing run directory is reused (its cache makes unchanged stages free); outputs it had
        published are removed, so nothing stale looks finished if this run fails.
        """
        out_dir = Path(out_dir)
        check_run_dir_owned(out_dir)
        _make_writable_dir(out_dir)
        run = cls(out_dir, config, force)
        run._acquire_lock()
        try:
            save_config(config, out_dir / CONFIG_NAME)
        except OSError as err:
            run.close()
            raise St4rError(f"cannot write {out_dir / CONFIG_NAME}: {err.strerror or err}") from None
        try:
            previous = run._read_status()
            run._check_cache_inside()
            stale = [run._inside(name, "delete") for name in _output_names(previous)]
            for path in stale:
                if path.name in RESERVED_NAMES or (path.is_dir() and not path.is_symlink()):
                    raise St4rError(f"refusing to delete {path}: run.json lists it as an output, but it "
                                    "is part of the run itself (run.json may have been edited)")
            recorded = previous.get("output_sha256", {})
            for path in stale:
                run._remove_own_output(path, recorded.get(path.name) if isinstance(recorded, dict) else None)
        except BaseException:
            run.close()
            raise
        remove_stale_temps(out_dir)
        remove_stale_temps(run.cache.directory)
        run._write_status({"status": "running", "started": _now(), "pid": os.getpid(),
                           "stages": {}, "outputs": []})
        return run

    def _remove_own_output(self, path: Path, recorded_sha256: Any) -> None:
        """Delete a stale output of an earlier run, only when st4r can prove it wrote it: a name st4r
        publishes (`OUTPUT_NAMES`), a regular file (not a link), bytes hashing to the recorded sha256.
        Anything else is left where it is (the new run overwrites its own outputs atomically)."""
        from st4r_cli.runs.cache import sha256_file

        if path.is_symlink() or not path.is_file():
            return
        if path.name not in OUTPUT_NAMES or not isinstance(recorded_sha256, str):
            progress.log(f"[yellow]warning[/yellow]: left {path} in place: run.json lists it, but st4r "
                         "did not record writing it")
            return
        if sha256_file(path) != recorded_sha256:
            progress.log(f"[yellow]warning[/yellow]: left {path} in place: it changed since st4r wrote it")
            return
        path.unlink(missing_ok=True)

    @classmethod
    def open(cls, run_dir: Path, lock: bool = False) -> Run:
        """Open an existing run directory (read its config.yaml).

        `lock=True` for a command that writes into the run: it takes the run lock as `create` does
        (St4rError when another st4r process works in the run); release it with `close()`.
        """
        run_dir = Path(run_dir)
        if not run_dir.exists():
            raise St4rError(f"run directory not found: {run_dir}")
        if not (run_dir / CONFIG_NAME).is_file():
            raise St4rError(f"{run_dir} is not a st4r run directory (no {CONFIG_NAME})")
        run = cls(run_dir, load_config(run_dir / CONFIG_NAME))
        if lock:
            run._acquire_lock()
            try:
                run._check_cache_inside()
            except BaseException:
                run.close()
                raise
        return run

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
        from st4r_cli.runs.memory import PeakMemory

        force = force or name in self.force or "all" in self.force
        with PeakMemory() as peak:
            artifact = self.cache.get_or_compute(name, version, config, inputs, compute, force=force)
        verb = "reused" if artifact.reused else f"computed in {artifact.seconds:.1f} s"
        progress.log(f"[green]✓[/green] {name}: {verb}")
        progress.debug(f"{name}: key {artifact.key[:16]} digest {artifact.digest[:16]}, peak RSS {peak.rss_mb:.0f} MiB")
        self._record_stage(artifact, peak.rss_mb, peak.cuda_mb)
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
        """Write an output `.npz` (e.g. scene.npz) into the run directory atomically; run.json records
        its name and the sha256 of its bytes (`verify_output` checks it)."""
        from st4r_cli.runs.cache import sha256_file

        path = self._inside(filename, "write")
        try:
            atomic_save_npz(path, dict(arrays))
        except OSError as err:
            raise St4rError(f"cannot write {path}: {err.strerror or err}") from None
        self._record_output(filename, sha256_file(path))
        return path

    def publish_file(self, filename: str, writer: Callable[[Path], Any]) -> Path:
        """Write an output file with `writer(tmp_path)` (e.g. summary.png) atomically and record it
        in run.json as `publish` does."""
        from st4r_cli.runs.atomic import atomic_write_with
        from st4r_cli.runs.cache import sha256_file

        path = self._inside(filename, "write")
        atomic_write_with(path, writer)
        self._record_output(filename, sha256_file(path))
        return path

    def _record_output(self, filename: str, sha256: str) -> None:
        status = self._read_status()
        status["outputs"] = sorted(set(_output_names(status)) | {filename})
        status.setdefault("output_sha256", {})[filename] = sha256
        self._write_status(status)

    def verify_output(self, filename: str) -> Path:
        """The path of a published output, checked against the sha256 run.json recorded for it
        (St4rError when it is missing or was changed since the run wrote it)."""
        from st4r_cli.runs.cache import sha256_file

        path = self._inside(filename, "read")
        if not path.is_file():
            raise St4rError(f"{path} not found (run `st4r adapt` to completion first)")
        recorded = self._read_status().get("output_sha256", {}).get(filename)
        if recorded is not None and sha256_file(path) != recorded:
            raise St4rError(f"{path} was modified or damaged after the run wrote it (its content no "
                            f"longer matches run.json); rerun `st4r adapt` with --out {self.dir}")
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
    def _inside(self, name: str, action: str) -> Path:
        """`self.dir / name`, St4rError unless it is a plain file name that stays inside the run
        directory (run.json is a file anyone can edit: never follow it outside the run)."""
        root = self.dir.resolve()
        path = self.dir / str(name)
        target = path.parent.resolve() / path.name
        if (not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts
                or not target.is_relative_to(root) or target == root):
            raise St4rError(f"refusing to {action} {name!r}: it is not inside the run directory {self.dir} "
                            f"(run.json may have been edited)")
        return path

    def _check_cache_inside(self) -> None:
        """St4rError when `cache/` is a link leading out of the run directory."""
        cache = self.cache.directory
        if cache.exists() and not cache.resolve().is_relative_to(self.dir.resolve()):
            raise St4rError(f"{cache} leads outside the run directory {self.dir} ({cache.resolve()}); "
                            "refusing to write there")

    def warn(self, message: str) -> None:
        """A warning about this run's result (e.g. a skipped test-time adaptation): printed at once and
        listed in run.json's `warnings`, which the pipeline prints again at its end (also with --quiet)."""
        progress.log(f"[yellow]warning[/yellow]: {message}")
        if message not in self.session_warnings:
            self.session_warnings.append(message)
        status = self._read_status()
        warnings = status.setdefault("warnings", [])
        if message not in warnings:
            warnings.append(message)
        self._write_status(status)

    def note(self, key: str, value: Any) -> None:
        """Record a fact about this run's result in run.json under `key` (e.g. the camera solver's verdict)."""
        self._update_status(**{key: value})

    @property
    def warnings(self) -> list[str]:
        """The warnings recorded in run.json by this run (`warn`)."""
        return list(self._read_status().get("warnings", []))

    def _record_stage(self, artifact: Artifact, peak_rss_mb: float, cuda_mb: float | None) -> None:
        """The stage in run.json: its artifact, and the process's peak resident memory (MiB) while it ran,
        which includes what earlier stages still hold (CUDA's max allocated too on a GPU)."""
        status = self._read_status()
        record = {"key": artifact.key, "digest": artifact.digest, "file": f"cache/{artifact.path.name}",
                  "reused": artifact.reused, "seconds": artifact.seconds, "peak_rss_mb": peak_rss_mb}
        if cuda_mb is not None:
            record["cuda_max_allocated_mb"] = cuda_mb
        status.setdefault("stages", {})[artifact.stage] = record
        self._write_status(status)
        if artifact.stage not in self.recorded_stages:
            self.recorded_stages.append(artifact.stage)

    @property
    def stage_memory(self) -> dict[str, float]:
        """Stage name -> peak resident memory in MiB while it ran (run.json)."""
        stages = self._read_status().get("stages", {})
        return {name: float(record["peak_rss_mb"]) for name, record in stages.items()
                if isinstance(record, dict) and isinstance(record.get("peak_rss_mb"), (int, float))}

    def _update_status(self, **fields: Any) -> None:
        status = self._read_status()
        status.update(fields)
        self._write_status(status)

    def _read_status(self) -> dict[str, Any]:
        try:
            status = json.loads((self.dir / STATUS_NAME).read_text())
        except (OSError, ValueError):
            return {}
        return status if isinstance(status, dict) else {}

    def _write_status(self, status: dict[str, Any]) -> None:
        status["updated"] = _now()
        atomic_write_text(self.dir / STATUS_NAME, json.dumps(status, indent=1, default=str))

    def _acquire_lock(self) -> None:
        import fcntl

        try:
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            raise St4rError(f"cannot lock {self.dir / '.lock'}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise St4rError(f"run directory {self.dir} is in use by another st4r process") from None
        self._lock_fd = fd


def _output_names(status: Mapping[str, Any]) -> list[str]:
    """run.json's `outputs` list (St4rError unless it is a list of strings)."""
    names = status.get("outputs", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise St4rError(f"run.json: 'outputs' must be a list of file names, got {names!r}")
    return names


def is_run_dir(path: Path) -> bool:
    """True when `path` holds a st4r run: a `config.yaml` that st4r wrote (its header line, and the input,
    model and decode settings every version's config has: a run of an older st4r, whose settings this
    version may no longer read, is still st4r's) and, when present, a `run.json` with a run status (a
    run killed right after its config was written has none yet)."""
    import yaml

    path = Path(path)
    config_path, status_path = path / CONFIG_NAME, path / STATUS_NAME
    try:
        if config_path.is_symlink() or not config_path.is_file() or config_path.stat().st_size > MAX_CONFIG_BYTES:
            return False
        text = config_path.read_text()
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    if not text.startswith(CONFIG_HEADER) or not isinstance(data, dict):
        return False
    if not {"input", "model", "decode"} <= set(data):
        return False
    if not status_path.exists():
        return True
    try:
        status = json.loads(status_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(status, dict) and status.get("status") in RUN_STATUSES


def run_name_for(video: Path, reserved: tuple[str, ...] = ()) -> str:
    """The default run directory name of an input: a video file's stem, an image folder's name (`.` is
    the current folder's name). St4rError when that name is empty (`/`) or one of `reserved` (e.g. the
    batch summary's file name): the run would be the runs folder itself, or collide with another file."""
    path = Path(video).expanduser().resolve()
    name = path.name if path.is_dir() else path.stem
    if not name.strip() or name in (".", "..") or name in reserved:
        raise St4rError(f"cannot name a run directory after {str(video)!r} (it would be {name!r}); "
                        "give the run directory with --out")
    return name


def check_run_dir_owned(path: Path) -> None:
    """St4rError unless `path` may become (or stay) a run directory: it does not exist yet, is an empty
    directory, or is a st4r run (`is_run_dir`). An existing directory st4r did not create is never
    written into: st4r would replace its config.yaml and run.json."""
    if not str(path).strip():
        raise St4rError("--out is empty: give the run directory to write (e.g. --out runs/NAME)")
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise St4rError(f"output directory {path} is a dangling link")
    if not path.exists():
        return
    if not path.is_dir():
        raise St4rError(f"output path exists and is not a directory: {path}")
    try:
        empty = next(path.iterdir(), None) is None
    except OSError as err:
        raise St4rError(f"cannot read output directory {path}: {err.strerror or err}") from None
    if not empty and not is_run_dir(path):
        raise St4rError(f"refusing to write into {path}: it is an existing directory that is not empty and "
                        "not a st4r run; choose a new or empty directory with --out")


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


def checked_run_output(path: Path) -> Path:
    """`path` (a run's output such as `runs/NAME/scene.npz`), checked for commands that read it.

    When `path` lies in a st4r run directory (config.yaml or run.json beside it): St4rError unless the
    run is `complete`, the file is one the run published, and its bytes are the ones it wrote (a failed
    rerun removes the old outputs; this also catches any left by other means). A file outside a run
    directory is returned as it is.
    """
    path = Path(path)
    run_dir = path.parent
    if not ((run_dir / CONFIG_NAME).is_file() or (run_dir / STATUS_NAME).is_file()):
        return path
    run = Run.open(run_dir)
    run.require_complete()
    if not path.is_file():
        raise St4rError(f"{run_dir} has no {path.name} (run `st4r adapt` to completion first)")
    if path.name not in _output_names(run._read_status()):
        raise St4rError(f"{path} was not written by the run in {run_dir}; rerun `st4r adapt` with --out {run_dir}")
    return run.verify_output(path.name)


class MemoryRun(Run):
    """A run without a directory (benchmarks, tests): the same stages through `Run.stage`, recorded the
    same way, its cache a `MemoryCache` (arrays instead of files), its status a dict and its outputs
    in `outputs` (file name -> arrays). `network`: an already loaded network the pipeline's stages start
    from (a copy each) instead of loading `config.model`."""

    def __init__(self, config: RunConfig, network: Any = None) -> None:
        from st4r_cli.runs.cache import MemoryCache

        super().__init__(Path("(in memory)"), config)
        self.cache = MemoryCache()
        self.network = network
        self.outputs: dict[str, dict[str, Any]] = {}
        self._status: dict[str, Any] = {"status": "running", "stages": {}, "outputs": []}

    def put(self, stage: str, arrays: Mapping[str, Any]) -> Artifact:
        """`arrays` as the artifact of `stage` (given, not computed: e.g. frames decoded elsewhere)."""
        from st4r_cli.runs.cache import digest_arrays

        return self.cache.store(stage, f"given-{digest_arrays(arrays)}", arrays, {})

    def publish(self, filename: str, arrays: Mapping[str, Any]) -> Path:
        self.outputs[filename] = dict(arrays)
        self._record_output(filename, "in-memory")
        return self.dir / filename

    def publish_file(self, filename: str, writer: Callable[[Path], Any]) -> Path:
        raise St4rError(f"an in-memory run has no directory to write {filename} into")

    def _read_status(self) -> dict[str, Any]:
        return self._status

    def _write_status(self, status: dict[str, Any]) -> None:
        self._status = status
