"""Depth of the moving parts of a frame from the static world around them (NumPy).

A moving object's depth cannot be triangulated (its points do not stay put between views), and the
network's guess for things it never saw move is poor: on the movers benchmark a card standing on the
table came out at 1.3-2.5x its true depth, behind the table it stands on. Two facts about the static world,
which the multi-view depth does fix, pin it down:

- contact: a mover standing on a surface (a person on the floor, an animal on the ground, a figure on a
  table) touches it at its lowest pixels, so the static surface just below its bottom edge is at the
  mover's depth there (`contact_depths`, column by column).
- order: a mover covers what is behind it. Where the static surface it covers is known (seen in other
  frames when the mover was elsewhere, rendered into this frame's camera: `covered_depth`), the mover is
  not behind it (`behind_what_it_covers`).

`mover_scales` puts every connected part of a frame's motion mask on its contact, unless that puts it
behind most of what it covers; a part with no contact (its bottom edge is the image border, or nothing
static is known below it), or whose contact contradicts the order, keeps its depth. A part floating in
front of a surface is indistinguishable here from one standing on it, and is put on it.

What is below a part may itself be a mover the motion mask missed, with a wrong multi-view depth: on the
demo the waving person's raised arm stood on such a "surface" at a tenth of the wall's depth. Three
guards: the contact must be along most of the bottom edge (MIN_CONTACT_SHARE), it must not change the
part's depth more than MAX_CONTACT_FACTOR either way (the network's guess is poor, not arbitrary: 1.3-2.5x
off on the benchmark's cards), and it must not put the part behind what it covers. Two more were tried:
pulling parts without contact in front of what they cover put the demo's person at 0.1-0.2 of the wall's
depth (the covered surface is polluted the same way); a test that the surface below is horizontal (it
comes towards the camera going down the image) rejected the table under the benchmark's card on
redkitchen-3, seen from above (AbsRel 0.16 -> 0.62): without gravity, a table top seen steeply and a body
seen from the front look alike.

Shapes: depth maps (H, W) float (camera z, > 0 where known), masks (H, W) bool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_PART_PIXELS = 30      # motion-mask parts smaller than this keep their depth
CONTACT_BAND_PX = 3       # the static surface is looked for this many rows below the bottom edge ...
BOTTOM_BAND_REL = 0.1     # ... of the part's columns whose lowest pixel is within this x its height of its lowest row
MIN_CONTACT_COLUMNS = 3   # columns with a static pixel below needed for a contact, and this share of the
MIN_CONTACT_SHARE = 0.5   # bottom band's columns (a few static specks under a wide part are no contact)
MAX_CONTACT_FACTOR = 3.0  # a contact that changes the part's depth more than this either way is not taken
ORDER_TOLERANCE = 0.05    # a contact depth more than this x behind the covered surface contradicts the order


@dataclass
class PartScale:
    """The depth factors of one connected part of a frame's motion mask and where it came from."""

    mask: np.ndarray   # (H, W) bool, the part's pixels
    scale: np.ndarray  # (H, W) multiply each of the part's pixels' camera depth by this (NaN off the part)
    kind: str          # contact | none


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
    fewer than MIN_CONTACT_COLUMNS columns, or under MIN_CONTACT_SHARE of the bottom band's, touch a known
    static surface (the edge is the image border, or nothing static is below). static_depth / static_ok:
    the static world's depth in the frame and where it is known."""
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
    if len(touching) < max(MIN_CONTACT_COLUMNS, MIN_CONTACT_SHARE * len(columns)):
        return None
    from scipy import ndimage

    touching_arr = np.asarray(touching)
    smoothed = ndimage.median_filter(np.asarray(depths, np.float64), size=5, mode="nearest")
    part_cols = np.flatnonzero(lowest >= 0)
    nearest = np.abs(part_cols[:, None] - touching_arr[None, :]).argmin(axis=1)
    out = np.full(part.shape[1], np.nan)
    out[part_cols] = smoothed[nearest]
    return out


def mover_depth(part: np.ndarray, depth: np.ndarray, static_depth: np.ndarray, static_ok: np.ndarray,
                covered: np.ndarray) -> tuple[np.ndarray, str]:
    """(depth (H, W) of the part's pixels, NaN elsewhere; contact | none) for one part (module doc).
    Contact: each column of the part upright at the depth of the surface below it (as a figure stands on
    the floor: the network's shape inside the part is not kept, its depth ordering of a thing it never saw
    move being the least reliable), kept when the part is then not behind most of what it covers and its
    depth changes by at most MAX_CONTACT_FACTOR (median) either way. Otherwise the part keeps its depth."""
    columns = contact_depths(part, static_depth, static_ok)
    if columns is not None:
        upright = np.where(part, columns[None, :], np.nan)
        factor = float(np.median(upright[part] / depth[part]))
        plausible = 1.0 / MAX_CONTACT_FACTOR <= factor <= MAX_CONTACT_FACTOR
        if plausible and not behind_what_it_covers(part, upright, covered):
            return upright, "contact"
    return np.where(part, depth, np.nan), "none"


def behind_what_it_covers(part: np.ndarray, depth: np.ndarray, covered: np.ndarray) -> bool:
    """True when more than half of the part's pixels with a known covered surface are behind it by more
    than ORDER_TOLERANCE x its depth (a contact that contradicts the depth order)."""
    known = part & np.isfinite(covered) & (covered > 0)
    if known.sum() < MIN_PART_PIXELS:
        return False
    return bool(np.mean(depth[known] > covered[known] * (1.0 + ORDER_TOLERANCE)) > 0.5)


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
