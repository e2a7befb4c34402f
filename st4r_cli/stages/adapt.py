"""Test-time adaptation stage (owner: issue 6)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AdaptConfig:
    loss: str = "robust"              # robust (ST4RTrack+) | baseline (ST4RTrack)
    iters: int = 100
    lr: float = 1e-5
