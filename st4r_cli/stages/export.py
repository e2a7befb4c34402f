"""Export a run's `scene.npz` to formats other tools read.

- PLY: one coloured point cloud per frame (`ply/frame_00000.ply`) and the accumulated cloud of all
  frames (`ply/accumulated.ply`), binary little-endian, vertex x y z (float32), red green blue (uchar),
  confidence (float32); the least confident pixels of each frame are dropped.
- GLB (glTF binary, via trimesh): the accumulated points, one wire frustum per camera and the 3D tracks
  as polylines.
- TUM: camera-to-world trajectory, `timestamp tx ty tz qx qy qz qw` per line (evo reads it).
- COLMAP text model: `cameras.txt` (one PINHOLE camera), `images.txt` (world-to-camera poses and the
  2D observations), `points3D.txt` (the 3D tracks at their query frame, observed wherever they are
  visible, plus a confident subsample of the pointmaps with their one observation) and `images/`
  with the frames. COLMAP puts the centre of the top-left pixel at (0.5, 0.5), st4r at (0, 0): the
  principal point and every 2D observation are shifted by +0.5 on the way out.
- NPZ: a compressed copy of `scene.npz`.

Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

FORMATS = ("ply", "glb", "tum", "colmap", "npz")


@dataclass
class ExportConfig:
    """What to export and how much of it."""

    conf_quantile: float = 0.3        # per frame, drop this fraction of the least confident pixels
    every: int = 1                    # frame stride of the accumulated cloud / GLB points
    max_points: int = 2_000_000       # cap on the accumulated cloud (uniform random subsample)
    glb_max_points: int = 300_000     # cap on the GLB's point cloud
    glb_max_tracks: int = 2_000       # cap on the GLB's track polylines
    colmap_dense_points: int = 20_000  # pointmap points added to points3D.txt (0 disables)
    frustum_scale: float = 0.0        # frustum depth in world units; 0 -> 5% of the camera path length
    seed: int = 0


def check_export_config(config: ExportConfig) -> None:
    from st4r_cli.errors import St4rError

    if not 0.0 <= config.conf_quantile < 1.0:
        raise St4rError("--conf-quantile must be in [0, 1)")
    if config.every < 1:
        raise St4rError("--every must be >= 1")
    if config.max_points < 1 or config.glb_max_points < 1:
        raise St4rError("point caps must be >= 1")


def export_scene(scene: dict[str, np.ndarray], out_dir: Path, formats: list[str], config: ExportConfig,
                 timestamps: np.ndarray | None = None) -> list[Path]:
    """Write the requested formats of `scene` under `out_dir`; returns the written paths."""
    from st4r_cli import progress
    from st4r_cli.errors import St4rError

    check_export_config(config)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise St4rError(f"unknown export format(s): {', '.join(unknown)} (choose from {', '.join(FORMATS)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for fmt in formats:
        needs = {"ply": ("pointmaps",), "glb": ("pointmaps",), "tum": ("cam_c2w",),
                 "colmap": ("cam_c2w", "intrinsics"), "npz": ()}[fmt]
        missing = [key for key in needs if key not in scene]
        if missing:
            raise St4rError(f"--{fmt}: the scene has no {', '.join(missing)}")
        if fmt == "ply":
            written += export_ply(scene, out_dir / "ply", config)
        elif fmt == "glb":
            written.append(export_glb(scene, out_dir / "scene.glb", config))
        elif fmt == "tum":
            written.append(export_tum(scene, out_dir / "trajectory_tum.txt", timestamps))
        elif fmt == "colmap":
            written += export_colmap(scene, out_dir / "colmap", config)
        else:
            written.append(export_npz(scene, out_dir / "scene.npz"))
        progress.log(f"[green]✓[/green] {fmt}: {out_dir}")
    return written


# ----------------------------------------------------------------------------------------------
# point selection
# ----------------------------------------------------------------------------------------------

def frame_points(scene: dict[str, np.ndarray], t: int, conf_quantile: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Confident points of frame t: xyz (M, 3), rgb (M, 3) uint8, confidence (M,), pixel (M, 2) (x, y)."""
    import numpy as np

    pts = scene["pointmaps"][t].reshape(-1, 3)
    h, w = scene["pointmaps"].shape[1:3]
    conf = scene["conf"][t].reshape(-1) if "conf" in scene else np.ones(len(pts), np.float32)
    rgb = (scene["colors"][t].reshape(-1, 3) if "colors" in scene
           else np.full((len(pts), 3), 200, np.uint8))
    keep = np.isfinite(pts).all(1) & np.isfinite(conf)
    if conf_quantile > 0 and keep.any():
        keep &= conf >= np.quantile(conf[keep], conf_quantile)
    idx = np.flatnonzero(keep)
    pixel = np.stack([idx % w, idx // w], -1).astype(np.float64)
    return pts[idx], rgb[idx], conf[idx], pixel


def accumulated_points(scene: dict[str, np.ndarray], config: ExportConfig, cap: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All frames' confident points (every `config.every` frame), subsampled to `cap`."""
    import numpy as np

    xyz, rgb, conf = [], [], []
    for t in range(0, scene["pointmaps"].shape[0], config.every):
        p, c, k, _ = frame_points(scene, t, config.conf_quantile)
        xyz.append(p)
        rgb.append(c)
        conf.append(k)
    xyz_all, rgb_all, conf_all = np.concatenate(xyz), np.concatenate(rgb), np.concatenate(conf)
    if len(xyz_all) > cap:
        rng = np.random.default_rng(config.seed)
        idx = np.sort(rng.choice(len(xyz_all), size=cap, replace=False))
        xyz_all, rgb_all, conf_all = xyz_all[idx], rgb_all[idx], conf_all[idx]
    return xyz_all, rgb_all, conf_all


# ----------------------------------------------------------------------------------------------
# PLY
# ----------------------------------------------------------------------------------------------

def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray | None = None) -> Path:
    """Binary little-endian PLY: x y z float32, red green blue uchar[, confidence float32]."""
    import numpy as np

    from st4r_cli.runs.atomic import atomic_write_bytes

    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if conf is not None:
        fields.append(("confidence", "<f4"))
    data = np.zeros(len(xyz), dtype=fields)
    data["x"], data["y"], data["z"] = np.asarray(xyz, np.float32).T
    data["red"], data["green"], data["blue"] = np.asarray(rgb, np.uint8).T
    if conf is not None:
        data["confidence"] = conf
    type_names = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment written by st4r",
              f"element vertex {len(xyz)}"]
    header += [f"property {type_names[kind]} {name}" for name, kind in fields]
    header.append("end_header")
    atomic_write_bytes(Path(path), ("\n".join(header) + "\n").encode("ascii") + data.tobytes())
    return Path(path)


def export_ply(scene: dict[str, np.ndarray], out_dir: Path, config: ExportConfig) -> list[Path]:
    """Per-frame and accumulated coloured clouds."""
    from st4r_cli import progress

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    num_frames = scene["pointmaps"].shape[0]
    for t in progress.track(range(num_frames), "ply"):
        xyz, rgb, conf, _ = frame_points(scene, t, config.conf_quantile)
        written.append(write_ply(out_dir / f"frame_{t:05d}.ply", xyz, rgb, conf))
    xyz, rgb, conf = accumulated_points(scene, config, config.max_points)
    written.append(write_ply(out_dir / "accumulated.ply", xyz, rgb, conf))
    return written


# ----------------------------------------------------------------------------------------------
# GLB
# ----------------------------------------------------------------------------------------------

def frustum_segments(cam_c2w: np.ndarray, intrinsics: np.ndarray, hw: tuple[int, int], depth: float
                     ) -> np.ndarray:
    """(T*8, 2, 3) line segments of camera frusta: 4 edges from the centre + the image rectangle at `depth`."""
    import numpy as np

    from st4r_cli.geometry.camera_np import pixel_rays

    h, w = hw
    corners_px = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
    segments = []
    for t, pose in enumerate(cam_c2w):
        k_mat = intrinsics[t] if intrinsics.ndim == 3 else intrinsics
        rays = pixel_rays(corners_px, k_mat) * depth
        corners = rays @ pose[:3, :3].T + pose[:3, 3]
        centre = pose[:3, 3]
        for i in range(4):
            segments.append([centre, corners[i]])
            segments.append([corners[i], corners[(i + 1) % 4]])
    return np.asarray(segments, dtype=np.float64)


def _track_colors(count: int) -> np.ndarray:
    """(count, 4) uint8 rainbow colours."""
    import colorsys

    import numpy as np

    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(i / max(count, 1), 0.9, 1.0)] + [255]
                     for i in range(count)], dtype=np.uint8)


