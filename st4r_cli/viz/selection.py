"""Which tracks to draw: an even spread over the image (shared by the viewer, the videos and the GLB
export; NumPy only, no run access, so the export stage may use it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def pick_tracks(query_xy: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `limit` tracks spread evenly over the image. Grid queries: every k-th
    row and column of the grid; other queries: one per cell of a grid of about `limit` cells (then a
    fixed random subset if still too many)."""
    import numpy as np

    xy = np.nan_to_num(np.asarray(query_xy, np.float64).reshape(-1, 2))
    count = len(xy)
    if count <= limit:
        return np.arange(count)
    step = int(np.ceil(np.sqrt(count / limit)))
    xs, x_rank = np.unique(np.round(xy[:, 0], 2), return_inverse=True)
    ys, y_rank = np.unique(np.round(xy[:, 1], 2), return_inverse=True)
    if len(xs) * len(ys) <= 1.05 * count:  # a (nearly) full grid
        picked = np.flatnonzero((x_rank % step == 0) & (y_rank % step == 0))
    else:
        span = np.maximum(xy.max(0) - xy.min(0), 1.0)
        cell = float(np.sqrt(span[0] * span[1] / limit))
        keys = np.floor((xy - xy.min(0)) / cell).astype(np.int64)
        _, picked = np.unique(keys[:, 1] * (1 << 20) + keys[:, 0], return_index=True)
    if len(picked) > limit:
        picked = np.random.default_rng(seed).choice(picked, size=limit, replace=False)
    return np.sort(picked)
