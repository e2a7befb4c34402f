"""Python API for notebooks and scripts: the same code `st4r adapt` runs, returning a `Scene`.

    import st4r_cli
    scene = st4r_cli.adapt("clip.mp4", out="runs/clip", max_frames=32, set={"adapt.iters": 5})
    scene.cam_c2w.shape          # (T, 4, 4)
    scene = st4r_cli.load_run("runs/clip")

Options are named like the command line's (`--max-frames` -> `max_frames=`, `--set a.b=v` ->
`set={"a.b": v}`) and checked the same way: a bad value raises `St4rError` with the CLI's message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st4r_cli.errors import St4rError

if TYPE_CHECKING:
    import numpy as np

    from st4r_cli.runs import RunConfig

DEVICES = ("auto", "cpu", "cuda")
NOT_ARRAYS = frozenset({"extras", "run_dir", "timestamps"})   # Scene fields that are not scene.npz keys


@dataclass
class Scene:
    """The arrays of a `scene.npz` (docs/architecture.md) as typed attributes; None when absent.

    World frame = camera of frame 0 (OpenCV axes). `extras` holds every other key of the file
    (e.g. `ba_residual_px`, `track_static`); `run_dir` the run it came from, if any.
    """

    tracks3d: np.ndarray | None = None     # (N, T, 3) world positions of the query points
    tracks2d: np.ndarray | None = None     # (N, T, 2) their pixels (x, y) in each frame
    visible: np.ndarray | None = None      # (N, T) bool predicted visibility
    query_xy: np.ndarray | None = None     # (N, 2) query pixel of each track
    query_t: np.ndarray | None = None      # (N,) query frame of each track
    sigma: np.ndarray | None = None        # (N, T) per-point uncertainty in pixels
    pointmaps: np.ndarray | None = None    # (T, H, W, 3) world point seen at each pixel
    conf: np.ndarray | None = None         # (T, H, W) confidence of the pointmaps
    colors: np.ndarray | None = None       # (T, H, W, 3) uint8 colour of each pointmap pixel
    intrinsics: np.ndarray | None = None   # (3, 3) or (T, 3, 3) K in pixels of image_hw
    cam_c2w: np.ndarray | None = None      # (T, 4, 4) camera-to-world poses
    image_hw: np.ndarray | None = None     # (2,) (H, W) the pixel quantities refer to
    dynamic_mask: np.ndarray | None = None  # (T, H, W) bool: pixels that move (the depth stage's)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    run_dir: Path | None = None
    timestamps: np.ndarray | None = None   # (T,) frame times in seconds (from the run; not in scene.npz)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], run_dir: Path | None = None) -> Scene:
        """A Scene from `scene.npz` arrays (validated like `read_scene`)."""
        from st4r_cli.formats.scene import validate_scene

        arrays = dict(arrays)
        validate_scene(arrays, where=str(run_dir or "scene"))
        known = {f.name for f in fields(cls)} - NOT_ARRAYS
        extras = {key: value for key, value in arrays.items() if key not in known}
        return cls(**{key: value for key, value in arrays.items() if key in known}, extras=extras, run_dir=run_dir)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the scene by its `scene.npz` key (absent ones left out)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in NOT_ARRAYS and getattr(self, f.name) is not None}
        out.update(self.extras)
        return out

    def save(self, path: str | Path) -> Path:
        """Write the scene as a `scene.npz` (validated, atomic: `formats.scene.write_scene`)."""
        from st4r_cli.formats.scene import write_scene

        return write_scene(Path(path), self.arrays())

    @property
    def num_frames(self) -> int:
        """T (0 when the scene has no per-frame array)."""
        for key in ("cam_c2w", "pointmaps"):
            if getattr(self, key) is not None:
                return int(getattr(self, key).shape[0])
        return int(self.tracks3d.shape[1]) if self.tracks3d is not None else 0

    @property
    def fps(self) -> float | None:
        """Frames per second from `timestamps` (None when the scene has no frame times)."""
        if self.timestamps is None or len(self.timestamps) < 2 or self.timestamps[-1] <= self.timestamps[0]:
            return None
        return float((len(self.timestamps) - 1) / (self.timestamps[-1] - self.timestamps[0]))

    @property
    def depth(self) -> np.ndarray | None:
        """(T, H, W) z of every pointmap pixel in its own frame's camera (scene units), None without
        pointmaps or cameras."""
        import numpy as np

        from st4r_cli.geometry.camera_np import surface_depths

        if self.pointmaps is None or self.cam_c2w is None:
            return None
        return surface_depths(self.pointmaps, np.linalg.inv(np.asarray(self.cam_c2w, np.float64))).astype(np.float32)

    @property
    def num_tracks(self) -> int:
        """N (0 without tracks)."""
        return int(self.tracks3d.shape[0]) if self.tracks3d is not None else 0

    def __repr__(self) -> str:
        shapes = ", ".join(f"{key}={tuple(value.shape)}" for key, value in self.arrays().items()
                           if key not in self.extras)
        return f"Scene({shapes}{f', run_dir={self.run_dir}' if self.run_dir else ''})"


def load_run(run: str | Path) -> Scene:
    """The Scene of a finished run directory (or of a `scene.npz` file)."""
    from st4r_cli.formats.scene import read_scene
    from st4r_cli.runs import Run

    path = Path(run)
    if path.is_dir() and (path / "run.json").is_file():
        Run.open(path).require_complete()
    arrays = read_scene(path)
    scene = Scene.from_arrays(arrays, run_dir=path if path.is_dir() else path.parent)
    from st4r_cli.pipeline import run_timestamps

    scene.timestamps = run_timestamps(scene.run_dir, scene.num_frames)
    return scene


def _value(option: Any) -> Any:
    """An enum option's value (the CLI passes enums, Python callers strings)."""
    return getattr(option, "value", option)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    value = str(_value(value)).lower()
    if value not in allowed:
        raise St4rError(f"--{name}: unknown value '{value}' (choose from {', '.join(allowed)})")
    return value


