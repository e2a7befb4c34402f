"""Track stage: 2D pseudo-tracks of query points through the video (owner: issue 4)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TracksConfig:
    backend: str = "builtin"          # builtin | cotracker3
    query_mode: str = "grid"          # grid | grid_every_k | file
    grid_size: int = 32               # points per side of the query grid
