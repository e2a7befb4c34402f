"""Which tracks stand still: the static test the cameras stage (bundle points) and the fuse stage
(3D tracks held at their query position) share."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def static_by_motion(motion: np.ndarray, scene_depth: float, rel: float) -> np.ndarray:
    """(N,) bool from (N, T) distances of each track's point at t to its query-frame point (NaN: no
    sample): static when the median distance stays within `rel` x `scene_depth`, or within 3x the median
    of that over all tracks (the threshold adapts to the network's own frame-to-frame inconsistency,
    large on real video). A track with no sample counts as static."""
    import numpy as np

    typical = row_nanmedian(motion)
    noise = float(np.nanmedian(typical)) if np.isfinite(typical).any() else 0.0
    return ~(typical > max(rel * scene_depth, 3.0 * noise))


def row_nanmedian(values: np.ndarray) -> np.ndarray:
    """(N,) median of each row of (N, T) over its finite entries; NaN, without a warning, for a row with none."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=1)
