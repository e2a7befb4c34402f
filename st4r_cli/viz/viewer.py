"""`st4r view RUN`: a viser 4D viewer of a finished run (nothing is recomputed).

The scene stays in st4r's world frame (frame 0's OpenCV camera); the viewer's up direction is -y, so
the world is upright. Per frame t the viewer shows:
- the coloured point cloud of frame t (subsampled to at most `max_points`), filtered by a confidence
  slider (drop the least confident x %) and a static / dynamic choice (`ViewData.dynamic_mask`); the
  static points the video gives no geometry for (`ViewData.no_geometry`: the network's guess, where the
  video holds no parallax) are hidden unless "points without geometry" is ticked;
- every camera as a frustum with its frame's image, the current one highlighted, and the camera path;
- 3D track trails over the last `tail` frames and the tracks' current positions, one colour per track
  (the same colours as tracks2d.mp4 and the summary picture);
- the input frame in the side panel.
Play/pause runs through the frames at the video's frame rate; the frame slider scrubs.
Only the current frame's points and trails are sent when the frame changes, so a 150-frame run stays
responsive.

Network safety: `check_host` refuses a --host that is not an IP address or host name of this machine
(an empty one would bind every interface); binding every interface takes an explicit 0.0.0.0 or ::.
`OriginGuard` answers 403 to a WebSocket handshake from another web page (its Origin header is not the
viewer's own page), so a site open in the same browser cannot read the frames; viser has no option for
this, so `open_viewer` puts the guard in front of the `process_request` that viser passes to
`websockets.asyncio.server.serve` (see `_origin_checked`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import numpy as np
    from websockets.asyncio.server import ServerConnection
    from websockets.http11 import Request, Response

    from st4r_cli.viz.data import ViewData

    ProcessRequest = Callable[[ServerConnection, Request], Any]


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
    guessed: np.ndarray   # (M,) bool: static points the video gives no geometry for (the network's guess)


def frame_points(view: ViewData, t: int, stride: int) -> FramePoints:
    """Frame t's finite points on a pixel grid of `stride`."""
    import numpy as np

    scene = view.scene
    pts = scene["pointmaps"][t, ::stride, ::stride].reshape(-1, 3)
    cols = view.frames[t, ::stride, ::stride].reshape(-1, 3)
    dyn = view.dynamic_mask[t, ::stride, ::stride].reshape(-1)
    conf = (scene["conf"][t, ::stride, ::stride].reshape(-1) if "conf" in scene
            else np.ones(len(pts), np.float32))
    guessed = view.no_geometry[t, ::stride, ::stride].reshape(-1)
    keep = np.isfinite(pts).all(1) & np.isfinite(conf)
    pts, cols, dyn, conf, guessed = pts[keep], cols[keep], dyn[keep], conf[keep], guessed[keep]
    rank = np.empty(len(conf), np.float32)
    rank[np.argsort(conf, kind="stable")] = np.linspace(0, 100, len(conf), dtype=np.float32)
    return FramePoints(pts.astype(np.float32), np.ascontiguousarray(cols), rank, dyn, guessed)


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
        guessed = float(view.no_geometry.mean())
        self.guessed = gui.add_checkbox("points without geometry", False)
        if guessed > 0:
            gui.add_markdown(f"{100 * guessed:.0f}% of the pixels have no geometry from the video (no parallax "
                             "there): the network's guess, hidden unless ticked above")
        self.trails = gui.add_checkbox("track trails", True)
        self.frusta_box = gui.add_checkbox("cameras", True)
        gui.add_markdown(f"static/dynamic from: {MASK_SOURCES.get(view.mask_source, view.mask_source)}")
        self.slider.on_update(lambda _: self.set_frame(int(self.slider.value)))
        for handle in (self.conf, self.which, self.trails, self.guessed):
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
        if not self.guessed.value:
            keep &= ~fp.guessed
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


# -- network safety -----------------------------------------------------------------------------
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`host` as an IP address, or None when it is not one."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_hostname(host: str) -> bool:
    """Whether `host` is an RFC 1123 host name (dot-separated labels of letters, digits and inner
    hyphens; the last label not all digits, which would be a malformed IP address)."""
    labels = (host[:-1] if host.endswith(".") else host).split(".")
    return (0 < len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit())


