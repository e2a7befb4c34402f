"""Export a run's `scene.npz` to formats other tools read.

- Axes (`ExportConfig.axes`, `st4r export --axes`): the 3D files meant for viewers (PLY, GLB) are written
  in `gltf` axes (x right, y up, z backward: st4r's world, which is frame 0's OpenCV camera, with y and z
  negated; the CLI's default, upright in MeshLab, CloudCompare, Open3D, three.js, model-viewer) or in
  `opencv` axes (st4r's own world: x right, y down, z forward). Each file says which (PLY `comment axes`,
  GLB `asset.extras.axes`). COLMAP and TUM keep OpenCV cameras and st4r's world whatever `axes` says:
  that is COLMAP's own convention, and TUM's ground truths (and evo, which aligns them) expect it.
- PLY: one coloured point cloud per frame (`ply/frame_00000.ply`) and the accumulated cloud of all
  frames (`ply/accumulated.ply`), binary little-endian, vertex x y z (float32), red green blue (uchar),
  confidence (float32), dynamic (uchar, 1 = moving); the least confident pixels of each frame are
  dropped. `ply/static.ply`: the static points of all frames fused on a voxel grid, one point per
  voxel (the mean of its points; `count` = how many), voxel size `ExportConfig.static_voxel` or 1% of
  the median depth (written in the file's header). Moving = the scene's `dynamic_mask`, else the label
  of the nearest track (as `st4r view`); a scene with neither gets no `dynamic` property and no
  static.ply.
- GLB (glTF binary, our own writer): one node per frame with its points and an animation that shows
  frame i at time i / fps, one glTF camera per frame (`camera_00000`: pose, vertical field of view and
  aspect ratio), the camera frusta, the camera path and the 3D tracks as polylines (`export_glb`).
  Points are glTF points (1 pixel wide in most viewers) or, with `glb_point_size`, small squares
  facing their frame's camera.
- TUM: camera-to-world trajectory, `timestamp tx ty tz qx qy qz qw` per line (evo reads it).
- COLMAP model `colmap/sparse/0/{cameras,images,points3D}.{txt,bin}` (text and COLMAP's binary layout,
  the same model) + `colmap/images/` (the frames at the source's resolution when the run's input is
  there): one PINHOLE camera, world-to-camera poses, static tracks only (seen in >= 2 images)
  triangulated from the tracker's 2D positions, which are the observations; ERROR is the real mean
  reprojection error. COLMAP puts the centre of the top-left pixel at (0.5, 0.5), st4r at (0, 0): pixel
  coordinates are shifted (and rescaled) on the way out.
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
AXES = ("gltf", "opencv")            # axes of the PLY and GLB files (see the module docstring)
AXES_NOTE = {"gltf": "x right, y up, z backward (st4r's world, frame 0's OpenCV camera, with y and z negated)",
             "opencv": "x right, y down, z forward (st4r's world: frame 0's OpenCV camera)"}
GLTF_FROM_OPENCV = (1.0, -1.0, -1.0)  # x right, y down, z forward (OpenCV) -> x right, y up, z backward (glTF)
STATIC_VOXEL_REL = 0.01              # static.ply's default voxel: this fraction of the median depth
AUTO_POINT_SPACINGS = 1.5            # GLB point squares' default side, in mean point spacings (`auto_point_size`)


@dataclass
class ExportConfig:
    """What to export and how much of it."""

    conf_quantile: float = 0.3        # per frame, drop this fraction of the least confident pixels
    every: int = 1                    # frame stride of the accumulated and static clouds
    max_points: int = 2_000_000       # cap on the accumulated cloud (uniform random subsample)
    glb_max_points: int = 500_000     # cap on the GLB's points (all frames together)
    glb_max_tracks: int = 300         # cap on the GLB's track polylines (spread over the image)
    colmap_max_error_px: float = 4.0  # COLMAP: drop observations reprojecting farther (scene pixels)
    frustum_scale: float = 0.0        # frustum depth in world units; 0 -> 5% of the camera path length
    seed: int = 0
    axes: str | None = "gltf"         # "gltf" | "opencv" for PLY and GLB (the CLI's default too);
                                      # None: PLY opencv, GLB gltf
    static_voxel: float = 0.0         # static.ply's voxel size in scene units; 0 -> 1% of the median depth
    glb_point_size: float | None = 0.0  # GLB: 0 = glTF points; > 0 = squares of that side; None = auto


def ply_axes(config: ExportConfig) -> str:
    """The PLY files' axes: `config.axes`, else st4r's own (OpenCV) world."""
    return config.axes or "opencv"


def glb_axes(config: ExportConfig) -> str:
    """The GLB's axes: `config.axes`, else glTF's own (y up)."""
    return config.axes or "gltf"


def axes_flip(axes: str) -> np.ndarray:
    """(3,) float32 per-axis signs taking st4r's (OpenCV) world to `axes`."""
    import numpy as np

    return np.asarray(GLTF_FROM_OPENCV if axes == "gltf" else (1.0, 1.0, 1.0), np.float32)


