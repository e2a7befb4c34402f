"""`st4r adapt`: placeholder, replaced below in this session."""
from __future__ import annotations


def command() -> None:
    """Run the pipeline."""