def _resolve(host: str) -> list[tuple[Any, ...]]:
    """getaddrinfo of a listening socket on `host` (an empty list when it cannot be resolved)."""
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        return []


def _bindable(info: tuple[Any, ...]) -> bool:
    """Whether a socket can listen on this getaddrinfo address (i.e. it is one of this machine's)."""
    family, kind, proto, _, address = info
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.bind((address[0], 0, *address[2:]))
    except OSError:
        return False
    return True


def check_host(host: str) -> str:
    """The address to listen on for --host `host` ([::1] -> ::1); St4rError when it is not an IP
    address or host name of this machine (viser would bind every interface for an empty one and
    wait forever for an address it cannot bind)."""
    from st4r_cli.errors import St4rError

    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not name.strip():
        raise St4rError("--host is empty: give 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    if _ip(name) is None and not is_hostname(name):
        raise St4rError(f"--host must be an IP address or a host name (0.0.0.0 for every interface), "
                        f"got {host!r}")
    infos = _resolve(name)
    if not infos:
        raise St4rError(f"--host {host}: cannot resolve this host name")
    if not any(_bindable(info) for info in infos):
        raise St4rError(f"--host {host} is not an address of this machine")
    return name


def is_wildcard(host: str) -> bool:
    """Whether `host` (0.0.0.0, ::) means every interface."""
    address = _ip(host)
    return address is not None and address.is_unspecified


def is_loopback(host: str) -> bool:
    """Whether every address `host` stands for is a loopback address (only this machine can connect)."""
    address = _ip(host)
    if address is not None:
        return address.is_loopback
    addresses = [_ip(info[4][0].split("%")[0]) for info in _resolve(host)]
    return bool(addresses) and all(a is not None and a.is_loopback for a in addresses)


def viewer_url(host: str, port: int) -> str:
    """A URL a browser on this machine can open (http://127.0.0.1:PORT for 0.0.0.0, [::1] for ::)."""
    address = _ip(host)
    if address is not None and address.is_unspecified:
        host = "127.0.0.1" if address.version == 4 else "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def exposure_warning(host: str) -> str | None:
    """One line saying who else can reach a viewer on `host`, or None for a loopback one."""
    if is_loopback(host):
        return None
    where = "every network interface" if is_wildcard(host) else host
    return (f"--host {host}: the viewer listens on {where} and is reachable from other machines; anyone "
            "who can reach its port sees the run (use the default 127.0.0.1 to keep it private)")


def _http_host_port(url: str) -> tuple[str, int] | None:
    """(host name, port) of an http origin such as http://127.0.0.1:8080, None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError:
        return None
    if parts.scheme != "http" or not parts.hostname or parts.path or parts.query or parts.fragment:
        return None
    return parts.hostname, port


def _this_machine_names() -> frozenset[str]:
    """Names this machine is reached by without DNS: localhost and its own host name (+ .local)."""
    name = socket.gethostname().lower()
    return LOOPBACK_NAMES | {name, f"{name}.local"}


class OriginGuard:
    """Which web pages may open the viewer's WebSocket.

    A browser sends the page's origin with every WebSocket handshake; the viewer's own page is
    http://HOST:PORT, for a loopback bind also http://localhost, 127.0.0.1 or [::1]:PORT. For a bind to
    every interface it is the address the browser used (the Host header), when that is an IP address or
    this machine's name: a DNS-rebound page (http://evil.example:PORT) matches its own Host header but
    not these. A handshake without Origin is not from a web page (a script, a test) and passes.
    """

    def __init__(self, host: str) -> None:
        self.wildcard = is_wildcard(host)
        host = host.lower()
        if self.wildcard:
            self.names = _this_machine_names()
        else:
            self.names = frozenset({host}) | (LOOPBACK_NAMES if is_loopback(host) else frozenset())

    def allows(self, origin: str, host_header: str | None, port: int) -> bool:
        """Whether a page of `origin` may connect to the viewer serving `port` (asked for `host_header`)."""
        page = _http_host_port(origin)
        if page is None or page[1] != port:
            return False
        if not self.wildcard:
            return page[0] in self.names
        asked = _http_host_port(f"http://{host_header}") if host_header else None
        return page == asked and (_ip(page[0]) is not None or page[0] in self.names)

    def refusal(self, connection: ServerConnection, request: Request) -> Response | None:
        """HTTP 403 for a WebSocket handshake from another page, None to let the request through."""
        from http import HTTPStatus

        if "Upgrade" not in request.headers:
            return None  # a plain HTTP request: viser serves its page and scripts
        origins = request.headers.get_all("Origin")
        if not origins:
            return None
        hosts = request.headers.get_all("Host")
        port = connection.local_address[1]  # the port this connection came in on
        if len(origins) == 1 and self.allows(origins[0], hosts[0] if len(hosts) == 1 else None, port):
            return None
        _log_refusal(origins[0], port)
        return connection.respond(HTTPStatus.FORBIDDEN, "st4r view: WebSocket from another origin refused\n")

    def wrap(self, process_request: ProcessRequest | None) -> ProcessRequest:
        """`process_request` (viser's page server) with this check in front of it."""

        def guarded(connection: ServerConnection, request: Request) -> Any:
            refused = self.refusal(connection, request)
            if refused is not None or process_request is None:
                return refused
            return process_request(connection, request)

        return guarded


def _log_refusal(origin: str, port: int) -> None:
    """Say which page was refused (a user on a forwarded port would otherwise see no reason)."""
    from rich.markup import escape

    from st4r_cli import progress

    progress.log(f"viewer: refused a WebSocket from {escape(repr(origin[:60]))} (not the page of port {port})")


_SERVE_LOCK = threading.Lock()


@contextmanager
def _origin_checked(guard: OriginGuard) -> Iterator[list[Any]]:
    """While a ViserServer starts: put `guard` in front of the `process_request` that viser's server
    thread passes to `websockets.asyncio.server.serve` (viser 1.1.1, viser/infra/_infra.py
    `WebsockServer._background_worker`; viser has no option for an Origin check). Only calls whose
    handler is viser's are changed, the original `serve` is back on exit, and the server keeps the
    guard (websockets.asyncio.server.Server holds its process_request). Yields the guarded calls:
    empty when viser did not start its server this way, and then nothing is guarded."""
    import websockets.asyncio.server as ws_server

    original = ws_server.serve
    guarded: list[Any] = []

    def guarded_serve(handler: Any, *args: Any, **kwargs: Any) -> Any:
        if str(getattr(handler, "__module__", None)).startswith("viser."):
            kwargs["process_request"] = guard.wrap(kwargs.get("process_request"))
            guarded.append(handler)
        return original(handler, *args, **kwargs)

    with _SERVE_LOCK:
        ws_server.serve = guarded_serve  # type: ignore[assignment, misc]
        try:
            yield guarded
        finally:
            ws_server.serve = original  # type: ignore[misc]


def open_viewer(path: Path, host: str = "127.0.0.1", port: int = 8080,
                config: ViewerConfig | None = None) -> tuple[Any, Viewer]:
    """Load a run, start a viser server on host:port (WebSockets from other web pages refused, see
    `OriginGuard`) and build the viewer; returns (server, viewer)."""
    import viser

    from st4r_cli.errors import St4rError
    from st4r_cli.viz.data import load_view_data

    host = check_host(host)
    view = load_view_data(Path(path))
    with _origin_checked(OriginGuard(host)) as guarded:
        server = viser.ViserServer(host=host, port=port, verbose=False)
    if not guarded:
        server.stop()
        raise St4rError(f"st4r view cannot check the origin of WebSocket connections with viser "
                        f"{viser.__version__}; install the version st4r pins (pip install -e \".[viewer]\")")
    return server, Viewer(server, view, config)


def serve(path: Path, host: str, port: int) -> None:
    """Run the viewer until Ctrl-C (or SIGTERM), then stop cleanly; prints the URL on stdout."""
    from st4r_cli import progress

    warning = exposure_warning(host)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    server, viewer = open_viewer(path, host, port)
    try:
        url = viewer_url(host, server.get_port())
        progress.log(f"viewer: [bold]{url}[/bold]  (Ctrl-C to stop)")
        if is_wildcard(host):
            progress.log(f"other machines: http://<this machine's address>:{server.get_port()}")
        print(url, flush=True)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
        server.stop()
