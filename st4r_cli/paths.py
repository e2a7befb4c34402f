"""Where st4r finds files given by the user relative to the repository (a leaf module)."""

from __future__ import annotations

from pathlib import Path

from st4r_cli.errors import St4rError

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")


def repo_root() -> Path:
    """The directory holding the st4r package (the repository root for a source checkout)."""
    return Path(__file__).resolve().parents[1]


def resolve_model_path(model: str) -> str:
    """A checkpoint path as given, else relative to the current directory, else to the repo root.

    Returned absolute when found; returned unchanged when missing (the stage that loads the model
    reports the missing file).
    """
    path = Path(model).expanduser()
    if path.is_absolute():
        return str(path)
    for base in (Path.cwd(), repo_root()):
        if (base / path).exists():
            return str((base / path).resolve())
    return model


def check_input_path(path: Path) -> None:
    """St4rError unless `path` is a regular file or a folder (a device, FIFO or socket such as
    /dev/zero would never end: st4r hashes and decodes its input)."""
    import os
    import stat

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise St4rError(f"input not found: {path}") from None
    except OSError as err:
        raise St4rError(f"cannot read input {path}: {err.strerror or err}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "special")
        raise St4rError(f"input {path} is {kind}, not a regular file or a folder of images")
    if not os.access(path, os.R_OK | (os.X_OK if stat.S_ISDIR(mode) else 0)):
        raise St4rError(f"input {path} is not readable (permission denied)")