def export_glb(scene: dict[str, np.ndarray], path: Path, config: ExportConfig) -> Path:
    """Points + camera frusta + track polylines as one glTF binary."""
    import numpy as np
    import trimesh
    from trimesh.path.entities import Line

    from st4r_cli.runs.atomic import atomic_write_bytes

    glb = trimesh.Scene()
    xyz, rgb, _ = accumulated_points(scene, config, config.glb_max_points)
    if len(xyz):
        colors = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
        glb.add_geometry(trimesh.PointCloud(xyz, colors=colors), geom_name="points")
    if "cam_c2w" in scene and "intrinsics" in scene:
        centres = scene["cam_c2w"][:, :3, 3]
        path_len = float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum()) if len(centres) > 1 else 0.0
        extent = float(np.median(np.linalg.norm(xyz, axis=1))) if len(xyz) else 1.0
        depth = config.frustum_scale or max(0.05 * path_len, 0.02 * extent, 1e-3)
        hw = scene["pointmaps"].shape[1:3]
        segments = frustum_segments(scene["cam_c2w"].astype(np.float64), scene["intrinsics"].astype(np.float64),
                                    hw, depth)
        frusta = trimesh.load_path(segments)
        frusta.colors = np.tile([255, 60, 60, 255], (len(frusta.entities), 1)).astype(np.uint8)
        glb.add_geometry(frusta, geom_name="cameras")
    if "tracks3d" in scene and scene["tracks3d"].shape[1] > 1:
        tracks = scene["tracks3d"]
        if len(tracks) > config.glb_max_tracks:
            idx = np.linspace(0, len(tracks) - 1, config.glb_max_tracks).round().astype(int)
            tracks = tracks[idx]
        num_frames = tracks.shape[1]
        vertices = tracks.reshape(-1, 3).astype(np.float64)
        entities = [Line(points=np.arange(n * num_frames, (n + 1) * num_frames)) for n in range(len(tracks))]
        polylines = trimesh.path.Path3D(entities=entities, vertices=vertices, process=False)
        polylines.colors = _track_colors(len(entities))
        glb.add_geometry(polylines, geom_name="tracks")
    atomic_write_bytes(Path(path), glb.export(file_type="glb"))
    return Path(path)


