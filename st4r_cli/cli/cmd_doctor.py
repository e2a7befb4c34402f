"""`st4r doctor`: placeholder, replaced below in this session."""
from __future__ import annotations


def command() -> None:
    """Check the installation."""
