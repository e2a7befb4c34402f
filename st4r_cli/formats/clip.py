"""The st4r clip folder: ground truth that `st4r eval --gt` reads and `st4r synth` writes.

    CLIP/
      frames/00000.png ...     RGB frames (PNG or JPEG), sorted by name: T frames of H x W
      gt.npz                   ground truth, every key optional (schema: `GT_SCHEMA`, docs/formats.md)
      meta.json                optional: where the clip comes from (preset, seed, source dataset, ...)
      queries.npy              written with tracks: (N, 3) float32 (t, x, y) of the ground-truth queries,
                               for `st4r adapt --queries` so that every ground-truth track gets a prediction

Conventions: world coordinates are arbitrary (eval re-expresses them in frame 0's camera using
`cam_c2w[0]`; without `cam_c2w` they are taken to be frame 0's camera already); pixels are those of the
frames; depth is z-depth with an explicit or implied (`depth > 0`) valid mask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from st4r_cli.errors import St4rError
from st4r_cli.formats._io import atomic_directory, list_images, load_npz, read_image, write_image

# key -> (shape with symbols T frames, H, W, N tracks; dtype kind: f float, b bool, i integer; meaning)
GT_SCHEMA: dict[str, tuple[tuple, str, str]] = {
    "cam_c2w": (("T", 4, 4), "f", "camera-to-world poses"),
    "intrinsics": ((3, 3), "f", "pinhole K in pixels of the frames, (3, 3) or per frame (T, 3, 3)"),
    "depth": (("T", "H", "W"), "f", "z-depth, 0 or NaN where invalid"),
    "valid": (("T", "H", "W"), "b", "depth validity (default: depth > 0 and finite)"),
    "tracks3d": (("N", "T", 3), "f", "world positions of the tracked points"),
    "tracks2d": (("N", "T", 2), "f", "pixel positions (x, y) of the tracked points"),
    "visible": (("N", "T"), "b", "the point is visible in the frame"),
    "query_t": (("N",), "i", "query frame of each track"),
    "query_xy": (("N", 2), "f", "query pixel (x, y) at the query frame"),
    "dynamic": (("N",), "b", "the point moves in the world"),
    "dynamic_mask": (("T", "H", "W"), "b", "pixels showing moving things"),
    "points_world": (("T", "H", "W", 3), "f", "world point seen at each pixel"),
    "tracks3d_dense": (("T", "H", "W", 3), "f", "world position at t of frame 0's pixel surface point"),
    "visible_dense": (("T", "H", "W"), "b", "visibility of the dense frame-0 tracks"),
    "object_ids": (("T", "H", "W"), "i", "object index per pixel, -1 where invalid"),
}


@dataclass
class Clip:
    """A clip: frames `(T, H, W, 3) uint8`, ground-truth arrays (`GT_SCHEMA` keys) and metadata."""

    frames: np.ndarray
    gt: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    name: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def has(self, *keys: str) -> bool:
        return all(key in self.gt for key in keys)

    def depth_valid(self) -> np.ndarray:
        """`(T, H, W)` bool: the `valid` key, else depth > 0 and finite."""
        depth = self.gt["depth"]
        implied = np.isfinite(depth) & (depth > 0)
        return implied & self.gt["valid"].astype(bool) if "valid" in self.gt else implied


def _expected_shape(spec: tuple, dims: dict[str, int]) -> tuple:
    return tuple(dims.get(s, -1) if isinstance(s, str) else s for s in spec)


def validate_gt(gt: dict[str, np.ndarray], num_frames: int, size_hw: tuple[int, int], where: str = "gt.npz") -> None:
    """Check every known key's shape and dtype against `GT_SCHEMA`; raise `St4rError` naming the first problem."""
    dims = {"T": num_frames, "H": size_hw[0], "W": size_hw[1]}
    track_keys = [k for k in ("tracks3d", "tracks2d", "visible", "query_t", "query_xy", "dynamic") if k in gt]
    if track_keys:
        dims["N"] = int(np.shape(gt[track_keys[0]])[0])
    for key, value in gt.items():
        if key not in GT_SCHEMA:  # extra keys are carried along unchecked
            continue
        spec, kind, _ = GT_SCHEMA[key]
        shape = np.shape(value)
        if key == "intrinsics" and shape == (num_frames, 3, 3):
            pass
        elif shape != _expected_shape(spec, dims):
            expected = "x".join(str(dims.get(s, s)) if isinstance(s, str) else str(s) for s in spec)
            raise St4rError(f"{where}: '{key}' has shape {shape}, expected ({expected}) "
                            f"for {num_frames} frames of {size_hw[1]}x{size_hw[0]}")
        dtype_kind = np.asarray(value).dtype.kind
        ok = {"f": "fiu", "b": "b", "i": "iu"}[kind]
        if dtype_kind not in ok:
            raise St4rError(f"{where}: '{key}' has dtype {np.asarray(value).dtype}, expected {kind!r}-kind")


