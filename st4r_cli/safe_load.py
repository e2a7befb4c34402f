"""Loading files a user hands us without running code from them.

Pickle-based formats execute whatever callable the file names when they are loaded. st4r reads them
only through the loaders here, which allow exactly the types the published files need and refuse
everything else with a one-line `St4rError` naming the refused type:

- `load_torch_checkpoint`: `torch.load(weights_only=True)` (tensors, containers, numbers, strings)
  plus `TORCH_ALLOWED_GLOBALS` (`argparse.Namespace`, the `args` of St4RTrack/DUSt3R checkpoints).
- `restricted_loads` / `read_restricted_pickle`: dicts, lists, tuples, sets, strings, bytes,
  numbers and NumPy arrays / scalars (NumPy's array-reconstruction globals, nothing else). Used for
  official TAP-Vid `.pkl` files.
- `load_npz_untrusted`: `.npz` members with `allow_pickle=False`; an object-array member (TAPVid-3D's
  `images_jpeg_bytes`, an array of JPEG `bytes`) is read with the restricted unpickler and must hold
  only `bytes`/`str`.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from st4r_cli.errors import St4rError

# (module, name) pairs NumPy writes when it pickles arrays, dtypes and scalars (NumPy 1.x: numpy.core,
# NumPy 2.x: numpy._core; protocol 5 uses _frombuffer).
NUMPY_ARRAY_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
})

REFUSED_HINT = "not plain data; st4r never runs code from a file"


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for `bytes` (latin-1 only; nothing else allowed)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only as encode(str, 'latin1')")
    return text.encode("latin1")


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a callable/class outside the allowlist (`.name` is `module.name`)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _RestrictedUnpickler(pickle.Unpickler):
    """Plain data + NumPy arrays: `find_class` resolves only NumPy's array-reconstruction globals."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in NUMPY_ARRAY_GLOBALS:
            import importlib

            return getattr(importlib.import_module(module), name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def restricted_loads(data: bytes | io.BufferedIOBase, path: Path | str = "<data>") -> Any:
    """Unpickle plain data and NumPy arrays only (see module docstring); St4rError otherwise."""
    handle = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        return _RestrictedUnpickler(handle, encoding="latin1").load()
    except RefusedGlobal as err:
        raise St4rError(f"{path}: refused to unpickle {err.name} ({REFUSED_HINT}; allowed: dicts, lists, "
                        "strings, numbers, NumPy arrays)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, OverflowError, ImportError) as err:
        raise St4rError(f"cannot read pickle {path}: {type(err).__name__}: {_one_line(err)}") from None


def read_restricted_pickle(path: Path) -> Any:
    """`restricted_loads` of a file (St4rError for a missing/unreadable file)."""
    path = Path(path)
    if not path.is_file():
        raise St4rError(f"file not found: {path}")
    try:
        with open(path, "rb") as handle:
            return restricted_loads(handle, path)
    except OSError as err:
        raise St4rError(f"cannot read {path}: {err.strerror or err}") from None


# -- torch checkpoints ---------------------------------------------------------------------------
def torch_allowed_globals() -> list[Any]:
    """Globals a published checkpoint may contain besides tensors and plain data.

    St4RTrack / DUSt3R checkpoints store their training `args` as an `argparse.Namespace` (of strings,
    numbers, lists); CoTracker3 and MoGe checkpoints need nothing beyond the default.
    """
    import argparse

    return [argparse.Namespace]


def load_torch_checkpoint(path: Path | str, what: str = "checkpoint") -> Any:
    """`torch.load(path, weights_only=True)` with `torch_allowed_globals()`, on the CPU.

    St4rError (one line) for a missing file, a refused type (named) or an unreadable file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise St4rError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(torch_allowed_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_torch_globals(path, err)
        if refused:
            raise St4rError(f"{what} {path}: refused to load {', '.join(refused)} ({REFUSED_HINT}; "
                            "checkpoints may hold tensors, containers, numbers, strings and "
                            "argparse.Namespace)") from None
        raise St4rError(f"cannot read {what} {path}: not a checkpoint the safe loader accepts "
                        f"({_torch_reason(err)})") from None
    except MemoryError:
        raise St4rError(f"cannot read {what} {path}: out of memory") from None
    except Exception as err:  # noqa: BLE001 - zip/format errors of a corrupt or foreign file
        raise St4rError(f"cannot read {what} {path}: {type(err).__name__}: {_one_line(err)}") from None


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _refused_torch_globals(path: Path, err: BaseException) -> list[str]:
    """The globals torch's weights-only unpickler refused, from its message or the file's listing."""
    try:
        import torch

        allowed = {f"{g.__module__}.{g.__qualname__}" for g in torch_allowed_globals()}
        listed = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - allowed)
        if listed:
            return listed
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be listed: use the message
        pass
    return sorted(set(_GLOBAL_RE.findall(str(err))))


def _torch_reason(err: BaseException) -> str:
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
        text = text.split("Check the documentation", 1)[0]
    else:
        text = text.splitlines()[-1] if text.strip() else type(err).__name__
    return _one_line(text) or type(err).__name__


def _one_line(err: BaseException | str, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."


# -- npz -----------------------------------------------------------------------------------------
def load_npz_untrusted(path: Path) -> dict[str, Any]:
    """All arrays of an `.npz` without `allow_pickle`; object arrays of bytes/str are read with the
    restricted unpickler (TAPVid-3D's `images_jpeg_bytes`), anything else in them is refused."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise St4rError(f"file not found: {path}")
    arrays: dict[str, Any] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                try:
                    arrays[key] = data[key]
                except ValueError as err:
                    if "allow_pickle" not in str(err):
                        raise
                    arrays[key] = _object_member(path, data.zip, key)
    except St4rError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise St4rError(f"cannot read {path}: {_one_line(err)}") from None
    return arrays


def _object_member(path: Path, archive: zipfile.ZipFile, key: str) -> Any:
    """An object-array member of an npz, unpickled with the restricted unpickler; bytes/str only."""
    import numpy as np

    member = key if key in archive.namelist() else f"{key}.npy"
    with archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise St4rError(f"{path}: array '{key}' uses .npy format {version}, which st4r does not read")
        array = restricted_loads(handle.read(), f"{path}:{key}")
    if not isinstance(array, np.ndarray) or array.dtype != object or array.shape != tuple(shape):
        raise St4rError(f"{path}: array '{key}' is not the object array its header announces ({dtype}, {shape})")
    bad = next((type(v).__name__ for v in array.flat if not isinstance(v, (bytes, str))), None)
    if bad is not None:
        raise St4rError(f"{path}: array '{key}' holds {bad} objects (only bytes or strings are allowed)")
    return array


__all__ = ["NUMPY_ARRAY_GLOBALS", "RefusedGlobal", "load_npz_untrusted", "load_torch_checkpoint",
           "read_restricted_pickle", "restricted_loads", "torch_allowed_globals"]

