"""Decode stage: a video file (PyAV) or a folder of images -> frames at the processing resolution.

Output arrays (see docs/architecture.md, "Stage contracts"):
    frames        (T, H, W, 3) uint8 RGB at the processing resolution
    orig_hw       (2,) int64     source size (H, W) as displayed (after rotation metadata)
    fps           () float64     mean frame rate of the returned frames (source rate / stride)
    timestamps_s  (T,) float64   presentation time of each returned frame, 0 at the source's first frame
    frame_indices (T,) int64     index of each returned frame in the source (decode order)

Processing size: the long side is scaled to `long_side` (never enlarged unless `upscale`), the aspect
ratio is kept, then H and W are each rounded to the nearest multiple of `multiple` (the model's patch
size). A source pixel centre (x, y) maps to ((x + 0.5) * W / W0 - 0.5, (y + 0.5) * H / H0 - 0.5).

Handled: rotation metadata (display matrix), variable frame rate (real timestamps), grayscale, alpha
(composited over black), 16-bit input, odd sizes, and folders of images (natural sort order, EXIF
orientation). Bad input raises St4rError with one line.

The config dataclass is a light import; PyAV, OpenCV and Pillow are imported inside functions.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from st4r_cli.configs import DecodeConfig
from st4r_cli.errors import St4rError
from st4r_cli.paths import check_input_path

DECODE_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_ASPECT = 16.0          # wider/taller than 16:1 is not a video st4r can use
MAX_LONG_SIDE = 8192
MAX_SOURCE_PIXELS = 8192 * 8192   # 67 Mpx a frame (8K UHD is 33 Mpx): one RGB frame is 200 MB at most


@dataclass
class SourceInfo:
    """What a source's header says, read before decoding (`probe_source`)."""

    num_frames: int | None            # frames the selection keeps (None: the header does not say)
    orig_hw: tuple[int, int] | None   # source frame size (None: unknown)


def check_source_pixels(source: Path | str, width: int, height: int) -> None:
    """St4rError for a frame larger than MAX_SOURCE_PIXELS (decoding it would allocate W x H x 3 bytes)."""
    if width * height > MAX_SOURCE_PIXELS:
        raise St4rError(f"{source}: frames of {width}x{height} pixels are too large ({width * height / 1e6:.0f} Mpx, "
                        f"{3 * width * height / 2**30:.1f} GiB a frame); st4r reads at most "
                        f"{MAX_SOURCE_PIXELS / 1e6:.0f} Mpx a frame: downscale the video first")


def probe_source(source: str | Path, cfg: DecodeConfig) -> SourceInfo:
    """The frame count (after start/end/stride/max_frames) and frame size from the source's header,
    without decoding; St4rError for frames above MAX_SOURCE_PIXELS. Unknown values are None."""
    source = Path(source)
    check_input_path(source)
    if source.is_dir():
        files = _image_files(source)
        if not files:
            return SourceInfo(None, None)
        width, height = _image_size(files[0])
        return SourceInfo(expected_count(len(files), cfg), (height, width))
    import av

    _quiet_ffmpeg()
    try:
        with av.open(str(source), mode="r") as container:
            if not container.streams.video:
                return SourceInfo(None, None)
            stream = container.streams.video[0]
            width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
            total = int(stream.frames or 0)
    except (av.FFmpegError, OSError):
        return SourceInfo(None, None)   # decode reports why
    check_source_pixels(source, width, height)
    count = expected_count(total, cfg) if total else cfg.max_frames
    return SourceInfo(count, (height, width) if width and height else None)


@dataclass
class _RawFrame:
    index: int                        # index in the source
    time_s: float | None              # presentation time, None if unknown
    rgb: Any                          # (H0, W0, 3) uint8, display orientation


