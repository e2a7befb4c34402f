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

from st4r_cli.viz.selection import (  # noqa: F401  (re-exported for the viewer, videos and summary)
    DYNAMIC_REL, camera_depth, dynamic_mask_from_tracks, no_geometry_mask, pick_tracks, track_dynamic)

if TYPE_CHECKING:
    import numpy as np



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
    no_geometry: np.ndarray            # (T, H, W) bool: static pixels the video gives no geometry for
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
    no_geometry = no_geometry_mask(scene)
    if no_geometry is None or no_geometry.shape != frames.shape[:3]:
        no_geometry = np.zeros(frames.shape[:3], bool)
    return ViewData(scene=scene, frames=np.ascontiguousarray(frames), fps=fps, depth=depth,
                    track_colors=_colors(query_xy, hw), track_dynamic=track_dyn, dynamic_mask=mask,
                    mask_source=mask_source, no_geometry=no_geometry, source=scene_path)


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
