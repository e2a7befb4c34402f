"""Where st4r finds files given by the user relative to the repository (a leaf module)."""

from __future__ import annotations

from pathlib import Path


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
