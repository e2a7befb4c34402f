"""The built-in 2D point tracker: chained DIS optical flow with forward-backward occlusion checks.

Classical, offline, CPU only (OpenCV). For each pair of consecutive frames (t-1, t):

1. Dense flow t-1 -> t with OpenCV's DIS (Kroeger et al., ECCV 2016) on grey frames resized so their
   long side is `flow_long_side` (finest scale 0 of that raster). Every active point moves by the
   flow bilinearly sampled at its sub-pixel position.
2. Cycle check (the GMRW/TAP-style occlusion test): the point is traced back to t-1 with a pyramidal
   Lucas-Kanade step started at its new position (`occlusion="lk_fb"`, zero-motion start, so the
   check cannot close trivially) or with the backward DIS flow (`"dis_fb"`); a cycle error above
   `fb_threshold` marks it lost.
3. A lost point does not follow the flow (where it is hidden, the flow is the occluder's): it coasts
   with the median of its last visible steps (`lost_motion="velocity"`), and stays occluded until it
   is re-acquired.
4. Re-acquisition (`reacquire`): a lost point is matched against its own appearance in its query
   frame: pyramidal LK from the query frame started at the predicted position, a backward LK search
   to the query frame that must close within `fb_threshold`, and a normalised cross-correlation of
   the query-frame patch with the matched patch above `reacquire_ncc`. Then it is visible again, at
   the matched position, and follows the flow again.

A point whose position leaves the image is not visible there, and its position is the extrapolated
one (never clamped to the border); internally the tracker follows it on from the border, so it can be
re-acquired when it comes back. Tracks start at their query frame; frames before it repeat the query position and are marked not
visible (no backward tracking).

Thresholds are in pixels of a 256-pixel long side and scale with the frames (`fb_threshold=3` is
about 10 px on an 854x480 frame), so a setting means the same at any resolution.

Each choice here was measured on the TAP-Vid DAVIS benchmark (benchmarks/tapvid_davis.py; the table
is in benchmarks/results/tapvid_davis_ablation.json).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from st4r_cli.configs import TracksConfig

REFERENCE_LONG_SIDE = 256.0  # thresholds are given in pixels of this raster
VELOCITY_MEMORY = 3          # a coasting point moves by the median of its last visible steps


@dataclass
class BuiltinTrackerParams:
    """Parameters of the built-in tracker (see module docstring)."""

    flow_long_side: int = 432         # DIS runs on frames with this long side (never enlarged)
    dis_preset: str = "ultrafast"     # ultrafast | fast | medium (OpenCV DIS presets, finest scale 0)
    occlusion: str = "lk_fb"          # lk_fb | dis_fb | none
    fb_threshold: float = 3.0         # cycle error (px at a 256 long side) above which a point is occluded
    reacquire: bool = True            # match occluded points against their query-frame appearance
    sticky: bool = False              # a lost point stays occluded until re-acquired
    appearance_ncc: float = 0.0       # visible needs NCC(query-frame patch, current patch) above this (0: off)
    reacquire_ncc: float = 0.7        # a re-acquired match needs NCC with the query-frame patch above this
    patch_size: int = 15              # NCC patch side (px of the frames)
    lost_motion: str = "velocity"     # velocity | flow: how a lost point moves (local flow, or its
                                      # last visible velocity: the flow there may be the occluder's)
    lk_window: int = 21               # LK window (px of the frames), for lk_fb and re-acquisition
    lk_levels: int = 3                # LK pyramid levels


_DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}


class GreyFrames:
    """The grey frames the tracker reads, made as it goes: frame t's grey (and its flow-raster copy) is
    made when step t first asks for it, and only the last two and the query frames' are kept (re-
    acquisition matches against a query frame), so the tracker never holds the whole video in grey.

    frames: anything with `len()` whose item t is frame t, `(H, W, 3)` uint8 RGB (an array, or a reader
    that decodes frames as they are asked for, in increasing order); keep: the query frames.
    """

    def __init__(self, frames: Sequence[np.ndarray], keep: set[int], flow_hw: tuple[int, int] | None) -> None:
        self.frames = frames
        self.keep = keep
        self.flow_hw = flow_hw            # (h, w) of the flow raster, None: the frames' own
        self.grey: dict[int, np.ndarray] = {}
        self.flow: dict[int, np.ndarray] = {}

    def load(self, t: int) -> None:
        """Make frame t's grey images; drop those neither recent (t - 1) nor a query frame."""
        import cv2

        if t not in self.grey:
            self.grey[t] = cv2.cvtColor(np.asarray(self.frames[t]), cv2.COLOR_RGB2GRAY)
            self.flow[t] = self.grey[t] if self.flow_hw is None else cv2.resize(
                self.grey[t], (self.flow_hw[1], self.flow_hw[0]), interpolation=cv2.INTER_AREA)
        for old in [k for k in self.grey if k < t - 1 and k not in self.keep]:
            del self.grey[old]
            del self.flow[old]


