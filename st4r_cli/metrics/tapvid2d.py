"""TAP-Vid 2D point-tracking metrics (pure NumPy, same semantics as tapnet's `compute_tapvid_metrics`).

Definitions (Doersch et al., "TAP-Vid", NeurIPS 2022). Everything is measured on a 256x256 raster:
rescale pixel tracks with `scale_tracks_to_256` first (the official numbers assume it).

For a track n and frame t let `v = gt_visible[n, t]`, `v^ = pred_visible[n, t]`,
`d = |pred_xy[n, t] - gt_xy[n, t]|` (Euclidean, pixels) and `E[n, t]` the evaluation mask of the
query mode (below). For each threshold `delta` in {1, 2, 4, 8, 16} px:

- `pts_within_delta` = #{E & v & d < delta} / #{E & v}: position accuracy on ground-truth visible
  points, ignoring the predicted visibility.
- `jaccard_delta` = TP / (TP + FP + FN) with TP = #{E & v & v^ & d < delta},
  FP = #{E & v^ & (not v or d >= delta)}, FN = #{E & v & not (v^ & d < delta)}; since
  TP + FN = #{E & v}, the denominator is #{E & v} + FP.

Summaries:
- `average_pts_within_thresh` (delta_avg, "< delta^x_avg"): mean of `pts_within_delta` over the thresholds.
- `average_jaccard` (AJ): mean of `jaccard_delta` over the thresholds.
- `occlusion_accuracy` (OA): #{E & (v == v^)} / #{E}.

Query modes (the evaluation mask E[n, t] for a track queried at frame q_n):
- `first`: the query is the first visible frame of the track; only frames strictly after it are
  scored (t > q_n), because the points before the query are occluded by construction.
- `strided`: queries are sampled every k frames on visible points (`queries_strided`); every frame
  except the query frame is scored (t != q_n).

Metrics are pooled over all tracks of a video (or per track with `per_track=True`); a benchmark score
is the plain mean over videos. Ratios with an empty denominator are NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

THRESHOLDS_PX: tuple[int, ...] = (1, 2, 4, 8, 16)
QUERY_MODES: tuple[str, ...] = ("first", "strided")
EVAL_SIZE_HW: tuple[int, int] = (256, 256)


def scale_tracks_to_256(tracks_xy: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Rescale pixel tracks `(..., 2)` (x, y) of an image of `size_hw` to the 256x256 evaluation raster.

    Uses the scaling tapnet applies to normalised coordinates (`xy_norm * [256, 256]` with
    `xy_norm = xy / [W, H]`), i.e. a pure scale of the coordinate values.
    """
    height, width = size_hw
    scale = np.array([EVAL_SIZE_HW[1] / width, EVAL_SIZE_HW[0] / height], dtype=np.float64)
    return np.asarray(tracks_xy, dtype=np.float64) * scale


def queries_first(gt_visible: np.ndarray) -> np.ndarray:
    """Query frame of each track in `first` mode: its first ground-truth visible frame.

    Args:
        gt_visible: `(N, T)` bool.
    Returns:
        `(N,)` int64, the first visible frame, or -1 for a track that is never visible (drop those;
        tapnet removes them before evaluation).
    """
    gt_visible = np.asarray(gt_visible, dtype=bool)
    first = np.argmax(gt_visible, axis=1).astype(np.int64)
    first[~gt_visible.any(axis=1)] = -1
    return first


