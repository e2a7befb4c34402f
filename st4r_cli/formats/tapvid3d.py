"""TAPVid-3D `.npz` files (also the format of St4RTrack's WorldTrack benchmark).

Keys (time-major, as published):
- `images_jpeg_bytes (T,)` object array of JPEG-encoded frames;
- `tracks_XYZ (T, N, 3)` float, each frame's camera coordinates;
- `visibility (T, N)` bool;
- `fx_fy_cx_cy (4,)` float, intrinsics at the frames' resolution;
- optional `queries_xyt (N, 3)` (x, y, t), `extrinsics_w2c (T, 4, 4)`, `depth_map (T, H, W)`.

`read_tapvid3d` returns st4r conventions (track-major `(N, T, ...)`, `cam_c2w`); `to_clip_gt` gives the
ground truth of a clip folder in frame 0's camera coordinates, the way St4RTrack loads these files
(extrinsics normalised so that frame 0 is the identity; without extrinsics, world = camera).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from st4r_cli.errors import St4rError
from st4r_cli.geometry import camera_np


@dataclass
class TapVid3DClip:
    frames: np.ndarray                 # (T, H, W, 3) uint8
    tracks_cam: np.ndarray             # (N, T, 3) camera coordinates of each frame
    visible: np.ndarray                # (N, T) bool
    fx_fy_cx_cy: np.ndarray            # (4,)
    queries_xyt: np.ndarray | None     # (N, 3)
    extrinsics_w2c: np.ndarray | None  # (T, 4, 4)
    depth: np.ndarray | None           # (T, H, W)

    @property
    def intrinsics(self) -> np.ndarray:
        fx, fy, cx, cy = self.fx_fy_cx_cy
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    @property
    def cam_c2w(self) -> np.ndarray:
        """`(T, 4, 4)` poses normalised so that frame 0 is the identity (identity without extrinsics)."""
        num_frames = self.frames.shape[0]
        if self.extrinsics_w2c is None:
            return np.tile(np.eye(4), (num_frames, 1, 1))
        w2c = np.asarray(self.extrinsics_w2c, dtype=np.float64)
        return np.linalg.inv(w2c @ np.linalg.inv(w2c[0]))


def _decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data if isinstance(data, bytes) else str(data).encode("latin1"))) as image:
            return np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError as err:
        raise St4rError(f"a frame is too large to read safely: {err}") from None
    except (OSError, ValueError) as err:
        raise St4rError(f"a frame is not a readable JPEG: {' '.join(str(err).split())}") from None


def _encode_jpeg(frame: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def read_tapvid3d(path: Path) -> TapVid3DClip:
    """Read a TAPVid-3D npz.

    Numeric arrays are read with `allow_pickle=False`; the frames (`images_jpeg_bytes`, an object array
    of JPEG bytes in the published files) with the restricted unpickler of `st4r_cli.safe_load`, which
    accepts only an array of bytes/str.
    """
    from st4r_cli.safe_load import load_npz_untrusted

    data = load_npz_untrusted(Path(path))
    missing = [k for k in ("images_jpeg_bytes", "tracks_XYZ", "visibility", "fx_fy_cx_cy") if k not in data]
    if missing:
        raise St4rError(f"{path}: not a TAPVid-3D file (missing {', '.join(missing)})")
    try:
        frames = np.stack([_decode_jpeg(b) for b in data["images_jpeg_bytes"]])
    except St4rError as err:
        raise St4rError(f"{path}: {err}") from None
    except ValueError as err:  # frames of different sizes
        raise St4rError(f"{path}: frames do not stack: {err}") from None
    tracks = np.asarray(data["tracks_XYZ"], dtype=np.float64)
    visibility = np.asarray(data["visibility"], dtype=bool)
    if tracks.ndim != 3 or tracks.shape[0] != len(frames) or visibility.shape != tracks.shape[:2]:
        raise St4rError(f"{path}: tracks_XYZ {tracks.shape} / visibility {visibility.shape} do not match "
                        f"{len(frames)} frames")
    return TapVid3DClip(
        frames=frames,
        tracks_cam=np.transpose(tracks, (1, 0, 2)),
        visible=np.transpose(visibility, (1, 0)),
        fx_fy_cx_cy=np.asarray(data["fx_fy_cx_cy"], dtype=np.float64),
        queries_xyt=np.asarray(data["queries_xyt"], dtype=np.float64) if "queries_xyt" in data else None,
        extrinsics_w2c=np.asarray(data["extrinsics_w2c"], dtype=np.float64) if "extrinsics_w2c" in data else None,
        depth=np.asarray(data["depth_map"], dtype=np.float32) if "depth_map" in data else None,
    )


def write_tapvid3d(path: Path, clip: TapVid3DClip, jpeg_quality: int = 95) -> Path:
    """Write a TAPVid-3D npz atomically (time-major arrays, JPEG frames)."""
    from st4r_cli.runs.atomic import atomic_write_with

    images = np.empty(len(clip.frames), dtype=object)
    for index, frame in enumerate(clip.frames):
        images[index] = _encode_jpeg(frame, jpeg_quality)
    arrays = {
        "images_jpeg_bytes": images,
        "tracks_XYZ": np.transpose(clip.tracks_cam, (1, 0, 2)).astype(np.float32),
        "visibility": np.transpose(clip.visible, (1, 0)).astype(bool),
        "fx_fy_cx_cy": np.asarray(clip.fx_fy_cx_cy, dtype=np.float32),
    }
    if clip.queries_xyt is not None:
        arrays["queries_xyt"] = np.asarray(clip.queries_xyt, dtype=np.float32)
    if clip.extrinsics_w2c is not None:
        arrays["extrinsics_w2c"] = np.asarray(clip.extrinsics_w2c, dtype=np.float32)
    if clip.depth is not None:
        arrays["depth_map"] = np.asarray(clip.depth, dtype=np.float32)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write_with(Path(path), write)
    return Path(path)


def project(tracks_cam: np.ndarray, fx_fy_cx_cy: np.ndarray) -> np.ndarray:
    """Pixel positions `(N, T, 2)` of camera-frame points (NaN where z <= 0)."""
    fx, fy, cx, cy = fx_fy_cx_cy
    k_mat = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return camera_np.project(np.asarray(tracks_cam), k_mat)[0]


def to_clip_gt(clip: TapVid3DClip) -> dict[str, np.ndarray]:
    """Ground truth for a st4r clip folder: world = frame-0 camera, tracks projected to 2D.

    Queries: `queries_xyt` when present, else each track's first visible frame.
    """
    cam_c2w = clip.cam_c2w
    tracks_world = np.einsum("tij,ntj->nti", cam_c2w[:, :3, :3], clip.tracks_cam) + cam_c2w[None, :, :3, 3]
    tracks2d = project(clip.tracks_cam, clip.fx_fy_cx_cy)
    if clip.queries_xyt is not None:
        query_t = np.round(clip.queries_xyt[:, 2]).astype(np.int32)
        query_xy = clip.queries_xyt[:, :2]
    else:
        query_t = np.argmax(clip.visible, axis=1).astype(np.int32)
        query_xy = tracks2d[np.arange(len(query_t)), query_t]
    gt = {"cam_c2w": cam_c2w.astype(np.float32), "intrinsics": clip.intrinsics.astype(np.float32),
          "tracks3d": tracks_world.astype(np.float32), "tracks2d": tracks2d.astype(np.float32),
          "visible": clip.visible, "query_t": query_t, "query_xy": np.nan_to_num(query_xy).astype(np.float32)}
    if clip.depth is not None:
        gt["depth"] = clip.depth
    return gt


def from_clip_gt(frames: np.ndarray, gt: dict[str, np.ndarray]) -> TapVid3DClip:
    """A TAPVid-3D clip from clip-folder ground truth (needs `tracks3d`, `intrinsics`; `cam_c2w`,
    `visible`, `query_t`/`query_xy`, `depth` used when present). Tracks go to each frame's camera."""
    missing = [k for k in ("tracks3d", "intrinsics") if k not in gt]
    if missing:
        raise St4rError(f"TAPVid-3D export needs {', '.join(missing)} in the ground truth")
    num_tracks, num_frames = gt["tracks3d"].shape[:2]
    cam_c2w = gt["cam_c2w"].astype(np.float64) if "cam_c2w" in gt else np.tile(np.eye(4), (num_frames, 1, 1))
    w2c = np.linalg.inv(cam_c2w)
    tracks_cam = np.einsum("tij,ntj->nti", w2c[:, :3, :3], gt["tracks3d"].astype(np.float64)) + w2c[None, :, :3, 3]
    K = gt["intrinsics"] if gt["intrinsics"].ndim == 2 else gt["intrinsics"][0]
    queries = None
    if "query_xy" in gt:
        query_t = gt["query_t"] if "query_t" in gt else np.zeros(num_tracks)
        queries = np.concatenate([gt["query_xy"], np.asarray(query_t, dtype=np.float64)[:, None]], axis=1)
    return TapVid3DClip(frames=np.asarray(frames, dtype=np.uint8), tracks_cam=tracks_cam,
                        visible=gt["visible"].astype(bool) if "visible" in gt else np.ones((num_tracks, num_frames), bool),
                        fx_fy_cx_cy=np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], dtype=np.float64),
                        queries_xyt=queries, extrinsics_w2c=w2c if "cam_c2w" in gt else None,
                        depth=gt.get("depth"))
