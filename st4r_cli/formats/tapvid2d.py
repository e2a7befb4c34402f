"""TAP-Vid 2D point tracks: the official pickle and the per-clip folders of `tapvid-davis-32`.

- Official pickle (TAP-Vid DAVIS/RGB-Stacking): a dict `name -> {'video': (T, H, W, 3) uint8,
  'points': (N, T, 2) float xy normalised to [0, 1], 'occluded': (N, T) bool}`; raster coordinates are
  `points * [W, H]`.
- Folder layout: `frames/00000.jpg ...`, `tracks2d.npz` with `points (N, T, 2)` raster xy,
  `occluded (N, T)`, `query_t (N,)` (first visible frame), `width`, `height`; optional `source.json`.

TAP-Vid uses raster coordinates, where (0, 0) is the top-left corner of the top-left pixel (tapnet's
`convert_grid_coordinates`), while st4r puts pixel centres at integers. Readers therefore return
`tracks_xy = raster - 0.5` and writers add the 0.5 back; both read into `TapVid2DClip` (st4r
conventions: pixel `tracks_xy`, `visible = ~occluded`).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from st4r_cli.errors import St4rError
from st4r_cli.formats._io import atomic_directory, list_images, load_npz, read_image, write_image

RASTER_TO_PIXEL = 0.5  # st4r pixel coordinate = TAP-Vid raster coordinate - 0.5


@dataclass
class TapVid2DClip:
    name: str
    frames: np.ndarray          # (T, H, W, 3) uint8
    tracks_xy: np.ndarray       # (N, T, 2) pixels of the frames (st4r convention: centres at integers)
    visible: np.ndarray         # (N, T) bool
    query_t: np.ndarray         # (N,) int, first visible frame
    source: dict = field(default_factory=dict)

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def first_visible(visible: np.ndarray) -> np.ndarray:
    """`(N,)` first visible frame of each track (0 for a never-visible track)."""
    return np.argmax(np.asarray(visible, dtype=bool), axis=1).astype(np.int32)


def read_tapvid_pickle(path: Path) -> list[TapVid2DClip]:
    """All videos of an official TAP-Vid pickle.

    Read with a restricted unpickler (`st4r_cli.safe_load`): dicts, lists, strings, numbers and NumPy arrays
    only, so a crafted pickle cannot run code (St4rError naming the refused type).
    """
    from st4r_cli.safe_load import read_restricted_pickle

    path = Path(path)
    data = read_restricted_pickle(path)
    if isinstance(data, list):  # Kinetics-style list of videos
        data = {str(i): item for i, item in enumerate(data)}
    if not isinstance(data, dict):
        raise St4rError(f"{path}: not a TAP-Vid pickle (expected a dict of videos, got {type(data).__name__})")
    clips = []
    for name, item in data.items():
        if not isinstance(item, dict) or not all(k in item for k in ("video", "points", "occluded")):
            raise St4rError(f"{path}: entry {name!r} lacks video/points/occluded")
        video = np.asarray(item["video"])
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype == object:
            raise St4rError(f"{path}: entry {name!r}: video must be (T, H, W, 3), got {video.shape}")
        height, width = video.shape[1:3]
        visible = ~np.asarray(item["occluded"], dtype=bool)
        tracks = np.asarray(item["points"], dtype=np.float64) * np.array([width, height]) - RASTER_TO_PIXEL
        clips.append(TapVid2DClip(str(name), video.astype(np.uint8), tracks.astype(np.float32), visible,
                                  first_visible(visible)))
    return clips


def write_tapvid_pickle(path: Path, clips: list[TapVid2DClip]) -> Path:
    """Write clips in the official layout (normalised points, occluded flags)."""
    from st4r_cli.runs.atomic import atomic_write_bytes

    data = {}
    for clip in clips:
        height, width = clip.size_hw
        data[clip.name] = {"video": clip.frames,
                           "points": ((clip.tracks_xy + RASTER_TO_PIXEL) / np.array([width, height])).astype(np.float32),
                           "occluded": ~clip.visible}
    atomic_write_bytes(Path(path), pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    return Path(path)


def is_tapvid_folder(path: Path) -> bool:
    return (Path(path) / "tracks2d.npz").is_file() and (Path(path) / "frames").is_dir()


def read_tapvid_folder(path: Path, load_frames: bool = True) -> TapVid2DClip:
    """Read a `tapvid-davis-32`-style folder."""
    path = Path(path)
    if not is_tapvid_folder(path):
        raise St4rError(f"{path} is not a TAP-Vid clip folder (needs frames/ and tracks2d.npz)")
    data = load_npz(path / "tracks2d.npz")
    missing = [k for k in ("points", "occluded") if k not in data]
    if missing:
        raise St4rError(f"{path / 'tracks2d.npz'}: missing {', '.join(missing)}")
    images = list_images(path / "frames")
    if not images:
        raise St4rError(f"{path / 'frames'} contains no frames")
    if load_frames:
        frames = np.stack([read_image(p) for p in images])
    else:
        first = read_image(images[0])
        frames = np.broadcast_to(first, (len(images), *first.shape))
    points = (np.asarray(data["points"], dtype=np.float64) - RASTER_TO_PIXEL).astype(np.float32)
    visible = ~np.asarray(data["occluded"], dtype=bool)
    if points.shape[1] != len(frames) or visible.shape != points.shape[:2]:
        raise St4rError(f"{path}: tracks cover {points.shape[1]} frames but frames/ holds {len(frames)}")
    if "width" in data and "height" in data and (int(data["height"]), int(data["width"])) != frames.shape[1:3]:
        raise St4rError(f"{path}: tracks2d.npz is for {int(data['width'])}x{int(data['height'])} but frames are "
                        f"{frames.shape[2]}x{frames.shape[1]}")
    query_t = np.asarray(data["query_t"], dtype=np.int32) if "query_t" in data else first_visible(visible)
    source = {}
    if (path / "source.json").is_file():
        source = json.loads((path / "source.json").read_text())
    return TapVid2DClip(path.name, frames, points, visible, query_t, source)


def write_tapvid_folder(path: Path, clip: TapVid2DClip, overwrite: bool = False) -> Path:
    """Write a clip in the folder layout (JPEG frames, tracks2d.npz, source.json)."""
    with atomic_directory(Path(path), overwrite=overwrite) as tmp:
        (tmp / "frames").mkdir()
        for index, frame in enumerate(clip.frames):
            write_image(tmp / "frames" / f"{index:05d}.jpg", frame)
        height, width = clip.size_hw
        with open(tmp / "tracks2d.npz", "wb") as handle:
            np.savez(handle, points=(clip.tracks_xy + RASTER_TO_PIXEL).astype(np.float32), occluded=~clip.visible,
                     query_t=clip.query_t.astype(np.int32), width=np.int32(width), height=np.int32(height))
        if clip.source:
            (tmp / "source.json").write_text(json.dumps(clip.source, indent=1))
    return Path(path)


def to_clip_gt(clip: TapVid2DClip) -> dict[str, np.ndarray]:
    """Ground truth for evaluation: `tracks2d`, `visible`, `query_t`, `query_xy`."""
    rows = np.arange(len(clip.query_t))
    return {"tracks2d": clip.tracks_xy.astype(np.float32), "visible": clip.visible,
            "query_t": clip.query_t.astype(np.int32),
            "query_xy": clip.tracks_xy[rows, clip.query_t].astype(np.float32)}
