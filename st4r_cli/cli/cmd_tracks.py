"""`st4r tracks`: placeholder until its owner's implementation lands."""

from __future__ import annotations

from st4r_cli.errors import St4rError

# Accept any arguments so the placeholder answers with its own message, not a usage error.
CONTEXT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def command() -> None:
    """(not available yet)"""
    raise St4rError("`st4r tracks` is not available yet")
