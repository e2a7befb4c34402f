"""`st4r export RUN --rrd`: the scene as a Rerun recording (`export/scene.rrd`, rerun-sdk 0.41).

rerun-sdk is an optional extra (`pip install -e ".[rerun]"`); it is imported only here, lazily, and a
missing package is a one-line St4rError. The file is written by a `rerun.RecordingStream` with a file
sink (`save`): no viewer is spawned and nothing goes over the network. Open it with `rerun scene.rrd`.

Timelines: `frame` (sequence 0..T-1) on everything that changes, and `time` (a duration, seconds)
too when the video's frame times are known. Entities (world = camera of frame 0, OpenCV axes):

| entity | archetype | when |
| --- | --- | --- |
| `world` | ViewCoordinates RDF (static) | always (x right, y down, z forward, as OpenCV) |
| `world/points/static`, `world/points/dynamic` | Points3D, coloured | per frame, with a `dynamic_mask` |
| `world/points/all` | Points3D, coloured | per frame, without a `dynamic_mask` |
| `world/camera` | Transform3D = cam_c2w[t] (camera to world) | per frame |
| `world/camera/image` | Pinhole (camera_xyz RDF) + Image (the frame's colours) | K static or per frame; image per frame |
| `world/camera_path` | LineStrips3D of the camera centres (static) | with cam_c2w |
| `world/tracks/trails` | LineStrips3D: each track from frame 0 up to t | per frame, at most `glb_max_tracks` tracks |
| `world/tracks/heads` | Points3D: the tracks' positions at t, visible ones only | per frame |

Points are each frame's confident pixels (the same selection as the PLY export: the scene's least
confident `conf_quantile` dropped), at most `max_points` per frame. Pixel convention: st4r puts the
centre of the top-left pixel at (0, 0), Rerun at (0.5, 0.5), so the Pinhole's principal point is
shifted by half a pixel (and K rescaled from `image_hw` to the size of the logged images). Points
and poses stay in st4r's world whatever `ExportConfig.axes` says: the `world` ViewCoordinates tell
Rerun its axes, so it shows the scene upright (y down).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from st4r_cli.stages.export import ExportConfig

RERUN_REQUIREMENT = "rerun-sdk==0.41.0"
APPLICATION_ID = "st4r"


def import_rerun() -> Any:
    """The `rerun` module, or a one-line St4rError telling what to install."""
    from st4r_cli.errors import St4rError

    try:
        import rerun
    except ImportError as err:
        raise St4rError(f"--rrd needs rerun-sdk: pip install -e \".[rerun]\" (or pip install "
                        f"'{RERUN_REQUIREMENT}')") from err
    return rerun


def export_rrd(scene: dict[str, np.ndarray], path: Path, config: ExportConfig,
               timestamps: np.ndarray | None = None) -> Path:
    """Write `scene` as a Rerun recording at `path` (atomically); returns `path`.

    `timestamps`, frame times in seconds (one per frame), add the `time` timeline next to `frame`.
    """
    import numpy as np

    from st4r_cli.errors import St4rError
    from st4r_cli.runs.atomic import atomic_write_with
    from st4r_cli.stages.export import check_export_config

    rr = import_rerun()
    check_export_config(config)
    num_frames = _num_frames(scene)
    if num_frames == 0:
        raise St4rError("--rrd: the scene has no pointmaps, cam_c2w or tracks3d to show")
    if timestamps is not None:
        timestamps = np.asarray(timestamps, np.float64).reshape(-1)
        if len(timestamps) != num_frames or not np.all(np.isfinite(timestamps)):
            timestamps = None   # inconsistent frame times: the frame index is the only timeline

    def write(tmp: Path) -> None:
        previous_strict = rr.strict_mode()
        rr.set_strict_mode(True)   # a rejected log call raises instead of being dropped with a warning
        try:
            rec = rr.RecordingStream(APPLICATION_ID, send_properties=False)
            if not rr.is_enabled(rec):
                raise St4rError("--rrd: Rerun logging is disabled (the RERUN environment variable is 'off'); "
                                "unset it to write scene.rrd")
            rec.set_log_time_enabled(False)   # only the scene's own timelines
            rec.set_log_tick_enabled(False)
            rec.save(tmp)
            with rec:   # leaving the block flushes and finalises the file sink
                _log_scene(rr, rec, scene, config, num_frames, timestamps)
            rec.disconnect()
        finally:
            rr.set_strict_mode(previous_strict)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise St4rError(f"--rrd: rerun wrote nothing to {path}")

    atomic_write_with(Path(path), write)
    return Path(path)


def _num_frames(scene: dict[str, np.ndarray]) -> int:
    for key, axis in (("pointmaps", 0), ("cam_c2w", 0), ("tracks3d", 1)):
        if key in scene:
            return int(scene[key].shape[axis])
    return 0


def _log_scene(rr: Any, rec: Any, scene: dict[str, np.ndarray], config: ExportConfig, num_frames: int,
               timestamps: np.ndarray | None) -> None:
    import numpy as np

    rec.log("world", rr.ViewCoordinates.RDF, static=True)
    cameras = _camera_setup(rr, rec, scene, num_frames)
    tracks = _track_setup(scene, config, num_frames)
    rng = np.random.default_rng(config.seed)
    for t in range(num_frames):
        rec.set_time("frame", sequence=t)
        if timestamps is not None:
            rec.set_time("time", duration=float(timestamps[t]))
        if "pointmaps" in scene:
            _log_points(rr, rec, scene, config, t, rng)
        if cameras is not None:
            _log_camera(rr, rec, scene, cameras, t)
        if tracks is not None:
            _log_tracks(rr, rec, tracks, t)


def rrd_frame_points(scene: dict[str, np.ndarray], config: ExportConfig, t: int,
                     rng: np.random.Generator | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The points of frame t as logged: {entity name: (xyz (M, 3) float32, rgb (M, 3) uint8)}; names
    `static` / `dynamic` with a dynamic_mask, else `all`."""
    import numpy as np

    from st4r_cli.stages.export import frame_points

    xyz, rgb, _, pixel = frame_points(scene, t, config.conf_quantile)
    if len(xyz) > config.max_points:
        rng = rng if rng is not None else np.random.default_rng(config.seed)
        idx = np.sort(rng.choice(len(xyz), size=config.max_points, replace=False))
        xyz, rgb, pixel = xyz[idx], rgb[idx], pixel[idx]
    xyz, rgb = np.asarray(xyz, np.float32), np.asarray(rgb, np.uint8)
    mask = scene.get("dynamic_mask")
    if mask is None or np.shape(mask)[:3] != scene["pointmaps"].shape[:3]:
        return {"all": (xyz, rgb)}
    moving = np.asarray(mask[t], bool)[pixel[:, 1].astype(int), pixel[:, 0].astype(int)]
    return {"static": (xyz[~moving], rgb[~moving]), "dynamic": (xyz[moving], rgb[moving])}


