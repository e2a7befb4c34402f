"""Small synthetic videos and image folders for the foundation tests (written with PyAV/Pillow)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def gray_level_frames(count: int, hw: tuple[int, int] = (48, 64)) -> np.ndarray:
    """(T, H, W, 3) uint8 frames whose solid gray level encodes the index: level = 8 * index + 4."""
    levels = (8 * np.arange(count) + 4).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (count, *hw, 3)).copy()


def index_of(frame: np.ndarray) -> int:
    """Inverse of `gray_level_frames` (robust to lossy coding)."""
    return int(round((float(frame.mean()) - 4.0) / 8.0))


def write_video(path: Path, frames: np.ndarray, codec: str = "libx264", pix_fmt: str = "yuv420p",
                rate: int = 10, times_s: list[float] | None = None, rotation: int | None = None,
                in_format: str = "rgb24", faststart: bool = False) -> Path:
    """Encode `frames` ((T,H,W,3) rgb24, (T,H,W,4) rgba or (T,H,W) gray) to `path`.

    times_s: presentation times (variable frame rate); rotation: display matrix, counter-clockwise.
    """
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = pix_fmt
        if codec == "libx264":
            stream.options = {"crf": "12"}
        if times_s is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=in_format)
            if times_s is not None:
                frame.pts = int(round(times_s[index] * 1000))
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def noise_video(path: Path, count: int = 30, faststart: bool = False) -> Path:
    """A video of random frames (poorly compressible, so damage hits many frames)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (count, 48, 64, 3), dtype=np.uint8)
    return write_video(path, frames, faststart=faststart)
