"""Shared by the viz tests: a small synthetic run with a blue wall above, a green floor below (y down in the
OpenCV world, so the floor is at y = +1), a red patch on the wall that moves to the right, and a
camera that slides to the right. Every array is exact; `scene.npz` is all a finished run needs here."""

from __future__ import annotations

import socket

import numpy as np

T, H, W = 6, 48, 64
FOCAL = 60.0
K = np.array([[FOCAL, 0, (W - 1) / 2], [0, FOCAL, (H - 1) / 2], [0, 0, 1]])
WALL_Z, FLOOR_Y, CAM_STEP, PATCH_STEP = 4.0, 1.0, 0.1, 0.15
BLUE, GREEN, RED = (40, 80, 255), (40, 200, 40), (255, 30, 30)


def _patch(x: np.ndarray, y: np.ndarray, z: np.ndarray, t: int) -> np.ndarray:
    """Points of the moving red patch on the wall at time t."""
    x0 = -0.9 + PATCH_STEP * t
    return (np.abs(z - WALL_Z) < 1e-6) & (x >= x0) & (x <= x0 + 1.2) & (y >= -1.5) & (y <= -0.4)


def synthetic_scene() -> dict[str, np.ndarray]:
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(xs - K[0, 2]) / FOCAL, (ys - K[1, 2]) / FOCAL, np.ones_like(xs)], -1)
    cam_c2w = np.stack([np.eye(4) for _ in range(T)])
    cam_c2w[:, 0, 3] = CAM_STEP * np.arange(T)
    points = np.zeros((T, H, W, 3))
    colors = np.zeros((T, H, W, 3), np.uint8)
    dynamic = np.zeros((T, H, W), bool)
    for t in range(T):
        with np.errstate(divide="ignore"):
            s_floor = np.where(rays[..., 1] > 0, FLOOR_Y / rays[..., 1], np.inf)
        s = np.minimum(s_floor, WALL_Z)  # wall z = WALL_Z (rays have z = 1)
        pts = rays * s[..., None] + cam_c2w[t, :3, 3]
        points[t] = pts
        on_floor = s_floor < WALL_Z
        colors[t] = np.where(on_floor[..., None], GREEN, BLUE)
        patch = _patch(pts[..., 0], pts[..., 1], pts[..., 2], t)
        colors[t][patch] = RED
        dynamic[t] = patch
    # tracks: a grid of frame-0 pixels; patch points move with the patch
    gy, gx = np.mgrid[3:H:6, 3:W:6]
    query_xy = np.stack([gx.ravel(), gy.ravel()], -1).astype(np.float64)
    start = points[0][gy.ravel(), gx.ravel()]
    moving = dynamic[0][gy.ravel(), gx.ravel()]
    tracks3d = np.repeat(start[:, None], T, 1)
    tracks3d[moving] += (PATCH_STEP * np.arange(T))[None, :, None] * np.array([1.0, 0, 0])
    tracks2d = np.zeros(tracks3d.shape[:2] + (2,))
    for t in range(T):
        cam = tracks3d[:, t] - cam_c2w[t, :3, 3]
        tracks2d[:, t] = cam[:, :2] / cam[:, 2:] * FOCAL + K[:2, 2]
    visible = ((tracks2d >= 0) & (tracks2d <= [W - 1, H - 1])).all(-1)
    conf = np.full((T, H, W), 3.0) + np.linspace(0, 1, W)[None, None]
    return {"pointmaps": points.astype(np.float32), "conf": conf.astype(np.float32), "colors": colors,
            "intrinsics": K.astype(np.float32), "cam_c2w": cam_c2w.astype(np.float32),
            "tracks3d": tracks3d.astype(np.float32), "tracks2d": tracks2d.astype(np.float32),
            "visible": visible, "query_xy": query_xy.astype(np.float32),
            "query_t": np.zeros(len(query_xy), np.int32), "gt_dynamic": moving, "gt_dynamic_mask": dynamic}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
