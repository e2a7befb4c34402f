"""Depth stage: per-frame monocular depth (owner: issue 4)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DepthConfig:
    backend: str = "none"             # none | moge