def check_export_config(config: ExportConfig) -> None:
    import math

    from st4r_cli.errors import St4rError

    if config.colmap_max_error_px <= 0:
        raise St4rError("colmap_max_error_px must be > 0")
    if not 0.0 <= config.conf_quantile < 1.0:
        raise St4rError("--conf-quantile must be in [0, 1)")
    if config.every < 1:
        raise St4rError("--every must be >= 1")
    if config.max_points < 1 or config.glb_max_points < 1:
        raise St4rError("point caps must be >= 1")
    if config.axes is not None and config.axes not in AXES:
        raise St4rError(f"--axes must be one of {', '.join(AXES)} (got {config.axes!r})")
    if not (math.isfinite(config.static_voxel) and config.static_voxel >= 0):
        raise St4rError("--static-voxel must be >= 0 (0 = 1% of the median depth)")
    size = config.glb_point_size
    if size is not None and not (math.isfinite(size) and size >= 0):
        raise St4rError("--glb-point-size must be >= 0 (0 = glTF points) or auto")


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


def accumulated_points(scene: dict[str, np.ndarray], config: ExportConfig, cap: int,
                       dynamic: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All frames' confident points (every `config.every` frame), subsampled to `cap`: xyz, rgb,
    confidence and moving (M,) bool (from `dynamic` (T, H, W), see `pixel_dynamic`; False without)."""
    import numpy as np

    xyz, rgb, conf, moving = [], [], [], []
    for t in range(0, scene["pointmaps"].shape[0], config.every):
        p, c, k, pixel = frame_points(scene, t, config.conf_quantile)
        xyz.append(p)
        rgb.append(c)
        conf.append(k)
        moving.append(pixel_labels(dynamic, t, pixel) if dynamic is not None else np.zeros(len(p), bool))
    xyz_all, rgb_all, conf_all = np.concatenate(xyz), np.concatenate(rgb), np.concatenate(conf)
    moving_all = np.concatenate(moving)
    if len(xyz_all) > cap:
        rng = np.random.default_rng(config.seed)
        idx = np.sort(rng.choice(len(xyz_all), size=cap, replace=False))
        xyz_all, rgb_all, conf_all, moving_all = xyz_all[idx], rgb_all[idx], conf_all[idx], moving_all[idx]
    return xyz_all, rgb_all, conf_all, moving_all


def pixel_dynamic(scene: dict[str, np.ndarray]) -> tuple[np.ndarray | None, str]:
    """((T, H, W) bool moving pixels, where the labels come from): the scene's `dynamic_mask`, else
    each pixel takes the label of the nearest track (`st4r_cli.viz.selection`, as `st4r view` shows them);
    (None, why) when the scene has neither."""
    import numpy as np

    shape = tuple(scene["pointmaps"].shape[:3])
    if "dynamic_mask" in scene and tuple(scene["dynamic_mask"].shape) == shape:
        return np.asarray(scene["dynamic_mask"], bool), "the scene's dynamic_mask"
    if "tracks3d" in scene and "tracks2d" in scene and scene["tracks2d"].shape[1] == shape[0]:
        from st4r_cli.viz.selection import camera_depth, dynamic_mask_from_tracks, track_dynamic

        moving = track_dynamic(scene, camera_depth(scene))
        return dynamic_mask_from_tracks(scene, moving, shape[1:]), "the nearest track's label (as st4r view)"
    return None, "the scene has no dynamic_mask and no tracks"


def pixel_labels(dynamic: np.ndarray, t: int, pixel: np.ndarray) -> np.ndarray:
    """(M,) bool: `dynamic[t]` at pixels (M, 2) (x, y) of `frame_points`."""
    return dynamic[t][pixel[:, 1].astype(int), pixel[:, 0].astype(int)]


def median_depth(scene: dict[str, np.ndarray]) -> float:
    """Median z of the scene's points in their own frame's camera (1 when there is none)."""
    import numpy as np

    from st4r_cli.viz.selection import camera_depth

    depth = camera_depth(scene)
    depth = depth[np.isfinite(depth) & (depth > 0)]
    return float(np.median(depth)) if depth.size else 1.0


def fuse_voxels(xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray, voxel: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One point per occupied voxel of side `voxel` (grid anchored at the origin): the mean position,
    colour and confidence of its points, and their count (uint32)."""
    import numpy as np

    xyz = np.asarray(xyz, np.float64)
    if not len(xyz):
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0, np.float32), np.zeros(0, np.uint32)
    keys = np.floor(xyz / voxel).astype(np.int64)
    _, inverse, count = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)

    def mean(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, np.float64).reshape(len(inverse), -1)
        sums = [np.bincount(inverse, weights=values[:, i], minlength=len(count)) for i in range(values.shape[1])]
        return np.stack(sums, 1) / count[:, None]

    rgb_mean = np.clip(np.round(mean(rgb)), 0, 255).astype(np.uint8)
    return mean(xyz), rgb_mean, mean(conf)[:, 0].astype(np.float32), count.astype(np.uint32)


