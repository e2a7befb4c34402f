"""Moving cards composited into a real RGB-D clip, with exact ground truth (the movers benchmark).

A card is a textured rectangle (a real photo) with a pose per frame in the clip's world frame. Each
frame is ray-cast against the card in the clip's own camera (its pose and K): where the card is in front
of the clip's depth (or the depth is missing) the pixel takes the card's colour and depth. Ground truth:

    mask (T, H, W) bool       the card's pixels in each frame
    depth_m (T, H, W)         the clip's depth with the card's z pasted in
    card_uv (T, H, W, 2)      the card coordinates (u, v) in [0, 1] seen at each card pixel (NaN elsewhere)
    `card_points(card, uv)`   (T, M, 3) world positions of card points over time: its exact 3D tracks

Motions (`make_card`): `float` (in mid-air in front of the scene: slides sideways, comes closer, turns),
`stand` (upright on a horizontal surface found in frame 0, e.g. a table, sliding along it as a figure
walks: its bottom edge touches the surface, which fixes its depth), `follow` (held at a fixed place in
front of the moving camera, drifting a little: it moves along its epipolar lines, as a subject a camera
follows does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Card:
    """A textured rectangle moving through the world.

    texture:  (h, w, 3) uint8 image glued to the card (u right, v down)
    center:   (T, 3) world position of the card's centre at each frame
    axis_u:   (T, 3) unit world direction of the card's width (texture u)
    axis_v:   (T, 3) unit world direction of the card's height (texture v, downwards on the card)
    size_m:   (width, height) in metres
    kind:     float | stand | follow
    """

    texture: np.ndarray
    center: np.ndarray
    axis_u: np.ndarray
    axis_v: np.ndarray
    size_m: tuple[float, float]
    kind: str


def card_points(card: Card, uv: np.ndarray) -> np.ndarray:
    """World positions `(T, M, 3)` of the card points at texture coordinates `uv (M, 2)` in every frame."""
    offsets_u = (uv[:, 0] - 0.5) * card.size_m[0]
    offsets_v = (uv[:, 1] - 0.5) * card.size_m[1]
    return (card.center[:, None] + offsets_u[None, :, None] * card.axis_u[:, None]
            + offsets_v[None, :, None] * card.axis_v[:, None])


def render_card(card: Card, t: int, cam_c2w: np.ndarray, intrinsics: np.ndarray, size_hw: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast frame t: (z (H, W) camera depth of the card, inf off the card; uv (H, W, 2); rgb (H, W, 3))."""
    import cv2

    height, width = size_hw
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    rays_cam = np.stack([(xs - intrinsics[0, 2]) / intrinsics[0, 0], (ys - intrinsics[1, 2]) / intrinsics[1, 1],
                         np.ones_like(xs)], -1)                                   # z = 1
    rotation, origin = cam_c2w[:3, :3], cam_c2w[:3, 3]
    rays = rays_cam @ rotation.T
    normal = np.cross(card.axis_u[t], card.axis_v[t])
    denom = rays @ normal
    with np.errstate(divide="ignore", invalid="ignore"):
        z = ((card.center[t] - origin) @ normal) / denom                         # ray length in z units
    hit = origin + z[..., None] * rays
    u = (hit - card.center[t]) @ card.axis_u[t] / card.size_m[0] + 0.5
    v = (hit - card.center[t]) @ card.axis_v[t] / card.size_m[1] + 0.5
    inside = np.isfinite(z) & (z > 1e-3) & (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    z = np.where(inside, z, np.inf)
    uv = np.where(inside[..., None], np.stack([u, v], -1), np.nan)
    th, tw = card.texture.shape[:2]
    map_x = np.where(inside, u * (tw - 1), -1).astype(np.float32)
    map_y = np.where(inside, v * (th - 1), -1).astype(np.float32)
    rgb = cv2.remap(card.texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return z, uv, rgb


def composite(frames: np.ndarray, depth_m: np.ndarray, cam_c2w: np.ndarray, intrinsics: np.ndarray,
              card: Card) -> dict[str, np.ndarray]:
    """The clip with the card pasted in where it is in front: frames, depth_m, mask, card_uv (module doc)."""
    out_frames, out_depth = frames.copy(), depth_m.astype(np.float32).copy()
    masks, uvs = [], []
    for t in range(len(frames)):
        z, uv, rgb = render_card(card, t, cam_c2w[t], intrinsics, frames.shape[1:3])
        scene_z = depth_m[t]
        front = np.isfinite(z) & ((scene_z <= 0) | (z < scene_z))
        out_frames[t][front] = rgb[front]
        out_depth[t][front] = z[front]
        masks.append(front)
        uvs.append(np.where(front[..., None], uv, np.nan).astype(np.float32))
    return {"frames": out_frames, "depth_m": out_depth, "mask": np.stack(masks), "card_uv": np.stack(uvs)}


def make_card(kind: str, texture: np.ndarray, depth0_m: np.ndarray, cam_c2w: np.ndarray, intrinsics: np.ndarray,
              seed: int = 0) -> Card:
    """A card of motion `kind` (module doc) placed in view of frame 0, scaled to the scene's depth."""
    if kind == "float":
        return _floating_card(texture, depth0_m, cam_c2w)
    if kind == "stand":
        return _standing_card(texture, depth0_m, cam_c2w, intrinsics, seed)
    if kind == "follow":
        return _following_card(texture, depth0_m, cam_c2w)
    raise ValueError(f"unknown card motion {kind!r} (float, stand, follow)")


def _scene_depth(depth0_m: np.ndarray) -> float:
    valid = depth0_m[depth0_m > 0]
    return float(np.median(valid)) if valid.size else 2.0


def _in_world(cam_c2w: np.ndarray, points_cam: np.ndarray) -> np.ndarray:
    return points_cam @ cam_c2w[:3, :3].T + cam_c2w[:3, 3]


def _floating_card(texture: np.ndarray, depth0_m: np.ndarray, cam_c2w: np.ndarray) -> Card:
    """In mid-air at half the scene depth: slides 0.35 m sideways, comes 25% closer, turns 35 degrees."""
    num = len(cam_c2w)
    s = np.linspace(0.0, 1.0, num)
    z0 = 0.5 * _scene_depth(depth0_m)
    centers_cam0 = np.stack([0.15 - 0.35 * s, -0.05 + 0.0 * s, z0 * (1.0 - 0.25 * s)], -1)
    angle = np.radians(35.0) * s
    axis_u_cam0 = np.stack([np.cos(angle), np.zeros(num), np.sin(angle)], -1)     # turns about the vertical
    axis_v_cam0 = np.tile([0.0, 1.0, 0.0], (num, 1))
    rotation0 = cam_c2w[0, :3, :3]
    return Card(texture, _in_world(cam_c2w[0], centers_cam0), axis_u_cam0 @ rotation0.T, axis_v_cam0 @ rotation0.T,
                (0.3, 0.3 * texture.shape[0] / texture.shape[1]), "float")


def _following_card(texture: np.ndarray, depth0_m: np.ndarray, cam_c2w: np.ndarray) -> Card:
    """Held in front of the moving camera at 40% of the scene depth, drifting 8 cm across the clip."""
    num = len(cam_c2w)
    s = np.linspace(0.0, 1.0, num)
    z0 = 0.4 * _scene_depth(depth0_m)
    offsets = np.stack([-0.1 + 0.08 * s, 0.05 + 0.0 * s, np.full(num, z0)], -1)
    centers = np.einsum("tij,tj->ti", cam_c2w[:, :3, :3], offsets) + cam_c2w[:, :3, 3]
    axis_u, axis_v = cam_c2w[:, :3, 0], cam_c2w[:, :3, 1]                       # facing the camera
    return Card(texture, centers, axis_u, axis_v, (0.25, 0.25 * texture.shape[0] / texture.shape[1]), "follow")


def support_plane(depth0_m: np.ndarray, intrinsics: np.ndarray, seed: int = 0, iters: int = 400
                  ) -> tuple[np.ndarray, float, np.ndarray]:
    """The largest roughly horizontal plane of frame 0 (camera-0 coordinates): (normal pointing up towards
    the camera's -y, offset d with normal . X = d, inlier pixel mask (H, W))."""
    height, width = depth0_m.shape
    ys, xs = np.mgrid[0:height, 0:width]
    valid = depth0_m > 0
    z = depth0_m
    points = np.stack([(xs - intrinsics[0, 2]) / intrinsics[0, 0] * z, (ys - intrinsics[1, 2]) / intrinsics[1, 1] * z,
                       z], -1)
    candidates = points[valid]
    rng = np.random.default_rng(seed)
    best, best_count = None, 0
    tolerance = 0.01 * _scene_depth(depth0_m)
    for _ in range(iters):
        sample = candidates[rng.choice(len(candidates), 3, replace=False)]
        normal = np.cross(sample[1] - sample[0], sample[2] - sample[0])
        if np.linalg.norm(normal) < 1e-9:
            continue
        normal /= np.linalg.norm(normal)
        if normal[1] > 0:
            normal = -normal                                                         # up: towards -y
        if -normal[1] < 0.6:                                                         # not horizontal enough
            continue
        count = int(np.sum(np.abs(candidates @ normal - normal @ sample[0]) < tolerance))
        if count > best_count:
            best, best_count = (normal, float(normal @ sample[0])), count
    if best is None:
        raise ValueError("no horizontal surface in frame 0")
    normal, offset = best
    inliers = valid & (np.abs(points @ normal - offset) < tolerance)
    return normal, offset, inliers


def _standing_card(texture: np.ndarray, depth0_m: np.ndarray, cam_c2w: np.ndarray, intrinsics: np.ndarray,
                   seed: int) -> Card:
    """Upright on the largest horizontal surface of frame 0, its bottom edge on it, sliding 0.3 m along it."""
    num = len(cam_c2w)
    normal, offset, inliers = support_plane(depth0_m, intrinsics, seed)
    ys, xs = np.nonzero(inliers)
    x0, y0 = float(np.median(xs)), float(np.median(ys))
    ray = np.array([(x0 - intrinsics[0, 2]) / intrinsics[0, 0], (y0 - intrinsics[1, 2]) / intrinsics[1, 1], 1.0])
    contact = ray * offset / (normal @ ray)                                          # on the plane, camera 0
    axis_u = np.array([1.0, 0.0, 0.0]) - normal[0] * normal                          # camera-0 x, in the plane
    axis_u /= np.linalg.norm(axis_u)
    axis_v = -normal                                                                 # down the card
    width = 0.25
    height = width * texture.shape[0] / texture.shape[1]
    s = np.linspace(-0.5, 0.5, num)
    centers_cam0 = contact + (0.3 * s)[:, None] * axis_u + normal * height / 2
    rotation0 = cam_c2w[0, :3, :3]
    return Card(texture, _in_world(cam_c2w[0], centers_cam0), np.tile(axis_u @ rotation0.T, (num, 1)),
                np.tile(axis_v @ rotation0.T, (num, 1)), (width, height), "stand")
