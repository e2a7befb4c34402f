"""`scene.npz`: the prediction file `st4r adapt` writes and `st4r eval` reads (any method can write one).

World frame = camera of frame 0 (OpenCV axes), any global scale. Every key is optional, but a file must
hold at least one of `tracks3d`, `pointmaps`, `cam_c2w`, `tracks2d`; shapes must agree (`SCENE_SCHEMA`).
Other keys are allowed and carried along unchecked.

| key | shape | meaning |
| --- | --- | --- |
| `tracks3d` | (N, T, 3) float | world positions of N query points at every frame |
| `tracks2d` | (N, T, 2) float | their pixel positions (x, y) in each frame |
| `visible` | (N, T) bool | predicted visibility |
| `query_xy` | (N, 2) float | query pixel (x, y) of each track, at its query frame |
| `query_t` | (N,) int | query frame of each track (0 for St4RTrack's frame-0 tracks) |
| `sigma` | (N, T) float | per-point uncertainty in pixels (ST4RTrack+) |
| `pointmaps` | (T, H, W, 3) float | world point seen at each pixel of frame t |
| `conf` | (T, H, W) float | confidence of `pointmaps` |
| `colors` | (T, H, W, 3) uint8 | colour of each pointmap pixel |
| `intrinsics` | (3, 3) or (T, 3, 3) float | K in pixels of the `image_hw` frames |
| `cam_c2w` | (T, 4, 4) float | camera-to-world poses |
| `image_hw` | (2,) int | (H, W) of the frames the pixel quantities refer to (default: pointmap size) |
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from st4r_cli.errors import St4rError
from st4r_cli.formats._io import load_npz

SCENE_SCHEMA: dict[str, tuple[tuple, str]] = {
    "tracks3d": (("N", "T", 3), "f"),
    "tracks2d": (("N", "T", 2), "f"),
    "visible": (("N", "T"), "b"),
    "query_xy": (("N", 2), "f"),
    "query_t": (("N",), "i"),
    "sigma": (("N", "T"), "f"),
    "pointmaps": (("T", "H", "W", 3), "f"),
    "conf": (("T", "H", "W"), "f"),
    "colors": (("T", "H", "W", 3), "u"),
    "intrinsics": ((3, 3), "f"),
    "cam_c2w": (("T", 4, 4), "f"),
    "image_hw": ((2,), "i"),
}
PRIMARY_KEYS = ("tracks3d", "pointmaps", "cam_c2w", "tracks2d")


def scene_dims(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """The symbols T, N, H, W as the arrays define them (first key that has each)."""
    dims: dict[str, int] = {}
    for key, (spec, _) in SCENE_SCHEMA.items():
        if key not in arrays or key == "intrinsics":
            continue
        shape = np.shape(arrays[key])
        if len(shape) != len(spec):
            continue
        for symbol, size in zip(spec, shape):
            if isinstance(symbol, str):
                dims.setdefault(symbol, int(size))
    return dims


def validate_scene(arrays: dict[str, np.ndarray], where: str = "scene.npz") -> dict[str, int]:
    """Check a prediction's keys, shapes and dtypes; returns its dims (`T`, `N`, `H`, `W`)."""
    if not any(key in arrays for key in PRIMARY_KEYS):
        raise St4rError(f"{where}: holds none of {', '.join(PRIMARY_KEYS)}; nothing to evaluate")
    dims = scene_dims(arrays)
    for key, value in arrays.items():
        if key not in SCENE_SCHEMA:  # extra keys of other tools are carried along, not checked
            continue
        spec, kind = SCENE_SCHEMA[key]
        shape = np.shape(value)
        expected = tuple(dims.get(s, -1) if isinstance(s, str) else s for s in spec)
        if key == "intrinsics" and "T" in dims and shape == (dims["T"], 3, 3):
            pass
        elif shape != expected:
            wanted = "x".join(f"{s}={dims[s]}" if isinstance(s, str) else str(s) for s in spec)
            raise St4rError(f"{where}: '{key}' has shape {shape}, expected ({wanted})")
        dtype_kind = np.asarray(value).dtype.kind
        if dtype_kind not in {"f": "fiu", "b": "b", "i": "iu", "u": "u"}[kind]:
            raise St4rError(f"{where}: '{key}' has dtype {np.asarray(value).dtype}")
        if dtype_kind == "f" and not np.all(np.isfinite(value)) and key not in ("tracks2d", "sigma"):
            raise St4rError(f"{where}: '{key}' contains NaN or inf")
    return dims


def scene_image_hw(arrays: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """(H, W) the pixel quantities refer to: `image_hw`, else the pointmap/colour size, else None."""
    if "image_hw" in arrays:
        return int(arrays["image_hw"][0]), int(arrays["image_hw"][1])
    for key in ("pointmaps", "colors", "conf"):
        if key in arrays:
            shape = np.shape(arrays[key])
            return int(shape[1]), int(shape[2])
    return None


def write_scene(path: Path, arrays: dict[str, np.ndarray], compressed: bool = False) -> Path:
    """Validate and save a prediction atomically (dtypes normalised: float32, bool, int32, uint8)."""
    from st4r_cli.runs.atomic import atomic_save_npz

    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    validate_scene(arrays, where=str(path))
    cast = {"f": np.float32, "b": bool, "i": np.int32, "u": np.uint8}
    out = {key: value.astype(cast[SCENE_SCHEMA[key][1]], copy=False) if key in SCENE_SCHEMA else value
           for key, value in arrays.items()}
    atomic_save_npz(Path(path), out, compressed=compressed)
    return Path(path)


def read_scene(path: Path) -> dict[str, np.ndarray]:
    """Load and validate a prediction file (a `scene.npz`, or a run directory containing one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "scene.npz"
    if not path.is_file():
        raise St4rError(f"no prediction file: {path} (run `st4r adapt` first, or pass a scene.npz)")
    arrays = load_npz(path)
    validate_scene(arrays, where=str(path))
    return arrays
