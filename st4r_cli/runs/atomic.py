"""Atomic file writes: write a temp file in the target's directory, fsync, then `os.replace`.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a torn
one. Temp files are named `.<name>.tmp-<pid>-<random>` so leftovers of a killed process can be found
and removed (`remove_stale_temps`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def temp_path_for(path: Path) -> Path:
    """A fresh temp path beside `path` (same directory, so `os.replace` is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces `path`, on error it is removed.

    The temp path keeps `path`'s suffix, so writers that append suffixes (np.savez) behave.
    An OSError while writing or renaming (disk full, permission denied, ...) becomes a one-line
    St4rError naming `path`.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    tmp = tmp.with_name(tmp.name + path.suffix)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as err:
        from st4r_cli.errors import St4rError

        reason = err.strerror or str(err) or type(err).__name__
        raise St4rError(f"cannot write {path}: {reason}") from None
    finally:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:
            pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: Path, writer: Callable[[Path], Any]) -> None:
    """Call `writer(tmp_path)` and move the result to `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def atomic_save_npz(path: Path, arrays: dict[str, Any], compressed: bool = False) -> None:
    """Save arrays to `path` (.npz) atomically; no pickled objects."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            (np.savez_compressed if compressed else np.savez)(handle, **arrays)

    atomic_write_with(path, write)


def remove_stale_temps(directory: Path) -> int:
    """Delete temp files left by processes that no longer run; returns how many were removed."""
    removed = 0
    if not Path(directory).is_dir():
        return 0
    for tmp in Path(directory).glob(f".*{TMP_MARK}*"):
        pid_text = tmp.name.split(TMP_MARK, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            try:
                tmp.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync(path: Path) -> None:
    """Flush a file's (or directory's) contents to disk; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