# ----------------------------------------------------------------------------------------------
# TUM and NPZ
# ----------------------------------------------------------------------------------------------

def export_tum(scene: dict[str, np.ndarray], path: Path, timestamps: np.ndarray | None = None) -> Path:
    """Camera-to-world trajectory in TUM format (timestamps: seconds when known, else frame index)."""
    from st4r_cli.formats.tum import format_tum
    from st4r_cli.runs.atomic import atomic_write_text

    atomic_write_text(Path(path), format_tum(scene["cam_c2w"], timestamps))
    return Path(path)


def export_npz(scene: dict[str, np.ndarray], path: Path) -> Path:
    from st4r_cli.formats.scene import write_scene

    return write_scene(Path(path), scene, compressed=True)


# ----------------------------------------------------------------------------------------------
# COLMAP
# ----------------------------------------------------------------------------------------------

def export_colmap(scene: dict[str, np.ndarray], out_dir: Path, config: ExportConfig) -> list[Path]:
    """COLMAP text model (+ `images/` with the frames) of the scene."""
    import numpy as np

    from st4r_cli.formats.tum import rotation_to_quaternion_xyzw
    from st4r_cli.runs.atomic import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    cam_c2w = scene["cam_c2w"].astype(np.float64)
    num_frames = len(cam_c2w)
    k_all = scene["intrinsics"].astype(np.float64)
    k_mat = k_all if k_all.ndim == 2 else k_all[0]
    from st4r_cli.formats.scene import scene_image_hw

    h, w = scene_image_hw(scene) or (int(2 * k_mat[1, 2] + 1), int(2 * k_mat[0, 2] + 1))
    names = [f"frame_{t:05d}.png" for t in range(num_frames)]
    cameras = ["# Camera list with one line of data per camera:",
               "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
               "# Number of cameras: 1",
               f"1 PINHOLE {w} {h} {k_mat[0, 0]:.10g} {k_mat[1, 1]:.10g} {k_mat[0, 2] + 0.5:.10g} {k_mat[1, 2] + 0.5:.10g}"]

    # points: tracks (multi-view) then a confident pointmap subsample (one view each)
    observations: list[list[tuple[float, float, int]]] = [[] for _ in range(num_frames)]
    point_lines: list[str] = []
    next_id = 1
    if "tracks3d" in scene and "tracks2d" in scene:
        tracks3d, tracks2d = scene["tracks3d"], scene["tracks2d"]
        visible = scene["visible"] if "visible" in scene else np.isfinite(tracks2d).all(-1)
        query_t = scene["query_t"].astype(int) if "query_t" in scene else np.zeros(len(tracks3d), int)
        for n in range(len(tracks3d)):
            frames_seen = np.flatnonzero(visible[n] & np.isfinite(tracks2d[n]).all(-1))
            if frames_seen.size == 0:
                continue
            xyz = tracks3d[n, query_t[n]]
            rgb = _color_at(scene, query_t[n], scene["query_xy"][n] if "query_xy" in scene else tracks2d[n, query_t[n]])
            track = []
            for t in frames_seen:
                track.append(f"{t + 1} {len(observations[t])}")
                observations[t].append((float(tracks2d[n, t, 0]), float(tracks2d[n, t, 1]), next_id))
            point_lines.append(_point_line(next_id, xyz, rgb, track))
            next_id += 1
    if config.colmap_dense_points > 0 and "pointmaps" in scene:
        per_frame = max(1, config.colmap_dense_points // num_frames)
        rng = np.random.default_rng(config.seed)
        for t in range(num_frames):
            xyz, rgb, _, pixel = frame_points(scene, t, config.conf_quantile)
            if len(xyz) > per_frame:
                idx = np.sort(rng.choice(len(xyz), size=per_frame, replace=False))
                xyz, rgb, pixel = xyz[idx], rgb[idx], pixel[idx]
            for p, c, px in zip(xyz, rgb, pixel):
                point_lines.append(_point_line(next_id, p, c, [f"{t + 1} {len(observations[t])}"]))
                observations[t].append((float(px[0]), float(px[1]), next_id))
                next_id += 1

    w2c = np.linalg.inv(cam_c2w)
    quats = rotation_to_quaternion_xyzw(w2c[:, :3, :3])  # (x, y, z, w)
    images = ["# Image list with two lines of data per image:",
              "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
              "#   POINTS2D[] as (X, Y, POINT3D_ID)",
              f"# Number of images: {num_frames}"]
    for t in range(num_frames):
        qx, qy, qz, qw = quats[t]
        tx, ty, tz = w2c[t, :3, 3]
        images.append(f"{t + 1} {qw:.12g} {qx:.12g} {qy:.12g} {qz:.12g} {tx:.12g} {ty:.12g} {tz:.12g} 1 {names[t]}")
        images.append(" ".join(f"{x + 0.5:.6f} {y + 0.5:.6f} {pid}" for x, y, pid in observations[t]))
    points = ["# 3D point list with one line of data per point:",
              "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
              f"# Number of points: {len(point_lines)}"] + point_lines
    written = []
    for name, lines in (("cameras.txt", cameras), ("images.txt", images), ("points3D.txt", points)):
        atomic_write_text(out_dir / name, "\n".join(lines) + "\n")
        written.append(out_dir / name)
    if "colors" in scene:
        written += _write_frames(scene["colors"], out_dir / "images", names)
    return written


def _point_line(point_id: int, xyz: np.ndarray, rgb: np.ndarray, track: list[str]) -> str:
    return (f"{point_id} {xyz[0]:.9g} {xyz[1]:.9g} {xyz[2]:.9g} {int(rgb[0])} {int(rgb[1])} {int(rgb[2])} 0 "
            + " ".join(track))


def _color_at(scene: dict[str, np.ndarray], t: int, xy: np.ndarray) -> np.ndarray:
    import numpy as np

    if "colors" not in scene or not np.isfinite(xy).all():
        return np.array([200, 200, 200])
    h, w = scene["colors"].shape[1:3]
    col = int(np.clip(round(float(xy[0])), 0, w - 1))
    row = int(np.clip(round(float(xy[1])), 0, h - 1))
    return scene["colors"][t, row, col]


def _write_frames(colors: np.ndarray, out_dir: Path, names: list[str]) -> list[Path]:
    from PIL import Image

    from st4r_cli.runs.atomic import atomic_write_with

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for frame, name in zip(colors, names):
        atomic_write_with(out_dir / name, lambda tmp, f=frame: Image.fromarray(f).save(tmp, format="PNG"))
        written.append(out_dir / name)
    return written


def read_colmap_text(model_dir: Path) -> dict:
    """Parse a COLMAP text model (our own reader, for round trips and tools).

    Returns {'cameras': {id: (model, w, h, params)}, 'images': {id: dict(q_wxyz, t, camera_id, name,
    xys (K,2), point3d_ids (K,))}, 'points': {id: dict(xyz, rgb, error, track [(image_id, idx)])}}.
    """
    import numpy as np

    model_dir = Path(model_dir)

    def lines(name: str) -> list[str]:
        text = (model_dir / name).read_text().splitlines()
        return [line for line in text if not line.startswith("#")]

    cameras = {}
    for line in lines("cameras.txt"):
        if line.strip():
            parts = line.split()
            cameras[int(parts[0])] = (parts[1], int(parts[2]), int(parts[3]), np.array(parts[4:], float))
    images = {}
    rows = lines("images.txt")
    for head, obs in zip(rows[0::2], rows[1::2]):
        parts = head.split()
        values = np.array(obs.split(), float).reshape(-1, 3) if obs.strip() else np.zeros((0, 3))
        images[int(parts[0])] = {"q_wxyz": np.array(parts[1:5], float), "t": np.array(parts[5:8], float),
                                 "camera_id": int(parts[8]), "name": parts[9], "xys": values[:, :2],
                                 "point3d_ids": values[:, 2].astype(np.int64)}
    points = {}
    for line in lines("points3D.txt"):
        if line.strip():
            parts = line.split()
            track = np.array(parts[8:], int).reshape(-1, 2)
            points[int(parts[0])] = {"xyz": np.array(parts[1:4], float), "rgb": np.array(parts[4:7], int),
                                     "error": float(parts[7]), "track": [tuple(x) for x in track]}
    return {"cameras": cameras, "images": images, "points": points}
