"""`st4r weights ...`: placeholder until its owner's implementation lands."""

from __future__ import annotations

import typer

from st4r_cli.errors import St4rError

app = typer.Typer(no_args_is_help=True)


@app.command("import", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def import_checkpoint() -> None:
    """(not available yet)"""
    raise St4rError("`st4r weights import` is not available yet")
