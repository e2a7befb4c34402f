"""Sanity checks of a solved camera path against the image motion it must explain.

A camera step the images do not show: between frames t-1 and t the static points move in the image by
a median of `m_t` pixels (their 2D tracks). A camera translation `d` at median scene depth `Z` moves
them by about `f d / Z` pixels. A step whose predicted motion exceeds `max(ratio * m_t, min_px)` while
the step is also `step_ratio` times the path's median step is a jump the bundle made up (for example
two near-identical frames 0.28 units apart where the median step is 0.005).

A frame whose steps in and out are both suspect is a spike: `repair_spikes` puts it back between its
neighbours (linear in position, spherical in rotation), since the images say it barely moved. A single
suspect step is a break in the path: the poses alone cannot say which side is right, so it is reported
and the caller rejects the solution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class JumpCheck:
    ratio: float = 5.0          # predicted / observed image motion above which a step is suspect
    min_px: float = 4.0         # ... and the predicted motion must exceed this many pixels
    step_ratio: float = 8.0     # ... and the step must be this many times the median step


def image_motion_px(tracks_xy: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """`(T,)` median displacement (px) of the tracks seen in both frames t-1 and t (`[0] = 0`, NaN where
    no track is seen in both)."""
    both = visible[:, 1:] & visible[:, :-1]
    step = np.linalg.norm(np.diff(tracks_xy, axis=1), axis=-1)
    out = np.zeros(tracks_xy.shape[1])
    for t in range(1, tracks_xy.shape[1]):
        sel = both[:, t - 1]
        out[t] = np.median(step[sel, t - 1]) if sel.any() else np.nan
    return out


def suspect_steps(cam_c2w: np.ndarray, focal_px: float, scene_depth: float, tracks_xy: np.ndarray,
                  visible: np.ndarray, check: JumpCheck = JumpCheck()) -> np.ndarray:
    """Frames `t` (int array) whose step from t-1 the image motion does not support (see module doc).

    Args:
        cam_c2w: `(T, 4, 4)` solved poses; focal_px: their focal; scene_depth: median depth of the
            static points in the poses' units.
        tracks_xy, visible: `(N, T, 2)`, `(N, T)` 2D tracks of static points.
    """
    centres = np.asarray(cam_c2w, np.float64)[:, :3, 3]
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)                  # (T-1,)
    if steps.size == 0:
        return np.zeros(0, dtype=np.int64)
    median_step = float(np.median(steps))
    predicted = focal_px * steps / max(scene_depth, 1e-12)
    observed = image_motion_px(tracks_xy, visible)[1:]
    observed = np.where(np.isfinite(observed), observed, np.inf)
    suspect = (predicted > np.maximum(check.ratio * observed, check.min_px)) & \
              (steps > check.step_ratio * max(median_step, 1e-12))
    return np.flatnonzero(suspect) + 1


def classify_jumps(steps: np.ndarray) -> dict[str, np.ndarray]:
    """Suspect steps -> `spikes` (frames t whose steps in and out are both suspect: the frame alone is
    off the path; repairable) and `breaks` (a suspect step not followed by one: the path itself jumps
    at t, every later frame with it; not repairable from the poses alone)."""
    steps = set(int(t) for t in steps)
    spikes = sorted(t for t in steps if t + 1 in steps)
    breaks = sorted(t for t in steps if t + 1 not in steps and t - 1 not in spikes)
    return {"spikes": np.array(spikes, dtype=np.int64), "breaks": np.array(breaks, dtype=np.int64)}


def repair_spikes(cam_c2w: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """`cam_c2w` with each frame in `frames` re-placed between its nearest unflagged neighbours
    (linear in position, spherical in rotation)."""
    from scipy.spatial.transform import Rotation, Slerp

    poses = np.array(cam_c2w, dtype=np.float64)
    bad = np.zeros(len(poses), dtype=bool)
    bad[np.asarray(frames, dtype=np.int64)] = True
    good = np.flatnonzero(~bad)
    for t in np.flatnonzero(bad):
        before, after = good[good < t], good[good > t]
        if before.size == 0 or after.size == 0:
            poses[t] = poses[before[-1] if before.size else after[0]]
            continue
        a, b = before[-1], after[0]
        w = (t - a) / (b - a)
        slerp = Slerp([0.0, 1.0], Rotation.from_matrix(poses[[a, b], :3, :3]))
        poses[t, :3, :3] = slerp([w]).as_matrix()[0]
        poses[t, :3, 3] = (1 - w) * poses[a, :3, 3] + w * poses[b, :3, 3]
    return poses
