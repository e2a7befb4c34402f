"""`st4r adapt VIDEO --out runs/NAME`: the whole pipeline, through the run's stage cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from st4r_cli.cli.common import (ConfigOpt, DepthOpt, Device, DeviceOpt, EndOpt, ForceOpt, ModelOpt, QuietOpt,
                                 RunLongSideOpt, RunMaxFramesOpt, RunSeedOpt, SetOpt, StartOpt, StrideOpt,
                                 TrackerOpt, VerboseOpt, set_verbosity)


def command(
    video: Annotated[Path, typer.Argument(help="Video file, or a folder of images.")],
    out: Annotated[Optional[str], typer.Option(  # noqa: UP007 (str: an empty --out is refused, not '.')
        "--out", "-o", help="Run directory (default: runs/<video name>); an existing directory must be "
                            "empty or a st4r run.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    model: ModelOpt = None,
    queries: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        "--queries", help="Points to track: .npy (N,3)/(N,2) or text rows t,x,y / x,y, in pixels of the "
                          "decoded frames (sets tracks.query_mode=file).")] = None,
    tracker: TrackerOpt = None,
    depth: DepthOpt = None,
    long_side: RunLongSideOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    stride: StrideOpt = None,
    max_frames: RunMaxFramesOpt = None,
    until: Annotated[Optional[str], typer.Option(  # noqa: UP007
        "--until", metavar="STAGE", help="Stop after this stage (decode, tracks, cameras, depth, adapt, predict, fuse).")] = None,
    force: ForceOpt = None,
    device: DeviceOpt = Device.auto,
    seed: RunSeedOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Video -> 4D: decode, track, solve the cameras, depth, test-time adapt, predict, fuse; writes RUN/scene.npz."""
    set_verbosity(quiet, verbose)
    from st4r_cli.api import run_adapt

    run_adapt(video, out, config=config, set=list(set_ or []), model=model, tracker=tracker, depth=depth, queries=queries,
              long_side=long_side, start=start, end=end, stride=stride, max_frames=max_frames, until=until,
              force=force, device=device, seed=seed)
