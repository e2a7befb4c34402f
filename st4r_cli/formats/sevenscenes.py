"""RGB-D sequences in the Microsoft 7-Scenes layout, and exact 3D track ground truth of a static scene.

Layout: `frame-NNNNNN.color.jpg` (or .png), `frame-NNNNNN.depth.png` (uint16 millimetres, 0 = invalid),
`frame-NNNNNN.pose.txt` (4x4 camera-to-world, metres), `camera-intrinsics.txt` (3x3; the standard
fx = fy = 585, cx = 320, cy = 240 when the file is absent).

Static-scene tracks (`static_scene_tracks`): a frame-0 pixel with valid depth back-projects to one world
point that never moves; it is visible in frame t when it projects inside the image, in front of the
camera, onto valid depth that agrees with its projected depth (|z_t - D_t(x)| <= tol_rel * z_t).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from st4r_cli.errors import St4rError
from st4r_cli.geometry.camera_np import project_static, unproject
from st4r_cli.formats._io import atomic_directory, read_image, write_image

DEFAULT_INTRINSICS = np.array([[585.0, 0.0, 320.0], [0.0, 585.0, 240.0], [0.0, 0.0, 1.0]])
_FRAME = re.compile(r"frame-(\d+)\.color\.(jpg|png)$")


@dataclass
class RgbdSequence:
    frames: np.ndarray          # (T, H, W, 3) uint8
    depth_m: np.ndarray         # (T, H, W) float32 metres, 0 where invalid
    cam_c2w: np.ndarray         # (T, 4, 4) float64
    intrinsics: np.ndarray      # (3, 3)
    frame_ids: list[int]

    @property
    def valid(self) -> np.ndarray:
        return self.depth_m > 0


def read_sevenscenes(path: Path) -> RgbdSequence:
    """Read every `frame-*.color.*` with its depth and pose, in frame-number order."""
    from PIL import Image

    path = Path(path)
    frames_found = sorted((int(m.group(1)), p) for p in path.glob("frame-*.color.*") if (m := _FRAME.search(p.name)))
    if not frames_found:
        raise St4rError(f"{path}: no frame-NNNNNN.color.jpg files (not a 7-Scenes sequence)")
    colors, depths, poses, ids = [], [], [], []
    for number, color_path in frames_found:
        stem = path / f"frame-{number:06d}"
        depth_path, pose_path = Path(f"{stem}.depth.png"), Path(f"{stem}.pose.txt")
        if not depth_path.is_file() or not pose_path.is_file():
            raise St4rError(f"{path}: frame {number} lacks its .depth.png or .pose.txt")
        colors.append(read_image(color_path))
        with Image.open(depth_path) as image:
            depths.append(np.asarray(image, dtype=np.uint16).astype(np.float32) / 1000.0)
        try:
            poses.append(np.loadtxt(pose_path).reshape(4, 4))
        except ValueError as exc:
            raise St4rError(f"{pose_path}: not a 4x4 matrix ({exc})") from None
        ids.append(number)
    intrinsics_path = path / "camera-intrinsics.txt"
    intrinsics = np.loadtxt(intrinsics_path).reshape(3, 3) if intrinsics_path.is_file() else DEFAULT_INTRINSICS.copy()
    return RgbdSequence(np.stack(colors), np.stack(depths), np.stack(poses), intrinsics, ids)


def write_sevenscenes(path: Path, sequence: RgbdSequence, overwrite: bool = False) -> Path:
    """Write a sequence in the 7-Scenes layout (depth rounded to millimetres)."""
    from PIL import Image

    with atomic_directory(Path(path), overwrite=overwrite) as tmp:
        for index, number in enumerate(sequence.frame_ids):
            stem = tmp / f"frame-{number:06d}"
            write_image(Path(f"{stem}.color.png"), sequence.frames[index])
            millimetres = np.round(np.clip(sequence.depth_m[index], 0, 65.535) * 1000.0).astype(np.uint16)
            Image.fromarray(millimetres).save(f"{stem}.depth.png")
            np.savetxt(f"{stem}.pose.txt", sequence.cam_c2w[index], fmt="%.18e")
        np.savetxt(tmp / "camera-intrinsics.txt", sequence.intrinsics, fmt="%.18e")
    return Path(path)


def backproject(depth_m: np.ndarray, intrinsics: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Camera-frame points `(N, 3)` on the rays through pixels `xy (N, 2)` at the depth of the nearest
    pixel (exact for integer pixel centres)."""
    xy = np.asarray(xy, dtype=np.float64)
    z = depth_m[np.round(xy[:, 1]).astype(int), np.round(xy[:, 0]).astype(int)].astype(np.float64)
    return unproject(xy, z, intrinsics)


