"""`st4r weights ...`: manage checkpoints (import official St4RTrack checkpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from st4r_cli.cli.common import QuietOpt, VerboseOpt, set_verbosity

app = typer.Typer(no_args_is_help=True)


@app.command("import")
def import_checkpoint(
    src: Annotated[Path, typer.Argument(help="Official St4RTrack/DUSt3R .pth ({'model', 'args'}) or any "
                                             "st4r checkpoint (also a pretraining run's checkpoint.pt).")],
    dst: Annotated[Path, typer.Argument(help="Output .safetensors (weights + model_config metadata).")],
    half: Annotated[bool, typer.Option("--half", help="Store float16 (loaded back as float32).")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Convert a checkpoint to st4r's self-describing safetensors format."""
    set_verbosity(quiet, verbose)
    from st4r_cli import progress
    from st4r_cli.model.io import import_official, read_checkpoint

    out = import_official(src, dst, half=half)
    config, state = read_checkpoint(out)
    progress.log(f"wrote {out} ({config.name}, {sum(v.numel() for k, v in state.items() if 'layer_rn.' not in k) / 1e6:.2f}M values)")
