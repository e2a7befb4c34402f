"""A small synthetic run for the viz tests: a blue wall above, a green floor below (y down in the
OpenCV world, so the floor is at y = +1), a red patch on the wall that moves to the right, and a
camera that slides to the right. Every array is exact; `scene.npz` is all a finished run needs here."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from st4r_cli.formats.scene import write_scene

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


@pytest.fixture
def synthetic_run(tmp_path):
    """A run directory holding only scene.npz (what `st4r view` / `export --video` read)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_scene(run_dir / "scene.npz", synthetic_scene())
    return run_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def chromium():
    from chromium_cdp import ensure_chromium

    path, reason = ensure_chromium()
    if path is None:
        pytest.skip(reason)
    return path


THREE_VERSION = "0.181.0"  # three.js for the GLB page (npm package, fetched at set-up, never committed; = Makefile)


def three_dir_candidates():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    return [repo / ".venv" / "web" / "three", Path.home() / ".cache" / "st4r" / "web" / "three"]


@pytest.fixture(scope="session")
def three_dir():
    """The unpacked `three` npm package (build/three.module.js + examples/jsm); fetched with
    `npm pack` when missing (`make browser` does it at set-up)."""
    import shutil
    import subprocess
    import tarfile

    for candidate in three_dir_candidates():
        if (candidate / "build" / "three.module.js").is_file():
            return candidate
    target = three_dir_candidates()[-1]
    if not shutil.which("npm"):
        pytest.skip("three.js is not installed (`make browser`) and npm is not available")
    target.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["npm", "pack", f"three@{THREE_VERSION}", "--silent"], cwd=target.parent,
                            capture_output=True, text=True, timeout=300)
    tarball = target.parent / f"three-{THREE_VERSION}.tgz"
    if result.returncode != 0 or not tarball.is_file():
        pytest.skip(f"could not fetch three.js with npm: {result.stderr.strip()[-200:]}")
    with tarfile.open(tarball) as archive:
        archive.extractall(target.parent / "unpack", filter="data")
    shutil.rmtree(target, ignore_errors=True)
    (target.parent / "unpack" / "package").rename(target)
    tarball.unlink()
    return target
