"""Which tracks to draw (an even spread over the image) and which points move (a track's label, spread to
the pixels around it): shared by the viewer, the videos and the exports; NumPy only, no run access, so
the export stage may use it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

DYNAMIC_REL = 0.05   # a track moving more than this fraction of the median frame-0 depth is dynamic
NO_GEOMETRY_FRAME = 0.9  # a frame whose static pixels are this much without geometry holds no signal of its own


def no_geometry_mask(scene: dict[str, np.ndarray]) -> np.ndarray | None:
    """(T, H, W) bool: static pixels the video gives no geometry for (no multi-view depth of their own, no
    measured neighbour to fill from: `pointmap_source` 0 outside `dynamic_mask`), whose points are the
    network's guess; None for a scene without multi-view depth (all of it is the network's then)."""
    if "pointmap_source" not in scene or "dynamic_mask" not in scene:
        return None
    return (scene["pointmap_source"] == 0) & ~scene["dynamic_mask"].astype(bool)


def signal_summary(scene: dict[str, np.ndarray]) -> dict[str, object] | None:
    """Where the video holds no signal: `pixels_without_geometry` (share of all pixels) and
    `frames_without_geometry` (frames whose static pixels are NO_GEOMETRY_FRAME or more without it: a pure
    pan, a camera standing still, no static neighbours to borrow from); None without multi-view depth."""
    import numpy as np

    mask = no_geometry_mask(scene)
    if mask is None:
        return None
    static = np.maximum((~scene["dynamic_mask"].astype(bool)).sum(axis=(1, 2)), 1)
    share = mask.sum(axis=(1, 2)) / static
    return {"pixels_without_geometry": round(float(mask.mean()), 4),
            "frames_without_geometry": [int(t) for t in np.flatnonzero(share >= NO_GEOMETRY_FRAME)]}


def pick_tracks(query_xy: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `limit` tracks spread evenly over the image. Grid queries: every k-th
    row and column of the grid; other queries: one per cell of a grid of about `limit` cells (then a
    fixed random subset if still too many)."""
    import numpy as np

    xy = np.nan_to_num(np.asarray(query_xy, np.float64).reshape(-1, 2))
    count = len(xy)
    if count <= limit:
        return np.arange(count)
    step = int(np.ceil(np.sqrt(count / limit)))
    xs, x_rank = np.unique(np.round(xy[:, 0], 2), return_inverse=True)
    ys, y_rank = np.unique(np.round(xy[:, 1], 2), return_inverse=True)
    if len(xs) * len(ys) <= 1.05 * count:  # a (nearly) full grid
        picked = np.flatnonzero((x_rank % step == 0) & (y_rank % step == 0))
    else:
        span = np.maximum(xy.max(0) - xy.min(0), 1.0)
        cell = float(np.sqrt(span[0] * span[1] / limit))
        keys = np.floor((xy - xy.min(0)) / cell).astype(np.int64)
        _, picked = np.unique(keys[:, 1] * (1 << 20) + keys[:, 0], return_index=True)
    if len(picked) > limit:
        picked = np.random.default_rng(seed).choice(picked, size=limit, replace=False)
    return np.sort(picked)


def camera_depth(scene: dict[str, np.ndarray]) -> np.ndarray:
    """(T, H, W) z of every pointmap point in its frame's camera (nan where not finite)."""
    import numpy as np

    points = np.asarray(scene["pointmaps"], np.float32)
    if "cam_c2w" not in scene:
        return points[..., 2].copy()
    w2c = np.linalg.inv(np.asarray(scene["cam_c2w"], np.float64))
    num_frames = points.shape[0]
    rows = w2c[:, 2, :3].astype(np.float32)                                   # (T, 3) third row of R
    z = np.einsum("tpj,tj->tp", points.reshape(num_frames, -1, 3), rows) + w2c[:, 2, 3, None].astype(np.float32)
    z = z.reshape(points.shape[:3])
    return np.where(np.isfinite(z), z, np.nan).astype(np.float32)


def track_dynamic(scene: dict[str, np.ndarray], depth: np.ndarray) -> np.ndarray:
    """(N,) bool: the track moves (see module docstring)."""
    import numpy as np

    if "tracks3d" not in scene:
        return np.zeros(0, bool)
    if "track_static" in scene and len(scene["track_static"]) == len(scene["tracks3d"]):
        return ~scene["track_static"].astype(bool)
    tracks = np.asarray(scene["tracks3d"], np.float64)
    query_t = scene["query_t"].astype(int) if "query_t" in scene else np.zeros(len(tracks), int)
    start = tracks[np.arange(len(tracks)), query_t]
    motion = np.nanmax(np.linalg.norm(tracks - start[:, None], axis=-1), axis=1)
    frame0 = depth[0][np.isfinite(depth[0]) & (depth[0] > 0)]
    scale = float(np.median(frame0)) if frame0.size else 1.0
    return np.nan_to_num(motion, nan=0.0) > DYNAMIC_REL * scale


def dynamic_mask_from_tracks(scene: dict[str, np.ndarray], track_dyn: np.ndarray,
                             hw: tuple[int, int]) -> np.ndarray:
    """(T, H, W) bool: each pixel takes the label of the nearest visible track within ~1 track spacing."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    num_frames = scene["pointmaps"].shape[0]
    h, w = hw
    mask = np.zeros((num_frames, h, w), bool)
    if "tracks2d" not in scene or not track_dyn.any():
        return mask
    tracks2d = scene["tracks2d"]
    visible = scene["visible"] if "visible" in scene else np.isfinite(tracks2d).all(-1)
    radius = 1.5 * np.sqrt(h * w / max(int(visible[:, 0].sum()), 1))
    for t in range(num_frames):
        seen = visible[:, t] & np.isfinite(tracks2d[:, t]).all(-1)
        if not (seen & track_dyn).any():
            continue
        px = np.round(tracks2d[seen, t]).astype(int)
        inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        px, labels = px[inside], track_dyn[seen][inside]
        seeds = np.ones((h, w), bool)                      # distance_transform_edt measures to zeros
        seeds[px[:, 1], px[:, 0]] = False
        label_img = np.zeros((h, w), bool)
        label_img[px[:, 1], px[:, 0]] = labels             # a pixel with several tracks: the last wins
        dist, (rows, cols) = distance_transform_edt(seeds, return_indices=True)
        mask[t] = label_img[rows, cols] & (dist <= radius)
    return mask
