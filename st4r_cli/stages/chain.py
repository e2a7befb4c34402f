"""World-frame chaining of windows (owner: issue 6)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ChainConfig:
    window: int = 24                  # frames per window
    overlap: int = 4                  # frames shared by consecutive windows
