"""World-frame 3D tracking metrics, St4RTrack's WorldTrack protocol (pure NumPy).

Protocol (St4RTrack, `dust3r/track_eval.py`):
- Ground truth `gt (N, T, 3)` is expressed in frame 0's camera coordinates (the world frame St4RTrack
  predicts in); only tracks whose query is visible at frame 0 are scored; every frame of those tracks
  counts (occluded frames too: the world position of an occluded point is still defined).
- The prediction `pred (N, T, 3)` is aligned to the ground truth first:
  - `global`: one scale, median(|gt|) / median(|pred|) over all points (norms from the frame-0 camera);
  - `per_traj`: one such median-norm scale per track;
  - `sim3`: one similarity (scale, rotation, translation), closed-form Umeyama over all points
    (St4RTrack's `sim3_closed`; its RANSAC `sim3` variant is not deterministic and is not reproduced);
  - `none`: no alignment.
- With `d[n, t] = |aligned_pred[n, t] - gt[n, t]|`:
  - `pts_within_{r}` = mean over (n, t) of [d <= r] for r in {0.1, 0.3, 0.5, 1.0} metres;
  - `apd` (average percentage of points within delta) = mean of the four fractions;
  - `epe` (end-point error) = mean of d.
- Error decomposition (diagnostic, same alignment): with `a = aligned_pred`, `d[n, t]` splits into the
  track's frame-0 error `a[n, 0] - gt[n, 0]` and its motion error `(a[n, t] - a[n, 0]) - (gt[n, t] -
  gt[n, 0])`:
  - `epe_anchor` = mean over n of |a[n, 0] - gt[n, 0]| (where each track starts: depth along the ray,
    mostly; a prediction with exact motion still has EPE `epe_anchor`);
  - `epe_motion` = mean over (n, t) of the motion error (zero for a rigid shift of each track; a
    prediction with an exact frame 0 still has EPE `epe_motion`);
  - `epe <= epe_anchor + epe_motion` (triangle inequality).
- Dynamic subset: tracks whose summed ground-truth motion sum_t |gt[n, t+1] - gt[n, t]| > 0.01 are
  re-aligned and scored on their own (`*_dyn` keys).
- Scale-relative variant (for synthetic scenes whose units are not metres): with
  `scene_scale = median |gt|` over all points, `apd_rel` uses thresholds {0.02, 0.05, 0.1, 0.2} x
  scene_scale and `epe_rel = epe / scene_scale`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from st4r_cli.geometry.align import apply_sim3, median_norm_scale, per_track_median_norm_scale, umeyama

THRESHOLDS_M: tuple[float, ...] = (0.1, 0.3, 0.5, 1.0)
RELATIVE_THRESHOLDS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
ALIGNMENTS: tuple[str, ...] = ("global", "per_traj", "sim3", "none")
DYNAMIC_MOTION_THRESHOLD = 0.01


def align_tracks(pred: np.ndarray, gt: np.ndarray, alignment: str) -> np.ndarray:
    """Align predicted tracks `(N, T, 3)` to the ground truth with one of `ALIGNMENTS`."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if alignment == "global":
        return pred * median_norm_scale(pred, gt)
    if alignment == "per_traj":
        return pred * per_track_median_norm_scale(pred, gt)[:, None, None]
    if alignment == "sim3":
        scale, rotation, translation = umeyama(pred.reshape(-1, 3), gt.reshape(-1, 3))
        return apply_sim3(pred, scale, rotation, translation)
    if alignment == "none":
        return pred
    raise ValueError(f"unknown alignment {alignment!r}; expected one of {ALIGNMENTS}")


def dynamic_tracks(gt: np.ndarray, threshold: float = DYNAMIC_MOTION_THRESHOLD) -> np.ndarray:
    """`(N,)` bool: summed frame-to-frame ground-truth motion of the track exceeds `threshold`."""
    steps = np.linalg.norm(np.diff(np.asarray(gt, dtype=np.float64), axis=1), axis=-1)
    return steps.sum(axis=1) > threshold


def scene_scale(gt: np.ndarray) -> float:
    """Median distance of the ground-truth points from the frame-0 camera (the origin)."""
    return float(np.median(np.linalg.norm(np.asarray(gt, dtype=np.float64).reshape(-1, 3), axis=1)))


