"""`st4r batch`: many videos, one `st4r adapt` run each, as Ray tasks (local Ray or a cluster).

    results = run_batch(collect_videos(Path("videos/")), Path("runs/"), {"max_frames": 64},
                        BatchResources(cpus_per_video=2))

Each video gets the run directory `RUNS_DIR/<video name>` (the same run `st4r adapt` would make, so
every later command takes it). A run whose `run.json` says `complete` is skipped; a failing video
is recorded with its one-line error and does not stop the others. The results go to
`RUNS_DIR/summary.json` (written atomically).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from st4r_cli.errors import St4rError
from st4r_cli.paths import VIDEO_SUFFIXES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SUMMARY_NAME = "summary.json"
OBJECT_STORE_BYTES = 100 * 1024**2  # the tasks pass paths and small dicts: a small store is plenty


@dataclass
class BatchResources:
    """Where the tasks run and what each one reserves."""

    address: str | None = None      # None: start an embedded local Ray; else join this cluster ("auto", "ray://...")
    cpus_per_video: float = 1.0     # also the torch CPU thread count of each task
    gpus_per_video: float = 0.0
    num_cpus: int | None = None     # local Ray only: CPUs it may use (default: all)


@dataclass
class VideoResult:
    """One line of the summary."""

    video: str
    run_dir: str
    status: str          # complete | skipped | failed
    seconds: float
    error: str | None = None
    torch_threads: int | None = None  # the task's torch CPU threads (None: not run)


def collect_videos(source: Path) -> list[Path]:
    """The inputs of a batch: a folder's videos and image folders (sorted), or a list file's lines.

    A list file (`.txt`) holds one video or image folder per line; relative paths are relative to the
    list file; blank lines and `#` comments are ignored. St4rError if nothing is found or a listed
    input does not exist.
    """
    source = Path(source)
    if not source.exists():
        raise St4rError(f"input not found: {source}")
    if source.is_file():
        videos = []
        for number, line in enumerate(source.read_text(errors="replace").splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            path = Path(line).expanduser()
            path = path if path.is_absolute() else source.parent / path
            if not path.exists():
                raise St4rError(f"{source}:{number}: input not found: {line}")
            videos.append(path.resolve())
    else:
        videos = [path.resolve() for path in sorted(source.iterdir())
                  if (path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES) or _is_image_folder(path)]
    if not videos:
        raise St4rError(f"no videos in {source} (video files {' '.join(VIDEO_SUFFIXES)} or folders of images)")
    return videos


def _is_image_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())


def run_names(videos: Sequence[Path]) -> list[str]:
    """One run directory name per video: its stem, made unique (`clip.mp4` + `clip.mov` -> clip_mp4, clip_mov).

    St4rError for a video whose name would make the run the runs folder itself (a list line `/`); a
    name that would collide with the batch summary (`summary.json.mp4`) gets its suffix appended."""
    from st4r_cli.runs.run import run_name_for

    stems = [run_name_for(video) for video in videos]
    names = []
    for video, stem in zip(videos, stems):
        unique = stems.count(stem) == 1 and stem != SUMMARY_NAME
        name = stem if unique else f"{stem}_{video.suffix.lstrip('.') or 'dir'}"
        base, k = name, 2
        while name in names or name == SUMMARY_NAME:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def run_is_complete(run_dir: Path) -> bool:
    """True when the run directory's run.json says `complete` and its scene.npz exists."""
    try:
        status = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return status.get("status") == "complete" and (run_dir / "scene.npz").is_file()


def one_line(err: BaseException) -> str:
    """An error as one line: a St4rError's message, else `Type: message`."""
    text = str(err) if isinstance(err, St4rError) else f"{type(err).__name__}: {err}"
    return " ".join(text.split())


def adapt_one(video: str, run_dir: str, options: Mapping[str, Any], threads: int) -> dict[str, Any]:
    """One video's `st4r adapt` run (what each Ray task executes); never raises.

    Returns {"status": "complete"|"failed", "seconds", "error", "torch_threads"}; the run
    directory's run.json has the details. `threads`: torch intra-op CPU threads (the task's CPU
    reservation).
    """
    import torch

    from st4r_cli import progress
    from st4r_cli.api import run_adapt

    torch.set_num_threads(max(1, int(threads)))
    progress.set_verbosity(quiet=True)
    start = time.perf_counter()
    try:
        run_adapt(video, run_dir, **dict(options))
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 (a failing video must not stop the batch)
        return {"status": "failed", "seconds": time.perf_counter() - start, "error": one_line(err),
                "torch_threads": torch.get_num_threads()}
    return {"status": "complete", "seconds": time.perf_counter() - start, "error": None,
            "torch_threads": torch.get_num_threads()}


