"""Colour maps for depth, confidence and tracks (uint8 RGB)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def turbo(values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(...,) values in [0, 1] -> (..., 3) uint8 RGB with OpenCV's TURBO map; invalid pixels black."""
    import cv2
    import numpy as np

    scaled = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    flat = (scaled.reshape(-1, 1) * 255).round().astype(np.uint8)
    rgb = cv2.applyColorMap(flat, cv2.COLORMAP_TURBO)[:, 0, ::-1].reshape(*values.shape, 3)
    if valid is not None:
        rgb = np.where(np.asarray(valid)[..., None], rgb, 0).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def robust_range(values: np.ndarray, low: float = 0.02, high: float = 0.98) -> tuple[float, float]:
    """(lo, hi) quantiles of the finite values (a fixed range for a whole video: no flicker)."""
    import numpy as np

    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.quantile(finite, [low, high])
    return float(lo), float(hi if hi > lo else lo + 1e-6)


def normalize(values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    lo, hi = value_range
    return (values - lo) / (hi - lo)


def track_colors(query_xy: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """(N, 3) uint8: one hue per track from its query pixel (neighbours get neighbouring hues, as in
    CoTracker's visualiser), so a track keeps its colour in every picture, video and the viewer."""
    import colorsys

    import numpy as np

    h, w = image_hw
    xy = np.nan_to_num(np.asarray(query_xy, np.float64))
    hue = 0.8 * (xy[:, 1] / max(h - 1, 1)) + 0.2 * (xy[:, 0] / max(w - 1, 1))
    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(float(x) % 1.0, 0.85, 1.0)] for x in hue],
                    dtype=np.uint8).reshape(-1, 3)