def threshold_metrics(aligned: np.ndarray, gt: np.ndarray, thresholds: Sequence[float]) -> dict[str, float]:
    """`pts_within_{r}` (inclusive, over all points), their mean `apd`, and `epe` (mean distance)."""
    dist = np.linalg.norm(np.asarray(aligned, dtype=np.float64) - np.asarray(gt, dtype=np.float64), axis=-1)
    out = {f"pts_within_{r:g}": float(np.mean(dist <= r)) for r in thresholds}
    out["apd"] = float(np.mean([out[f"pts_within_{r:g}"] for r in thresholds]))
    out["epe"] = float(dist.mean())
    return out


def error_decomposition(aligned: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """`epe_anchor` (frame-0 error) and `epe_motion` (displacement error) of aligned `(N, T, 3)` tracks.

    Args:
        aligned: `(N, T, 3)` predicted tracks, already aligned to the ground truth.
        gt: `(N, T, 3)` ground truth.
    Returns:
        `epe_anchor` = mean_n |aligned[n, 0] - gt[n, 0]|;
        `epe_motion` = mean_(n, t) |(aligned[n, t] - aligned[n, 0]) - (gt[n, t] - gt[n, 0])|.
    """
    aligned = np.asarray(aligned, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    anchor = aligned[:, :1] - gt[:, :1]                               # (N, 1, 3)
    motion = (aligned - aligned[:, :1]) - (gt - gt[:, :1])            # (N, T, 3)
    return {"epe_anchor": float(np.linalg.norm(anchor, axis=-1).mean()),
            "epe_motion": float(np.linalg.norm(motion, axis=-1).mean())}


def worldtrack_metrics(pred: np.ndarray, gt: np.ndarray, alignment: str = "global",
                       thresholds: Sequence[float] = THRESHOLDS_M,
                       relative: bool = False) -> dict[str, float]:
    """APD, EPE and its decomposition of `pred` vs `gt` (both `(N, T, 3)`, frame-0 camera coordinates)
    after `alignment`.

    With `relative=True` also `apd_rel` and `epe_rel` (thresholds `RELATIVE_THRESHOLDS x scene_scale`).
    Returns NaN metrics when there are no tracks.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or gt.ndim != 3 or gt.shape[-1] != 3:
        raise ValueError(f"tracks must both be (N, T, 3); got pred {pred.shape}, gt {gt.shape}")
    keys = ([f"pts_within_{r:g}" for r in thresholds] + ["apd", "epe", "epe_anchor", "epe_motion"]
            + (["apd_rel", "epe_rel"] if relative else []))
    if gt.shape[0] == 0 or gt.shape[1] == 0:
        return {key: float("nan") for key in keys}
    aligned = align_tracks(pred, gt, alignment)
    out = threshold_metrics(aligned, gt, thresholds)
    out.update(error_decomposition(aligned, gt))
    if relative:
        unit = scene_scale(gt)
        rel = threshold_metrics(aligned, gt, [r * unit for r in RELATIVE_THRESHOLDS])
        out["apd_rel"] = rel["apd"]
        out["epe_rel"] = out["epe"] / unit
    return out


def evaluate_worldtrack(pred: np.ndarray, gt: np.ndarray, gt_visible: np.ndarray | None = None,
                        alignments: Sequence[str] = ("global", "per_traj", "sim3"),
                        relative: bool = False) -> dict[str, float]:
    """The full WorldTrack report: every alignment, on all tracks and on the dynamic subset.

    Args:
        pred: `(N, T, 3)` predicted world tracks (frame-0 camera coordinates, any scale).
        gt: `(N, T, 3)` ground truth in frame-0 camera coordinates.
        gt_visible: optional `(N, T)` ground-truth visibility; tracks not visible at frame 0 are dropped.
        alignments: which alignments to report.
        relative: also report scale-relative `apd_rel`/`epe_rel`.
    Returns:
        flat dict `{alignment}/{metric}` and `{alignment}_dyn/{metric}`, plus `num_tracks`,
        `num_dynamic`.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if gt_visible is not None:
        keep = np.asarray(gt_visible, dtype=bool)[:, 0]
        pred, gt = pred[keep], gt[keep]
    dynamic = dynamic_tracks(gt) if gt.shape[1] > 1 else np.zeros(len(gt), dtype=bool)
    out: dict[str, float] = {"num_tracks": float(len(gt)), "num_dynamic": float(dynamic.sum())}
    for alignment in alignments:
        for key, value in worldtrack_metrics(pred, gt, alignment, relative=relative).items():
            out[f"{alignment}/{key}"] = value
        for key, value in worldtrack_metrics(pred[dynamic], gt[dynamic], alignment, relative=relative).items():
            out[f"{alignment}_dyn/{key}"] = value
    return out