def _overrides(set_: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    """`set={"adapt.iters": 5}` (or the CLI's ["adapt.iters=5"]) as `apply_overrides` strings."""
    if set_ is None:
        return []
    if isinstance(set_, Mapping):
        return [f"{key}={json.dumps(_value(value))}" for key, value in set_.items()]
    if isinstance(set_, str):
        return [set_]
    return [str(item) for item in set_]


def build_config(video: str | Path, *, config: str | Path | None = None,
                 set: Mapping[str, Any] | Iterable[str] | None = None,  # noqa: A002 (the CLI's --set)
                 model: str | None = None, tracker: str | None = None, depth: str | None = None,
                 long_side: int | None = None, start: int | None = None, end: int | None = None,
                 stride: int | None = None, max_frames: int | None = None, device: str = "auto",
                 seed: int | None = None, queries: str | Path | None = None) -> RunConfig:
    """The run config `st4r adapt` would use for these options (St4rError on bad values).

    Order as on the command line: --config file, then --set, then the explicit options.
    """
    from st4r_cli.runs import RunConfig, apply_overrides, load_config
    from st4r_cli import backends
    from st4r_cli.runs.config import resolve_model_path

    from st4r_cli.paths import check_input_path

    video = Path(video)
    check_input_path(video)            # a regular file or a folder (never a device such as /dev/zero)
    run_config = load_config(Path(config)) if config else RunConfig()
    apply_overrides(run_config, _overrides(set))
    run_config.input = str(video.resolve())
    run_config.device = _choice("device", device, DEVICES) or "auto"
    run_config.model = resolve_model_path(model if model is not None else run_config.model)
    tracker_name = _choice("tracker", tracker, backends.names("tracker"))
    if tracker_name is not None:
        run_config.tracks.backend = tracker_name
    depth_name = _choice("depth", depth, backends.names("depth"))
    if depth_name is not None:
        run_config.depth.backend = depth_name
    for name, value in (("long_side", long_side), ("start", start), ("end", end), ("stride", stride),
                        ("max_frames", max_frames)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise St4rError(f"--{name.replace('_', '-')}: expected an integer, got {value!r}")
            setattr(run_config.decode, name, value)
    if seed is not None:
        run_config.seed = int(seed)
    if queries is not None:           # the points to track (docs/formats.md: query files)
        run_config.tracks.query_mode, run_config.tracks.query_file = "file", str(Path(queries).resolve())
    return run_config


def run_adapt(video: str | Path, out: str | Path | None = None, *, config: str | Path | None = None,
              set: Mapping[str, Any] | Iterable[str] | None = None,  # noqa: A002 (the CLI's --set)
              model: str | None = None, tracker: str | None = None, depth: str | None = None,
              long_side: int | None = None, start: int | None = None, end: int | None = None,
              stride: int | None = None, max_frames: int | None = None, until: str | None = None,
              force: Iterable[str] | None = (), device: str = "auto", seed: int | None = None,
              queries: str | Path | None = None) -> Path:
    """Run the `st4r adapt` pipeline into `out` (default `runs/<video name>`); returns the run dir.

    Every option is checked before the run directory is created (St4rError, the CLI's messages).
    """
    from st4r_cli import pipeline, progress
    from st4r_cli.device import resolve_device
    from st4r_cli.runs import Run

    run_config = build_config(video, config=config, set=set, model=model, tracker=tracker, depth=depth,
                              long_side=long_side, start=start, end=end, stride=stride, max_frames=max_frames,
                              device=device, seed=seed, queries=queries)
    force = [str(name) for name in force or ()]
    pipeline.check_force(force)
    pipeline.check_until(until)
    pipeline.check_run_config(run_config)
    pipeline.check_run_inputs(run_config)   # the model file, the query file: before the run dir exists
    resolved_device = resolve_device(run_config.device)
    out_dir = run_dir_for(video, out)
    with Run.create(out_dir, run_config, force=force) as run:
        progress.log(f"run [bold]{out_dir}[/bold] on {resolved_device}")
        pipeline.run_pipeline(run, resolved_device, until=until)
        if (out_dir / pipeline.SCENE_FILE).is_file() and until is None:
            from st4r_cli.viz.summary import write_summary

            progress.log(f"summary picture: {write_summary(run)}")
    progress.log(f"[green]done[/green]: {out_dir}")
    return out_dir


def run_dir_for(video: str | Path, out: str | Path | None) -> Path:
    """The run directory of `st4r adapt VIDEO [--out OUT]`: OUT (St4rError when empty), else
    `runs/<video name>` (`runs.run.run_name_for`)."""
    from st4r_cli.runs.run import run_name_for

    if out is not None:
        if not str(out).strip():
            raise St4rError("--out is empty: give the run directory to write (e.g. --out runs/NAME)")
        return Path(out)
    return Path("runs") / run_name_for(Path(video))


def adapt(video: str | Path, out: str | Path | None = None, *, quiet: bool | None = None,
          **options: Any) -> Scene | None:
    """Video (or image folder) -> Scene: what `st4r adapt VIDEO --out OUT [options]` does.

    Options (keywords, named like the CLI's): config, set (dict {"section.field": value}), model,
    tracker, depth, queries, long_side, start, end, stride, max_frames, until, force, device, seed. The run
    goes through its stage cache (a rerun reuses finished stages). Returns the run's Scene, or None
    when `until` stops before the chain stage. `quiet=True` silences progress output (None: leave
    the current verbosity).
    """
    import inspect

    from st4r_cli import pipeline, progress

    allowed = [name for name in inspect.signature(run_adapt).parameters if name not in ("video", "out")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise St4rError(f"adapt(): unknown option(s) {', '.join(unknown)} (known: {', '.join(allowed)})")
    if quiet is not None:
        progress.set_verbosity(quiet=quiet, verbose=progress.is_verbose() and not quiet)
    out_dir = run_adapt(video, out, **options)
    if not (out_dir / pipeline.SCENE_FILE).is_file():
        return None
    return load_run(out_dir)
