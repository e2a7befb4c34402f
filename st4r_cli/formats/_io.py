"""Shared helpers of the format readers/writers: image files, atomic directory output, npz loading."""

from __future__ import annotations


import os
import shutil
import secrets
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from st4r_cli.errors import St4rError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_image(path: Path) -> np.ndarray:
    """`(H, W, 3) uint8` RGB from a PNG/JPEG file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise St4rError(f"image {path} is too large to read safely: {exc}") from None
    except (OSError, ValueError) as exc:
        raise St4rError(f"cannot read image {path}: {exc}") from None


def write_image(path: Path, image: np.ndarray, quality: int = 95) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image)).save(path, quality=quality)


def list_images(folder: Path, pattern: str = "*") -> list[Path]:
    """Image files in `folder` matching `pattern`, sorted by name; hidden files (`._x.png`, temps) skipped."""
    return sorted(p for p in Path(folder).glob(pattern)
                  if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an `.npz` file, with a one-line error for a missing or corrupt file.

    Never unpickles (`allow_pickle=False`): an object-array member is a one-line error too. Files that
    hold object arrays (TAPVid-3D) are read with `st4r_cli.safe_load.load_npz_untrusted`.
    """
    path = Path(path)
    if not path.is_file():
        raise St4rError(f"file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise St4rError(f"cannot read {path}: {' '.join(str(exc).split())}") from None


@contextmanager
def atomic_directory(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on success it becomes `path` (replacing it if `overwrite`).

    On error the temp directory is removed, so a half-written folder never appears under `path`.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise St4rError(f"{path} already exists (use --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            trash = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True) if trash.is_dir() else trash.unlink()
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
