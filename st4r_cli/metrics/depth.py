"""Monocular / video depth metrics (pure NumPy).

For the valid pixels of a sequence (ground truth > 0 and finite, prediction finite; optional depth cap),
after aligning the prediction to the ground truth:
- `median`: one factor s = median(gt) / median(pred) for the whole sequence (per-sequence median scaling);
- `scale_shift`: least-squares (a, b) minimising sum (a * pred + b - gt)^2 over the sequence;
- `none`: no alignment (metric depth).
Then, with `d^` the aligned prediction clipped to >= 1e-6:
- `abs_rel` = mean |d^ - d| / d;
- `delta_1.25` = fraction with max(d^ / d, d / d^) < 1.25.
"""

from __future__ import annotations

import numpy as np

from st4r_cli.geometry.align import median_depth_scale, scale_and_shift

DEPTH_ALIGNMENTS: tuple[str, ...] = ("median", "scale_shift", "none")


def depth_valid_mask(gt_depth: np.ndarray, pred_depth: np.ndarray, valid: np.ndarray | None = None,
                     max_depth: float | None = None) -> np.ndarray:
    """Pixels scored: gt > 0 and finite, prediction finite, inside `valid` and below `max_depth`."""
    gt_depth = np.asarray(gt_depth)
    mask = np.isfinite(gt_depth) & (gt_depth > 0) & np.isfinite(np.asarray(pred_depth))
    if valid is not None:
        mask &= np.asarray(valid, dtype=bool)
    if max_depth is not None:
        mask &= gt_depth <= max_depth
    return mask


def align_depth(pred_depth: np.ndarray, gt_depth: np.ndarray, mask: np.ndarray, alignment: str) -> np.ndarray:
    """The prediction after per-sequence `median` / `scale_shift` / `none` alignment (same shape)."""
    pred_depth = np.asarray(pred_depth, dtype=np.float64)
    if alignment == "median":
        return pred_depth * median_depth_scale(pred_depth, gt_depth, mask)
    if alignment == "scale_shift":
        a, b = scale_and_shift(pred_depth, gt_depth, mask)
        return a * pred_depth + b
    if alignment == "none":
        return pred_depth
    raise ValueError(f"unknown depth alignment {alignment!r}; expected one of {DEPTH_ALIGNMENTS}")


def depth_metrics(pred_depth: np.ndarray, gt_depth: np.ndarray, valid: np.ndarray | None = None,
                  alignment: str = "median", max_depth: float | None = None) -> dict[str, float]:
    """AbsRel and delta<1.25 of a depth sequence `(T, H, W)` (or one map `(H, W)`) after `alignment`.

    Returns `abs_rel`, `delta_1.25` and `num_pixels`; NaN metrics when no pixel is valid.
    """
    pred_depth = np.asarray(pred_depth, dtype=np.float64)
    gt_depth = np.asarray(gt_depth, dtype=np.float64)
    if pred_depth.shape != gt_depth.shape:
        raise ValueError(f"depth shapes differ: pred {pred_depth.shape}, gt {gt_depth.shape}")
    mask = depth_valid_mask(gt_depth, pred_depth, valid, max_depth)
    if not mask.any():
        return {"abs_rel": float("nan"), "delta_1.25": float("nan"), "num_pixels": 0.0}
    aligned = np.maximum(align_depth(pred_depth, gt_depth, mask, alignment)[mask], 1e-6)
    gt = gt_depth[mask]
    ratio = np.maximum(aligned / gt, gt / aligned)
    return {"abs_rel": float(np.mean(np.abs(aligned - gt) / gt)),
            "delta_1.25": float(np.mean(ratio < 1.25)),
            "num_pixels": float(mask.sum())}
