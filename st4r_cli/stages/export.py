"""Export a run's `scene.npz` to formats other tools read.

- PLY: one coloured point cloud per frame (`ply/frame_00000.ply`) and the accumulated cloud of all
  frames (`ply/accumulated.ply`), binary little-endian, vertex x y z (float32), red green blue (uchar),
  confidence (float32); the least confident pixels of each frame are dropped.
- GLB (glTF binary, our own writer): glTF axes (y up, cameras look down -z: st4r's world with y and z
  negated), one node per frame with its points and an animation that shows frame i at time i / fps,
  the camera frusta, the camera path and the 3D tracks as polylines (`export_glb`).
- TUM: camera-to-world trajectory, `timestamp tx ty tz qx qy qz qw` per line (evo reads it).
- COLMAP text model `colmap/sparse/0/{cameras,images,points3D}.txt` + `colmap/images/` (the frames at
  the source's resolution when the run's input is there): one PINHOLE camera, world-to-camera poses,
  static tracks only (seen in >= 2 images) triangulated from the tracker's 2D positions, which are
  the observations; ERROR is the real mean reprojection error. COLMAP puts the centre of the top-left
  pixel at (0.5, 0.5), st4r at (0, 0): pixel coordinates are shifted (and rescaled) on the way out.
- NPZ: a compressed copy of `scene.npz`.
- intrinsics.json: per frame K (fx, fy, cx, cy), the field of view, width and height of the scene's
  frames, the pixel convention and the scene's units (any global scale).
- masks/dynamic_00000.png ...: the scene's `dynamic_mask`, one 8-bit PNG per frame (255 = moving), at the
  scene's frame size (MonST3R's convention); with COLMAP, also `colmap/masks/<image name>` at the COLMAP
  images' size (nerfstudio's convention: 0 = ignore, i.e. the moving pixels).

Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

FORMATS = ("ply", "glb", "tum", "colmap", "npz", "intrinsics", "masks")
MANIFEST_NAME = "st4r-export.json"   # written into every export directory: st4r made it


@dataclass
class ExportConfig:
    """What to export and how much of it."""

    conf_quantile: float = 0.3        # per frame, drop this fraction of the least confident pixels
    every: int = 1                    # frame stride of the accumulated cloud / GLB points
    max_points: int = 2_000_000       # cap on the accumulated cloud (uniform random subsample)
    glb_max_points: int = 500_000     # cap on the GLB's points (all frames together)
    glb_max_tracks: int = 300         # cap on the GLB's track polylines (spread over the image)
    colmap_max_error_px: float = 4.0  # COLMAP: drop observations reprojecting farther (scene pixels)
    frustum_scale: float = 0.0        # frustum depth in world units; 0 -> 5% of the camera path length
    seed: int = 0


def check_export_config(config: ExportConfig) -> None:
    from st4r_cli.errors import St4rError

    if config.colmap_max_error_px <= 0:
        raise St4rError("colmap_max_error_px must be > 0")
    if not 0.0 <= config.conf_quantile < 1.0:
        raise St4rError("--conf-quantile must be in [0, 1)")
    if config.every < 1:
        raise St4rError("--every must be >= 1")
    if config.max_points < 1 or config.glb_max_points < 1:
        raise St4rError("point caps must be >= 1")


def check_export_dir(out_dir: Path, run_dir: Path | None = None) -> None:
    """St4rError unless exporting into `out_dir` touches nothing but st4r's own export files.

    - `out_dir` is new, an empty directory, or an export directory st4r wrote (its `st4r-export.json`;
      the run's own `RUN/export` of an older st4r, without one, is accepted too);
    - with `run_dir` (the default `RUN/export`), `out_dir` and everything in it stay inside the run;
    - nothing inside `out_dir` is a symbolic link (st4r never makes one: a link there would send the
      files elsewhere, overwriting what is there).
    """
    from st4r_cli.errors import St4rError

    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        raise St4rError(f"refusing to export into {out_dir}: it is a symbolic link "
                        f"(to {out_dir.resolve()}); st4r writes exports into real directories only")
    if not out_dir.exists():
        _check_parent_inside(out_dir, run_dir)
        return
    if not out_dir.is_dir():
        raise St4rError(f"output path exists and is not a directory: {out_dir}")
    _check_parent_inside(out_dir, run_dir)
    owned = (out_dir / MANIFEST_NAME).is_file() or run_dir is not None or next(out_dir.iterdir(), None) is None
    if not owned:
        raise St4rError(f"refusing to export into {out_dir}: it is an existing directory that is not empty "
                        f"and not a st4r export (no {MANIFEST_NAME}); choose a new or empty directory")
    for path in sorted(_walk_no_follow(out_dir)):
        if path.is_symlink():
            raise St4rError(f"refusing to export into {out_dir}: {path} is a symbolic link "
                            f"(to {path.resolve()}); remove it or export elsewhere")


def _check_parent_inside(out_dir: Path, run_dir: Path | None) -> None:
    """St4rError when `out_dir` (the run's own export directory) resolves outside `run_dir`."""
    from st4r_cli.errors import St4rError

    if run_dir is None:
        return
    target = out_dir.parent.resolve() / out_dir.name
    if not target.is_relative_to(Path(run_dir).resolve()):
        raise St4rError(f"refusing to export into {out_dir}: it leads outside the run directory {run_dir}")


def _walk_no_follow(root: Path) -> list[Path]:
    """Every entry under `root` (files, folders and links), without following links."""
    import os

    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        found += [Path(folder) / name for name in (*dirs, *files)]
    return found


def write_export_manifest(out_dir: Path, written: list[Path], source: Path) -> Path:
    """`out_dir/st4r-export.json`: which scene was exported and the files st4r wrote (merged with an
    earlier export's list); it marks the directory as st4r's (`check_export_dir`)."""
    import json
    import time

    from st4r_cli.runs.atomic import atomic_write_text

    out_dir = Path(out_dir)
    path = out_dir / MANIFEST_NAME
    files: set[str] = set()
    try:
        previous = json.loads(path.read_text())
        files = {str(name) for name in previous.get("files", []) if isinstance(name, str)}
    except (OSError, ValueError, AttributeError):
        pass
    files |= {str(Path(p).relative_to(out_dir)) for p in written if Path(p).is_relative_to(out_dir)}
    manifest = {"written_by": "st4r export", "scene": str(source), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "files": sorted(files)}
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return path


def export_scene(scene: dict[str, np.ndarray], out_dir: Path, formats: list[str], config: ExportConfig,
                 timestamps: np.ndarray | None = None, tracker: dict[str, np.ndarray] | None = None,
                 original: dict[str, np.ndarray] | None = None) -> list[Path]:
    """Write the requested formats of `scene` under `out_dir`; returns the written paths.

    Optional, from the run the scene comes from (`st4r_cli.pipeline.run_tracker_tracks`, `source_frames`):
    `tracker`, the tracks stage's tracks_xy / visible / queries (COLMAP's observations), and `original`,
    the source frames at their own resolution ({'frames', 'orig_hw'}: COLMAP's images); `timestamps` give
    the GLB the video's frame rate.
    """
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
                 "colmap": ("cam_c2w", "intrinsics"), "npz": (), "intrinsics": ("intrinsics",),
                 "masks": ("dynamic_mask",)}[fmt]
        missing = [key for key in needs if key not in scene]
        if missing:
            raise St4rError(f"--{fmt}: the scene has no {', '.join(missing)}")
        if fmt == "ply":
            written += export_ply(scene, out_dir / "ply", config)
        elif fmt == "glb":
            written.append(export_glb(scene, out_dir / "scene.glb", config, fps=_fps(timestamps)))
        elif fmt == "tum":
            written.append(export_tum(scene, out_dir / "trajectory_tum.txt", timestamps))
        elif fmt == "colmap":
            written += export_colmap(scene, out_dir / "colmap", config, tracker=tracker, original=original)
        elif fmt == "intrinsics":
            written.append(export_intrinsics(scene, out_dir / "intrinsics.json"))
        elif fmt == "masks":
            written += export_masks(scene, out_dir / "masks")
        else:
            written.append(export_npz(scene, out_dir / "scene.npz"))
        progress.log(f"[green]✓[/green] {fmt}: {out_dir}")
    return written


def _fps(timestamps: np.ndarray | None) -> float:
    """Frame rate from frame times in seconds (10 when unknown)."""
    if timestamps is not None and len(timestamps) > 1 and timestamps[-1] > timestamps[0]:
        return float((len(timestamps) - 1) / (timestamps[-1] - timestamps[0]))
    return 10.0


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

GLTF_FROM_OPENCV = (1.0, -1.0, -1.0)  # x right, y down, z forward (OpenCV) -> x right, y up, z backward (glTF)


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


class _GltfBuilder:
    """A minimal glTF 2.0 binary writer: point / line meshes with vertex colours, nodes, STEP animations."""

    def __init__(self) -> None:
        self.binary = bytearray()
        self.doc: dict = {"asset": {"version": "2.0", "generator": "st4r"}, "scene": 0, "scenes": [{"nodes": []}],
                          "nodes": [], "meshes": [], "accessors": [], "bufferViews": [], "buffers": [],
                          "materials": [{"name": "unlit", "pbrMetallicRoughness": {"metallicFactor": 0.0,
                                                                                    "roughnessFactor": 1.0},
                                         "extensions": {"KHR_materials_unlit": {}}}],
                          "extensionsUsed": ["KHR_materials_unlit"]}

    def accessor(self, array: np.ndarray, kind: str, target: int | None = None, normalized: bool = False) -> int:
        import numpy as np

        component = {np.dtype(np.float32): 5126, np.dtype(np.uint8): 5121}[array.dtype]
        while len(self.binary) % 4:
            self.binary.append(0)
        view = {"buffer": 0, "byteOffset": len(self.binary), "byteLength": array.nbytes}
        if target is not None:
            view["target"] = target
        self.binary += np.ascontiguousarray(array).tobytes()
        self.doc["bufferViews"].append(view)
        acc = {"bufferView": len(self.doc["bufferViews"]) - 1, "componentType": component,
               "count": int(array.shape[0]), "type": kind}
        if normalized:
            acc["normalized"] = True
        if kind in ("VEC3", "SCALAR") and array.dtype == np.float32:
            flat = array.reshape(len(array), -1)
            acc["min"] = [float(v) for v in flat.min(0)]
            acc["max"] = [float(v) for v in flat.max(0)]
        self.doc["accessors"].append(acc)
        return len(self.doc["accessors"]) - 1

    def mesh(self, name: str, positions: np.ndarray, colors: np.ndarray, mode: int) -> int:
        """mode 0 points, 1 lines; positions (M, 3) float32, colors (M, 4) uint8."""
        attributes = {"POSITION": self.accessor(positions, "VEC3", 34962),
                      "COLOR_0": self.accessor(colors, "VEC4", 34962, normalized=True)}
        self.doc["meshes"].append({"name": name, "primitives": [{"attributes": attributes, "mode": mode,
                                                                  "material": 0}]})
        return len(self.doc["meshes"]) - 1

    def node(self, name: str, mesh: int, scale: float = 1.0) -> int:
        node = {"name": name, "mesh": mesh}
        if scale != 1.0:
            node["scale"] = [scale] * 3
        self.doc["nodes"].append(node)
        self.doc["scenes"][0]["nodes"].append(len(self.doc["nodes"]) - 1)
        return len(self.doc["nodes"]) - 1

    def visibility_animation(self, name: str, nodes: list[int], fps: float) -> None:
        """Node i is shown (scale 1) during [i / fps, (i + 1) / fps) and hidden (scale 0) otherwise."""
        import numpy as np

        count = len(nodes)
        channels, samplers = [], []
        for i, node in enumerate(nodes):
            times = sorted({0.0, i / fps, (i + 1) / fps, count / fps})
            values = [1.0 if i / fps <= x < (i + 1) / fps or (i == count - 1 and x >= i / fps) else 0.0
                      for x in times]
            sampler = {"input": self.accessor(np.asarray(times, np.float32)[:, None], "SCALAR"),
                       "output": self.accessor(np.repeat(np.asarray(values, np.float32)[:, None], 3, 1), "VEC3"),
                       "interpolation": "STEP"}
            samplers.append(sampler)
            channels.append({"sampler": len(samplers) - 1, "target": {"node": node, "path": "scale"}})
        self.doc.setdefault("animations", []).append({"name": name, "channels": channels, "samplers": samplers})

    def glb(self) -> bytes:
        import json
        import struct

        while len(self.binary) % 4:
            self.binary.append(0)
        self.doc["buffers"] = [{"byteLength": len(self.binary)}]
        text = json.dumps(self.doc, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 4)
        total = 12 + 8 + len(text) + 8 + len(self.binary)
        return (struct.pack("<III", 0x46546C67, 2, total) + struct.pack("<II", len(text), 0x4E4F534A) + text
                + struct.pack("<II", len(self.binary), 0x004E4942) + bytes(self.binary))


def export_glb(scene: dict[str, np.ndarray], path: Path, config: ExportConfig, fps: float = 10.0) -> Path:
    """glTF binary in glTF axes (y up, cameras looking down -z): world = st4r's world (frame 0's OpenCV
    camera) with y and z negated, so viewers show it upright and from the front.

    Time is kept: one node per frame (`frame_00000`, ...) holding that frame's point cloud, and an
    animation `time` (STEP) that shows frame i's node during [i / fps, (i + 1) / fps) (three.js,
    model-viewer and Blender play it; viewers without animation show frame 0). Static nodes: the
    camera frusta (`cameras`), the camera path (`camera_path`) and the 3D tracks as polylines
    (`tracks`, one colour per track).
    """
    import numpy as np

    from st4r_cli.runs.atomic import atomic_write_bytes

    flip = np.asarray(GLTF_FROM_OPENCV, np.float32)
    builder = _GltfBuilder()
    num_frames = scene["pointmaps"].shape[0]
    per_frame = max(1, config.glb_max_points // num_frames)
    rng = np.random.default_rng(config.seed)
    frame_nodes = []
    all_xyz = []
    for t in range(num_frames):
        xyz, rgb, _, _ = frame_points(scene, t, config.conf_quantile)
        if len(xyz) > per_frame:
            idx = np.sort(rng.choice(len(xyz), size=per_frame, replace=False))
            xyz, rgb = xyz[idx], rgb[idx]
        if not len(xyz):
            xyz, rgb = np.zeros((1, 3), np.float32), np.zeros((1, 3), np.uint8)
        xyz = np.asarray(xyz, np.float32) * flip
        all_xyz.append(xyz)
        colors = np.concatenate([rgb.astype(np.uint8), np.full((len(rgb), 1), 255, np.uint8)], 1)
        mesh = builder.mesh(f"frame_{t:05d}", xyz, colors, mode=0)
        frame_nodes.append(builder.node(f"frame_{t:05d}", mesh, scale=1.0 if t == 0 else 0.0))
    if "cam_c2w" in scene and "intrinsics" in scene:
        poses = scene["cam_c2w"].astype(np.float64)
        centres = poses[:, :3, 3]
        path_len = float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum()) if len(centres) > 1 else 0.0
        pts = np.concatenate(all_xyz)
        extent = float(np.median(np.linalg.norm(pts, axis=1))) if len(pts) else 1.0
        depth = config.frustum_scale or max(0.05 * path_len, 0.03 * extent, 1e-3)
        segments = frustum_segments(poses, scene["intrinsics"].astype(np.float64), scene["pointmaps"].shape[1:3],
                                    depth).reshape(-1, 3).astype(np.float32) * flip
        grey = np.tile(np.array([[255, 60, 60, 255]], np.uint8), (len(segments), 1))
        builder.node("cameras", builder.mesh("cameras", segments, grey, mode=1))
        if len(centres) > 1:
            path_seg = np.stack([centres[:-1], centres[1:]], 1).reshape(-1, 3).astype(np.float32) * flip
            orange = np.tile(np.array([[255, 150, 0, 255]], np.uint8), (len(path_seg), 1))
            builder.node("camera_path", builder.mesh("camera_path", path_seg, orange, mode=1))
    if "tracks3d" in scene and scene["tracks3d"].shape[1] > 1:
        from st4r_cli.viz.selection import pick_tracks

        tracks = scene["tracks3d"]
        query_xy = scene["query_xy"] if "query_xy" in scene else np.zeros((len(tracks), 2))
        tracks = tracks[pick_tracks(query_xy, config.glb_max_tracks)]
        seg = np.stack([tracks[:, :-1], tracks[:, 1:]], 2)                       # (N, T-1, 2, 3)
        colors = np.repeat(_track_colors(len(tracks))[:, None, None], tracks.shape[1] - 1, 1).repeat(2, 2)
        good = np.isfinite(seg).all((2, 3))
        if good.any():
            builder.node("tracks", builder.mesh("tracks", seg[good].reshape(-1, 3).astype(np.float32) * flip,
                                                colors[good].reshape(-1, 4), mode=1))
    if num_frames > 1:
        builder.visibility_animation("time", frame_nodes, fps)
    atomic_write_bytes(Path(path), builder.glb())
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

def static_track_mask(scene: dict[str, np.ndarray], motion_rel: float = 0.05) -> np.ndarray:
    """(N,) bool: tracks that stay put. The scene's `track_static` when present, else 3D motion below
    `motion_rel` x the track's own frame-0 depth."""
    import numpy as np

    tracks = np.asarray(scene["tracks3d"], np.float64)
    if "track_static" in scene and len(scene["track_static"]) == len(tracks):
        return scene["track_static"].astype(bool)
    query_t = scene["query_t"].astype(int) if "query_t" in scene else np.zeros(len(tracks), int)
    start = tracks[np.arange(len(tracks)), query_t]
    motion = np.nanmax(np.linalg.norm(tracks - start[:, None], axis=-1), axis=1)
    if "cam_c2w" in scene:
        w2c = np.linalg.inv(np.asarray(scene["cam_c2w"], np.float64))[query_t]
        depth = np.einsum("nij,nj->ni", w2c[:, :3, :3], start)[:, 2] + w2c[:, 2, 3]
    else:
        depth = start[:, 2]
    return np.nan_to_num(motion, nan=np.inf) <= motion_rel * np.abs(depth)


def triangulate(xy: np.ndarray, w2c: np.ndarray, k_mat: np.ndarray) -> np.ndarray:
    """Linear (DLT) triangulation of one point from pixels xy (K, 2) seen by cameras w2c (K, 4, 4)."""
    import numpy as np

    proj = k_mat @ w2c[:, :3, :]                                   # (K, 3, 4)
    rows = np.concatenate([xy[:, :1] * proj[:, 2] - proj[:, 0], xy[:, 1:] * proj[:, 2] - proj[:, 1]])
    _, _, vt = np.linalg.svd(rows)
    point = vt[-1]
    return point[:3] / point[3] if abs(point[3]) > 1e-12 else np.full(3, np.nan)


def reprojection_errors(point: np.ndarray, xy: np.ndarray, w2c: np.ndarray, k_mat: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(errors (K,) pixels, depths (K,)) of a world point against its observations."""
    import numpy as np

    cam = np.einsum("kij,j->ki", w2c[:, :3, :3], point) + w2c[:, :3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = cam[:, :2] / cam[:, 2:] * np.diag(k_mat)[:2] + k_mat[:2, 2]
    return np.linalg.norm(uv - xy, axis=1), cam[:, 2]


def colmap_points(scene: dict[str, np.ndarray], config: ExportConfig,
                  tracker: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Static points for COLMAP, in the scene's (decoded) pixels: [{xyz (3,), rgb (3,), frames (K,),
    xy (K, 2), errors (K,), residuals (K, 2) projection minus observation}].

    Each static track (see `static_track_mask`) is triangulated (DLT) from the tracker's 2D positions
    where it is visible (`tracker`: the tracks stage's `tracks_xy`/`visible` when it has one track per
    scene track, else the scene's `tracks2d`/`visible`); observations reprojecting more than
    `config.colmap_max_error_px` away are dropped, and points seen in fewer than 2 images or behind a
    camera are left out.
    """
    import numpy as np

    if "tracks3d" not in scene or "tracks2d" not in scene:
        return []
    tracks2d = scene["tracks2d"]
    visible = scene["visible"] if "visible" in scene else np.isfinite(tracks2d).all(-1)
    if tracker is not None and _same_tracks(tracker, scene):
        tracks2d, visible = tracker["tracks_xy"], tracker["visible"]
    k_all = np.asarray(scene["intrinsics"], np.float64)
    k_mat = k_all if k_all.ndim == 2 else k_all[0]
    w2c_all = np.linalg.inv(np.asarray(scene["cam_c2w"], np.float64))
    static = static_track_mask(scene)
    query_t = scene["query_t"].astype(int) if "query_t" in scene else np.zeros(len(tracks2d), int)
    points = []
    for n in np.flatnonzero(static):
        frames = np.flatnonzero(visible[n] & np.isfinite(tracks2d[n]).all(-1))
        if frames.size < 2:
            continue
        xy = tracks2d[n, frames].astype(np.float64)
        w2c = w2c_all[frames]
        point = triangulate(xy, w2c, k_mat)
        errors, depths = reprojection_errors(point, xy, w2c, k_mat) if np.isfinite(point).all() else (None, None)
        if errors is None or (depths <= 0).any():  # fall back to the scene's own 3D point
            point = np.asarray(scene["tracks3d"][n, query_t[n]], np.float64)
            errors, depths = reprojection_errors(point, xy, w2c, k_mat)
        good = (errors <= config.colmap_max_error_px) & (depths > 0)
        if good.sum() < 2:
            continue
        frames, xy, errors = frames[good], xy[good], errors[good]
        rgb = _color_at(scene, int(frames[0]), xy[0])
        cam = np.einsum("kij,j->ki", w2c_all[frames][:, :3, :3], point) + w2c_all[frames][:, :3, 3]
        residuals = cam[:, :2] / cam[:, 2:] * np.diag(k_mat)[:2] + k_mat[:2, 2] - xy
        points.append({"xyz": point, "rgb": rgb, "frames": frames, "xy": xy, "errors": errors,
                       "residuals": residuals})
    return points


def export_intrinsics(scene: dict[str, np.ndarray], path: Path) -> Path:
    """`intrinsics.json`: per frame K (fx, fy, cx, cy) and field of view at the scene's frame size."""
    import json

    import numpy as np

    from st4r_cli.formats.scene import scene_image_hw
    from st4r_cli.runs.atomic import atomic_write_text

    k_all = np.asarray(scene["intrinsics"], np.float64)
    num_frames = len(scene["cam_c2w"]) if "cam_c2w" in scene else (len(k_all) if k_all.ndim == 3 else 1)
    k_all = np.broadcast_to(k_all, (num_frames, 3, 3)) if k_all.ndim == 2 else k_all
    h, w = scene_image_hw(scene) or (int(round(2 * k_all[0, 1, 2] + 1)), int(round(2 * k_all[0, 0, 2] + 1)))
    frames = [{"frame": t, "fx": float(k[0, 0]), "fy": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2]),
               "fov_x_deg": float(np.degrees(2 * np.arctan2(w / 2, k[0, 0]))),
               "fov_y_deg": float(np.degrees(2 * np.arctan2(h / 2, k[1, 1])))} for t, k in enumerate(k_all)]
    info = {"width": int(w), "height": int(h),
            "pixel_convention": "OpenCV: the centre of the top-left pixel is (0, 0) (COLMAP's is (0.5, 0.5))",
            "units": "scene units: world = camera of frame 0 (OpenCV axes, x right, y down, z forward), one global "
                     "scale that st4r does not know (not metres); trajectory_tum.txt is in the same units",
            "frames": frames}
    atomic_write_text(Path(path), json.dumps(info, indent=1) + "\n")
    return Path(path)


