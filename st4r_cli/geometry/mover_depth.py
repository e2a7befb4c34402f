"""Depth of the moving parts of a frame from the static world around them (NumPy).

A moving object's depth cannot be triangulated (its points do not stay put between views), and the
network's guess for things it never saw move is poor: on the movers benchmark a card standing on the
table came out at 1.3-2.5x its true depth, behind the table it stands on. Two facts about the static world,
which the multi-view depth does fix, pin it down:

- contact: a mover standing on a surface (a person on the floor, an animal on the ground, a figure on a
  table) touches it at its lowest pixels, so the static surface just below its bottom edge is at the
  mover's depth there. `contact_scale` is the ratio of that surface's depth to the mover's own depth along
  its bottom edge.
- order: a mover covers what is behind it. Where the static surface it covers is known (seen in other
  frames when the mover was elsewhere, rendered into this frame's camera: `covered_depth`), the mover is
  not behind it. `order_bound` is the largest scale that keeps most of the mover in front.

`mover_scales` applies both to every connected part of a frame's motion mask: the contact scale when
the part has a static surface below its bottom edge (capped by the order bound), else the order bound
alone when the part sits behind what it covers (pulled forward), else 1. A part whose bottom edge is the
image border, or that floats with nothing static below it, has no contact; a part floating in front of a
surface is indistinguishable here from one standing on it, and is put on it.

Shapes: depth maps (H, W) float (camera z, > 0 where known), masks (H, W) bool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_PART_PIXELS = 30      # motion-mask parts smaller than this keep their depth
CONTACT_BAND_PX = 3       # the static surface is looked for this many rows below the bottom edge ...
BOTTOM_BAND_REL = 0.1     # ... of the part's columns whose lowest pixel is within this x its height of its lowest row
MIN_CONTACT_COLUMNS = 3   # columns with a static pixel below needed for a contact
ORDER_QUANTILE = 0.5      # the order bound keeps this share of the covered pixels' ratios below the scale
ORDER_TOLERANCE = 0.05    # a contact depth more than this x behind the covered surface contradicts the order


@dataclass
class PartScale:
    """The depth factors of one connected part of a frame's motion mask and where it came from."""

    mask: np.ndarray   # (H, W) bool, the part's pixels
    scale: np.ndarray  # (H, W) multiply each of the part's pixels' camera depth by this (NaN off the part)
    kind: str          # contact | order | none


def covered_depth(points_world: np.ndarray, w2c: np.ndarray, k_mat: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) depth in camera `w2c (4, 4)` of the nearest static world point `(P, 3)` along each pixel's
    ray (inf where none lands): what a mover at that pixel covers, from the frames where it was uncovered.
    Points land on one pixel each; a 3x3 minimum closes the gaps between them."""
    from scipy import ndimage

    from st4r_cli.geometry.camera_np import render_depth

    rendered = render_depth(points_world, w2c, k_mat, hw)
    return ndimage.minimum_filter(rendered, size=3, mode="nearest")


def contact_depths(part: np.ndarray, static_depth: np.ndarray, static_ok: np.ndarray) -> np.ndarray | None:
    """(W,) depth of the static surface just below the part's bottom edge in each column of the part
    (columns whose lowest pixel is above the bottom band take the nearest contact column's), or None when
    fewer than MIN_CONTACT_COLUMNS columns touch a known static surface (the edge is the image border, or
    nothing static is below). static_depth / static_ok: the static world's depth in the frame and where it
    is known."""
    rows, cols = np.nonzero(part)
    height = int(rows.max() - rows.min() + 1)
    lowest = np.full(part.shape[1], -1)
    np.maximum.at(lowest, cols, rows)
    columns = np.flatnonzero(lowest >= rows.max() - max(1.0, BOTTOM_BAND_REL * height))
    touching, depths = [], []
    for col in columns:
        bottom = lowest[col]
        for row in range(bottom + 1, min(bottom + 1 + CONTACT_BAND_PX, part.shape[0])):
            if part[row, col]:
                break
            if static_ok[row, col] and static_depth[row, col] > 0:
                touching.append(col)
                depths.append(static_depth[row, col])
                break
    if len(touching) < MIN_CONTACT_COLUMNS:
        return None
    from scipy import ndimage

    touching_arr = np.asarray(touching)
    smoothed = ndimage.median_filter(np.asarray(depths, np.float64), size=5, mode="nearest")
    part_cols = np.flatnonzero(lowest >= 0)
    nearest = np.abs(part_cols[:, None] - touching_arr[None, :]).argmin(axis=1)
    out = np.full(part.shape[1], np.nan)
    out[part_cols] = smoothed[nearest]
    return out


def order_bound(part: np.ndarray, depth: np.ndarray, covered: np.ndarray) -> float:
    """Largest scale (inf when nothing known is covered) that keeps the part in front of the static
    surface it covers on all but (1 - ORDER_QUANTILE) of its pixels with a known one."""
    use = part & np.isfinite(covered) & (covered > 0) & (depth > 0)
    if use.sum() < MIN_PART_PIXELS:
        return float("inf")
    return float(np.quantile(covered[use] / depth[use], ORDER_QUANTILE))


def mover_depth(part: np.ndarray, depth: np.ndarray, static_depth: np.ndarray, static_ok: np.ndarray,
                covered: np.ndarray) -> tuple[np.ndarray, str]:
    """(depth (H, W) of the part's pixels, NaN elsewhere; contact | order | none) for one part (module doc).
    Contact: each column of the part upright at the depth of the surface below it (as a figure stands on
    the floor: the network's shape inside the part is not kept, its depth ordering of a thing it never saw
    move being the least reliable), kept when the part is then not behind most of what it covers."""
    out = np.where(part, depth, np.nan)
    columns = contact_depths(part, static_depth, static_ok)
    if columns is not None:
        upright = np.where(part, columns[None, :], np.nan)
        known = part & np.isfinite(covered) & (covered > 0)
        behind = upright[known] > covered[known] * (1.0 + ORDER_TOLERANCE)
        if known.sum() < MIN_PART_PIXELS or behind.mean() <= 0.5:
            return upright, "contact"
    bound = order_bound(part, depth, covered)
    if bound < 1.0:
        return out * bound, "order"
    return out, "none"


def mover_scales(dynamic: np.ndarray, depth: np.ndarray, static_depth: np.ndarray, static_ok: np.ndarray,
                 covered: np.ndarray) -> list[PartScale]:
    """Per connected part (8-connected) of one frame's motion mask `dynamic (H, W)`: the factor on each of
    its pixels' depth (`mover_depth`, module doc). depth: the frame's current depth (H, W); static_depth /
    static_ok: the static world's depth in the frame and where it is known; covered: `covered_depth`."""
    from scipy import ndimage

    labels, count = ndimage.label(dynamic, structure=np.ones((3, 3), bool))
    parts = []
    for index in range(1, count + 1):
        part = labels == index
        if part.sum() < MIN_PART_PIXELS or not np.all(depth[part] > 0):
            continue
        new_depth, kind = mover_depth(part, depth, static_depth, static_ok, covered)
        with np.errstate(invalid="ignore", divide="ignore"):
            parts.append(PartScale(part, np.where(part, new_depth / depth, np.nan), kind))
    return parts
