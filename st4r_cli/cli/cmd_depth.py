"""`st4r depth VIDEO|RUN_DIR`: per-frame mono-depth through the run's stage cache, written to RUN/depth.npz.

Same input handling as `st4r tracks` (a video starts a run directory, a run directory reuses its
decoded frames and config); the depth stage's cache entry is the one `st4r adapt` uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from st4r_cli.cli.cmd_tracks import (ConfigOpt, InputArg, LongSideOpt, MaxFramesOpt, RunOutOpt, SetOpt,
                                     _set_if, open_or_start_run, started_here)
from st4r_cli.cli.common import (DepthBackend, Device, DeviceOpt, ForceOpt, QuietOpt, VerboseOpt,
                                 set_verbosity)
from st4r_cli.errors import St4rError

if TYPE_CHECKING:
    from st4r_cli.runs import RunConfig

OUTPUT_NAME = "depth.npz"
STANDALONE_DEFAULT = "moge"   # when the config's depth backend needs the cameras or computes nothing


def command(
    input_path: InputArg,
    out: RunOutOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    backend: Annotated[Optional[DepthBackend], typer.Option(  # noqa: UP007
        "--depth", "--backend", case_sensitive=False,
        help="Depth backend (default: the config's; `st4r depth` needs moge).")] = None,
    weights: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        "--weights", help="MoGe-2/MoGe-1 checkpoint (default: weights/moge-2-vitl-normal/model.pt).")] = None,
    resolution_level: Annotated[Optional[int], typer.Option(  # noqa: UP007
        "--resolution-level", help="MoGe detail level 0..9.")] = None,
    long_side: LongSideOpt = None,
    max_frames: MaxFramesOpt = None,
    force: ForceOpt = None,
    device: DeviceOpt = Device.auto,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed.")] = None,  # noqa: UP007
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Per-frame mono-depth (MoGe) of a video or run; writes RUN/depth.npz."""
    set_verbosity(quiet, verbose)
    from st4r_cli import pipeline, progress
    from st4r_cli.stages.depth import check_backend_available

    def configure(cfg: RunConfig) -> None:
        depth = cfg.depth
        _set_if(depth, "backend", backend.value if backend else None)
        if backend is None and not _runs_alone(depth.backend):
            depth.backend = STANDALONE_DEFAULT   # the config's backend (multiview by default) needs adapt
        _check_runs_alone(depth.backend)
        _set_if(depth, "moge_weights", str(weights) if weights is not None else None)
        _set_if(depth, "resolution_level", resolution_level)
        check_backend_available(depth)

    run, given, dev = open_or_start_run(input_path, out, config, set_, long_side, max_frames,
                                        force, device, seed, configure)
    with run:   # the depth stage `st4r adapt` runs (same cache entry), through its orchestrator
        artifacts = pipeline.run_pipeline(run, dev, stages=("decode", "depth"), given=given,
                                          outputs={"depth": OUTPUT_NAME}, finish=started_here(run, input_path),
                                          memory_summary=False)
    valid = artifacts["depth"]["valid"]
    progress.log(f"[green]done[/green]: depth of {valid.shape[0]} frames "
                 f"({100 * valid.mean():.0f}% valid) -> {run.dir / OUTPUT_NAME}")


def _runs_alone(name: str) -> bool:
    """False for a registered depth backend `st4r depth` cannot run: one that computes nothing, or one
    that needs the solved cameras (`st4r adapt --until depth` runs those)."""
    from st4r_cli import backends

    if name not in backends.names("depth"):
        return True                    # the config check names the registered ones
    backend = backends.get("depth", name)
    return backend.computes and not backend.needs_cameras


def _check_runs_alone(name: str) -> None:
    """St4rError for a depth backend `st4r depth` cannot run (`_runs_alone`)."""
    from st4r_cli import backends

    if _runs_alone(name):
        return
    if not backends.get("depth", name).computes:
        raise St4rError(f"--depth {name} computes nothing; use --depth {STANDALONE_DEFAULT}")
    raise St4rError(f"{name} depth needs the solved cameras: run `st4r adapt VIDEO --until depth` "
                    f"(st4r depth runs {STANDALONE_DEFAULT})")