def check_decode_config(cfg: DecodeConfig) -> None:
    """St4rError for option values that cannot work."""
    if not 1 <= cfg.multiple <= 256:
        raise St4rError(f"decode multiple must be in [1, 256], got {cfg.multiple}")
    if not cfg.multiple <= cfg.long_side <= MAX_LONG_SIDE:
        raise St4rError(f"processing long side {cfg.long_side} is out of range "
                        f"[{cfg.multiple}, {MAX_LONG_SIDE}]")
    if cfg.start < 0:
        raise St4rError(f"--start must be >= 0, got {cfg.start}")
    if cfg.end is not None and cfg.end <= cfg.start:
        raise St4rError(f"--end ({cfg.end}) must be greater than --start ({cfg.start})")
    if cfg.stride < 1:
        raise St4rError(f"--stride must be >= 1, got {cfg.stride}")
    if cfg.max_frames is not None and cfg.max_frames < 2:
        raise St4rError(f"--max-frames must be >= 2, got {cfg.max_frames}")
    if cfg.fps is not None and not cfg.fps > 0:
        raise St4rError(f"fps must be > 0, got {cfg.fps}")


def processing_hw(orig_hw: tuple[int, int], cfg: DecodeConfig) -> tuple[int, int]:
    """Processing size (H, W) for a source of size `orig_hw` (see module docstring)."""
    h0, w0 = int(orig_hw[0]), int(orig_hw[1])
    if min(h0, w0) < 1 or max(h0, w0) / min(h0, w0) > MAX_ASPECT:
        raise St4rError(f"absurd frame size {w0}x{h0} (aspect ratio above {MAX_ASPECT:g}:1)")
    scale = cfg.long_side / max(h0, w0)
    if not cfg.upscale:
        scale = min(scale, 1.0)
    m = cfg.multiple
    h = max(m, int(round(h0 * scale / m)) * m)
    w = max(m, int(round(w0 * scale / m)) * m)
    return h, w


def selected(index: int, cfg: DecodeConfig) -> bool:
    """Whether source frame `index` is kept by start/end/stride (max_frames is applied by the caller)."""
    if index < cfg.start or (cfg.end is not None and index >= cfg.end):
        return False
    return (index - cfg.start) % cfg.stride == 0


