"""Alignment of predictions to ground truth (pure NumPy): Umeyama Sim(3)/SE(3), median-norm scaling,
median depth scaling, least-squares scale-and-shift.

All functions take `pred` first and `gt` second and return the transform that maps the prediction onto
the ground truth (`gt ~ scale * R @ pred + t`), so `apply_sim3(pred, ...)` is the aligned prediction.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def umeyama(pred: np.ndarray, gt: np.ndarray, with_scale: bool = True,
            weights: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991) minimising sum_i w_i |gt_i - (s R pred_i + t)|^2.

    Args:
        pred: `(N, 3)` source points.
        gt: `(N, 3)` target points.
        with_scale: estimate the scale `s` (Sim(3)); otherwise `s = 1` (SE(3)).
        weights: optional `(N,)` non-negative weights.
    Returns:
        `scale` (float), `rotation (3, 3)` with det +1, `translation (3,)`.
    Raises:
        ValueError: fewer than 3 points or mismatched shapes.
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 3)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 3)
    if pred.shape != gt.shape:
        raise ValueError(f"umeyama: pred {pred.shape} and gt {gt.shape} differ")
    if len(pred) < 3:
        raise ValueError("umeyama needs at least 3 points")
    w = np.ones(len(pred)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    w = w / max(w.sum(), _EPS)
    mean_pred = w @ pred
    mean_gt = w @ gt
    pred_c = pred - mean_pred
    gt_c = gt - mean_gt
    covariance = (gt_c * w[:, None]).T @ pred_c                  # (3, 3) = sum w gt_c pred_c^T
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rotation = u @ sign @ vt
    if with_scale:
        variance = float(w @ np.sum(pred_c * pred_c, axis=1))
        scale = float(np.trace(np.diag(singular) @ sign) / max(variance, _EPS))
    else:
        scale = 1.0
    translation = mean_gt - scale * rotation @ mean_pred
    return scale, rotation, translation


def apply_sim3(points: np.ndarray, scale: float, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """`scale * R @ p + t` for points of any leading shape `(..., 3)`."""
    points = np.asarray(points, dtype=np.float64)
    return scale * points @ np.asarray(rotation).T + np.asarray(translation)


def apply_sim3_to_poses(cam_c2w: np.ndarray, scale: float, rotation: np.ndarray,
                        translation: np.ndarray) -> np.ndarray:
    """Map camera-to-world poses `(T, 4, 4)` by a similarity: centres move as points, orientations
    rotate by `R` (the pose stays a rigid transform; this is what evo's `align` does)."""
    out = np.array(cam_c2w, dtype=np.float64, copy=True)
    out[:, :3, :3] = np.asarray(rotation) @ out[:, :3, :3]
    out[:, :3, 3] = apply_sim3(out[:, :3, 3], scale, rotation, translation)
    return out


def median_norm_scale(pred: np.ndarray, gt: np.ndarray) -> float:
    """St4RTrack's `global` scale: median(|gt|) / median(|pred|) over all points `(..., 3)`.

    Norms are measured from the origin (the frame-0 camera), so this fixes the scale of a prediction
    that is correct up to scale in the same frame.
    """
    gt_norm = np.maximum(np.linalg.norm(np.asarray(gt, dtype=np.float64).reshape(-1, 3), axis=1), _EPS)
    pred_norm = np.maximum(np.linalg.norm(np.asarray(pred, dtype=np.float64).reshape(-1, 3), axis=1), _EPS)
    return float(np.median(gt_norm) / max(np.median(pred_norm), _EPS))


def per_track_median_norm_scale(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """St4RTrack's `per_traj` scales: one median-norm ratio per track; `pred, gt (N, T, 3)` -> `(N,)`."""
    gt_norm = np.maximum(np.linalg.norm(np.asarray(gt, dtype=np.float64), axis=-1), _EPS)
    pred_norm = np.maximum(np.linalg.norm(np.asarray(pred, dtype=np.float64), axis=-1), _EPS)
    return np.median(gt_norm, axis=1) / np.maximum(np.median(pred_norm, axis=1), _EPS)


def median_depth_scale(pred_depth: np.ndarray, gt_depth: np.ndarray, valid: np.ndarray) -> float:
    """Depth median scaling: median(gt) / median(pred) over `valid` pixels."""
    valid = np.asarray(valid, dtype=bool)
    return float(np.median(np.asarray(gt_depth)[valid]) / max(np.median(np.asarray(pred_depth)[valid]), _EPS))


def scale_and_shift(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Least-squares `(a, b)` minimising sum_valid (a * pred + b - gt)^2."""
    valid = np.asarray(valid, dtype=bool)
    x = np.asarray(pred, dtype=np.float64)[valid]
    y = np.asarray(gt, dtype=np.float64)[valid]
    design = np.stack([x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(a), float(b)