def export_masks(scene: dict[str, np.ndarray], out_dir: Path) -> list[Path]:
    """`dynamic_00000.png ...`: the scene's dynamic_mask, 8-bit, 255 = moving, at the scene's frame size."""
    import numpy as np

    mask = np.asarray(scene["dynamic_mask"], bool)
    names = [f"dynamic_{t:05d}.png" for t in range(len(mask))]
    return _write_frames(np.where(mask, 255, 0).astype(np.uint8), Path(out_dir), names)


def _colmap_masks(scene: dict[str, np.ndarray], out_dir: Path, names: list[str], size_hw: tuple[int, int]
                  ) -> list[Path]:
    """nerfstudio's masks beside the COLMAP images: 255 = use the pixel, 0 = moving (ignored)."""
    import cv2
    import numpy as np

    keep = [cv2.resize(np.where(m, 0, 255).astype(np.uint8), (size_hw[1], size_hw[0]),
                       interpolation=cv2.INTER_NEAREST) for m in np.asarray(scene["dynamic_mask"], bool)]
    return _write_frames(np.stack(keep), Path(out_dir), names)


def _same_tracks(tracker: dict[str, np.ndarray], scene: dict[str, np.ndarray]) -> bool:
    """The tracker's tracks are the scene's, in the same order (same shape and queries)."""
    import numpy as np

    if tracker["tracks_xy"].shape != scene["tracks2d"].shape:
        return False
    if "queries" in tracker and "query_xy" in scene:
        return bool(np.allclose(tracker["queries"][:, 1:], scene["query_xy"], atol=1e-3))
    return True


