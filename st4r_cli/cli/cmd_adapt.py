"""`st4r adapt VIDEO --out runs/NAME`: the whole pipeline, through the run's stage cache."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from st4r_cli.cli.common import (DepthBackend, Device, DeviceOpt, ForceOpt, QuietOpt, Tracker, VerboseOpt,
                                 set_verbosity)
from st4r_cli.errors import St4rError

if TYPE_CHECKING:
    from st4r_cli.runs import RunConfig


def command(
    video: Annotated[Path, typer.Argument(help="Video file, or a folder of images.")],
    out: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        "--out", "-o", help="Run directory (default: runs/<video name>).")] = None,
    config: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        "--config", help="YAML run config to start from (e.g. a previous run's config.yaml).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(  # noqa: UP007
        "--set", metavar="SECTION.FIELD=VALUE",
        help="Override any config value, e.g. --set tracks.grid_size=16 (repeatable).")] = None,
    model: Annotated[Optional[str], typer.Option(  # noqa: UP007
        "--model", help="Checkpoint (default: the embedded weights/st4r-tiny).")] = None,
    queries: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        "--queries", help="Points to track: .npy (N,3)/(N,2) or text rows t,x,y / x,y, in pixels of the "
                          "decoded frames (sets tracks.query_mode=file).")] = None,
    tracker: Annotated[Optional[Tracker], typer.Option(  # noqa: UP007
        "--tracker", case_sensitive=False, help="2D tracker backend.")] = None,
    depth: Annotated[Optional[DepthBackend], typer.Option(  # noqa: UP007
        "--depth", case_sensitive=False,
        help="Depth for the TTA and the static scene: multiview (default; from the solved cameras), "
             "moge (MoGe-2 mono-depth), none.")] = None,
    long_side: Annotated[Optional[int], typer.Option(  # noqa: UP007
        "--long-side", help="Processing resolution: long side in pixels.")] = None,
    start: Annotated[Optional[int], typer.Option("--start", help="First frame.")] = None,  # noqa: UP007
    end: Annotated[Optional[int], typer.Option(  # noqa: UP007
        "--end", help="Stop before this frame.")] = None,
    stride: Annotated[Optional[int], typer.Option(  # noqa: UP007
        "--stride", help="Keep every N-th frame.")] = None,
    max_frames: Annotated[Optional[int], typer.Option(  # noqa: UP007
        "--max-frames", help="Keep at most N frames.")] = None,
    until: Annotated[Optional[str], typer.Option(  # noqa: UP007
        "--until", metavar="STAGE", help="Stop after this stage (decode, tracks, cameras, depth, adapt, predict, fuse).")] = None,
    force: ForceOpt = None,
    device: DeviceOpt = Device.auto,
    seed: Annotated[Optional[int], typer.Option(  # noqa: UP007
        "--seed", help="Random seed (default 0); deterministic for a fixed seed on CPU.")] = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Video -> 4D: decode, track, solve the cameras, depth, test-time adapt, predict, fuse; writes RUN/scene.npz."""
    set_verbosity(quiet, verbose)
    from st4r_cli import pipeline, progress
    from st4r_cli.cli.common import resolve_device
    from st4r_cli.runs import Run, RunConfig, apply_overrides, load_config

    from st4r_cli.cli.common import check_run_inputs
    from st4r_cli.paths import check_input_path

    check_input_path(video)
    run_config = load_config(config) if config else RunConfig()
    apply_overrides(run_config, list(set_ or []))
    if queries is not None:
        run_config.tracks.query_mode, run_config.tracks.query_file = "file", str(queries.resolve())
    run_config.input = str(video.resolve())
    run_config.device = device.value
    _apply_flags(run_config, model=model, tracker=tracker, depth=depth, long_side=long_side,
                 start=start, end=end, stride=stride, max_frames=max_frames, seed=seed)
    pipeline.check_force(force or [])
    pipeline.check_until(until)
    pipeline.check_run_config(run_config)
    check_run_inputs(run_config)
    resolved_device = resolve_device(device)
    out_dir = out if out is not None else Path("runs") / video.stem
    with Run.create(out_dir, run_config, force=force or []) as run:
        progress.log(f"run [bold]{out_dir}[/bold] on {resolved_device}")
        pipeline.run_pipeline(run, resolved_device, until=until)
    if (out_dir / "scene.npz").is_file() and until is None:
        from st4r_cli.viz.summary import write_summary
        progress.log(f"summary picture: {write_summary(out_dir)}")
    progress.log(f"[green]done[/green]: {out_dir}")


def _apply_flags(cfg: RunConfig, model: str | None, tracker: Tracker | None,
                 depth: DepthBackend | None, seed: int | None, **decode_flags: int | None) -> None:
    """Explicit command-line flags override the config file and --set."""
    from st4r_cli.runs.config import resolve_model_path

    cfg.model = resolve_model_path(model if model is not None else cfg.model)
    if tracker is not None:
        cfg.tracks.backend = tracker.value
    if depth is not None:
        cfg.depth.backend = depth.value
    for name, value in decode_flags.items():
        if value is not None:
            setattr(cfg.decode, name, value)
    if seed is not None:
        cfg.seed = seed
