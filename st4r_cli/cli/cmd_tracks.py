"""`st4r tracks VIDEO|RUN_DIR`: 2D pseudo-tracks through the run's stage cache, written to RUN/tracks.npz.

With a video (or a folder of images) it starts a run directory (`--out`, default runs/<name>),
decodes and tracks; with an existing run directory it reuses the run's decoded frames and saved
config. Either way the tracks stage goes through the run's cache, so `st4r adapt` reuses it (and vice
versa). Flags override the config for this command only.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from st4r_cli.cli.common import (Device, DeviceOpt, ForceOpt, QuietOpt, Tracker, VerboseOpt,
                                 set_verbosity)
from st4r_cli.errors import St4rError

if TYPE_CHECKING:
    from st4r_cli.runs import Artifact, Run, RunConfig

OUTPUT_NAME = "tracks.npz"


class QueryMode(str, Enum):
    grid = "grid"
    grid_every_k = "grid_every_k"
    file = "file"


class CotrackerMode(str, Enum):
    offline = "offline"
    online = "online"


InputArg = Annotated[Path, typer.Argument(help="Video file, folder of images, or a run directory.")]
RunOutOpt = Annotated[Optional[str], typer.Option(  # noqa: UP007 (str: an empty --out is refused, not '.')
    "--out", "-o", help="Run directory for a video input (default: runs/<video name>).")]
ConfigOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP007
    "--config", help="YAML run config to start from (video input only).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(  # noqa: UP007
    "--set", metavar="SECTION.FIELD=VALUE", help="Override any config value (repeatable).")]
LongSideOpt = Annotated[Optional[int], typer.Option(  # noqa: UP007
    "--long-side", help="Processing resolution: long side in pixels (video input only).")]
MaxFramesOpt = Annotated[Optional[int], typer.Option(  # noqa: UP007
    "--max-frames", help="Keep at most N frames (video input only).")]


def command(
    input_path: InputArg,
    out: RunOutOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tracker: Annotated[Optional[Tracker], typer.Option(  # noqa: UP007
        "--tracker", case_sensitive=False, help="Tracker backend (default: config, builtin).")] = None,
    query_mode: Annotated[Optional[QueryMode], typer.Option(  # noqa: UP007
        "--query-mode", case_sensitive=False, help="grid (frame 0), grid_every_k or file.")] = None,
    grid_size: Annotated[Optional[int], typer.Option(  # noqa: UP007
        "--grid-size", help="Points per side of the query grid.")] = None,
    every_k: Annotated[Optional[int], typer.Option(  # noqa: UP007
        "--every-k", help="grid_every_k: a new grid every K frames.")] = None,
    queries: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        "--queries", help="Query file (.npy or text rows t,x,y / x,y); implies --query-mode file.")] = None,
    cotracker_mode: Annotated[Optional[CotrackerMode], typer.Option(  # noqa: UP007
        "--cotracker-mode", case_sensitive=False, help="CoTracker3 predictor: offline or online.")] = None,
    weights: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        "--weights", help="CoTracker3 checkpoint (default: weights/scaled_offline.pth or "
                          "weights/scaled_online.pth).")] = None,
    long_side: LongSideOpt = None,
    max_frames: MaxFramesOpt = None,
    force: ForceOpt = None,
    device: DeviceOpt = Device.auto,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed.")] = None,  # noqa: UP007
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """2D point tracks (builtin or CoTracker3) of a video or run; writes RUN/tracks.npz."""
    set_verbosity(quiet, verbose)
    from st4r_cli import pipeline, progress
    from st4r_cli.stages.tracks import check_backend_available

    def configure(cfg: RunConfig) -> None:
        tracks = cfg.tracks
        _set_if(tracks, "backend", tracker.value if tracker else None)
        _set_if(tracks, "query_mode", query_mode.value if query_mode else None)
        _set_if(tracks, "grid_size", grid_size)
        _set_if(tracks, "query_every_k", every_k)
        if queries is not None:
            tracks.query_file = str(queries.resolve())
            tracks.query_mode = "file" if query_mode is None else tracks.query_mode
        _set_if(tracks, "cotracker_mode", cotracker_mode.value if cotracker_mode else None)
        _set_if(tracks, "cotracker_weights", str(weights) if weights is not None else None)
        check_backend_available(tracks)

    run, given, dev = open_or_start_run(input_path, out, config, set_, long_side, max_frames,
                                        force, device, seed, configure)
    with run:   # the same stages (tracking resolution, cache key) as `st4r adapt`, through its orchestrator
        artifacts = pipeline.run_pipeline(run, dev, stages=("decode", "tracks"), given=given,
                                          outputs={"tracks": OUTPUT_NAME}, finish=started_here(run, input_path),
                                          memory_summary=False)
    visible = artifacts["tracks"]["visible"]
    num_points, num_frames = visible.shape
    progress.log(f"[green]done[/green]: {num_points} tracks over {num_frames} frames "
                 f"({100 * visible.mean():.0f}% visible) -> {run.dir / OUTPUT_NAME}")


# -- shared with `st4r depth` ---------------------------------------------------------------------
def open_or_start_run(input_path: Path, out: str | Path | None, config: Path | None, overrides: list[str] | None,
                      long_side: int | None, max_frames: int | None, force: list[str] | None,
                      device: Device, seed: int | None,
                      configure: Any) -> tuple[Run, dict[str, Artifact], str]:
    """(run, the artifacts it already has, resolved device) for a video/folder input or an existing run
    directory (whose recorded decode is reused unless `--force decode`: its input may be gone).

    `configure(run_config)` applies the command's own flags (and checks the backend is available)
    before anything is decoded. Every config value is checked before the run directory is created
    or touched. The run is locked as `st4r adapt` locks it (a run another st4r process works in is
    refused); `pipeline.run_pipeline` marks a run this command starts failed/interrupted on any error,
    never left `running`.
    """
    from st4r_cli import pipeline
    from st4r_cli.cli.common import resolve_device
    from st4r_cli.runs import Run, RunConfig, apply_overrides, load_config
    from st4r_cli.runs.run import CONFIG_NAME
    from st4r_cli.paths import check_input_path

    check_input_path(input_path)
    pipeline.check_force(force or [])
    is_run = input_path.is_dir() and (input_path / CONFIG_NAME).is_file()
    if is_run:
        if config is not None or long_side is not None or max_frames is not None:
            raise St4rError("--config, --long-side and --max-frames apply to a video input; a run "
                            "directory keeps its own decode settings")
        run_config = Run.open(input_path).config
    else:
        run_config = load_config(config) if config else RunConfig()
        run_config.input = str(input_path.resolve())
    # one rule for every command, the API and batch (as `api.build_config`): the --config file, then
    # --set, then the explicit flags
    apply_overrides(run_config, list(overrides or []))
    _set_if(run_config.decode, "long_side", long_side)
    _set_if(run_config.decode, "max_frames", max_frames)
    _set_if(run_config, "seed", seed)
    run_config.device = device.value
    configure(run_config)
    pipeline.check_run_config(run_config)
    resolved = resolve_device(device)
    if not is_run:
        from st4r_cli.api import run_dir_for

        return Run.create(run_dir_for(input_path, out), run_config, force=force or []), {}, resolved
    run = Run.open(input_path, lock=True)
    run.config = run_config
    run.force = set(force or [])
    try:
        reuse = run.has_artifact("decode") and "decode" not in run.force
        return run, ({"decode": run.artifact("decode")} if reuse else {}), resolved
    except BaseException:
        run.close()
        raise


def started_here(run: Run, input_path: Path) -> bool:
    """True when this command started the run (a video input): it is complete once its output is
    written, as with `st4r adapt --until`; an existing run directory keeps its status."""
    return run.dir.resolve() != input_path.resolve()


def _set_if(target: Any, name: str, value: Any) -> None:
    if value is not None:
        setattr(target, name, value)