def track_points(frames: Sequence[np.ndarray], queries: np.ndarray, params: BuiltinTrackerParams | None = None,
                 progress_desc: str | None = None) -> dict[str, np.ndarray]:
    """Track query points through a video.

    Args:
        frames: `(T, H, W, 3)` uint8 RGB: an array, or any sequence of `(H, W, 3)` frames read in
            increasing order (`GreyFrames`: the tracker keeps the grey of the last two and the query frames).
        queries: `(N, 3)` float (t, x, y), pixels of `frames`, pixel centres at integers.
        params: tracker parameters (defaults: `BuiltinTrackerParams()`).
        progress_desc: show a progress bar with this label (None: no bar).
    Returns:
        `tracks_xy (N, T, 2)` float32, `visible (N, T)` bool, `cycle_error (N, T)` float32 (px of the
        frames; 0 at the query frame, NaN before it), `confidence (N,)` float32 in [0, 1].
    """
    params = params or BuiltinTrackerParams()
    if params.dis_preset not in _DIS_PRESETS:
        raise ValueError(f"unknown DIS preset {params.dis_preset!r}; expected one of {list(_DIS_PRESETS)}")
    if params.occlusion not in ("dis_fb", "lk_fb", "none"):
        raise ValueError(f"unknown occlusion test {params.occlusion!r}")
    queries = np.asarray(queries, dtype=np.float32)
    num_frames = len(frames)
    height, width = np.asarray(frames[0]).shape[:2]
    num_points = len(queries)
    flow_scale = min(1.0, params.flow_long_side / max(height, width))
    flow_hw = (max(8, round(height * flow_scale)), max(8, round(width * flow_scale)))
    # exact per-axis factors between the two rasters (pixel centres at integers)
    to_flow = np.array([flow_hw[1] / width, flow_hw[0] / height], dtype=np.float32)
    threshold_px = params.fb_threshold * max(height, width) / REFERENCE_LONG_SIDE
    dis = _make_dis(params.dis_preset)

    query_t = np.round(queries[:, 0]).astype(np.int64)
    store = GreyFrames(frames, set(query_t.tolist()), None if flow_scale == 1.0 else flow_hw)
    grey, flow_grey = store.grey, store.flow
    tracks_xy = np.repeat(queries[:, None, 1:], num_frames, axis=1).astype(np.float32)
    visible = np.zeros((num_points, num_frames), dtype=bool)
    cycle_error = np.full((num_points, num_frames), np.nan, dtype=np.float32)
    visible[np.arange(num_points), query_t] = True
    cycle_error[np.arange(num_points), query_t] = 0.0
    current = queries[:, 1:].copy()
    was_lost = np.zeros(num_points, dtype=bool)
    recent_steps = np.full((num_points, VELOCITY_MEMORY, 2), np.nan, dtype=np.float32)  # last visible steps
    templates = np.empty((num_points, params.patch_size, params.patch_size), np.float32)   # (N, P, P)
    store.load(0)
    _fill_templates(templates, grey, 0, query_t, queries, params.patch_size)

    steps = range(1, num_frames)
    if progress_desc is not None:
        from st4r_cli.progress import track as progress_track

        steps = progress_track(steps, progress_desc, total=num_frames - 1)
    for t in steps:
        store.load(t)
        _fill_templates(templates, grey, t, query_t, queries, params.patch_size)
        active = np.flatnonzero(query_t < t)
        if len(active) == 0:
            continue
        start_xy = current[active]
        forward = dis.calc(flow_grey[t - 1], flow_grey[t], None)
        raw_xy = start_xy + _sample_flow(forward, start_xy, to_flow)
        coasting = was_lost[active] if params.lost_motion == "velocity" else np.zeros(len(active), bool)
        if coasting.any():
            with warnings.catch_warnings():   # a point lost on its first step has no steps yet
                warnings.simplefilter("ignore", RuntimeWarning)
                velocity = np.nan_to_num(np.nanmedian(recent_steps[active[coasting]], axis=1))
            raw_xy[coasting] = start_xy[coasting] + velocity
        # a point that left the image is occluded there (its position is the extrapolated one); the
        # tracker itself keeps following it from the border, where it can be re-acquired
        outside = ~_in_image(raw_xy, width, height)
        moved_xy = _clip_xy(raw_xy, width, height)
        if params.occlusion == "dis_fb":
            backward = dis.calc(flow_grey[t], flow_grey[t - 1], None)
            back_xy = moved_xy + _sample_flow(backward, moved_xy, to_flow)
            error = np.linalg.norm(back_xy - start_xy, axis=1)
        elif params.occlusion == "lk_fb":
            # backward search starts where the point is (zero motion), not at the answer
            back_xy, ok = _lk(grey[t], grey[t - 1], moved_xy, moved_xy, params)
            error = np.where(ok, np.linalg.norm(back_xy - start_xy, axis=1), np.inf)
        else:
            error = np.zeros(len(active))
        seen = (error < threshold_px) & ~outside
        if params.appearance_ncc > 0:
            ncc = _ncc(templates[active], _patches(grey, np.full(len(active), t), moved_xy, params.patch_size))
            seen &= ncc > params.appearance_ncc
        if params.sticky or params.lost_motion == "velocity":
            seen &= ~was_lost[active]
        if params.reacquire and not seen.all():
            lost = np.flatnonzero(~seen)
            found_xy, found = _reacquire(grey, t, queries[active[lost]], query_t[active[lost]],
                                         moved_xy[lost], threshold_px, params)
            if params.reacquire_ncc > 0 and found.any():
                ncc = _ncc(templates[active[lost]],
                           _patches(grey, np.full(len(lost), t), found_xy, params.patch_size))
                found &= ncc > params.reacquire_ncc
            found &= _in_image(found_xy, width, height)
            moved_xy[lost[found]] = found_xy[found]
            raw_xy[lost[found]] = found_xy[found]
            seen[lost[found]] = True
        stepped = active[seen & ~coasting]
        recent_steps[stepped] = np.roll(recent_steps[stepped], 1, axis=1)
        recent_steps[stepped, 0] = (moved_xy - start_xy)[seen & ~coasting]
        current[active] = moved_xy
        was_lost[active] = ~seen
        tracks_xy[active, t] = np.where(seen[:, None], moved_xy, raw_xy)
        visible[active, t] = seen
        cycle_error[active, t] = np.where(np.isfinite(error), error, 1e6)
    confidence = _confidence(visible, cycle_error, query_t, threshold_px)
    return {"tracks_xy": tracks_xy, "visible": visible, "cycle_error": cycle_error,
            "confidence": confidence}