def expected_count(total: int, cfg: DecodeConfig) -> int:
    """How many frames the selection keeps from a source of `total` frames."""
    stop = total if cfg.end is None else min(total, cfg.end)
    count = max(0, (stop - cfg.start + cfg.stride - 1) // cfg.stride) if stop > cfg.start else 0
    return count if cfg.max_frames is None else min(count, cfg.max_frames)


def decode(source: str | Path, cfg: DecodeConfig) -> dict[str, Any]:
    """Decode `source` (video file or image folder) into the arrays listed in the module docstring."""
    import numpy as np

    from st4r_cli import progress

    check_decode_config(cfg)
    source = Path(source)
    check_input_path(source)
    if source.is_dir():
        raw_frames, total, folder_fps = _image_folder_frames(source, cfg)
    else:
        raw_frames, total = _video_frames(source, cfg)
        folder_fps = None

    frames = _FrameBuffer()
    times: list[float | None] = []
    indices: list[int] = []
    size_hw: tuple[int, int] | None = None
    orig_hw: tuple[int, int] | None = None
    expected = expected_count(total, cfg) if total else cfg.max_frames
    kept = itertools.islice(raw_frames, cfg.max_frames)  # max_frames None: no limit
    for raw in progress.track(kept, f"decoding {source.name}", total=expected):
        if orig_hw is None:
            orig_hw = raw.rgb.shape[:2]
            size_hw = processing_hw(orig_hw, cfg)
            frames.reserve(min(expected or 16, 512), size_hw)   # a header can lie: grown as needed
            progress.debug(f"decode: source {orig_hw[1]}x{orig_hw[0]} -> {size_hw[1]}x{size_hw[0]}")
        elif raw.rgb.shape[:2] != orig_hw:
            raise St4rError(f"{source}: frame {raw.index} is {raw.rgb.shape[1]}x{raw.rgb.shape[0]}, "
                            f"but the first kept frame is {orig_hw[1]}x{orig_hw[0]}")
        frames.append(_resize(raw.rgb, size_hw))
        times.append(raw.time_s)
        indices.append(raw.index)
    _close(raw_frames)

    if len(frames) < 2:
        where = "" if (cfg.start, cfg.end, cfg.stride) == (0, None, 1) else " in the selected range"
        hint = " (for a sequence of images, pass their folder)" if source.suffix.lower() in IMAGE_SUFFIXES else ""
        raise St4rError(f"{source}: {len(frames)} decodable frame(s){where}; st4r needs at least 2{hint}")
    timestamps = _fill_timestamps(times, indices, folder_fps)
    span = timestamps[-1] - timestamps[0]
    fps = (len(frames) - 1) / span if span > 0 else (folder_fps or 30.0) / cfg.stride
    assert orig_hw is not None
    return {
        "frames": frames.array(),
        "orig_hw": np.asarray(orig_hw, dtype=np.int64),
        "fps": np.asarray(fps, dtype=np.float64),
        "timestamps_s": np.asarray(timestamps, dtype=np.float64),
        "frame_indices": np.asarray(indices, dtype=np.int64),
    }


class _FrameBuffer:
    """The decoded frames in one growing (T, H, W, 3) uint8 array: each frame is copied in as it comes, so
    the video is in memory once (a list of frames stacked at the end held it twice)."""

    def __init__(self) -> None:
        import numpy as np

        self.data = np.zeros((0, 1, 1, 3), np.uint8)
        self.count = 0

    def reserve(self, capacity: int, size_hw: tuple[int, int]) -> None:
        import numpy as np

        self.data = np.empty((max(1, capacity), *size_hw, 3), np.uint8)

    def append(self, frame: Any) -> None:
        if self.count == len(self.data):   # more frames than the header said: grow by half
            self.data.resize((self.count + max(1, self.count // 2), *self.data.shape[1:]), refcheck=False)
        self.data[self.count] = frame
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def array(self) -> Any:
        """(T, H, W, 3) uint8: the frames appended, the buffer trimmed to them in place."""
        if self.count != len(self.data):
            self.data.resize((self.count, *self.data.shape[1:]), refcheck=False)
        return self.data


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def _fill_timestamps(times: list[float | None], indices: list[int],
                     folder_fps: float | None) -> list[float]:
    """Seconds per kept frame; unknown times are filled from the frame index at the known rate."""
    if all(t is not None for t in times):
        return [float(t) for t in times]  # type: ignore[arg-type]
    known = [(i, t) for i, t in zip(indices, times, strict=True) if t is not None]
    rate = folder_fps or 30.0
    if len(known) >= 2 and known[-1][1] > known[0][1]:
        rate = (known[-1][0] - known[0][0]) / (known[-1][1] - known[0][1])
    return [float(t) if t is not None else i / rate for i, t in zip(indices, times, strict=True)]


def _resize(rgb: Any, size_hw: tuple[int, int] | None) -> Any:
    import cv2
    import numpy as np

    assert size_hw is not None
    h, w = size_hw
    if rgb.shape[:2] == (h, w):
        return np.ascontiguousarray(rgb)
    shrinking = h * w < rgb.shape[0] * rgb.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(rgb, (w, h), interpolation=interpolation)


# -- video files ---------------------------------------------------------------------------------
def _video_frames(path: Path, cfg: DecodeConfig) -> tuple[Iterator[_RawFrame], int]:
    """Open a video; returns a generator of kept frames and the frame count from the header (0 if unknown)."""
    import av

    _quiet_ffmpeg()
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as err:
        raise St4rError(f"cannot read {path} as a video (not a video, or corrupt/truncated): "
                        f"{_ffmpeg_reason(err)}") from None
    except OSError as err:
        raise St4rError(f"cannot open {path}: {err.strerror or err}") from None
    if not container.streams.video:
        container.close()
        raise St4rError(f"{path} has no video stream")
    stream = container.streams.video[0]
    try:
        check_source_pixels(path, int(stream.codec_context.width or 0), int(stream.codec_context.height or 0))
    except St4rError:
        container.close()
        raise
    stream.thread_type = "AUTO"
    total = int(stream.frames or 0)
    return _video_generator(container, stream, path, cfg, total), total


def _video_generator(container: Any, stream: Any, path: Path, cfg: DecodeConfig,
                     total: int) -> Iterator[_RawFrame]:
    import av

    index = -1
    first_time: float | None = None
    try:
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.FFmpegError as err:
                raise St4rError(_corrupt_message(path, index + 1, cfg, _ffmpeg_reason(err))) from None
            index += 1
            time_s = float(frame.time) if frame.time is not None else None
            if first_time is None and time_s is not None:
                first_time = time_s
            if cfg.end is not None and index >= cfg.end:
                return
            if not selected(index, cfg):
                continue
            if getattr(frame, "is_corrupt", False):  # the decoder concealed damaged data
                raise St4rError(_corrupt_message(path, index, cfg, f"frame {index} is damaged"))
            rel_time = None if time_s is None or first_time is None else time_s - first_time
            yield _RawFrame(index, rel_time, _video_frame_rgb(frame))
        _check_not_truncated(path, index + 1, total, cfg)
    finally:
        container.close()


def _check_not_truncated(path: Path, decoded: int, total: int, cfg: DecodeConfig) -> None:
    """A video that ends well before the frame count its header promises is truncated."""
    wanted = total if cfg.end is None else min(total, cfg.end)
    if total > 0 and decoded < wanted and total - decoded > max(2, total // 20):
        raise St4rError(_corrupt_message(path, decoded, cfg,
                                         f"the header promises {total} frames"))


def _corrupt_message(path: Path, decoded: int, cfg: DecodeConfig, reason: str) -> str:
    hint = f"; use --end {decoded} to keep the frames before it" if decoded > cfg.start + 1 else ""
    return f"{path} is corrupt or truncated: decoding stopped after {decoded} frame(s) ({reason}){hint}"


def _video_frame_rgb(frame: Any) -> Any:
    """A decoded PyAV frame as (H, W, 3) uint8 RGB in display orientation."""
    import numpy as np

    if _has_alpha(frame.format):
        rgba = frame.to_ndarray(format="rgba").astype(np.float32)
        rgb = np.round(rgba[..., :3] * (rgba[..., 3:] / 255.0)).astype(np.uint8)
    else:
        rgb = frame.to_ndarray(format="rgb24")
    rotation = int(getattr(frame, "rotation", 0) or 0)
    quarter_turns = int(round(rotation / 90.0)) % 4
    if quarter_turns:
        rgb = np.rot90(rgb, k=quarter_turns)  # display matrix rotates counter-clockwise
    return np.ascontiguousarray(rgb)


def _has_alpha(pix_format: Any) -> bool:
    """Whether a PyAV VideoFormat carries alpha (an alpha component, or a palette, which may)."""
    return bool(pix_format.has_palette) or any(c.is_alpha for c in pix_format.components)


def _quiet_ffmpeg() -> None:
    """Keep FFmpeg's log lines off the terminal (errors are reported as St4rError).

    `set_level(None)` installs PyAV's C no-op log callback. Never a Python-level log level: that
    callback takes the GIL from FFmpeg's decoder threads and can deadlock threaded decoding.
    """
    try:
        import av.logging

        av.logging.set_level(None)
    except (ImportError, AttributeError):
        pass


def _ffmpeg_reason(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return " ".join(str(text).split())


# -- image folders -------------------------------------------------------------------------------
def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _image_files(folder: Path) -> list[Path]:
    """The folder's images in natural order (skips ._x.png and temp files)."""
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)


@contextmanager
def _open_image(path: Path) -> Iterator[Any]:
    """The PIL image of `path`, opened once: St4rError (one line) for an unreadable file or one above
    MAX_SOURCE_PIXELS, which its header tells before anything is decoded (and before PIL's own
    decompression-bomb warning, which would print two raw lines); errors while the caller loads it too."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # capped below
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_SOURCE_PIXELS:
                    raise St4rError(f"image {path} is too large to read safely: {width}x{height} pixels "
                                    f"({width * height / 1e6:.0f} Mpx; st4r reads at most "
                                    f"{MAX_SOURCE_PIXELS / 1e6:.0f} Mpx)")
                yield image
    except Image.DecompressionBombError:
        raise St4rError(f"image {path} is too large to read safely") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise St4rError(f"cannot read image {path}: {' '.join(str(err).split())}") from None


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header (`_open_image`'s checks)."""
    with _open_image(path) as image:
        return image.size


def _image_folder_frames(folder: Path, cfg: DecodeConfig) -> tuple[Iterator[_RawFrame], int, float]:
    files = _image_files(folder)
    if not files:
        raise St4rError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
    fps = float(cfg.fps or 30.0)

    def generate() -> Iterator[_RawFrame]:
        for index, file in enumerate(files):
            if cfg.end is not None and index >= cfg.end:
                return
            if selected(index, cfg):
                yield _RawFrame(index, index / fps, _read_image_rgb(file))

    return generate(), len(files), fps


def _read_image_rgb(path: Path) -> Any:
    """An image file as (H, W, 3) uint8 RGB, EXIF-rotated, alpha over black, 16-bit scaled."""
    import numpy as np
    from PIL import ImageOps

    with _open_image(path) as image:
        image = ImageOps.exif_transpose(image)
        image.load()
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or gray.max() > 255 else 255.0
        gray8 = np.clip(np.round(gray * 255.0 / peak), 0, 255).astype(np.uint8)
        return np.repeat(gray8[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        return np.round(rgba[..., :3] * (rgba[..., 3:] / 255.0)).astype(np.uint8)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))



# -- the frames of a stored decode result, read one at a time ------------------------------------
class StoredFrames:
    """The `frames (T, H, W, 3)` uint8 of a decode result saved as an uncompressed `.npz` (the stage
    cache's format), read frame by frame from the file: a consumer that goes through the video (the
    tracker) never holds it all. Item t is frame t `(H, W, 3)`; `shape`, `dtype`, `ndim` and `len()` are
    the array's; `np.asarray(...)` reads the whole array (for consumers that need it at once)."""

    def __init__(self, npz_path: str | Path, name: str = "frames") -> None:
        import numpy as np

        self.path = Path(npz_path)
        self.name = name
        self._offset, self.shape, self.dtype = _npz_member_layout(self.path, f"{name}.npy")
        if len(self.shape) != 4 or self.shape[-1] != 3 or self.dtype != np.uint8:
            raise St4rError(f"{self.path}: '{name}' is {self.shape} {self.dtype}, not (T, H, W, 3) uint8 frames")
        self.ndim = 4
        self._frame_bytes = int(np.prod(self.shape[1:]))

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, t: int) -> Any:
        import numpy as np

        if not 0 <= t < len(self):
            raise IndexError(f"frame {t} of {len(self)}")
        out = np.empty(self.shape[1:], np.uint8)
        with open(self.path, "rb") as handle:
            handle.seek(self._offset + t * self._frame_bytes)
            if handle.readinto(memoryview(out).cast("B")) != self._frame_bytes:
                raise St4rError(f"{self.path}: frame {t} is cut short (damaged cache file)")
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        import numpy as np

        with np.load(self.path, allow_pickle=False) as data:
            frames = data[self.name]
        return frames if dtype is None else frames.astype(dtype, copy=False)


def _npz_member_layout(path: Path, member: str) -> tuple[int, tuple[int, ...], Any]:
    """(byte offset of the array data in the file, shape, dtype) of the C-ordered `.npy` `member` stored
    uncompressed in the `.npz` at `path` (St4rError when it is compressed or not there)."""
    import struct
    import zipfile

    import numpy as np

    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(member)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise St4rError(f"{path}: cannot read '{member}': {exc}") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise St4rError(f"{path}: '{member}' is compressed; frames are read one at a time from stored arrays")
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise St4rError(f"{path}: damaged zip entry '{member}'")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        handle.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        if fortran:
            raise St4rError(f"{path}: '{member}' is stored in Fortran order")
        return handle.tell(), tuple(shape), dtype
