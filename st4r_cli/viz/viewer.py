"""`st4r view RUN`: a viser 4D viewer of a finished run (nothing is recomputed).

The scene stays in st4r's world frame (frame 0's OpenCV camera); the viewer's up direction is -y, so
the world is upright. Per frame t the viewer shows:
- the coloured point cloud of frame t (subsampled to at most `max_points`), filtered by a confidence
  slider (drop the least confident x %) and a static / dynamic choice (`ViewData.dynamic_mask`);
- every camera as a frustum with its frame's image, the current one highlighted, and the camera path;
- 3D track trails over the last `tail` frames and the tracks' current positions, one colour per track
  (the same colours as tracks2d.mp4 and the summary picture);
- the input frame in the side panel.
Play/pause runs through the frames at the video's frame rate; the frame slider scrubs.
Only the current frame's points and trails are sent when the frame changes, so a 150-frame run stays
responsive.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from st4r_cli.viz.data import ViewData


MASK_SOURCES = {"scene": "the scene's dynamic_mask", "track_static": "the nearest tracks (refinement's labels)",
                "motion": "the nearest tracks (3D motion)"}


@dataclass
class ViewerConfig:
    max_points: int = 25_000     # points per frame sent to the browser
    max_tracks: int = 300        # track trails drawn
    tail: int = 10               # frames of trail behind each track
    thumb_width: int = 96        # frustum image width, pixels
    conf_drop_percent: float = 10.0  # initial confidence slider value


@dataclass
class FramePoints:
    points: np.ndarray    # (M, 3) float32 world
    colors: np.ndarray    # (M, 3) uint8
    conf_rank: np.ndarray  # (M,) float32 percentile of the confidence in its frame, 0..100
    dynamic: np.ndarray   # (M,) bool


def frame_points(view: ViewData, t: int, stride: int) -> FramePoints:
    """Frame t's finite points on a pixel grid of `stride`."""
    import numpy as np

    scene = view.scene
    pts = scene["pointmaps"][t, ::stride, ::stride].reshape(-1, 3)
    cols = view.frames[t, ::stride, ::stride].reshape(-1, 3)
    dyn = view.dynamic_mask[t, ::stride, ::stride].reshape(-1)
    conf = (scene["conf"][t, ::stride, ::stride].reshape(-1) if "conf" in scene
            else np.ones(len(pts), np.float32))
    keep = np.isfinite(pts).all(1) & np.isfinite(conf)
    pts, cols, dyn, conf = pts[keep], cols[keep], dyn[keep], conf[keep]
    rank = np.empty(len(conf), np.float32)
    rank[np.argsort(conf, kind="stable")] = np.linspace(0, 100, len(conf), dtype=np.float32)
    return FramePoints(pts.astype(np.float32), np.ascontiguousarray(cols), rank, dyn)


def scene_scale(view: ViewData) -> float:
    """Median frame-0 depth (the scene's size in its own units)."""
    import numpy as np

    d = view.depth[0]
    d = d[np.isfinite(d) & (d > 0)]
    return float(np.median(d)) if d.size else 1.0