def static_scene_tracks(depth_m: np.ndarray, cam_c2w: np.ndarray, intrinsics: np.ndarray,
                        query_xy: np.ndarray, tol_rel: float = 0.05) -> dict[str, np.ndarray]:
    """Exact world tracks of frame-0 pixels of a static scene, with depth-test visibility.

    Args:
        depth_m: `(T, H, W)` depth, 0 where invalid.
        cam_c2w: `(T, 4, 4)` camera-to-world poses.
        intrinsics: `(3, 3)`.
        query_xy: `(N, 2)` frame-0 pixels (x, y) with valid depth at their nearest pixel (exact for
            integer pixel centres).
        tol_rel: relative depth tolerance of the visibility test.
    Returns:
        `tracks3d (N, T, 3)` in frame 0's camera coordinates (constant in time), `tracks2d (N, T, 2)`,
        `visible (N, T)`, `query_xy (N, 2)`, `query_t (N,)` zeros, `cam_c2w (T, 4, 4)` re-expressed so
        that frame 0 is the identity.
    """
    num_frames, height, width = depth_m.shape
    cam_c2w = np.linalg.inv(cam_c2w[0])[None] @ np.asarray(cam_c2w, dtype=np.float64)
    points = backproject(depth_m[0], intrinsics, query_xy)                       # frame 0 = world
    tracks2d, z = project_static(points, np.linalg.inv(cam_c2w), intrinsics)    # (N, T, 2), NaN where z <= 0
    col, row = np.round(tracks2d[..., 0]), np.round(tracks2d[..., 1])
    inside = (z > 0) & (col >= 0) & (col <= width - 1) & (row >= 0) & (row <= height - 1)
    frame = np.broadcast_to(np.arange(num_frames), z.shape)
    observed = np.zeros(z.shape)
    observed[inside] = depth_m[frame[inside], row[inside].astype(int), col[inside].astype(int)]
    visible = inside & (observed > 0) & (np.abs(observed - z) <= tol_rel * z)
    return {"tracks3d": np.repeat(points[:, None], num_frames, axis=1).astype(np.float32),
            "tracks2d": tracks2d.astype(np.float32), "visible": visible,
            "query_xy": np.asarray(query_xy, dtype=np.float32), "query_t": np.zeros(len(points), np.int32),
            "cam_c2w": cam_c2w.astype(np.float32)}


def grid_queries(valid0: np.ndarray, step: int) -> np.ndarray:
    """Integer frame-0 pixels on a `step` grid where depth is valid, `(N, 2)` (x, y)."""
    height, width = valid0.shape
    ys, xs = np.mgrid[step // 2:height:step, step // 2:width:step]
    keep = valid0[ys, xs]
    return np.stack([xs[keep], ys[keep]], axis=1)


def to_clip_gt(sequence: RgbdSequence, grid_step: int = 16, tol_rel: float = 0.05) -> dict[str, np.ndarray]:
    """Clip-folder ground truth: poses with frame 0 = identity, depth, K and static-scene tracks."""
    tracks = static_scene_tracks(sequence.depth_m, sequence.cam_c2w, sequence.intrinsics,
                                 grid_queries(sequence.valid[0], grid_step), tol_rel)
    gt = dict(tracks)
    gt.update(intrinsics=sequence.intrinsics.astype(np.float32), depth=sequence.depth_m,
              valid=sequence.valid, dynamic=np.zeros(len(tracks["query_t"]), dtype=bool))
    return gt