def _make_dis(preset: str):  # -> cv2.DISOpticalFlow
    import cv2

    dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[preset])
    dis.setFinestScale(0)
    return dis


REMAP_COLUMNS = 1024   # _sample_flow's point layout (any number of points below 32767 x 1024)


def _sample_flow(flow: np.ndarray, xy: np.ndarray, to_flow: np.ndarray) -> np.ndarray:
    """Flow `(h, w, 2)` of the flow raster, bilinearly sampled at `xy (M, 2)` of the full frames.

    Returns the displacement in full-frame pixels, `(M, 2)` float32.
    """
    import cv2

    flow_xy = (xy + 0.5) * to_flow - 0.5
    # OpenCV maps are images of fewer than 32767 rows: lay the points out in rows of REMAP_COLUMNS
    num = len(flow_xy)
    rows = -(-num // REMAP_COLUMNS)
    padded = np.zeros((rows * REMAP_COLUMNS, 2), np.float32)
    padded[:num] = flow_xy
    map_x = np.ascontiguousarray(padded[:, 0].reshape(rows, REMAP_COLUMNS))
    map_y = np.ascontiguousarray(padded[:, 1].reshape(rows, REMAP_COLUMNS))
    sampled = cv2.remap(flow, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return sampled.reshape(-1, 2)[:num] / to_flow


def _in_image(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """`(M,)` True where `xy (M, 2)` lies on the image (pixel centres at integers, edges at -0.5)."""
    return (xy[:, 0] >= -0.5) & (xy[:, 0] <= width - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= height - 0.5)


def _clip_xy(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack([np.clip(xy[:, 0], -0.5, width - 0.5), np.clip(xy[:, 1], -0.5, height - 0.5)], axis=1)


def _lk(source: np.ndarray, target: np.ndarray, source_xy: np.ndarray, guess_xy: np.ndarray,
        params: BuiltinTrackerParams) -> tuple[np.ndarray, np.ndarray]:
    """Pyramidal LK from `source` to `target`, started at `guess_xy`; returns (xy (M, 2), ok (M,))."""
    import cv2

    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
    found, status, _ = cv2.calcOpticalFlowPyrLK(
        source, target, source_xy.reshape(-1, 1, 2).astype(np.float32),
        guess_xy.reshape(-1, 1, 2).astype(np.float32).copy(),
        winSize=(params.lk_window, params.lk_window), maxLevel=params.lk_levels, criteria=criteria,
        flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
    return found.reshape(-1, 2), status.ravel() == 1


def _fill_templates(templates: np.ndarray, grey: Mapping[int, np.ndarray], t: int, query_t: np.ndarray,
                    queries: np.ndarray, size: int) -> None:
    """The query-frame patches `(size, size)` of the queries of frame t, into `templates (N, size, size)`."""
    rows = np.flatnonzero(query_t == t)
    if len(rows):
        templates[rows] = _patches(grey, np.full(len(rows), t), queries[rows, 1:], size)


def _reacquire(grey: Mapping[int, np.ndarray], t: int, queries: np.ndarray, query_t: np.ndarray,
               guess_xy: np.ndarray, threshold_px: float,
               params: BuiltinTrackerParams) -> tuple[np.ndarray, np.ndarray]:
    """Match points against their query-frame appearance in frame t (see module docstring).

    Returns `(xy (M, 2), found (M,) bool)`.
    """
    found_xy = guess_xy.copy()
    found = np.zeros(len(queries), dtype=bool)
    for source_t in np.unique(query_t):
        rows = np.flatnonzero(query_t == source_t)
        source_xy = queries[rows, 1:]
        match_xy, ok = _lk(grey[source_t], grey[t], source_xy, guess_xy[rows], params)
        # the backward search starts at the query (the motion since the query frame can be large);
        # the NCC test on the match (in track_points) guards against a trivially closing cycle
        back_xy, ok_back = _lk(grey[t], grey[source_t], match_xy, source_xy, params)
        closes = ok & ok_back & (np.linalg.norm(back_xy - source_xy, axis=1) < threshold_px)
        found_xy[rows] = match_xy
        found[rows] = closes
    return found_xy, found


def _patches(grey: Mapping[int, np.ndarray], frame_t: np.ndarray, xy: np.ndarray, size: int) -> np.ndarray:
    """`(M, size, size)` float32 grey patches centred (sub-pixel) at `xy[m]` in frame `frame_t[m]`."""
    import cv2

    out = np.empty((len(xy), size, size), dtype=np.float32)
    for m, (t, (x, y)) in enumerate(zip(frame_t, xy)):
        out[m] = cv2.getRectSubPix(grey[int(t)], (size, size), (float(x), float(y)), patchType=cv2.CV_32F)
    return out


def _ncc(patches_a: np.ndarray, patches_b: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation `(M,)` in [-1, 1] of two patch stacks `(M, P, P)`."""
    a = patches_a.reshape(len(patches_a), -1)
    b = patches_b.reshape(len(patches_b), -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1)) + 1e-6
    return (a * b).sum(axis=1) / denominator


def _confidence(visible: np.ndarray, cycle_error: np.ndarray, query_t: np.ndarray,
                threshold_px: float) -> np.ndarray:
    """Per-point confidence in [0, 1]: mean over frames after the query of visible * exp(-err/thr).

    A point with no frame after its query (queried on the last frame) gets 1.
    """
    num_points, num_frames = visible.shape
    after = np.arange(num_frames)[None, :] > query_t[:, None]
    error = np.nan_to_num(cycle_error, nan=np.inf)
    score = np.where(visible & after, np.exp(-error / max(threshold_px, 1e-6)), 0.0)
    count = after.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(count > 0, score.sum(axis=1) / np.maximum(count, 1), 1.0)
    return confidence.astype(np.float32)


# -- the tracker registry's entry points (st4r_cli/backends.py) -------------------------------------
def compute(frames: np.ndarray, queries: np.ndarray, cfg: TracksConfig, device: str = "cpu", seed: int = 0,
            label: str = "tracks") -> dict[str, np.ndarray]:
    """`track_points` with the tracks stage's settings (CPU only, deterministic: `device`, `seed` unused)."""
    return track_points(frames, queries, params_from_config(cfg), progress_desc=f"{label} (builtin)")


def params_from_config(cfg: TracksConfig) -> BuiltinTrackerParams:
    """The tracker's parameters from the tracks stage's config section."""
    return BuiltinTrackerParams(flow_long_side=cfg.flow_long_side, dis_preset=cfg.dis_preset,
                                occlusion=cfg.occlusion, fb_threshold=cfg.fb_threshold,
                                reacquire=cfg.reacquire, reacquire_ncc=cfg.reacquire_ncc,
                                lost_motion=cfg.lost_motion)


def check(cfg: TracksConfig) -> None:
    """Nothing to install: OpenCV is a core dependency."""


def input_files(cfg: TracksConfig) -> list[Path]:
    return []