def static_points(scene: dict[str, np.ndarray], config: ExportConfig, dynamic: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """The confident static (not `dynamic`) points of every `config.every` frame fused on a voxel grid
    (`fuse_voxels`): xyz, rgb, confidence, count and the voxel size (`config.static_voxel`, else
    STATIC_VOXEL_REL x `median_depth`)."""
    import numpy as np

    xyz, rgb, conf = [], [], []
    for t in range(0, scene["pointmaps"].shape[0], config.every):
        p, c, k, pixel = frame_points(scene, t, config.conf_quantile)
        keep = ~pixel_labels(dynamic, t, pixel)
        xyz.append(p[keep])
        rgb.append(c[keep])
        conf.append(k[keep])
    voxel = config.static_voxel or STATIC_VOXEL_REL * median_depth(scene)
    fused = fuse_voxels(np.concatenate(xyz), np.concatenate(rgb), np.concatenate(conf), voxel)
    return (*fused, float(voxel))


# ----------------------------------------------------------------------------------------------
# PLY
# ----------------------------------------------------------------------------------------------

PLY_TYPES = {"<f4": "float", "|u1": "uchar", "<u4": "uint"}


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray | None = None,
              extra: dict[str, np.ndarray] | None = None, comments: tuple[str, ...] = ()) -> Path:
    """Binary little-endian PLY: x y z float32, red green blue uchar[, confidence float32][, the `extra`
    columns: uint8 -> uchar, uint32 -> uint, float32 -> float]; each of `comments` is a `comment` line."""
    import numpy as np

    from st4r_cli.runs.atomic import atomic_write_bytes

    xyz, rgb = np.asarray(xyz, np.float32).reshape(-1, 3), np.asarray(rgb, np.uint8).reshape(-1, 3)
    columns = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "red": rgb[:, 0], "green": rgb[:, 1],
               "blue": rgb[:, 2]}
    if conf is not None:
        columns["confidence"] = np.asarray(conf, np.float32)
    columns.update(extra or {})
    fields = [(name, np.dtype(values.dtype).newbyteorder("<")) for name, values in columns.items()]
    data = np.zeros(len(xyz), dtype=fields)
    for name, values in columns.items():
        data[name] = values
    header = ["ply", "format binary_little_endian 1.0", "comment written by st4r"]
    header += [f"comment {line}" for line in comments]
    header.append(f"element vertex {len(xyz)}")
    header += [f"property {PLY_TYPES[kind.str]} {name}" for name, kind in fields]
    header.append("end_header")
    atomic_write_bytes(Path(path), ("\n".join(header) + "\n").encode("ascii") + data.tobytes())
    return Path(path)


def export_ply(scene: dict[str, np.ndarray], out_dir: Path, config: ExportConfig) -> list[Path]:
    """Per-frame, accumulated and static (`export_static_ply`) coloured clouds in `ply_axes(config)`,
    with a `dynamic` property (uchar, 1 = moving) when `pixel_dynamic` has labels."""
    import numpy as np

    from st4r_cli import progress

    out_dir.mkdir(parents=True, exist_ok=True)
    axes = ply_axes(config)
    flip = axes_flip(axes)
    dynamic, source = pixel_dynamic(scene)
    comments = (f"axes {axes}: {AXES_NOTE[axes]}",)
    if dynamic is not None:
        comments += (f"dynamic: 1 = moving, from {source}",)
    written = []
    num_frames = scene["pointmaps"].shape[0]
    for t in progress.track(range(num_frames), "ply"):
        xyz, rgb, conf, pixel = frame_points(scene, t, config.conf_quantile)
        extra = None if dynamic is None else {"dynamic": pixel_labels(dynamic, t, pixel).astype(np.uint8)}
        written.append(write_ply(out_dir / f"frame_{t:05d}.ply", xyz * flip, rgb, conf, extra, comments))
    xyz, rgb, conf, moving = accumulated_points(scene, config, config.max_points, dynamic)
    extra = None if dynamic is None else {"dynamic": moving.astype(np.uint8)}
    written.append(write_ply(out_dir / "accumulated.ply", xyz * flip, rgb, conf, extra, comments))
    if dynamic is None:
        progress.log(f"[yellow]-[/yellow] ply: no static.ply ({source} to tell static from moving points)")
        return written
    written.append(export_static_ply(scene, out_dir / "static.ply", config, dynamic, comments))
    return written