def check_options(videos: Sequence[Path], options: Mapping[str, Any]) -> None:
    """The adapt options checked once, before Ray starts (St4rError with the CLI's message)."""
    from st4r_cli import pipeline
    from st4r_cli.api import build_config

    keyed = {key: value for key, value in options.items() if key not in ("force", "until")}
    pipeline.check_force(list(options.get("force") or []))
    pipeline.check_run_config(build_config(videos[0], **keyed))


def run_batch(videos: Sequence[Path], out_dir: Path, options: Mapping[str, Any],
              resources: BatchResources | None = None,
              on_result: Callable[[VideoResult], None] | None = None) -> list[VideoResult]:
    """Adapt every video into `out_dir/<name>` on Ray; returns one result per video (input order).

    Complete runs are skipped (unless `options["force"]` is set); the others run as Ray tasks that
    each reserve `cpus_per_video` CPUs and `gpus_per_video` GPUs. `on_result` is called as each video
    finishes (progress bars). Writes `out_dir/summary.json`. Ray is shut down before returning.
    """
    resources = resources or BatchResources()
    if resources.cpus_per_video <= 0 or resources.gpus_per_video < 0:
        raise St4rError("--cpus-per-video must be > 0 and --gpus-per-video >= 0")
    videos = [Path(video).resolve() for video in videos]
    out_dir = Path(out_dir).resolve()
    check_options(videos, options)
    names = run_names(videos)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[int, VideoResult] = {}
    todo = []
    for k, (video, name) in enumerate(zip(videos, names)):
        run_dir = out_dir / name
        if not options.get("force") and run_is_complete(run_dir):
            results[k] = VideoResult(str(video), str(run_dir), "skipped", 0.0)
            if on_result:
                on_result(results[k])
        else:
            todo.append(k)
    if todo:
        for k, outcome in _run_on_ray([(str(videos[k]), str(out_dir / names[k])) for k in todo], options,
                                      resources, [*todo]):
            results[k] = VideoResult(str(videos[k]), str(out_dir / names[k]), outcome["status"],
                                     round(float(outcome["seconds"]), 2), outcome["error"],
                                     outcome.get("torch_threads"))
            if on_result:
                on_result(results[k])
    ordered = [results[k] for k in range(len(videos))]
    write_summary(out_dir / SUMMARY_NAME, ordered, options, resources)
    return ordered


def _run_on_ray(jobs: list[tuple[str, str]], options: Mapping[str, Any], resources: BatchResources,
                ids: list[int]):
    """Yield (id, outcome) as the Ray tasks finish; starts (or joins) Ray and always shuts it down."""
    import logging

    try:
        import ray
    except ImportError as err:
        raise St4rError("st4r batch needs Ray: pip install -e '.[batch]' (or pip install 'ray>=2.9')") from err

    init: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False,
                            "configure_logging": True}
    if resources.address:
        init["address"] = resources.address
    else:
        init.update(num_cpus=resources.num_cpus, object_store_memory=OBJECT_STORE_BYTES)
    try:
        ray.init(**init)
    except Exception as err:  # noqa: BLE001 (Ray's own errors: a bad address, no cluster there)
        raise St4rError(f"cannot start or join Ray ({one_line(err)})") from err
    try:
        threads = max(1, int(resources.cpus_per_video))
        task = ray.remote(num_cpus=resources.cpus_per_video, num_gpus=resources.gpus_per_video,
                          max_retries=0)(adapt_one)
        pending = {task.remote(video, run_dir, dict(options), threads): k for k, (video, run_dir) in zip(ids, jobs)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                k = pending.pop(done[0])
                try:
                    outcome = ray.get(done[0])
                except Exception as err:  # noqa: BLE001 (the worker died: OOM, killed, ...)
                    outcome = {"status": "failed", "seconds": 0.0, "error": one_line(err).split(" Traceback")[0]}
                yield k, outcome
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        ray.shutdown()


def write_summary(path: Path, results: Sequence[VideoResult], options: Mapping[str, Any],
                  resources: BatchResources) -> Path:
    """`summary.json`: counts, the options and resources, and one entry per video."""
    from datetime import datetime, timezone

    from st4r_cli.runs.atomic import atomic_write_text

    counts = {status: sum(r.status == status for r in results) for status in ("complete", "skipped", "failed")}
    summary = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "counts": counts,
               "options": {key: _jsonable(value) for key, value in options.items()},
               "resources": asdict(resources), "videos": [asdict(r) for r in results]}
    atomic_write_text(path, json.dumps(summary, indent=1))
    return path


def _jsonable(value: Any) -> Any:
    value = getattr(value, "value", value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
