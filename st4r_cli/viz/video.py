"""Overlay videos and per-frame maps of a run (`st4r export --video / --maps`).

- `tracks2d.mp4`: the frames with every track as a coloured dot and a tail of its last `tail` frames;
  a hollow ring where the track is occluded (predicted not visible).
- `depth.mp4`: frame | colour-mapped depth | colour-mapped confidence, side by side, with a legend
  strip below: the frame number, a grey swatch for pixels without depth, and a colour bar under each
  map with its end values. Depth is the z of each pointmap point in its own camera, coloured by inverse
  depth (TURBO, near = red, far = blue) over one range for the whole video (colours compare across
  frames). The range is the narrowest percentile window holding `COVERAGE` of the video's valid
  depths (2.5-97.5 % for a symmetric spread, 0-95 % .. 5-100 % otherwise), so a small cluster of wild
  points cannot squeeze the scene into one end of the map (on the demo 3.4 % of the pixels, a head
  placed at 0.2 instead of about 1.5, stretched a 2-98 % range of inverse depth so far that 95 % of
  the pixels shared 11 % of the map). Depths beyond the range take the end colours; pixels without
  depth (no point, non-finite or z <= 0) are `INVALID_RGB` grey.
- maps (`maps/`, one file per frame, `frame_00000.*`):
  `depth/`, `conf/`: colour PNGs, the video's colours and ranges (`maps/depth_colorbar.png`,
  `maps/conf_colorbar.png` are their legends);
  `depth16/`: 16-bit PNGs, depth = value / scale, 0 = invalid (`maps/depth16.json` holds `scale`);
  `depth_float/`: float32 `.npy` (H, W), z in the frame's camera in the scene's units, NaN = invalid
  (`np.load(path, allow_pickle=False)`);
  `valid/`: 8-bit PNG, 255 = valid depth, 0 = none;
  `normal/`: 8-bit RGB PNG of the surface normal in the frame's OpenCV camera (x right, y down, z
  forward), encoded (n + 1) / 2 * 255 and facing the camera (a wall facing the camera is
  (128, 128, 0)); (0, 0, 0) = no normal. Normals average the cross products of the four
  neighbour pairs of each point, so at an occlusion edge they mix the two surfaces.
  `maps/maps.json` describes every folder and holds the colour ranges.

Videos are H.264 (libx264, yuv420p, even sizes) in MP4: browsers, VLC and every common player open them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from st4r_cli.viz.data import ViewData

TAIL = 8            # frames of history drawn behind each track
MAX_TRACKS = 256    # tracks drawn in tracks2d.mp4 (spread over the image)
MIN_VIDEO_SIDE = 480  # overlays are upscaled so dots and tails stay readable
COVERAGE = 0.95     # the depth / confidence colours span the narrowest window holding this share of values
INVALID_RGB = (128, 128, 128)  # pixels without depth in every depth picture (no TURBO colour is near it)
LEGEND_BG, LEGEND_FG = (24, 24, 24), (255, 255, 255)
COLORBAR_SIZE = (512, 48)  # maps/depth_colorbar.png and conf_colorbar.png: width, height
MAX_RANGE_SAMPLES = 4_000_000  # values the colour range is estimated from (an even stride over the video)


@dataclass(frozen=True)
class ColorRanges:
    """Fixed colour ranges for a whole run: inverse depth and log confidence, (low, high)."""

    inv_depth: tuple[float, float]
    log_conf: tuple[float, float]

    @property
    def near(self) -> float:
        """Depth (scene units) shown in the nearest colour; anything nearer looks the same."""
        return 1.0 / self.inv_depth[1]

    @property
    def far(self) -> float:
        return 1.0 / self.inv_depth[0]


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


def valid_depth(depth: np.ndarray) -> np.ndarray:
    """Pixels with a depth: a finite z > 0 in their camera."""
    import numpy as np

    return np.isfinite(depth) & (depth > 0)


def narrow_range(values: np.ndarray, coverage: float = COVERAGE) -> tuple[float, float]:
    """(lo, hi): the narrowest window of percentiles (a, a + coverage) of the finite values, a from 0 to
    1 - coverage: robust to a cluster of outliers on one side smaller than 1 - coverage."""
    import numpy as np

    finite = np.asarray(values).ravel()
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    finite = finite[:: max(1, finite.size // MAX_RANGE_SAMPLES)]
    starts = np.linspace(0.0, 1.0 - coverage, 51)
    bounds = np.quantile(finite, np.concatenate([starts, starts + coverage]))
    lo, hi = bounds[:len(starts)], bounds[len(starts):]
    best = int(np.argmin(hi - lo))
    lo_best, hi_best = float(lo[best]), float(hi[best])
    return lo_best, hi_best if hi_best > lo_best else lo_best + max(1e-6, abs(lo_best) * 1e-6)


def _conf(view: ViewData) -> np.ndarray:
    import numpy as np

    return view.scene["conf"] if "conf" in view.scene else np.ones(view.depth.shape, np.float32)


def depth_ranges(view: ViewData) -> ColorRanges:
    """Fixed inverse-depth and log-confidence colour ranges for the whole run."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(valid_depth(view.depth), 1.0 / view.depth, np.nan)
        log_conf = np.log(np.maximum(_conf(view), 1e-6))
    return ColorRanges(narrow_range(inv), narrow_range(log_conf))


