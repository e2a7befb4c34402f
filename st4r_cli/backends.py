"""The backend registry: 2D trackers and depth backends by name (a leaf module: stdlib and errors only).

A backend is a module and one `register` line below (or a `register` call in a plugin or a test):

    register("depth", "moge", "st4r_cli.depth.moge", metric_depth=True,
             doctor=Doctor("moge", "moge.model.v2", "pip install ..."))

The module (imported when the backend is used, so `st4r --help` stays light) provides

    compute(frames, cfg, device, ...)  the backend's work: a depth backend `compute(frames, cfg, device,
                                       cameras) -> {depth, valid, intrinsics, ...}` (the depth stage's
                                       contract); a tracker `compute(frames, queries, cfg, device, seed,
                                       label) -> {tracks_xy, visible, confidence}` (pixels of `frames`)
    check(cfg)                         St4rError (what to install, which file to put where) unless the
                                       backend can run here
    input_files(cfg) -> [Path]         files besides the frames whose content its result depends on
                                       (their digests join the stage's cache key)

`cfg` is the stage's config section (`configs.TracksConfig` / `configs.DepthConfig`). Who reads the
registry: the config checks and the stages (`stages.tracks`, `stages.depth`), the pipeline (which depth
backend needs the solved cameras), the CLI's choices (`cli.common`), `st4r doctor`, the Python API.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from st4r_cli.errors import St4rError

KINDS = ("tracker", "depth")


@dataclass(frozen=True)
class Doctor:
    """What `st4r doctor` reports for a backend that needs an optional package: its name, the module
    that must import, how to install it; and how it recognises the backend's checkpoints in weights/
    (loaded by the module's `describe_checkpoint(path) -> str`)."""

    package: str
    module: str
    install: str
    checkpoint: str = ""                       # what its checkpoints are called ("" : none to check)
    checkpoint_hints: tuple[str, ...] = ()     # file-name parts that mark one (tried first then)


@dataclass(frozen=True)
class Backend:
    """One registered backend and what it can do.

    module:          the module providing `compute`, `check`, `input_files` ("" for a backend that
                     computes nothing: depth `none`, which the pipeline skips)
    metric_depth:    depth: can be in metres (moge: MoGe-2, its `metric` array says; else up to scale or
                     in the solved cameras' units)
    motion_mask:     depth: the arrays hold `dynamic (T, H, W) bool`, the moving pixels (adapt and fuse
                     take the static scene from the depth where it is not moving)
    needs_cameras:   depth: computed from the cameras stage's solution (skipped, said so, when the
                     cameras were not solved; `st4r depth` cannot run it)
    joint_points:    tracker: follows every point on its own, so all query sets go in one pass (a
                     learned tracker attends across its points: each set is tracked separately)
    doctor:          the optional package `st4r doctor` checks, or None
    """

    kind: str
    name: str
    module: str
    metric_depth: bool = False
    motion_mask: bool = False
    needs_cameras: bool = False
    joint_points: bool = False
    doctor: Doctor | None = None

    @property
    def computes(self) -> bool:
        return bool(self.module)

    def load(self) -> ModuleType:
        """The backend's module (imported now)."""
        if not self.module:
            raise St4rError(f"{self.kind} backend '{self.name}' computes nothing")
        return importlib.import_module(self.module)

    @property
    def option(self) -> str:
        """The command-line option choosing it."""
        return f"--{self.kind} {self.name}"


_REGISTRY: dict[str, dict[str, Backend]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str, module: str, **capabilities: object) -> Backend:
    """Register (or replace) backend `name` of `kind`; returns it."""
    if kind not in KINDS:
        raise ValueError(f"unknown backend kind {kind!r} (kinds: {', '.join(KINDS)})")
    backend = Backend(kind=kind, name=name, module=module, **capabilities)  # type: ignore[arg-type]
    _REGISTRY[kind][name] = backend
    return backend


def unregister(kind: str, name: str) -> None:
    """Remove a registered backend (tests that register their own)."""
    _REGISTRY[kind].pop(name, None)


def names(kind: str) -> tuple[str, ...]:
    """The registered backend names of `kind`, in registration order."""
    return tuple(_REGISTRY[kind])


def backends(kind: str) -> tuple[Backend, ...]:
    return tuple(_REGISTRY[kind].values())


def get(kind: str, name: str) -> Backend:
    """The backend `name` of `kind` (St4rError naming the registered ones)."""
    found = _REGISTRY[kind].get(name)
    if found is None:
        label = "tracker" if kind == "tracker" else "depth"
        raise St4rError(f"unknown {label} backend '{name}' (use {', '.join(names(kind))})")
    return found


register("tracker", "builtin", "st4r_cli.tracking.builtin", joint_points=True)
register("tracker", "cotracker3", "st4r_cli.tracking.cotracker3",
         doctor=Doctor("cotracker", "cotracker.models.build_cotracker",
                       "pip install --no-deps autosegmentor==3.0.1 (or: make extras)",
                       checkpoint="CoTracker3", checkpoint_hints=("cotracker", "scaled_")))
register("depth", "multiview", "st4r_cli.depth.multiview", motion_mask=True, needs_cameras=True)
register("depth", "moge", "st4r_cli.depth.moge", metric_depth=True,
         doctor=Doctor("moge", "moge.model.v2",
                       "pip install --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3 dlr-pipeline==1.0.0 (or: make extras)",
                       checkpoint="MoGe", checkpoint_hints=("moge",)))
register("depth", "none", "")
