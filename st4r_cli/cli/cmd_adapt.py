"""`st4r adapt VIDEO --out runs/NAME`: the whole pipeline, through the run's stage cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from st4r_cli.cli.common import (DepthBackend, Device, DeviceOpt, ForceOpt, QuietOpt, Tracker, VerboseOpt,
                                 set_verbosity)


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
    from st4r_cli.api import run_adapt

    run_adapt(video, out, config=config, set=list(set_ or []), model=model, tracker=tracker, depth=depth, queries=queries,
              long_side=long_side, start=start, end=end, stride=stride, max_frames=max_frames, until=until,
              force=force, device=device, seed=seed)