def colorize(values: np.ndarray, value_range: tuple[float, float], valid: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 TURBO of values over value_range (low blue, high red), INVALID_RGB where not valid."""
    import numpy as np

    from st4r_cli.viz.colormaps import normalize, turbo

    rgb = turbo(normalize(values, value_range))
    return np.where(valid[..., None], rgb, np.array(INVALID_RGB, np.uint8)).astype(np.uint8)


def depth_images(view: ViewData, t: int, ranges: ColorRanges) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) colour-mapped depth (inverse depth, near red) and confidence (log) of frame t."""
    import numpy as np

    depth = view.depth[t]
    valid = valid_depth(depth)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(valid, 1.0 / depth, np.nan)
        log_conf = np.log(np.maximum(_conf(view)[t], 1e-6))
    return colorize(inv, ranges.inv_depth, valid), colorize(log_conf, ranges.log_conf, np.isfinite(log_conf))


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _font(height: int) -> tuple[int, float]:
    import cv2

    return cv2.FONT_HERSHEY_SIMPLEX, cv2.getFontScaleFromHeight(cv2.FONT_HERSHEY_SIMPLEX, max(height, 6), 1)


def text_width(text: str, height: int) -> int:
    import cv2

    return cv2.getTextSize(text, *_font(height), 1)[0][0]


def _text(image: np.ndarray, text: str, x: int, y: int, height: int, align: str = "left") -> None:
    """Draw text with its baseline at y, about `height` px tall, its left end, right end or centre at x."""
    import cv2

    width = text_width(text, height)
    left = {"left": x, "right": x - width, "centre": x - width // 2}[align]
    cv2.putText(image, text, (left, y), *_font(height), LEGEND_FG, 1, cv2.LINE_AA)


def colorbar(width: int, height: int, title: str, low_label: str, high_label: str) -> np.ndarray:
    """(height, width, 3) legend: a TURBO bar (low blue left, high red right) with its end labels under
    it and a title between them (left out where it does not fit)."""
    import numpy as np

    from st4r_cli.viz.colormaps import turbo

    image = np.full((height, width, 3), LEGEND_BG, np.uint8)
    margin, top, bar_h, text_h = max(4, width // 40), max(2, height // 10), max(4, height * 3 // 10), \
        max(6, height * 3 // 10)
    image[top:top + bar_h, margin:width - margin] = turbo(np.linspace(0.0, 1.0, width - 2 * margin))[None]
    baseline = top + bar_h + text_h + max(2, height // 12)
    low_w, high_w = text_width(low_label, text_h), text_width(high_label, text_h)
    if low_w + high_w + 3 * margin <= width:
        _text(image, low_label, margin, baseline, text_h)
        _text(image, high_label, width - margin, baseline, text_h, "right")
    if (width - text_width(title, text_h)) // 2 >= max(low_w, high_w) + 2 * margin:
        _text(image, title, width // 2, baseline, text_h, "centre")
    return image


def depth_colorbar(width: int, height: int, ranges: ColorRanges) -> np.ndarray:
    return colorbar(width, height, "depth (scene units)", f"far {_fmt(ranges.far)}", f"near {_fmt(ranges.near)}")


def conf_colorbar(width: int, height: int, ranges: ColorRanges) -> np.ndarray:
    import numpy as np

    low, high = (float(np.exp(v)) for v in ranges.log_conf)
    return colorbar(width, height, "confidence", f"low {_fmt(low)}", f"high {_fmt(high)}")


def frame_legend(width: int, height: int, t: int, fps: float) -> np.ndarray:
    """The legend under the input frame: its index (as in the maps' file names) and time, and the grey
    of pixels without depth."""
    import numpy as np

    image = np.full((height, width, 3), LEGEND_BG, np.uint8)
    margin, top, text_h = max(4, width // 40), max(2, height // 10), max(6, height * 3 // 10)
    _text(image, f"frame {t}  {t / fps:.2f} s" if fps > 0 else f"frame {t}", margin, top + text_h, text_h)
    swatch = text_h
    low = height - swatch - top
    image[low:low + swatch, margin:margin + swatch] = INVALID_RGB
    _text(image, "no depth", margin + swatch + margin, low + swatch, text_h)
    return image


def legend_height(panel_width: int) -> int:
    """An even strip height that keeps the labels readable (50 px under a 512 px panel, 12 px letters)."""
    return max(40, min(64, panel_width // 10)) // 2 * 2


def depth_frames(view: ViewData) -> Iterable[np.ndarray]:
    """Frame | depth | confidence rows (upscaled for small videos) with the legend strip below."""
    import cv2
    import numpy as np

    ranges = depth_ranges(view)
    scale = max(1, _upscale(view.image_hw) // 2)
    panel_w = view.image_hw[1] * scale
    strip_h = legend_height(panel_w)
    bars = [depth_colorbar(panel_w, strip_h, ranges), conf_colorbar(panel_w, strip_h, ranges)]
    for t in range(view.num_frames):
        depth_rgb, conf_rgb = depth_images(view, t, ranges)
        row = np.concatenate([view.frames[t], depth_rgb, conf_rgb], axis=1)
        if scale > 1:
            row = cv2.resize(row, (row.shape[1] * scale, row.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
        strip = np.concatenate([frame_legend(panel_w, strip_h, t, view.fps)] + bars, axis=1)
        yield np.concatenate([row, strip], axis=0)


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


def camera_points(view: ViewData, t: int) -> np.ndarray:
    """(H, W, 3) float32 pointmap of frame t in its own OpenCV camera (the world points without cam_c2w)."""
    import numpy as np

    points = np.asarray(view.scene["pointmaps"][t], np.float64)
    if "cam_c2w" not in view.scene:
        return points.astype(np.float32)
    w2c = np.linalg.inv(np.asarray(view.scene["cam_c2w"][t], np.float64))
    return (points @ w2c[:3, :3].T + w2c[:3, 3]).astype(np.float32)


def normals_from_points(points: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit normals of an (H, W, 3) pointmap in camera axes, facing the camera (the image's
    x and y steps give the orientation); the mean of the unit cross products of the four neighbour
    pairs (right, down), (down, left), (left, up), (up, right) with finite points, z > 0; NaN without any."""
    import numpy as np

    p = np.where((np.isfinite(points).all(-1) & (points[..., 2] > 0))[..., None], points, np.nan)
    padded = np.pad(p.astype(np.float64), ((1, 1), (1, 1), (0, 0)), constant_values=np.nan)
    centre = padded[1:-1, 1:-1]
    right, down = padded[1:-1, 2:] - centre, padded[2:, 1:-1] - centre
    left, up = padded[1:-1, :-2] - centre, padded[:-2, 1:-1] - centre
    total = np.zeros(points.shape, np.float64)
    for a, b in ((down, right), (left, down), (up, left), (right, up)):
        cross = np.cross(a, b)
        norm = np.linalg.norm(cross, axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            unit = cross / norm
        total += np.where(np.isfinite(unit) & (norm > 0), unit, 0.0)
    length = np.linalg.norm(total, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(length > 1e-9, total / length, np.nan).astype(np.float32)


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: (n + 1) / 2 * 255 rounded; (0, 0, 0) where the normal is NaN."""
    import numpy as np

    ok = np.isfinite(normals).all(-1)
    value = np.round((np.nan_to_num(normals) + 1.0) / 2.0 * 255.0).clip(0, 255).astype(np.uint8)
    return np.where(ok[..., None], value, 0).astype(np.uint8)


MAP_DIRS = ("depth", "conf", "depth16", "depth_float", "valid", "normal")


def frame_maps(view: ViewData, t: int, ranges: ColorRanges, scale16: float) -> dict[str, np.ndarray]:
    """Every map of frame t by folder (see the module docstring)."""
    import numpy as np

    depth = view.depth[t]
    valid = valid_depth(depth)
    depth_rgb, conf_rgb = depth_images(view, t, ranges)
    depth16 = np.where(valid, np.clip(np.round(np.nan_to_num(depth) * scale16), 1, 65535), 0).astype(np.uint16)
    return {"depth": depth_rgb, "conf": conf_rgb, "depth16": depth16,
            "depth_float": np.where(valid, depth, np.nan).astype(np.float32),
            "valid": np.where(valid, 255, 0).astype(np.uint8),
            "normal": encode_normals(normals_from_points(camera_points(view, t)))}


def _save_map(path: Path, image: np.ndarray) -> None:
    import numpy as np
    from PIL import Image

    from st4r_cli.runs.atomic import atomic_write_with

    if path.suffix == ".npy":
        atomic_write_with(path, lambda tmp: np.save(tmp, image, allow_pickle=False))
    else:
        atomic_write_with(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def maps_info(view: ViewData, ranges: ColorRanges, scale16: float) -> dict:
    """maps/maps.json: what each folder holds and the colour ranges of the colour PNGs."""
    import numpy as np

    conf_low, conf_high = (float(np.exp(v)) for v in ranges.log_conf)
    return {
        "frames": view.num_frames, "name": "frame_{t:05d}.png (.npy in depth_float), t from 0",
        "depth": {"colors": "TURBO of inverse depth (1/z), linear; near red, far blue; values beyond the "
                            "range take the end colours", "near": ranges.near, "far": ranges.far,
                  "units": "the scene's (arbitrary global scale)", "invalid_rgb": list(INVALID_RGB),
                  "colorbar": "depth_colorbar.png"},
        "conf": {"colors": "TURBO of log confidence; low blue, high red", "low": conf_low, "high": conf_high,
                 "colorbar": "conf_colorbar.png"},
        "depth16": {"meaning": "uint16, depth = value / scale, 0 = no depth", "scale": scale16},
        "depth_float": {"meaning": "float32 (H, W) .npy: z in the frame's camera, the scene's units; NaN = no "
                                   "depth", "read": "numpy.load(path, allow_pickle=False)"},
        "valid": {"meaning": "uint8, 255 = valid depth (finite z > 0), 0 = none"},
        "normal": {"meaning": "RGB uint8 = (n + 1) / 2 * 255 of the unit surface normal facing the camera",
                   "axes": "the frame's OpenCV camera: x right, y down, z forward (a wall facing the "
                           "camera is (128, 128, 0))", "invalid_rgb": [0, 0, 0]},
    }


def export_maps(view: ViewData, out_dir: Path) -> list[Path]:
    """Per-frame maps under out_dir/maps (see the module docstring) and their legends and descriptions."""
    import json

    from st4r_cli import progress
    from st4r_cli.runs.atomic import atomic_write_text

    maps = Path(out_dir) / "maps"
    for sub in MAP_DIRS:
        (maps / sub).mkdir(parents=True, exist_ok=True)
    ranges = depth_ranges(view)
    scale16 = depth16_scale(view.depth)
    written = []
    for t in progress.track(range(view.num_frames), "maps", total=view.num_frames):
        for sub, image in frame_maps(view, t, ranges, scale16).items():
            path = maps / sub / f"frame_{t:05d}{'.npy' if sub == 'depth_float' else '.png'}"
            _save_map(path, image)
            written.append(path)
    for name, bar in (("depth_colorbar.png", depth_colorbar(*COLORBAR_SIZE, ranges)),
                      ("conf_colorbar.png", conf_colorbar(*COLORBAR_SIZE, ranges))):
        _save_map(maps / name, bar)
        written.append(maps / name)
    info = {"scale": scale16, "meaning": "depth = value / scale (z in each frame's camera, the scene's units); "
                                         "0 = no depth", "frames": view.num_frames}
    atomic_write_text(maps / "depth16.json", json.dumps(info, indent=2) + "\n")
    atomic_write_text(maps / "maps.json", json.dumps(maps_info(view, ranges, scale16), indent=2) + "\n")
    written += [maps / "depth16.json", maps / "maps.json"]
    return written
