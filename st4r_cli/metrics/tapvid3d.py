"""TAPVid-3D metrics (pure NumPy, same semantics as tapnet's `tapvid3d/evaluation/metrics.py`).

Inputs are 3D tracks in the camera coordinates of each frame (TAPVid-3D's `tracks_XYZ`), `(N, T, 3)`,
with visibility `(N, T)`. Every frame of every track is scored (no query-mode mask).

1. Scaling of the prediction to the ground truth's unknown global scale (`scaling`):
   - `median` (default): s = median |gt| / median |pred| over points visible in both;
   - `mean`: the same with means;
   - `per_trajectory`: s_n = gt_z / pred_z at each track's query frame;
   - `none`: s = 1.
2. Depth-adaptive thresholds: a pixel threshold `delta` in {1, 2, 4, 8, 16} becomes the 3D radius
   `delta * Z_gt / sqrt(fx * fy)` at each point, with intrinsics rescaled so that the video's short side is
   256 px (`intrinsics_at_256`). With `fixed_metric_thresholds=True` the radii are
   {0.01, 0.04, 0.16, 0.64, 2.56} m instead.
3. With `d = |s * pred - gt|`, `v` = gt visible, `v^` = predicted visible, per threshold r:
   - `pts_within_{delta}` (APD3D component) = #{v & d < r} / #{v};
   - `jaccard_{delta}` (3D-AJ component) = #{v & v^ & d < r} / (#{v} + #{v^ & (not v or d >= r)});
   `average_pts_within_thresh` (APD3D) and `average_jaccard` (3D-AJ) average over the five thresholds;
   `occlusion_accuracy` (OA) = mean of [v == v^].
"""

from __future__ import annotations

import numpy as np

PIXEL_THRESHOLDS: tuple[int, ...] = (1, 2, 4, 8, 16)
FIXED_METRIC_THRESHOLDS_M: dict[int, float] = {1: 0.01, 2: 0.04, 4: 0.16, 8: 0.64, 16: 2.56}
SCALINGS: tuple[str, ...] = ("median", "mean", "per_trajectory", "none")


