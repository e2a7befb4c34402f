"""The one picture `st4r adapt` ends with: `RUN/summary.png`.

Top row: the first and the last frame with the tracks drawn (dots and tails, hollow when occluded).
Bottom: a top view of the scene: the confident points of every few frames (their colours; not the
network's guesses where the video gives no geometry, which a line at the top counts) seen from above
(world x to the right, world z, the first camera's viewing direction, upwards; the world's up is the
first camera's -y), the camera path as a line and each camera's viewing direction as a short tick,
from blue (first frame) to red (last frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from st4r_cli.runs.run import Run
    from st4r_cli.viz.data import ViewData

PANEL_HEIGHT = 360


def top_view(view: ViewData, size_hw: tuple[int, int], max_points: int = 60_000) -> np.ndarray:
    """(H, W, 3) uint8 top view (x right, z up in the picture) of points and cameras."""
    import cv2
    import numpy as np

    h, w = size_hw
    image = np.full((h, w, 3), 24, np.uint8)
    scene = view.scene
    step = max(1, view.num_frames // 10)
    pts, cols = [], []
    conf = scene.get("conf")
    for t in range(0, view.num_frames, step):
        p = scene["pointmaps"][t].reshape(-1, 3)
        keep = np.isfinite(p).all(1) & ~view.no_geometry[t].reshape(-1)
        if conf is not None and keep.any():
            c = conf[t].reshape(-1)
            keep &= c >= np.quantile(c[keep], 0.3)
        pts.append(p[keep])
        cols.append(view.frames[t].reshape(-1, 3)[keep])
    points = np.concatenate(pts) if pts else np.zeros((0, 3))
    colors = np.concatenate(cols) if cols else np.zeros((0, 3), np.uint8)
    if len(points) > max_points:
        idx = np.random.default_rng(0).choice(len(points), max_points, replace=False)
        points, colors = points[idx], colors[idx]
    centres = scene["cam_c2w"][:, :3, 3] if "cam_c2w" in scene else np.zeros((1, 3))
    ground = np.concatenate([points[:, [0, 2]], centres[:, [0, 2]]]) if len(points) else centres[:, [0, 2]]
    lo = np.quantile(ground, 0.02, axis=0)
    hi = np.quantile(ground, 0.98, axis=0)
    lo = np.minimum(lo, centres[:, [0, 2]].min(0))
    hi = np.maximum(hi, centres[:, [0, 2]].max(0))
    span = float(max(hi[0] - lo[0], hi[1] - lo[1], 1e-6)) * 1.1
    mid = (lo + hi) / 2
    scale = (min(h, w) - 20) / span

    def to_px(xz: np.ndarray) -> np.ndarray:
        return np.stack([w / 2 + (xz[..., 0] - mid[0]) * scale, h / 2 - (xz[..., 1] - mid[1]) * scale], -1)

    if len(points):
        px = np.round(to_px(points[:, [0, 2]])).astype(int)
        inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        for dy in (0, 1):  # 2x2 dots
            for dx in (0, 1):
                ok = inside & (px[:, 0] + dx < w) & (px[:, 1] + dy < h)
                image[px[ok, 1] + dy, px[ok, 0] + dx] = colors[ok]
    if "cam_c2w" in scene:
        cam_px = to_px(centres[:, [0, 2]])
        forward = scene["cam_c2w"][:, :3, 2][:, [0, 2]]
        forward = forward / np.maximum(np.linalg.norm(forward, axis=1, keepdims=True), 1e-9)
        count = len(cam_px)
        for t in range(count):
            a = t / max(count - 1, 1)
            color = (int(255 * a), 60, int(255 * (1 - a)))  # blue -> red
            p = tuple(int(round(v)) for v in cam_px[t])
            q = tuple(int(round(v)) for v in cam_px[t] + forward[t] * np.array([1, -1]) * 12)
            cv2.line(image, p, q, color, 1, cv2.LINE_AA)
            if t:
                cv2.line(image, tuple(int(round(v)) for v in cam_px[t - 1]), p, color, 2, cv2.LINE_AA)
            cv2.circle(image, p, 3, color, -1, cv2.LINE_AA)
    cv2.putText(image, "top view (x right, z = first camera's view up); cameras blue -> red", (8, h - 10),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (230, 230, 230), 1, cv2.LINE_AA)
    return image


def summary_image(view: ViewData) -> np.ndarray:
    """(H, W, 3) uint8: first/last frame with tracks on top, top view below."""
    import cv2
    import numpy as np

    from st4r_cli.viz.video import _picked_tracks, draw_tracks

    scene = view.scene
    idx = _picked_tracks(view, 300)
    panels = []
    for t in (0, view.num_frames - 1):
        frame = view.frames[t]
        if len(idx):
            visible = scene["visible"][idx] if "visible" in scene else np.isfinite(scene["tracks2d"][idx]).all(-1)
            frame = draw_tracks(frame, scene["tracks2d"][idx], visible, view.track_colors[idx], t,
                                scale=max(1, int(np.ceil(PANEL_HEIGHT / frame.shape[0]))))
        height = PANEL_HEIGHT
        width = int(round(frame.shape[1] * height / frame.shape[0]))
        frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
        cv2.putText(frame, f"frame {t}", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
        panels.append(frame)
    top = np.concatenate(panels, axis=1)
    bottom = top_view(view, (PANEL_HEIGHT * 3 // 2, top.shape[1]))
    note = no_geometry_note(scene)
    if note:
        (width, _), _ = cv2.getTextSize(note, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        cv2.rectangle(bottom, (0, 0), (width + 16, 32), (24, 24, 24), -1)
        cv2.putText(bottom, note, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (80, 200, 255), 1, cv2.LINE_AA)
    return np.concatenate([top, bottom], axis=0)


def no_geometry_note(scene: dict[str, np.ndarray]) -> str:
    """One line on where the video holds no signal ('' when it holds some everywhere)."""
    from st4r_cli.viz.selection import signal_summary

    signal = signal_summary(scene)
    if not signal or not signal["pixels_without_geometry"]:
        return ""
    frames = signal["frames_without_geometry"]
    where = f"; no parallax at all in {len(frames)} frame(s) ({_ranges(frames)})" if frames else ""
    return (f"no geometry from the video on {100 * signal['pixels_without_geometry']:.0f}% of the pixels "
            f"(the network's guess, left out here and hidden in st4r view){where}")


def _ranges(frames: list[int]) -> str:
    """'0-3, 7, 9-12' for sorted frame numbers."""
    parts, start = [], None
    for i, t in enumerate(frames):
        if start is None:
            start = t
        if i + 1 == len(frames) or frames[i + 1] != t + 1:
            parts.append(f"{start}" if start == t else f"{start}-{t}")
            start = None
    return ", ".join(parts)


def write_summary(run: Run) -> Path:
    """Write RUN/summary.png (recorded in run.json as the run's output) and return its path."""
    from PIL import Image

    from st4r_cli.viz.data import load_view_data

    view = load_view_data(run.dir)
    image = summary_image(view)
    return run.publish_file("summary.png", lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
