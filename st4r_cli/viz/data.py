"""What the viewer, the videos and the summary picture read from a finished run.

`load_view_data(path)` takes a run directory (or a `scene.npz` file) and returns `ViewData`: the
scene's arrays plus the frames, frame rate, per-frame depth in each camera, one colour per track and
static/dynamic labels. Nothing is recomputed but these cheap derived arrays.

Static / dynamic: a scene's `dynamic_mask (T, H, W)` is used when present. Otherwise each track is
dynamic when the scene's `track_static` (the refinement's label) says it is not static, or, without
that key, when its 3D track moves more than `DYNAMIC_REL` x the scene's median frame-0 depth; each
pixel of frame t then takes the label of the nearest track visible in frame t within about one track
spacing (pixels far from every track count as static).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from st4r_cli.viz.selection import pick_tracks  # noqa: F401  (re-exported for the viewer and videos)

if TYPE_CHECKING:
    import numpy as np

DYNAMIC_REL = 0.05   # a track moving more than this fraction of the median frame-0 depth is dynamic


@dataclass
class ViewData:
    scene: dict[str, np.ndarray]
    frames: np.ndarray                 # (T, H, W, 3) uint8
    fps: float
    depth: np.ndarray                  # (T, H, W) z-depth of each pointmap pixel in its own camera (nan: none)
    track_colors: np.ndarray           # (N, 3) uint8
    track_dynamic: np.ndarray          # (N,) bool
    dynamic_mask: np.ndarray           # (T, H, W) bool
    mask_source: str                   # "scene" (its dynamic_mask), else "track_static" or "motion" (from tracks)
    source: Path = field(default_factory=Path)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def intrinsics_at(self, t: int) -> np.ndarray:
        k_all = self.scene["intrinsics"]
        return k_all[t] if k_all.ndim == 3 else k_all


def scene_path_of(path: Path) -> Path:
    from st4r_cli.errors import St4rError

    path = Path(path)
    if not path.exists():
        raise St4rError(f"not found: {path}")
    scene_path = path if path.is_file() else path / "scene.npz"
    if not scene_path.is_file():
        raise St4rError(f"{path} has no scene.npz (run `st4r adapt` to completion first)")
    return scene_path


def load_view_data(path: Path) -> ViewData:
    """ViewData of a run directory or a scene.npz (St4rError when it has no pointmaps/colours)."""
    import numpy as np

    from st4r_cli.errors import St4rError
    from st4r_cli.formats.scene import read_scene

    scene_path = scene_path_of(path)
    scene = read_scene(scene_path)
    if "pointmaps" not in scene:
        raise St4rError(f"{scene_path} has no pointmaps")
    fps, decoded = _decode_info(Path(path))
    if "colors" in scene:
        frames = scene["colors"]
    elif decoded is not None and decoded.shape[:3] == scene["pointmaps"].shape[:3]:
        frames = decoded
    else:
        frames = np.full(scene["pointmaps"].shape, 128, np.uint8)
    depth = camera_depth(scene)
    hw = frames.shape[1:3]
    num_tracks = len(scene["tracks3d"]) if "tracks3d" in scene else 0
    query_xy = scene.get("query_xy", np.zeros((num_tracks, 2), np.float32))
    track_dyn = track_dynamic(scene, depth)
    if "dynamic_mask" in scene and scene["dynamic_mask"].shape == frames.shape[:3]:
        mask, mask_source = scene["dynamic_mask"].astype(bool), "scene"
    else:
        mask = dynamic_mask_from_tracks(scene, track_dyn, hw)
        mask_source = "track_static" if "track_static" in scene else "motion"
    return ViewData(scene=scene, frames=np.ascontiguousarray(frames), fps=fps, depth=depth,
                    track_colors=_colors(query_xy, hw), track_dynamic=track_dyn, dynamic_mask=mask,
                    mask_source=mask_source, source=scene_path)


def _colors(query_xy: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    from st4r_cli.viz.colormaps import track_colors

    return track_colors(query_xy, hw)


def _decode_info(path: Path) -> tuple[float, np.ndarray | None]:
    """(fps, decoded frames or None) from the run's decode stage; (10, None) without a run."""
    if path.is_file():
        return 10.0, None
    try:
        from st4r_cli.runs import Run

        artifact = Run.open(path).artifact("decode")
        return float(artifact["fps"]), artifact["frames"]
    except Exception:  # noqa: BLE001 - a bare scene.npz folder is fine: default frame rate
        return 10.0, None


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