class Viewer:
    """The viser scene and GUI of one run; `set_frame(t)` shows frame t."""

    def __init__(self, server: Any, view: ViewData, config: ViewerConfig | None = None) -> None:
        import numpy as np

        self.server, self.view = server, view
        self.config = config or ViewerConfig()
        h, w = view.image_hw
        self.stride = max(1, int(np.ceil(np.sqrt(h * w / self.config.max_points))))
        self.frames = [frame_points(view, t, self.stride) for t in range(view.num_frames)]
        self.scale = scene_scale(view)
        k_mat = view.intrinsics_at(0)
        self.point_size = float(self.scale / k_mat[0, 0] * self.stride * 1.3)
        from st4r_cli.viz.data import pick_tracks

        scene = view.scene
        query_xy = scene.get("query_xy", np.zeros((len(scene["tracks3d"]) if "tracks3d" in scene else 0, 2)))
        self.track_idx = pick_tracks(query_xy, self.config.max_tracks)
        self.current = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server.scene.set_up_direction("-y")
        self._add_cameras()
        self._add_gui()
        server.on_client_connect(self._on_connect)
        self.set_frame(0)
        self._player = threading.Thread(target=self._play_loop, daemon=True)
        self._player.start()

    # -- static content -------------------------------------------------------------------------
    def _add_cameras(self) -> None:
        import cv2
        import numpy as np
        import viser.transforms as tf

        view, scene = self.view, self.view.scene
        self.frusta = []
        if "cam_c2w" not in scene:
            return
        h, w = view.image_hw
        poses = np.asarray(scene["cam_c2w"], np.float64)
        centres = poses[:, :3, 3]
        path_len = float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum())
        self.frustum_scale = max(0.04 * self.scale, 0.3 * path_len / max(len(poses) - 1, 1))
        thumb_hw = (max(1, round(h * self.config.thumb_width / w)), self.config.thumb_width)
        for t, pose in enumerate(poses):
            k_mat = view.intrinsics_at(t)
            fov = 2 * float(np.arctan2(h / 2, k_mat[1, 1]))
            thumb = cv2.resize(view.frames[t], (thumb_hw[1], thumb_hw[0]), interpolation=cv2.INTER_AREA)
            self.frusta.append(self.server.scene.add_camera_frustum(
                f"/cameras/frame_{t:05d}", fov=fov, aspect=w / h, scale=self.frustum_scale,
                color=(120, 120, 120), image=thumb, jpeg_quality=70,
                wxyz=tf.SO3.from_matrix(pose[:3, :3]).wxyz, position=pose[:3, 3],
                thickness=0.0025 * self.scale))
        if len(poses) > 1:
            segments = np.stack([centres[:-1], centres[1:]], 1).astype(np.float32)
            self.server.scene.add_line_segments("/camera_path", segments, colors=(255, 90, 40),
                                                thickness=3.0, thickness_units="screen")

    def _add_gui(self) -> None:
        gui, view = self.server.gui, self.view
        name = view.source.parent.name
        gui.add_markdown(f"**st4r** · `{name}` · {view.num_frames} frames · {view.fps:.3g} fps")
        self.image = gui.add_image(view.frames[0], label="input frame", format="jpeg")
        self.slider = gui.add_slider("frame", 0, view.num_frames - 1, 1, 0)
        self.playing = gui.add_checkbox("play", False)
        self.fps = gui.add_number("fps", round(float(view.fps), 2), min=0.5, max=60.0, step=0.5)
        self.conf = gui.add_slider("drop least confident %", 0.0, 95.0, 1.0, self.config.conf_drop_percent)
        self.which = gui.add_dropdown("points", ("all", "static", "dynamic"), initial_value="all")
        self.trails = gui.add_checkbox("track trails", True)
        self.frusta_box = gui.add_checkbox("cameras", True)
        gui.add_markdown(f"static/dynamic from: {MASK_SOURCES.get(view.mask_source, view.mask_source)}")
        self.slider.on_update(lambda _: self.set_frame(int(self.slider.value)))
        for handle in (self.conf, self.which, self.trails):
            handle.on_update(lambda _: self.set_frame(self.current))
        self.frusta_box.on_update(lambda _: self._show_frusta())

    def _show_frusta(self) -> None:
        for handle in self.frusta:
            handle.visible = bool(self.frusta_box.value)

    def _on_connect(self, client: Any) -> None:
        import numpy as np

        if "cam_c2w" not in self.view.scene:
            return
        pose = np.asarray(self.view.scene["cam_c2w"][0], np.float64)
        forward, down = pose[:3, 2], pose[:3, 1]
        target = pose[:3, 3] + forward * self.scale
        client.camera.up_direction = -down
        right = pose[:3, 0]  # behind, above and to the right of the first camera: its frustum stays aside
        client.camera.position = pose[:3, 3] + (-0.6 * forward - 0.45 * down + 0.3 * right) * self.scale
        client.camera.look_at = target

    # -- per frame ------------------------------------------------------------------------------
    def selected_points(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame t's points and colours that pass the confidence slider and the static/dynamic choice."""
        fp = self.frames[t]
        keep = fp.conf_rank >= float(self.conf.value)
        if self.which.value != "all":
            keep &= fp.dynamic if self.which.value == "dynamic" else ~fp.dynamic
        return fp.points[keep], fp.colors[keep]

    def set_frame(self, t: int) -> None:
        """Show frame t (points, trails, highlighted camera, input image)."""
        import numpy as np

        with self._lock:
            t = int(np.clip(t, 0, self.view.num_frames - 1))
            previous, self.current = self.current, t
            points, colors = self.selected_points(t)
            if not len(points):
                points, colors = np.zeros((1, 3), np.float32), np.zeros((1, 3), np.uint8)
            with self.server.atomic():
                self.server.scene.add_point_cloud("/points", points, colors, point_size=self.point_size,
                                                  point_shape="rounded")
                self._set_tracks(t)
                if self.frusta:
                    self.frusta[previous].color = (120, 120, 120)
                    self.frusta[t].color = (255, 40, 40)
                self.image.image = self.view.frames[t]

    def _set_tracks(self, t: int) -> None:
        import numpy as np

        scene = self.view.scene
        if not len(self.track_idx) or not self.trails.value:
            self.server.scene.add_point_cloud("/tracks/heads", np.zeros((1, 3), np.float32), (0, 0, 0),
                                              point_size=0.0, visible=False)
            self.server.scene.add_line_segments("/tracks/trails", np.zeros((1, 2, 3), np.float32), (0, 0, 0),
                                                visible=False)
            return
        tracks = scene["tracks3d"][self.track_idx]
        colors = self.view.track_colors[self.track_idx]
        start = max(0, t - self.config.tail)
        heads = tracks[:, t]
        ok = np.isfinite(heads).all(1)
        self.server.scene.add_point_cloud("/tracks/heads", heads[ok].astype(np.float32), colors[ok],
                                          point_size=self.point_size * 2, point_shape="circle")
        if t > start:
            seg = np.stack([tracks[:, start:t], tracks[:, start + 1:t + 1]], 2).reshape(-1, 2, 3)
            seg_colors = np.repeat(colors, t - start, 0)[:, None].repeat(2, 1)
            good = np.isfinite(seg).all((1, 2))
            self.server.scene.add_line_segments("/tracks/trails", seg[good].astype(np.float32), seg_colors[good],
                                                thickness=2.0, thickness_units="screen")
        else:
            self.server.scene.add_line_segments("/tracks/trails", np.zeros((1, 2, 3), np.float32), (0, 0, 0),
                                                visible=False)

    def _play_loop(self) -> None:
        while not self._stop.is_set():
            if self.playing.value:
                self.slider.value = (self.current + 1) % self.view.num_frames
            time.sleep(1.0 / max(float(self.fps.value), 0.5))

    def stop(self) -> None:
        self._stop.set()


def open_viewer(path: Path, host: str = "127.0.0.1", port: int = 8080,
                config: ViewerConfig | None = None) -> tuple[Any, Viewer]:
    """Load a run, start a viser server on host:port and build the viewer; returns (server, viewer)."""
    import viser

    from st4r_cli.viz.data import load_view_data

    view = load_view_data(Path(path))
    server = viser.ViserServer(host=host, port=port, verbose=False)
    return server, Viewer(server, view, config)


def serve(path: Path, host: str, port: int) -> None:
    """Run the viewer until Ctrl-C (or SIGTERM), then stop cleanly; prints the URL on stdout."""
    from st4r_cli import progress

    server, viewer = open_viewer(path, host, port)
    try:
        url = f"http://{host}:{server.get_port()}"
        progress.log(f"viewer: [bold]{url}[/bold]  (Ctrl-C to stop)")
        print(url, flush=True)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
        server.stop()