def intrinsics_at_256(fx_fy_cx_cy: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Rescale `[fx, fy, cx, cy]` of a video of `size_hw` so that its short side is 256 px (tapnet)."""
    factor = 256.0 / min(size_hw)
    return np.asarray(fx_fy_cx_cy, dtype=np.float64) * factor


def depth_adaptive_radius(gt_tracks: np.ndarray, fx_fy_cx_cy: np.ndarray) -> np.ndarray:
    """`(N, T)` metres per pixel at each ground-truth point: `Z_gt / sqrt(fx * fy)`."""
    fx, fy = float(fx_fy_cx_cy[0]), float(fx_fy_cx_cy[1])
    return np.asarray(gt_tracks)[..., 2] / np.sqrt(fx * fy)


def tapvid3d_scale(gt_tracks: np.ndarray, gt_visible: np.ndarray, pred_tracks: np.ndarray,
                   pred_visible: np.ndarray, scaling: str = "median",
                   query_t: np.ndarray | None = None) -> np.ndarray:
    """The factor(s) applied to the prediction: a scalar array, or `(N, 1, 1)` for `per_trajectory`."""
    if scaling == "none":
        return np.array(1.0)
    if scaling == "per_trajectory":
        if query_t is None:
            raise ValueError("per_trajectory scaling needs query_t")
        rows = np.arange(len(gt_tracks))
        frame = np.round(np.asarray(query_t)).astype(np.int64)
        gt_z = np.maximum(gt_tracks[rows, frame, 2], 1e-12)
        pred_z = np.maximum(pred_tracks[rows, frame, 2], 1e-12)
        return (gt_z / pred_z)[:, None, None]
    both = gt_visible & pred_visible
    gt_norm = np.sqrt(np.maximum(np.sum(gt_tracks ** 2, axis=-1), 1e-12))[both]
    pred_norm = np.sqrt(np.maximum(np.sum(pred_tracks ** 2, axis=-1), 1e-12))[both]
    if scaling == "median":
        return np.array(np.median(gt_norm) / np.median(pred_norm)) if both.any() else np.array(np.nan)
    if scaling == "mean":
        return np.array(np.mean(gt_norm) / np.mean(pred_norm)) if both.any() else np.array(np.nan)
    raise ValueError(f"unknown scaling {scaling!r}; expected one of {SCALINGS}")


def compute_tapvid3d_metrics(gt_tracks: np.ndarray, gt_visible: np.ndarray, pred_tracks: np.ndarray,
                             pred_visible: np.ndarray, fx_fy_cx_cy: np.ndarray, scaling: str = "median",
                             query_t: np.ndarray | None = None,
                             fixed_metric_thresholds: bool = False) -> dict[str, float]:
    """TAPVid-3D metrics of one video (see the module docstring).

    Args:
        gt_tracks: `(N, T, 3)` ground truth in each frame's camera coordinates.
        gt_visible: `(N, T)` bool.
        pred_tracks: `(N, T, 3)` prediction in the same coordinates (any global scale).
        pred_visible: `(N, T)` bool.
        fx_fy_cx_cy: intrinsics at the evaluation resolution (use `intrinsics_at_256`).
        scaling: `median`, `mean`, `per_trajectory` or `none`.
        query_t: `(N,)` query frames (for `per_trajectory`).
        fixed_metric_thresholds: use fixed radii instead of depth-adaptive ones.
    Returns:
        `occlusion_accuracy`, `pts_within_{d}`, `jaccard_{d}`, `average_pts_within_thresh` (APD3D),
        `average_jaccard` (3D-AJ), `scale`.
    """
    gt_tracks = np.asarray(gt_tracks, dtype=np.float64)
    pred_tracks = np.asarray(pred_tracks, dtype=np.float64)
    gt_visible = np.asarray(gt_visible, dtype=bool)
    pred_visible = np.asarray(pred_visible, dtype=bool)
    if pred_tracks.shape != gt_tracks.shape or gt_tracks.ndim != 3:
        raise ValueError(f"tracks must both be (N, T, 3); got {pred_tracks.shape} and {gt_tracks.shape}")
    scale = tapvid3d_scale(gt_tracks, gt_visible, pred_tracks, pred_visible, scaling, query_t)
    scaled = pred_tracks * scale
    sq_dist = np.sum((scaled - gt_tracks) ** 2, axis=-1)
    radius_per_pixel = depth_adaptive_radius(gt_tracks, fx_fy_cx_cy)
    num_visible = gt_visible.sum()
    metrics: dict[str, float] = {"occlusion_accuracy": float(np.mean(gt_visible == pred_visible))}
    fractions, jaccards = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for delta in PIXEL_THRESHOLDS:
            radius = FIXED_METRIC_THRESHOLDS_M[delta] if fixed_metric_thresholds else delta * radius_per_pixel
            within = sq_dist < np.square(radius)
            correct = within & gt_visible
            fraction = correct.sum() / num_visible
            false_positives = (pred_visible & (~gt_visible | ~within)).sum()
            jaccard = (correct & pred_visible).sum() / (num_visible + false_positives)
            metrics[f"pts_within_{delta}"] = float(fraction)
            metrics[f"jaccard_{delta}"] = float(jaccard)
            fractions.append(fraction)
            jaccards.append(jaccard)
    metrics["average_pts_within_thresh"] = float(np.mean(fractions))
    metrics["average_jaccard"] = float(np.mean(jaccards))
    metrics["scale"] = float(np.median(scale)) if np.size(scale) > 1 else float(scale)
    return metrics


def world_to_camera_tracks(tracks_world: np.ndarray, cam_c2w: np.ndarray) -> np.ndarray:
    """World tracks `(N, T, 3)` -> each frame's camera coordinates with poses `cam_c2w (T, 4, 4)`."""
    w2c = np.linalg.inv(np.asarray(cam_c2w, dtype=np.float64))
    return np.einsum("tij,ntj->nti", w2c[:, :3, :3], np.asarray(tracks_world, dtype=np.float64)) + w2c[None, :, :3, 3]
