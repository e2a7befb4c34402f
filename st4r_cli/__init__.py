"""st4r: 4D reconstruction and world-frame 3D tracking from a monocular video (ST4RTrack+).

Python API (imported lazily: `import st4r_cli` stays light, no torch):

    scene = st4r_cli.adapt("clip.mp4", out="runs/clip", max_frames=32)   # -> st4r_cli.Scene
    scene = st4r_cli.load_run("runs/clip")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Scene", "adapt", "load_run", "__version__"]

if TYPE_CHECKING:
    from st4r_cli.api import Scene, adapt, load_run


def __getattr__(name: str) -> Any:
    if name in ("Scene", "adapt", "load_run"):
        from st4r_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'st4r_cli' has no attribute {name!r}")
