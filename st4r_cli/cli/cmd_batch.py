"""`st4r batch VIDEOS_DIR|LIST.txt --out RUNS_DIR`: `st4r adapt` on many videos, as Ray tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from st4r_cli.cli.common import (ConfigOpt, DepthOpt, Device, DeviceOpt, EndOpt, ForceOpt, ModelOpt, QuietOpt,
                                 RunLongSideOpt, RunMaxFramesOpt, RunSeedOpt, SetOpt, StartOpt, StrideOpt,
                                 TrackerOpt, VerboseOpt, set_verbosity)
from st4r_cli.errors import St4rError


def command(
    videos: Annotated[Path, typer.Argument(
        help="A folder of videos (and/or folders of images), or a .txt list with one per line.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder of runs: one run directory per video (RUNS_DIR/<video name>).")],
    address: Annotated[Optional[str], typer.Option(  # noqa: UP007
        "--address", help="Join this Ray cluster ('auto', 'HOST:6379', 'ray://HOST:10001'); "
                          "default: start a local Ray on this machine.")] = None,
    cpus_per_video: Annotated[float, typer.Option(
        "--cpus-per-video", help="CPUs each video reserves (also its torch CPU threads).")] = 1.0,
    gpus_per_video: Annotated[float, typer.Option(
        "--gpus-per-video", help="GPUs each video reserves (e.g. 1, or 0.5 to share one).")] = 0.0,
    num_cpus: Annotated[Optional[int], typer.Option(  # noqa: UP007
        "--num-cpus", help="Local Ray only: CPUs it may use (default: all).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    model: ModelOpt = None,
    tracker: TrackerOpt = None,
    depth: DepthOpt = None,
    long_side: RunLongSideOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    stride: StrideOpt = None,
    max_frames: RunMaxFramesOpt = None,
    force: ForceOpt = None,
    device: DeviceOpt = Device.auto,
    seed: RunSeedOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Adapt every video of a folder (or list) on Ray: one run per video, complete runs skipped, a
    failed video does not stop the others; prints a summary and writes RUNS_DIR/summary.json."""
    set_verbosity(quiet, verbose)
    from st4r_cli import progress
    from st4r_cli.batch import SUMMARY_NAME, BatchResources, collect_videos, run_batch

    inputs = collect_videos(videos)
    options: dict[str, Any] = {
        "config": str(config) if config else None, "set": list(set_ or []), "model": model,
        "tracker": tracker.value if tracker else None, "depth": depth.value if depth else None,
        "long_side": long_side, "start": start, "end": end, "stride": stride, "max_frames": max_frames,
        "force": list(force or []), "device": device.value, "seed": seed}
    options = {key: value for key, value in options.items() if value not in (None, [])}
    resources = BatchResources(address=address, cpus_per_video=cpus_per_video, gpus_per_video=gpus_per_video,
                               num_cpus=num_cpus)
    progress.log(f"batch: {len(inputs)} video(s) -> [bold]{out}[/bold]")
    with _progress_bar(len(inputs)) as advance:
        results = run_batch(inputs, out, options, resources, on_result=advance)
    if not progress.is_quiet():
        progress.console.print(_table(results))
    failed = [r for r in results if r.status == "failed"]
    progress.log(f"summary written to {out / SUMMARY_NAME}")
    if failed:
        raise St4rError(f"{len(failed)} of {len(results)} video(s) failed (errors in {out / SUMMARY_NAME})",
                        exit_code=1)


class _progress_bar:  # noqa: N801 (used as a context manager, like a function)
    """A Rich bar over videos (nothing with --quiet); yields the callback that advances it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar: Any = None

    def __enter__(self) -> Any:
        from st4r_cli import progress

        if progress.is_quiet():
            return lambda result: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.description}"), console=progress.console)
        self.bar.__enter__()
        task = self.bar.add_task("", total=self.total)

        def advance(result: Any) -> None:
            self.bar.update(task, advance=1, description=f"{Path(result.video).name}: {result.status}")

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _table(results: list[Any]) -> Any:
    from rich.table import Table

    table = Table(title="st4r batch")
    for column in ("video", "status", "seconds", "run", "error"):
        table.add_column(column, overflow="fold")
    colour = {"complete": "green", "skipped": "cyan", "failed": "red"}
    for r in results:
        table.add_row(Path(r.video).name, f"[{colour[r.status]}]{r.status}[/]", f"{r.seconds:.1f}",
                      Path(r.run_dir).name, r.error or "")
    return table