def export_colmap(scene: dict[str, np.ndarray], out_dir: Path, config: ExportConfig,
                  tracker: dict[str, np.ndarray] | None = None,
                  original: dict[str, np.ndarray] | None = None) -> list[Path]:
    """COLMAP text model `out_dir/sparse/0/{cameras,images,points3D}.txt` + `out_dir/images/`.

    nerfstudio: `ns-train splatfacto colmap --data OUT_DIR --colmap-path sparse/0`. Images are written at
    the source's resolution when `original` (see `st4r_cli.pipeline.source_frames`) is given, else at the scene's; the
    camera and every observation are rescaled to them (pixel centres: st4r's (x, y) is COLMAP's
    (x + 0.5, y + 0.5)). Points: static tracks only, seen in >= 2 images, at the tracker's positions;
    ERROR is the point's mean reprojection error in those images' pixels.
    """
    import numpy as np

    from st4r_cli.formats.scene import scene_image_hw
    from st4r_cli.formats.tum import rotation_to_quaternion_xyzw
    from st4r_cli.runs.atomic import atomic_write_text

    model_dir = out_dir / "sparse" / "0"
    model_dir.mkdir(parents=True, exist_ok=True)
    cam_c2w = scene["cam_c2w"].astype(np.float64)
    num_frames = len(cam_c2w)
    k_all = scene["intrinsics"].astype(np.float64)
    k_mat = k_all if k_all.ndim == 2 else k_all[0]
    h, w = scene_image_hw(scene) or (int(2 * k_mat[1, 2] + 1), int(2 * k_mat[0, 2] + 1))
    frames_out = scene.get("colors")
    out_h, out_w = h, w
    if original is not None and len(original["frames"]) == num_frames:
        frames_out = original["frames"]
        out_h, out_w = (int(v) for v in original["frames"].shape[1:3])
    sx, sy = out_w / w, out_h / h
    names = [f"frame_{t:05d}.png" for t in range(num_frames)]
    cameras = ["# Camera list with one line of data per camera:",
               "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
               "# Number of cameras: 1",
               f"1 PINHOLE {out_w} {out_h} {k_mat[0, 0] * sx:.10g} {k_mat[1, 1] * sy:.10g} "
               f"{(k_mat[0, 2] + 0.5) * sx:.10g} {(k_mat[1, 2] + 0.5) * sy:.10g}"]

    observations: list[list[tuple[float, float, int]]] = [[] for _ in range(num_frames)]
    point_lines: list[str] = []
    scale = np.array([sx, sy])
    for pid, point in enumerate(colmap_points(scene, config, tracker), start=1):
        track = []
        for t, xy in zip(point["frames"], point["xy"]):
            track.append(f"{t + 1} {len(observations[t])}")
            x, y = (xy + 0.5) * scale
            observations[t].append((float(x), float(y), pid))
        error = float(np.mean(np.linalg.norm(point["residuals"] * scale, axis=1)))  # output image pixels
        point_lines.append(_point_line(pid, point["xyz"], point["rgb"], track, error))

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
        images.append(" ".join(f"{x:.4f} {y:.4f} {pid}" for x, y, pid in observations[t]))
    points = ["# 3D point list with one line of data per point:",
              "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
              f"# Number of points: {len(point_lines)}"] + point_lines
    written = []
    for name, lines in (("cameras.txt", cameras), ("images.txt", images), ("points3D.txt", points)):
        atomic_write_text(model_dir / name, "\n".join(lines) + "\n")
        written.append(model_dir / name)
    if "dynamic_mask" in scene and len(scene["dynamic_mask"]) == num_frames:
        written += _colmap_masks(scene, out_dir / "masks", names, (out_h, out_w))
    if frames_out is not None:
        written += _write_frames(frames_out, out_dir / "images", names)
    return written


def _point_line(point_id: int, xyz: np.ndarray, rgb: np.ndarray, track: list[str], error: float) -> str:
    return (f"{point_id} {xyz[0]:.9g} {xyz[1]:.9g} {xyz[2]:.9g} {int(rgb[0])} {int(rgb[1])} {int(rgb[2])} "
            f"{error:.6g} " + " ".join(track))


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