def _log_points(rr: Any, rec: Any, scene: dict[str, np.ndarray], config: ExportConfig, t: int,
                rng: np.random.Generator) -> None:
    # an empty batch is logged too: otherwise the viewer would keep showing an earlier frame's points
    for name, (xyz, rgb) in rrd_frame_points(scene, config, t, rng).items():
        rec.log(f"world/points/{name}", rr.Points3D(xyz, colors=rgb))


def rrd_intrinsics(scene: dict[str, np.ndarray], num_frames: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Per-frame K (T, 3, 3) in Rerun's pixel convention (top-left pixel centre at (0.5, 0.5)) for images
    of the returned (H, W): the scene's colours' size when it has colours, else `image_hw`."""
    import numpy as np

    from st4r_cli.formats.scene import scene_image_hw

    k_all = np.asarray(scene["intrinsics"], np.float64)
    k_all = np.broadcast_to(k_all, (num_frames, 3, 3)) if k_all.ndim == 2 else k_all
    k_hw = scene_image_hw(scene) or (int(round(2 * k_all[0, 1, 2] + 1)), int(round(2 * k_all[0, 0, 2] + 1)))
    out_hw = tuple(int(s) for s in scene["colors"].shape[1:3]) if "colors" in scene else k_hw
    shift = np.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1.0]])
    scale = np.diag([out_hw[1] / k_hw[1], out_hw[0] / k_hw[0], 1.0])
    return scale @ shift @ k_all, (int(out_hw[0]), int(out_hw[1]))


def _camera_setup(rr: Any, rec: Any, scene: dict[str, np.ndarray], num_frames: int) -> dict | None:
    """The static camera parts (path, shared K); None when the scene has no cameras."""
    import numpy as np

    if "cam_c2w" not in scene:
        return None
    poses = np.asarray(scene["cam_c2w"], np.float64)
    if len(poses) > 1:
        rec.log("world/camera_path", rr.LineStrips3D([poses[:, :3, 3].astype(np.float32)],
                                                     colors=[[255, 150, 0]]), static=True)
    setup: dict = {"poses": poses, "k": None, "hw": None}
    if "intrinsics" in scene:
        k_all, hw = rrd_intrinsics(scene, num_frames)
        setup["k"], setup["hw"] = k_all, hw
        if np.asarray(scene["intrinsics"]).ndim == 2:
            rec.log("world/camera/image", _pinhole(rr, k_all[0], hw), static=True)
            setup["k"] = None   # logged once
    return setup


def _pinhole(rr: Any, k_mat: np.ndarray, hw: tuple[int, int]) -> Any:
    return rr.Pinhole(image_from_camera=k_mat, resolution=[hw[1], hw[0]], camera_xyz=rr.ViewCoordinates.RDF)


def _log_camera(rr: Any, rec: Any, scene: dict[str, np.ndarray], setup: dict, t: int) -> None:
    pose = setup["poses"][t]
    rec.log("world/camera", rr.Transform3D(translation=pose[:3, 3], mat3x3=pose[:3, :3]))
    if setup["k"] is not None:
        rec.log("world/camera/image", _pinhole(rr, setup["k"][t], setup["hw"]))
    if "colors" in scene:
        rec.log("world/camera/image", rr.Image(scene["colors"][t]))


def _track_setup(scene: dict[str, np.ndarray], config: ExportConfig, num_frames: int) -> dict | None:
    """The tracks to draw (at most `glb_max_tracks`, spread over the image) and their colours."""
    import numpy as np

    from st4r_cli.formats.scene import scene_image_hw
    from st4r_cli.viz.colormaps import track_colors
    from st4r_cli.viz.selection import pick_tracks

    if "tracks3d" not in scene or scene["tracks3d"].shape[1] != num_frames or not len(scene["tracks3d"]):
        return None
    tracks = np.asarray(scene["tracks3d"], np.float32)
    query_xy = scene["query_xy"] if "query_xy" in scene else np.zeros((len(tracks), 2))
    picked = pick_tracks(query_xy, config.glb_max_tracks, seed=config.seed)
    visible = (np.asarray(scene["visible"], bool)[picked] if "visible" in scene
               else np.ones(tracks[picked].shape[:2], bool))
    hw = scene_image_hw(scene) or (1, 1)
    return {"xyz": tracks[picked], "visible": visible, "colors": track_colors(np.asarray(query_xy)[picked], hw)}


def _log_tracks(rr: Any, rec: Any, tracks: dict, t: int) -> None:
    import numpy as np

    strips, colors = [], []
    for xyz, color in zip(tracks["xyz"], tracks["colors"]):
        trail = xyz[: t + 1]
        trail = trail[np.isfinite(trail).all(1)]
        if len(trail) >= 2:
            strips.append(trail)
            colors.append(color)
    rec.log("world/tracks/trails", rr.LineStrips3D(strips, colors=np.asarray(colors, np.uint8).reshape(-1, 3)))
    heads = tracks["xyz"][:, t]
    shown = tracks["visible"][:, t] & np.isfinite(heads).all(1)
    rec.log("world/tracks/heads", rr.Points3D(heads[shown], colors=tracks["colors"][shown]))