def queries_strided(gt_visible: np.ndarray, stride: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Queries in `strided` mode: every track visible at frame 0, stride, 2*stride, ... becomes a query.

    Args:
        gt_visible: `(N, T)` bool.
        stride: frame stride between query frames (tapnet uses 5).
    Returns:
        `track_index (Q,)` int64 into the N tracks and `query_t (Q,)` int64, ordered by query frame then
        track (tapnet's order). Index the ground truth with `track_index` to build the evaluated set.
    """
    gt_visible = np.asarray(gt_visible, dtype=bool)
    track_index, query_t = [], []
    for t in range(0, gt_visible.shape[1], stride):
        rows = np.flatnonzero(gt_visible[:, t])
        track_index.append(rows)
        query_t.append(np.full(rows.shape, t, dtype=np.int64))
    return np.concatenate(track_index).astype(np.int64), np.concatenate(query_t)


def evaluation_mask(query_t: np.ndarray, num_frames: int, query_mode: str) -> np.ndarray:
    """The `(N, T)` bool mask of scored frames: `t > query_t` (`first`) or `t != query_t` (`strided`)."""
    if query_mode not in QUERY_MODES:
        raise ValueError(f"unknown query mode {query_mode!r}; expected one of {QUERY_MODES}")
    query_t = np.round(np.asarray(query_t)).astype(np.int64)[:, None]
    frames = np.arange(num_frames)[None, :]
    return frames > query_t if query_mode == "first" else frames != query_t


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(numerator, dtype=np.float64) / np.asarray(denominator, dtype=np.float64)


def compute_tapvid2d_metrics(
    gt_tracks: np.ndarray,
    gt_visible: np.ndarray,
    pred_tracks: np.ndarray,
    pred_visible: np.ndarray,
    query_t: np.ndarray,
    query_mode: str = "first",
    thresholds: Sequence[float] = THRESHOLDS_PX,
    per_track: bool = False,
) -> dict[str, float | np.ndarray]:
    """TAP-Vid metrics of one video (see the module docstring for the definitions).

    Args:
        gt_tracks: `(N, T, 2)` ground-truth (x, y), already on the 256x256 raster.
        gt_visible: `(N, T)` bool ground-truth visibility (tapnet's `~occluded`).
        pred_tracks: `(N, T, 2)` predicted (x, y) on the same raster.
        pred_visible: `(N, T)` bool predicted visibility.
        query_t: `(N,)` query frame of each track (from `queries_first` or `queries_strided`).
        query_mode: `first` or `strided`.
        thresholds: pixel thresholds (default 1, 2, 4, 8, 16).
        per_track: return `(N,)` arrays (one value per track) instead of pooled floats.
    Returns:
        dict with `occlusion_accuracy`, `pts_within_{d}` and `jaccard_{d}` for each threshold `d`,
        `average_pts_within_thresh` (delta_avg) and `average_jaccard` (AJ), all in [0, 1].
    """
    gt_tracks = np.asarray(gt_tracks, dtype=np.float64)
    pred_tracks = np.asarray(pred_tracks, dtype=np.float64)
    gt_visible = np.asarray(gt_visible, dtype=bool)
    pred_visible = np.asarray(pred_visible, dtype=bool)
    if gt_tracks.ndim != 3 or gt_tracks.shape[-1] != 2:
        raise ValueError(f"gt_tracks must be (N, T, 2), got {gt_tracks.shape}")
    if pred_tracks.shape != gt_tracks.shape:
        raise ValueError(f"pred_tracks {pred_tracks.shape} != gt_tracks {gt_tracks.shape}")
    if gt_visible.shape != gt_tracks.shape[:2] or pred_visible.shape != gt_tracks.shape[:2]:
        raise ValueError("visibility arrays must be (N, T) like the tracks")

    axis = 1 if per_track else None
    evaluated = evaluation_mask(query_t, gt_tracks.shape[1], query_mode)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.sum(mask & evaluated, axis=axis)

    metrics: dict[str, float | np.ndarray] = {
        "occlusion_accuracy": _ratio(count(gt_visible == pred_visible), count(np.ones_like(gt_visible)))
    }
    sq_dist = np.sum(np.square(pred_tracks - gt_tracks), axis=-1)
    num_gt_visible = count(gt_visible)
    fractions, jaccards = [], []
    for threshold in thresholds:
        within = sq_dist < float(threshold) ** 2
        correct = within & gt_visible
        fraction = _ratio(count(correct), num_gt_visible)
        true_positives = count(correct & pred_visible)
        false_positives = count(pred_visible & (~gt_visible | ~within))
        jaccard = _ratio(true_positives, num_gt_visible + false_positives)
        name = f"{threshold:g}"
        metrics[f"pts_within_{name}"] = fraction
        metrics[f"jaccard_{name}"] = jaccard
        fractions.append(fraction)
        jaccards.append(jaccard)
    metrics["average_pts_within_thresh"] = np.mean(np.stack(fractions), axis=0)
    metrics["average_jaccard"] = np.mean(np.stack(jaccards), axis=0)
    if not per_track:
        metrics = {key: float(value) for key, value in metrics.items()}
    return metrics


def evaluate_tapvid2d_pixels(
    gt_tracks_px: np.ndarray,
    gt_visible: np.ndarray,
    pred_tracks_px: np.ndarray,
    pred_visible: np.ndarray,
    size_hw: tuple[int, int],
    query_t: np.ndarray | None = None,
    query_mode: str = "first",
) -> dict[str, float]:
    """Convenience wrapper: tracks in pixels of an image of `size_hw`, rescaled to 256x256 and scored.

    `query_t` defaults to each track's first visible frame (`first` mode); tracks never visible in the
    ground truth are dropped, as tapnet does.
    """
    gt_visible = np.asarray(gt_visible, dtype=bool)
    if query_t is None:
        query_t = queries_first(gt_visible)
    query_t = np.asarray(query_t)
    keep = (query_t >= 0) & gt_visible.any(axis=1)
    return compute_tapvid2d_metrics(
        scale_tracks_to_256(np.asarray(gt_tracks_px)[keep], size_hw),
        gt_visible[keep],
        scale_tracks_to_256(np.asarray(pred_tracks_px)[keep], size_hw),
        np.asarray(pred_visible, dtype=bool)[keep],
        query_t[keep],
        query_mode=query_mode,
    )