def write_clip(path: Path, frames: np.ndarray, gt: dict[str, np.ndarray] | None = None,
               meta: dict | None = None, overwrite: bool = False, image_format: str = "png") -> Path:
    """Write a clip folder atomically (frames/NNNNN.png, gt.npz compressed, meta.json)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise St4rError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    gt = {key: np.asarray(value) for key, value in (gt or {}).items()}
    validate_gt(gt, frames.shape[0], frames.shape[1:3])
    with atomic_directory(Path(path), overwrite=overwrite) as tmp:
        (tmp / "frames").mkdir()
        for index, frame in enumerate(frames):
            write_image(tmp / "frames" / f"{index:05d}.{image_format}", frame)
        if gt:
            with open(tmp / "gt.npz", "wb") as handle:
                np.savez_compressed(handle, **gt)
        if "query_xy" in gt:
            np.save(tmp / "queries.npy", query_array(gt))
        if meta:
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
    return Path(path)


def query_array(gt: dict[str, np.ndarray]) -> np.ndarray:
    """`(N, 3)` float32 (t, x, y) queries of the ground-truth tracks (query_t defaults to 0)."""
    query_xy = np.asarray(gt["query_xy"], dtype=np.float32)
    query_t = np.asarray(gt.get("query_t", np.zeros(len(query_xy))), dtype=np.float32)
    return np.concatenate([query_t[:, None], query_xy], axis=1)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def is_clip_folder(path: Path) -> bool:
    return (Path(path) / "frames").is_dir()


def read_clip(path: Path, load_frames: bool = True) -> Clip:
    """Read a clip folder; frames are all images in `frames/` sorted by name.

    With `load_frames=False` only the first frame is decoded (for its size) and `frames` holds it alone
    repeated as a broadcast view of shape `(T, H, W, 3)`; use it when only the ground truth is needed.
    """
    path = Path(path)
    if not is_clip_folder(path):
        raise St4rError(f"{path} is not a st4r clip folder (no frames/ directory)")
    images = list_images(path / "frames")
    if not images:
        raise St4rError(f"{path / 'frames'} contains no PNG/JPEG frames")
    if load_frames:
        decoded = [read_image(p) for p in images]
        if len({f.shape for f in decoded}) > 1:
            raise St4rError(f"{path / 'frames'}: frames have different sizes")
        frames = np.stack(decoded)
    else:
        first = read_image(images[0])
        frames = np.broadcast_to(first, (len(images), *first.shape))
    gt = load_npz(path / "gt.npz") if (path / "gt.npz").is_file() else {}
    validate_gt(gt, frames.shape[0], frames.shape[1:3], where=str(path / "gt.npz"))
    meta = {}
    if (path / "meta.json").is_file():
        try:
            meta = json.loads((path / "meta.json").read_text())
        except json.JSONDecodeError as exc:
            raise St4rError(f"{path / 'meta.json'} is not valid JSON: {exc}") from None
    return Clip(frames=frames, gt=gt, meta=meta, name=path.name)


def synthetic_gt(clip, num_tracks: int = 1024, seed: int = 0, dense: bool = False,
                 dynamic_fraction: float = 0.3) -> tuple[dict[str, np.ndarray], dict]:
    """Ground-truth arrays and metadata of a `SyntheticClip` for a clip folder.

    Sparse tracks: `num_tracks` frame-0 pixels (a `dynamic_fraction` of them on moving objects when
    there are any). `dense=True` adds the per-pixel arrays (`points_world`, `tracks3d_dense`,
    `visible_dense`, `object_ids`).
    """
    from st4r_cli.synthetic.tracks import sample_tracks

    tracks = sample_tracks(clip, num_tracks, seed=seed, dynamic_fraction=dynamic_fraction)
    gt = {
        "cam_c2w": clip.cam_c2w, "intrinsics": clip.intrinsics, "depth": clip.depth, "valid": clip.valid,
        "tracks3d": tracks.tracks3d, "tracks2d": tracks.tracks2d, "visible": tracks.visible,
        "query_t": tracks.query_t, "query_xy": tracks.query_xy, "dynamic": tracks.dynamic,
        "dynamic_mask": clip.dynamic_mask,
    }
    if dense:
        gt.update(points_world=clip.points_world, tracks3d_dense=clip.tracks3d_dense,
                  visible_dense=clip.visible_dense, object_ids=clip.object_ids)
    meta = {"source": "st4r synth", "synthetic": True, "preset": clip.preset, "seed": clip.seed,
            "num_frames": clip.num_frames, "size_hw": list(clip.size_hw), "camera_path": clip.camera_path,
            "scene_scale": clip.scene_scale, "objects": clip.object_names,
            "fov_x_deg": clip.meta.get("fov_x_deg"), "track_seed": seed}
    return gt, meta


def clip_from_synthetic(clip, num_tracks: int = 1024, seed: int = 0, dense: bool = False) -> Clip:
    """An in-memory `Clip` of a `SyntheticClip` (what `st4r synth` would write), ready for `evaluate_clip`."""
    gt, meta = synthetic_gt(clip, num_tracks=num_tracks, seed=seed, dense=dense)
    return Clip(frames=clip.frames, gt=gt, meta=meta, name=f"{clip.preset}-{clip.seed}")