def export_static_ply(scene: dict[str, np.ndarray], path: Path, config: ExportConfig, dynamic: np.ndarray,
                      comments: tuple[str, ...] = ()) -> Path:
    """`static.ply`: `static_points` in `ply_axes(config)`, with a `count` property (uint: how many frame
    points each voxel fused); the header gives the voxel size."""
    import numpy as np

    xyz, rgb, conf, count, voxel = static_points(scene, config, dynamic)
    how = "--static-voxel" if config.static_voxel else f"{STATIC_VOXEL_REL:.0%} of the median depth"
    comments = (*comments, "static points of all frames, fused: one point per voxel, the mean of its points",
                f"voxel_size {voxel:.9g} ({how}; grid anchored at st4r's world origin)")
    return write_ply(path, xyz * axes_flip(ply_axes(config)), rgb, conf, {"count": count.astype(np.uint32)},
                     comments)


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


class _GltfBuilder:
    """A minimal glTF 2.0 binary writer: point / line meshes with vertex colours, nodes, STEP animations."""

    def __init__(self) -> None:
        self.binary = bytearray()
        self.doc: dict = {"asset": {"version": "2.0", "generator": "st4r"}, "scene": 0, "scenes": [{"nodes": []}],
                          "nodes": [], "meshes": [], "accessors": [], "bufferViews": [], "buffers": [],
                          "materials": [{"name": "unlit", "pbrMetallicRoughness": {"metallicFactor": 0.0,
                                                                                    "roughnessFactor": 1.0},
                                         "doubleSided": True,  # point squares are seen from both sides
                                         "extensions": {"KHR_materials_unlit": {}}}],
                          "extensionsUsed": ["KHR_materials_unlit"]}

    def accessor(self, array: np.ndarray, kind: str, target: int | None = None, normalized: bool = False) -> int:
        import numpy as np

        component = {np.dtype(np.float32): 5126, np.dtype(np.uint8): 5121, np.dtype(np.uint16): 5123,
                     np.dtype(np.uint32): 5125}[array.dtype]
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

    def mesh(self, name: str, positions: np.ndarray, colors: np.ndarray, mode: int,
             indices: np.ndarray | None = None) -> int:
        """mode 0 points, 1 lines, 4 triangles; positions (M, 3) float32, colors (M, 4) uint8, optional
        indices (uint32; stored as uint16 when M <= 65535)."""
        import numpy as np

        attributes = {"POSITION": self.accessor(positions, "VEC3", 34962),
                      "COLOR_0": self.accessor(colors, "VEC4", 34962, normalized=True)}
        primitive = {"attributes": attributes, "mode": mode, "material": 0}
        if indices is not None:
            small = len(positions) <= 65535   # indices < 65535: glTF reserves the largest value
            primitive["indices"] = self.accessor(indices.astype(np.uint16 if small else np.uint32), "SCALAR", 34963)
        self.doc["meshes"].append({"name": name, "primitives": [primitive]})
        return len(self.doc["meshes"]) - 1

    def camera(self, name: str, node_name: str, perspective: dict, translation: np.ndarray,
               rotation_xyzw: np.ndarray, extras: dict) -> int:
        """A glTF perspective camera `name` and its node `node_name` at that pose; returns the node."""
        self.doc.setdefault("cameras", []).append({"name": name, "type": "perspective",
                                                   "perspective": perspective, "extras": extras})
        self.doc["nodes"].append({"name": node_name, "camera": len(self.doc["cameras"]) - 1,
                                  "translation": [float(v) for v in translation],
                                  "rotation": [float(v) for v in rotation_xyzw]})
        self.doc["scenes"][0]["nodes"].append(len(self.doc["nodes"]) - 1)
        return len(self.doc["nodes"]) - 1

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
    """glTF binary in `glb_axes(config)`: by default glTF's own axes (y up, cameras looking down -z:
    st4r's world with y and z negated, so viewers show it upright and from the front); `asset.extras`
    gives the axes and the point size.

    Time is kept: one node per frame (`frame_00000`, ...) holding that frame's points, and an
    animation `time` (STEP) that shows frame i's node during [i / fps, (i + 1) / fps) (three.js,
    model-viewer and Blender play it; viewers without animation show frame 0). Points are glTF points
    when `config.glb_point_size` is 0 (most viewers draw them 1 pixel wide), else squares of that side
    (None: `auto_point_size`) facing their frame's camera (`point_squares`). One glTF camera per
    frame (`glb_cameras`). Static nodes: the camera frusta (`cameras`), the camera path
    (`camera_path`) and the 3D tracks as polylines (`tracks`, one colour per track).
    """
    import numpy as np

    from st4r_cli.runs.atomic import atomic_write_bytes

    axes = glb_axes(config)
    flip = axes_flip(axes)
    selected = glb_frame_points(scene, config)
    size = config.glb_point_size
    if size is None:
        size = auto_point_size(scene, [len(xyz) for xyz, _ in selected])
    builder = _GltfBuilder()
    builder.doc["asset"]["extras"] = {"axes": axes, "axes_note": AXES_NOTE[axes], "point_size": float(size),
                                      "point_size_note": "0: glTF points; else squares of that side (scene "
                                                         "units) facing their frame's camera"}
    num_frames = len(selected)
    frame_nodes = []
    for t, (xyz, rgb) in enumerate(selected):
        colors = np.concatenate([rgb.astype(np.uint8), np.full((len(rgb), 1), 255, np.uint8)], 1)
        name = f"frame_{t:05d}"
        if size > 0:
            rotation = scene["cam_c2w"][t, :3, :3] if "cam_c2w" in scene else np.eye(3)
            positions, colors, indices = point_squares(xyz, colors, rotation, size)
            mesh = builder.mesh(name, positions * flip, colors, mode=4, indices=indices)
        else:
            mesh = builder.mesh(name, np.asarray(xyz, np.float32) * flip, colors, mode=0)
        frame_nodes.append(builder.node(name, mesh, scale=1.0 if t == 0 else 0.0))
    if "cam_c2w" in scene and "intrinsics" in scene:
        extent = float(np.median(np.linalg.norm(np.concatenate([xyz for xyz, _ in selected]), axis=1)))
        _glb_camera_path(builder, scene, config, flip, extent)
        glb_cameras(builder, scene, flip, znear=max(1e-3 * extent, 1e-6))
    _glb_tracks(builder, scene, config, flip)
    if num_frames > 1:
        builder.visibility_animation("time", frame_nodes, fps)
    atomic_write_bytes(Path(path), builder.glb())
    return Path(path)


