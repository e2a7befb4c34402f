"""Options shared by every `st4r` command, and the helpers that apply them.

Use the `Annotated` aliases in command signatures so every command spells its options the same way:

    def command(video: Path, device: DeviceOpt = Device.auto, seed: SeedOpt = 0,
                quiet: QuietOpt = False, verbose: VerboseOpt = False) -> None:
        set_verbosity(quiet, verbose)
        ...                                   # a run: pipeline.run_pipeline(run, resolve_device(device))

Only light imports here (typer, stdlib): this module is imported when `st4r --help` runs.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from st4r_cli import backends, progress
from st4r_cli.device import resolve_device  # noqa: F401 (re-exported: the CLI's commands use it)
from st4r_cli.errors import St4rError


class Device(str, Enum):
    """Where to run: `auto` picks CUDA when it works, else the CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def backend_choices(kind: str, class_name: str) -> type[Enum]:
    """The registered backends of `kind` (`st4r_cli.backends`) as the choices of a CLI option."""
    return Enum(class_name, {name: name for name in backends.names(kind)}, type=str)  # type: ignore[return-value]


Tracker = backend_choices("tracker", "Tracker")            # 2D tracker backends
DepthBackend = backend_choices("depth", "DepthBackend")    # depth backends


DeviceOpt = Annotated[Device, typer.Option(
    "--device", case_sensitive=False, help="auto | cpu | cuda (auto: CUDA when available).")]
SeedOpt = Annotated[int, typer.Option(
    "--seed", help="Random seed; results are deterministic for a fixed seed on CPU.")]
QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", help="Print nothing but errors.")]
VerboseOpt = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Print details, and a traceback on unexpected errors.")]
ForceOpt = Annotated[Optional[list[str]], typer.Option(  # noqa: UP007 (typer needs Optional here)
    "--force", metavar="STAGE",
    help="Recompute STAGE even if it is cached (repeatable; 'all' recomputes every stage).")]
OutOpt = Annotated[Path, typer.Option(
    "--out", "-o", help="Run directory to write (created if missing).")]

# the run options of `st4r adapt`, which `st4r batch` passes on to every video's run
ConfigOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP007
    "--config", help="YAML run config to start from (e.g. a previous run's config.yaml).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(  # noqa: UP007
    "--set", metavar="SECTION.FIELD=VALUE",
    help="Override any config value, e.g. --set tracks.grid_size=16 (repeatable).")]
ModelOpt = Annotated[Optional[str], typer.Option(  # noqa: UP007
    "--model", help="Checkpoint (default: the embedded weights/st4r-tiny).")]
TrackerOpt = Annotated[Optional[Tracker], typer.Option(  # noqa: UP007
    "--tracker", case_sensitive=False, help="2D tracker backend.")]
DepthOpt = Annotated[Optional[DepthBackend], typer.Option(  # noqa: UP007
    "--depth", case_sensitive=False,
    help="Depth for the TTA and the static scene: multiview (default; from the solved cameras), "
         "moge (MoGe-2 mono-depth), none.")]
RunLongSideOpt = Annotated[Optional[int], typer.Option(  # noqa: UP007
    "--long-side", help="Processing resolution: long side in pixels.")]
StartOpt = Annotated[Optional[int], typer.Option("--start", help="First frame.")]  # noqa: UP007
EndOpt = Annotated[Optional[int], typer.Option("--end", help="Stop before this frame.")]  # noqa: UP007
StrideOpt = Annotated[Optional[int], typer.Option("--stride", help="Keep every N-th frame.")]  # noqa: UP007
RunMaxFramesOpt = Annotated[Optional[int], typer.Option(  # noqa: UP007
    "--max-frames", help="Keep at most N frames.")]
RunSeedOpt = Annotated[Optional[int], typer.Option(  # noqa: UP007
    "--seed", help="Random seed (default 0); deterministic for a fixed seed on CPU.")]


def set_verbosity(quiet: bool = False, verbose: bool = False) -> None:
    """Apply --quiet/--verbose (they are mutually exclusive)."""
    if quiet and verbose:
        raise St4rError("--quiet and --verbose cannot be used together")
    progress.set_verbosity(quiet=quiet, verbose=verbose)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs (torch only if it is already imported or needed)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    import torch

    torch.manual_seed(seed)
