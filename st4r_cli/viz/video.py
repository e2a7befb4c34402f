"""Overlay videos and per-frame maps of a run (`st4r export --video / --maps`).

- `tracks2d.mp4`: the frames with every track as a coloured dot and a tail of its last `tail` frames;
  a hollow ring where the track is occluded (predicted not visible).
- `depth.mp4`: frame | colour-mapped depth | colour-mapped confidence, side by side. Depth is the z of
  each pointmap point in its own camera, shown as inverse depth (near = warm) with one range for the
  whole video, so colours compare across frames.
- maps: `maps/depth/frame_00000.png` and `maps/conf/...` (colour-mapped, same ranges as the video) and
  `maps/depth16/frame_00000.png` (16-bit, depth = value / scale, 0 = invalid; `maps/depth16.json`
  holds `scale`).

Videos are H.264 (libx264, yuv420p, even sizes) in MP4: browsers, VLC and every common player open them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from st4r_cli.viz.data import ViewData

TAIL = 8            # frames of history drawn behind each track
MAX_TRACKS = 256    # tracks drawn in tracks2d.mp4 (spread over the image)
MIN_VIDEO_SIDE = 480  # overlays are upscaled so dots and tails stay readable


def write_mp4(path: Path, frames: Iterable[np.ndarray], fps: float, crf: int = 20) -> int:
    """Encode RGB uint8 frames (all one size) as H.264 MP4 atomically; returns the frame count."""
    from fractions import Fraction

    import av
    import numpy as np

    from st4r_cli.runs.atomic import atomic_path

    count = 0
    with atomic_path(Path(path)) as tmp:
        with av.open(str(tmp), "w", format="mp4") as out:
            stream = None
            for frame in frames:
                frame = np.ascontiguousarray(frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2])
                if stream is None:
                    stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                    stream.height, stream.width = frame.shape[:2]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
                count += 1
            if stream is not None:
                for packet in stream.encode():
                    out.mux(packet)
    return count


def _upscale(hw: tuple[int, int]) -> int:
    import numpy as np

    return max(1, int(np.ceil(MIN_VIDEO_SIDE / min(hw)))) if min(hw) < MIN_VIDEO_SIDE else 1


def draw_tracks(frame: np.ndarray, tracks2d: np.ndarray, visible: np.ndarray, colors: np.ndarray,
                t: int, scale: int = 1, tail: int = TAIL) -> np.ndarray:
    """Frame t (upscaled by `scale`) with tracks (N, T, 2), visible (N, T), colors (N, 3) drawn."""
    import cv2
    import numpy as np

    h, w = frame.shape[:2]
    image = cv2.resize(frame, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR) if scale > 1 else frame.copy()
    radius = int(np.clip(2 * scale, 2, 6))
    start = max(0, t - tail)
    to_px = lambda xy: ((xy + 0.5) * scale - 0.5)  # noqa: E731 - pixel centres stay pixel centres
    for n in range(len(tracks2d)):
        color = tuple(int(c) for c in colors[n])
        path = tracks2d[n, start:t + 1]
        ok = np.isfinite(path).all(-1)
        for a in range(len(path) - 1):
            if ok[a] and ok[a + 1]:
                p, q = to_px(path[a]), to_px(path[a + 1])
                cv2.line(image, (int(round(p[0])), int(round(p[1]))), (int(round(q[0])), int(round(q[1]))),
                         color, max(1, scale // 2), cv2.LINE_AA)
    for n in range(len(tracks2d)):
        xy = tracks2d[n, t]
        if not np.isfinite(xy).all():
            continue
        centre = tuple(int(round(v)) for v in to_px(xy))
        color = tuple(int(c) for c in colors[n])
        if visible[n, t]:
            cv2.circle(image, centre, radius, color, -1, cv2.LINE_AA)
        else:
            cv2.circle(image, centre, radius, color, 1, cv2.LINE_AA)
    return image


def _picked_tracks(view: ViewData, max_tracks: int = MAX_TRACKS) -> np.ndarray:
    import numpy as np

    from st4r_cli.viz.data import pick_tracks

    if "tracks2d" not in view.scene:
        return pick_tracks(np.zeros((0, 2)), max_tracks)
    scene = view.scene
    query_xy = scene["query_xy"] if "query_xy" in scene else scene["tracks2d"][:, 0]
    return pick_tracks(query_xy, max_tracks)


def tracks_frames(view: ViewData) -> Iterable[np.ndarray]:
    import numpy as np

    scene = view.scene
    idx = _picked_tracks(view)
    tracks2d = scene["tracks2d"][idx] if len(idx) else np.zeros((0, view.num_frames, 2))
    visible = (scene["visible"][idx] if "visible" in scene else np.isfinite(tracks2d).all(-1)) \
        if len(idx) else np.zeros((0, view.num_frames), bool)
    colors = view.track_colors[idx] if len(idx) else np.zeros((0, 3), np.uint8)
    scale = _upscale(view.image_hw)
    for t in range(view.num_frames):
        yield draw_tracks(view.frames[t], tracks2d, visible, colors, t, scale)


def depth_ranges(view: ViewData) -> tuple[tuple[float, float], tuple[float, float]]:
    """Fixed (inverse-depth, confidence) colour ranges for the whole run."""
    import numpy as np

    from st4r_cli.viz.colormaps import robust_range

    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(view.depth > 0, 1.0 / view.depth, np.nan)
    conf = view.scene["conf"] if "conf" in view.scene else np.ones(view.depth.shape, np.float32)
    return robust_range(inv), robust_range(np.log(np.maximum(conf, 1e-6)))


def depth_images(view: ViewData, t: int, ranges: tuple[tuple[float, float], tuple[float, float]]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) colour-mapped depth (inverse depth, near warm) and confidence (log) of frame t."""
    import numpy as np

    from st4r_cli.viz.colormaps import normalize, turbo

    depth = view.depth[t]
    valid = np.isfinite(depth) & (depth > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(valid, 1.0 / depth, np.nan)
    conf = view.scene["conf"][t] if "conf" in view.scene else np.ones(depth.shape, np.float32)
    return (turbo(normalize(inv, ranges[0]), valid),
            turbo(normalize(np.log(np.maximum(conf, 1e-6)), ranges[1])))


def depth_frames(view: ViewData) -> Iterable[np.ndarray]:
    import cv2
    import numpy as np

    ranges = depth_ranges(view)
    scale = max(1, _upscale(view.image_hw) // 2)
    for t in range(view.num_frames):
        depth_rgb, conf_rgb = depth_images(view, t, ranges)
        row = np.concatenate([view.frames[t], depth_rgb, conf_rgb], axis=1)
        if scale > 1:
            row = cv2.resize(row, (row.shape[1] * scale, row.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
        yield row


def export_videos(view: ViewData, out_dir: Path) -> list[Path]:
    """tracks2d.mp4 (when the scene has 2D tracks) and depth.mp4 under out_dir."""
    from st4r_cli import progress

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "tracks2d" in view.scene:
        frames = progress.track(tracks_frames(view), "tracks2d.mp4", total=view.num_frames)
        write_mp4(out_dir / "tracks2d.mp4", frames, view.fps)
        written.append(out_dir / "tracks2d.mp4")
    frames = progress.track(depth_frames(view), "depth.mp4", total=view.num_frames)
    write_mp4(out_dir / "depth.mp4", frames, view.fps)
    written.append(out_dir / "depth.mp4")
    return written


def depth16_scale(depth: np.ndarray) -> float:
    """Value per depth unit for 16-bit PNGs: 1000 (millimetres of a metric scene) when it fits, else
    the largest scale that keeps the deepest point below 65535."""
    import numpy as np

    finite = depth[np.isfinite(depth) & (depth > 0)]
    top = float(finite.max()) if finite.size else 1.0
    return 1000.0 if top * 1000.0 <= 65535 else 65535.0 / top


def export_maps(view: ViewData, out_dir: Path) -> list[Path]:
    """Per-frame colour-mapped depth and confidence PNGs and 16-bit depth PNGs under out_dir/maps."""
    import json

    import numpy as np
    from PIL import Image

    from st4r_cli import progress
    from st4r_cli.runs.atomic import atomic_write_text, atomic_write_with

    maps = Path(out_dir) / "maps"
    for sub in ("depth", "conf", "depth16"):
        (maps / sub).mkdir(parents=True, exist_ok=True)
    ranges = depth_ranges(view)
    scale = depth16_scale(view.depth)
    written = []
    for t in progress.track(range(view.num_frames), "maps", total=view.num_frames):
        depth_rgb, conf_rgb = depth_images(view, t, ranges)
        depth = view.depth[t]
        valid = np.isfinite(depth) & (depth > 0)
        depth16 = np.where(valid, np.clip(np.round(np.nan_to_num(depth) * scale), 1, 65535), 0).astype(np.uint16)
        name = f"frame_{t:05d}.png"
        for sub, image in (("depth", depth_rgb), ("conf", conf_rgb), ("depth16", depth16)):
            atomic_write_with(maps / sub / name, lambda tmp, im=image: Image.fromarray(im).save(tmp, format="PNG"))
            written.append(maps / sub / name)
    info = {"scale": scale, "meaning": "depth = value / scale (z in each frame's camera, the scene's units); "
                                       "0 = no depth", "frames": view.num_frames}
    atomic_write_text(maps / "depth16.json", json.dumps(info, indent=2) + "\n")
    written.append(maps / "depth16.json")
    return written