def glb_frame_points(scene: dict[str, np.ndarray], config: ExportConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame, the GLB's points in st4r's world: (xyz (M, 3) float32, rgb (M, 3) uint8), at most
    `config.glb_max_points` in all (uniform random per frame; one black point at the origin for an
    empty frame)."""
    import numpy as np

    num_frames = scene["pointmaps"].shape[0]
    per_frame = max(1, config.glb_max_points // num_frames)
    rng = np.random.default_rng(config.seed)
    selected = []
    for t in range(num_frames):
        xyz, rgb, _, _ = frame_points(scene, t, config.conf_quantile)
        if len(xyz) > per_frame:
            idx = np.sort(rng.choice(len(xyz), size=per_frame, replace=False))
            xyz, rgb = xyz[idx], rgb[idx]
        if not len(xyz):
            xyz, rgb = np.zeros((1, 3), np.float32), np.zeros((1, 3), np.uint8)
        selected.append((np.asarray(xyz, np.float32), np.asarray(rgb, np.uint8)))
    return selected


def auto_point_size(scene: dict[str, np.ndarray], kept: list[int]) -> float:
    """The GLB's point squares' side when not given: AUTO_POINT_SPACINGS x the points' mean spacing in the
    image (the square root of the frame's pixels per kept point) x one pixel's footprint at the median
    depth (depth / fx). One spacing would just tile a regular grid; the points are a random subsample of
    the confident pixels, so 1.5 closes most holes of a frame's surfaces without blurring them much."""
    import numpy as np

    h, w = scene["pointmaps"].shape[1:3]
    k_all = np.asarray(scene["intrinsics"], np.float64) if "intrinsics" in scene else None
    fx = float(np.mean(k_all[..., 0, 0])) if k_all is not None else float(max(h, w))
    spacing = np.sqrt(h * w / max(float(np.mean(kept)) if kept else 1.0, 1.0))
    return float(AUTO_POINT_SPACINGS * median_depth(scene) / fx * spacing)


def point_squares(xyz: np.ndarray, colors: np.ndarray, rotation: np.ndarray, size: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Squares of side `size` centred on the points (M, 3), parallel to the image plane of the camera with
    camera-to-world `rotation` (3, 3): positions (4M, 3) float32 (corners top-left, bottom-left,
    bottom-right, top-right in the image: counter-clockwise seen from the camera), colours (4M, 4)
    and triangle indices (6M,) uint32 (two triangles per square)."""
    import numpy as np

    rotation = np.asarray(rotation, np.float64)
    signs = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]], np.float64)     # (x, y) in the image, y down
    offsets = 0.5 * size * signs @ rotation[:, :2].T                         # (4, 3) in the world
    positions = (np.asarray(xyz, np.float64)[:, None, :] + offsets[None]).reshape(-1, 3).astype(np.float32)
    base = 4 * np.arange(len(xyz), dtype=np.uint32)[:, None]
    indices = (base + np.array([0, 1, 2, 0, 2, 3], np.uint32)).reshape(-1)
    return positions, np.repeat(np.asarray(colors, np.uint8), 4, axis=0), indices


def glb_cameras(builder: _GltfBuilder, scene: dict[str, np.ndarray], flip: np.ndarray, znear: float) -> None:
    """One glTF perspective camera per frame: node `camera_00000` (the camera's pose; glTF cameras look
    down their -z with y up, OpenCV's down +z with y down), camera `frame_00000` with yfov from fy and
    the frame's height, aspectRatio = width / height; its `extras` keep K (glTF has no principal point)."""
    import math

    import numpy as np

    from st4r_cli.formats.scene import scene_image_hw
    from st4r_cli.formats.tum import rotation_to_quaternion_xyzw

    poses = np.asarray(scene["cam_c2w"], np.float64)
    k_all = np.broadcast_to(np.asarray(scene["intrinsics"], np.float64), (len(poses), 3, 3))
    h, w = scene_image_hw(scene) or scene["pointmaps"].shape[1:3]
    world = np.diag(np.asarray(flip, np.float64))
    camera_axes = np.diag(GLTF_FROM_OPENCV)
    rotations = world @ poses[:, :3, :3] @ camera_axes
    quats = rotation_to_quaternion_xyzw(rotations)
    for t, (pose, k, quat) in enumerate(zip(poses, k_all, quats)):
        perspective = {"yfov": 2 * math.atan2(h / 2, k[1, 1]), "aspectRatio": w / h, "znear": znear}
        extras = {"frame": t, "width": int(w), "height": int(h), "fx": float(k[0, 0]), "fy": float(k[1, 1]),
                  "cx": float(k[0, 2]), "cy": float(k[1, 2])}
        builder.camera(f"frame_{t:05d}", f"camera_{t:05d}", perspective, world @ pose[:3, 3], quat, extras)


def _glb_camera_path(builder: _GltfBuilder, scene: dict[str, np.ndarray], config: ExportConfig,
                     flip: np.ndarray, extent: float) -> None:
    """The camera frusta (`cameras`, red lines) and the camera path (`camera_path`, orange)."""
    import numpy as np

    poses = scene["cam_c2w"].astype(np.float64)
    centres = poses[:, :3, 3]
    path_len = float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum()) if len(centres) > 1 else 0.0
    depth = config.frustum_scale or max(0.05 * path_len, 0.03 * extent, 1e-3)
    segments = frustum_segments(poses, scene["intrinsics"].astype(np.float64), scene["pointmaps"].shape[1:3],
                                depth).reshape(-1, 3).astype(np.float32) * flip
    red = np.tile(np.array([[255, 60, 60, 255]], np.uint8), (len(segments), 1))
    builder.node("cameras", builder.mesh("cameras", segments, red, mode=1))
    if len(centres) > 1:
        path_seg = np.stack([centres[:-1], centres[1:]], 1).reshape(-1, 3).astype(np.float32) * flip
        orange = np.tile(np.array([[255, 150, 0, 255]], np.uint8), (len(path_seg), 1))
        builder.node("camera_path", builder.mesh("camera_path", path_seg, orange, mode=1))


def _glb_tracks(builder: _GltfBuilder, scene: dict[str, np.ndarray], config: ExportConfig,
                flip: np.ndarray) -> None:
    """Up to `config.glb_max_tracks` 3D tracks as polylines (`tracks`, one colour per track)."""
    import numpy as np

    if "tracks3d" not in scene or scene["tracks3d"].shape[1] < 2:
        return
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


# ----------------------------------------------------------------------------------------------
# TUM and NPZ
# ----------------------------------------------------------------------------------------------

def export_tum(scene: dict[str, np.ndarray], path: Path, timestamps: np.ndarray | None = None) -> Path:
    """Camera-to-world trajectory in TUM format (timestamps: seconds when known, else frame index), in
    st4r's world with OpenCV cameras whatever `ExportConfig.axes` (a `#` line says so; evo skips it)."""
    from st4r_cli.formats.tum import format_tum
    from st4r_cli.runs.atomic import atomic_write_text

    first, rest = format_tum(scene["cam_c2w"], timestamps).split("\n", 1)
    note = "# st4r: camera-to-world of OpenCV cameras (x right, y down, z forward), world = camera of frame 0"
    atomic_write_text(Path(path), f"{first}\n{note}, scene units; --axes does not apply\n{rest}")
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
    """COLMAP model `out_dir/sparse/0/{cameras,images,points3D}.{txt,bin}` (`colmap_model`, written as
    text and in COLMAP's binary layout: the same model) + `out_dir/images/`.

    nerfstudio: `ns-train splatfacto colmap --data OUT_DIR --colmap-path sparse/0`. Images are written at
    the source's resolution when `original` (see `st4r_cli.pipeline.source_frames`) is given, else at the
    scene's. The world is st4r's (frame 0's OpenCV camera), whatever `config.axes`: COLMAP's own convention.
    """
    model_dir = out_dir / "sparse" / "0"
    model_dir.mkdir(parents=True, exist_ok=True)
    num_frames = len(scene["cam_c2w"])
    frames_out, out_hw = scene.get("colors"), None
    if original is not None and len(original["frames"]) == num_frames:
        frames_out, out_hw = original["frames"], original["frames"].shape[1:3]
    model = colmap_model(scene, config, tracker, out_hw)
    written = write_colmap_text(model, model_dir) + write_colmap_binary(model, model_dir)
    names = [image["name"] for image in model["images"]]
    size_hw = (model["camera"]["height"], model["camera"]["width"])
    if "dynamic_mask" in scene and len(scene["dynamic_mask"]) == num_frames:
        written += _colmap_masks(scene, out_dir / "masks", names, size_hw)
    if frames_out is not None:
        written += _write_frames(frames_out, out_dir / "images", names)
    return written


def colmap_model(scene: dict[str, np.ndarray], config: ExportConfig, tracker: dict[str, np.ndarray] | None = None,
                 out_hw: tuple[int, int] | None = None) -> dict:
    """The COLMAP model of `scene` for images of size `out_hw` (default: the scene's frames).

    The camera and every observation are rescaled to those images (pixel centres: st4r's (x, y) is
    COLMAP's (x + 0.5, y + 0.5)). Points: `colmap_points` (static tracks only, seen in >= 2 images, at
    the tracker's positions); ERROR is the point's mean reprojection error in those images' pixels.
    Returns {'camera': {id, model, width, height, params}, 'images': [{id, q_wxyz, t (world-to-camera),
    camera_id, name, points2d [(x, y, point3d_id)]}], 'points': [{id, xyz, rgb, error, track [(image_id,
    point2d_idx)]}]}.
    """
    import numpy as np

    from st4r_cli.formats.scene import scene_image_hw
    from st4r_cli.formats.tum import rotation_to_quaternion_xyzw

    cam_c2w = scene["cam_c2w"].astype(np.float64)
    num_frames = len(cam_c2w)
    k_all = scene["intrinsics"].astype(np.float64)
    k_mat = k_all if k_all.ndim == 2 else k_all[0]
    h, w = scene_image_hw(scene) or (int(2 * k_mat[1, 2] + 1), int(2 * k_mat[0, 2] + 1))
    out_h, out_w = (int(v) for v in out_hw) if out_hw is not None else (h, w)
    sx, sy = out_w / w, out_h / h
    camera = {"id": 1, "model": "PINHOLE", "width": out_w, "height": out_h,
              "params": [k_mat[0, 0] * sx, k_mat[1, 1] * sy, (k_mat[0, 2] + 0.5) * sx, (k_mat[1, 2] + 0.5) * sy]}
    w2c = np.linalg.inv(cam_c2w)
    quats = rotation_to_quaternion_xyzw(w2c[:, :3, :3])  # (x, y, z, w)
    images = [{"id": t + 1, "q_wxyz": np.roll(quats[t], 1), "t": w2c[t, :3, 3], "camera_id": 1,
               "name": f"frame_{t:05d}.png", "points2d": []} for t in range(num_frames)]
    points = []
    scale = np.array([sx, sy])
    for pid, point in enumerate(colmap_points(scene, config, tracker), start=1):
        track = []
        for t, xy in zip(point["frames"], point["xy"]):
            track.append((int(t) + 1, len(images[t]["points2d"])))
            x, y = (xy + 0.5) * scale
            images[t]["points2d"].append((float(x), float(y), pid))
        error = float(np.mean(np.linalg.norm(point["residuals"] * scale, axis=1)))  # output image pixels
        points.append({"id": pid, "xyz": point["xyz"], "rgb": point["rgb"], "error": error, "track": track})
    return {"camera": camera, "images": images, "points": points}


def write_colmap_text(model: dict, model_dir: Path) -> list[Path]:
    """`cameras.txt`, `images.txt`, `points3D.txt` of a `colmap_model`."""
    from st4r_cli.runs.atomic import atomic_write_text

    cam = model["camera"]
    cameras = ["# Camera list with one line of data per camera:",
               "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
               "# Number of cameras: 1",
               f"{cam['id']} {cam['model']} {cam['width']} {cam['height']} "
               + " ".join(f"{v:.10g}" for v in cam["params"])]
    images = ["# Image list with two lines of data per image:",
              "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
              "#   POINTS2D[] as (X, Y, POINT3D_ID)",
              "# st4r: world = camera of frame 0 (OpenCV axes, as COLMAP), scene units; --axes does not apply",
              f"# Number of images: {len(model['images'])}"]
    for image in model["images"]:
        pose = " ".join(f"{v:.12g}" for v in (*image["q_wxyz"], *image["t"]))
        images.append(f"{image['id']} {pose} {image['camera_id']} {image['name']}")
        images.append(" ".join(f"{x:.4f} {y:.4f} {pid}" for x, y, pid in image["points2d"]))
    points = ["# 3D point list with one line of data per point:",
              "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
              f"# Number of points: {len(model['points'])}"]
    points += [_point_line(p["id"], p["xyz"], p["rgb"], [f"{i} {j}" for i, j in p["track"]], p["error"])
               for p in model["points"]]
    written = []
    for name, lines in (("cameras.txt", cameras), ("images.txt", images), ("points3D.txt", points)):
        atomic_write_text(model_dir / name, "\n".join(lines) + "\n")
        written.append(model_dir / name)
    return written


COLMAP_MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1}


def write_colmap_binary(model: dict, model_dir: Path) -> list[Path]:
    """`cameras.bin`, `images.bin`, `points3D.bin` of a `colmap_model`, in COLMAP's binary layout
    (little-endian; what `colmap model_converter` and pycolmap read):

    - cameras.bin: uint64 count; per camera int32 id, int32 model id, uint64 width, uint64 height,
      float64 params[];
    - images.bin: uint64 count; per image int32 id, float64 qw qx qy qz tx ty tz, int32 camera id, the
      name's UTF-8 bytes and a 0 byte, uint64 number of 2D points, per point float64 x y, int64 point3D
      id (-1: none);
    - points3D.bin: uint64 count; per point uint64 id, float64 x y z, uint8 r g b, float64 error,
      uint64 track length, per element int32 image id, int32 index of the 2D point in that image.
    """
    import struct

    import numpy as np

    from st4r_cli.runs.atomic import atomic_write_bytes

    cam = model["camera"]
    cameras = struct.pack("<Q", 1) + struct.pack("<iiQQ", cam["id"], COLMAP_MODEL_IDS[cam["model"]], cam["width"],
                                                 cam["height"])
    cameras += np.asarray(cam["params"], "<f8").tobytes()
    images = [struct.pack("<Q", len(model["images"]))]
    point2d = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
    for image in model["images"]:
        images.append(struct.pack("<i7di", image["id"], *image["q_wxyz"], *image["t"], image["camera_id"]))
        images.append(image["name"].encode("utf-8") + b"\0" + struct.pack("<Q", len(image["points2d"])))
        images.append(np.array(image["points2d"], dtype=point2d).tobytes())
    points = [struct.pack("<Q", len(model["points"]))]
    for p in model["points"]:
        rgb = [int(v) for v in p["rgb"]]
        points.append(struct.pack("<Q3d3Bd", p["id"], *p["xyz"], *rgb, p["error"]))
        points.append(struct.pack("<Q", len(p["track"])) + np.asarray(p["track"], "<i4").reshape(-1).tobytes())
    written = []
    for name, data in (("cameras.bin", cameras), ("images.bin", b"".join(images)), ("points3D.bin", b"".join(points))):
        atomic_write_bytes(model_dir / name, data)
        written.append(model_dir / name)
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
