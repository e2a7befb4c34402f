"""The `st4r adapt` pipeline: decode -> tracks -> cameras -> depth -> adapt (TTA) -> predict -> fuse
-> scene.npz. The cameras come first, from the 2D tracks alone; the multi-view depth uses them, the TTA
uses that depth, and the fuse stage puts the adapted network's geometry into those cameras. This module
is the only one that wires stages together (stages never import each other), and `run_pipeline` the one
orchestrator of `st4r adapt`, `st4r tracks`, `st4r depth`, the API, batch and the in-memory path.

Every stage goes through the run's cache (`Run.stage`): its key is the hash of its input content
(upstream artifacts' digests, the input file's bytes), its config and its version, so a rerun reuses
finished stages and a config change recomputes only what depends on it.

Each `run_<stage>` takes the run and the artifacts computed so far and returns its Artifact, or None
when the stage is switched off (a depth backend that computes nothing: `none`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st4r_cli import backends, progress
from st4r_cli.errors import St4rError
from st4r_cli.runs import Artifact, Run, RunConfig, digest_arrays, digest_file_or_missing, digest_path
from st4r_cli.runs.run import MemoryRun
from st4r_cli.runs.config import keyed_fields
from st4r_cli.stages.decode import DECODE_VERSION, StoredFrames, check_decode_config, decode

if TYPE_CHECKING:
    import numpy as np

STAGES = ("decode", "tracks", "cameras", "depth", "adapt", "predict", "fuse")
SCENE_FILE = "scene.npz"


def check_force(force: list[str] | set[str] | tuple[str, ...]) -> None:
    """St4rError for --force values that name no stage."""
    unknown = sorted(set(force) - set(STAGES) - {"all"})
    if unknown:
        raise St4rError(f"--force: unknown stage(s) {', '.join(unknown)} "
                        f"(stages: {', '.join(STAGES)}, or all)")


def check_until(until: str | None) -> None:
    """St4rError unless `until` is None or a stage name."""
    if until is not None and until not in STAGES:
        raise St4rError(f"--until: unknown stage '{until}' (stages: {', '.join(STAGES)})")


def _config_with_seed(config: Any, seed: int) -> dict[str, Any]:
    return {"config": keyed_fields(config), "seed": seed}


def tracks_cache_key(cfg: Any, seed: int, decoded: Artifact, decode_cfg: Any
                     ) -> tuple[dict[str, Any], list[str]]:
    """(config, inputs) keying the tracks stage: frames, query file and checkpoint contents, config, seed,
    and the tracking resolution (`tracking_decode_config`; the decode stage's key, a hash of the input's
    content and its decode settings, stands for the input decoded a second time at that size).

    `st4r adapt` and `st4r tracks` share it, so either reuses the other's result.
    """
    import dataclasses

    from st4r_cli.stages.tracks import input_files

    tracking = tracking_decode_config(cfg, decode_cfg, decoded["orig_hw"], decoded["frames"].shape[1:3])
    config = {**_config_with_seed(cfg, seed),
              "tracking_decode": dataclasses.asdict(tracking) if tracking is not None else None}
    return config, [decoded.digest, decoded.key, *map(digest_file_or_missing, input_files(cfg))]


def tracking_decode_config(cfg: Any, decode_cfg: Any, orig_hw: Any, frames_hw: Any) -> Any:
    """The DecodeConfig decoding the input at the tracking resolution (`tracks.long_side`), or None when
    the tracker runs on the decoded frames themselves (the source is no larger than them). Same frame
    selection as `decode_cfg`; the size keeps the exact aspect (no rounding to the patch size)."""
    import dataclasses

    from st4r_cli.stages.tracks import tracking_long_side

    long_side = tracking_long_side(orig_hw, frames_hw, cfg)
    if not long_side:
        return None
    return dataclasses.replace(decode_cfg, long_side=long_side, multiple=1, upscale=False)


def depth_cache_key(cfg: Any, decoded: Artifact, cameras: Artifact | None = None
                    ) -> tuple[dict[str, Any], list[str]]:
    """(config, inputs) keying the depth stage: frames, the backend's files (moge: its checkpoint), the
    solved cameras for a backend that needs them (multiview), config."""
    from st4r_cli.stages.depth import input_files

    inputs = [decoded.digest, *map(digest_file_or_missing, input_files(cfg))]
    if backends.get("depth", cfg.backend).needs_cameras:
        inputs.append(_optional(cameras, "no-cameras"))
    return {"config": keyed_fields(cfg)}, inputs


def run_decode(run: Run) -> Artifact:
    """Decode the run's input (video file or image folder) at the processing resolution."""
    source = Path(run.config.input)
    cfg = run.config.decode
    check_decode_config(cfg)
    if not source.exists():
        raise St4rError(f"input not found: {source}")
    return run.stage("decode", DECODE_VERSION, cfg, [digest_path(source)],
                     lambda: decode(source, cfg))


def run_tracks(run: Run, decoded: Artifact, device: str, force: bool = False) -> Artifact:
    """2D pseudo-tracks of query points (`stages.tracks.compute_tracks`) at the tracking resolution: the
    input decoded a second time at `tracks.long_side` (cached as stage `decode_tracks`, recomputed with
    `--force decode`), or the decoded frames when the source is no larger; tracks in decoded-frame pixels."""
    from st4r_cli.stages.tracks import TRACKS_VERSION, check_tracks_config, compute_tracks

    cfg, seed = run.config.tracks, run.config.seed
    check_tracks_config(cfg)
    frames_hw = tuple(int(v) for v in decoded["frames"].shape[1:3])
    tracking = tracking_decode_config(cfg, run.config.decode, decoded["orig_hw"], frames_hw)
    key_config, inputs = tracks_cache_key(cfg, seed, decoded, run.config.decode)

    def compute() -> dict[str, Any]:
        if tracking is None:
            return compute_tracks(decoded["frames"], cfg, device, seed)
        frames = _tracking_frames(run, decoded, tracking)
        progress.log(f"tracks: tracking at {frames.shape[2]}x{frames.shape[1]} "
                     f"(decoded frames {frames_hw[1]}x{frames_hw[0]})")
        return compute_tracks(frames, cfg, device, seed, decoded_hw=frames_hw)

    return run.stage("tracks", TRACKS_VERSION, key_config, inputs, compute, force=force)


def _tracking_frames(run: Run, decoded: Artifact, tracking: Any) -> Any:
    """The run's input decoded at the tracking resolution (stage `decode_tracks`), the same frames as the
    decode stage's (St4rError otherwise), as a `StoredFrames` (T, h, w, 3) uint8 that reads them one at a
    time from the cache: the tracker never holds them all."""
    import numpy as np

    source = Path(run.config.input)
    if not source.exists():
        raise St4rError(f"input not found: {source} (the tracks stage decodes it at {tracking.long_side} px; "
                        f"--set tracks.long_side={max(decoded['frames'].shape[1:3])} tracks the decoded frames)")
    check_decode_config(tracking)
    artifact = run.stage("decode_tracks", DECODE_VERSION, tracking, [digest_path(source)],
                         lambda: decode(source, tracking), force="decode" in run.force)
    if not np.array_equal(artifact["frame_indices"], decoded["frame_indices"]):
        raise St4rError(f"{source}: decoding at the tracking resolution gave other frames than the decode "
                        "stage (the input changed?); rerun with --force decode")
    return StoredFrames(artifact.path)


def run_cameras(run: Run, artifacts: dict[str, Artifact], device: str) -> Artifact:
    """Every frame's camera from the 2D tracks alone (`stages.cameras.compute_cameras`), starting from the
    focal of `cameras.focal_init`, `predict.focal`, or the un-adapted network's frame-0 pointmap.
    Inputs: tracks, the frames (and the checkpoint when the network gives the focal)."""
    from st4r_cli.stages.cameras import CAMERAS_VERSION, check_cameras_config, compute_cameras

    cfg = run.config.cameras
    check_cameras_config(cfg)
    decoded, tracks = artifacts["decode"], artifacts.get("tracks")
    given = cfg.focal_init or run.config.predict.focal
    inputs = [decoded.digest, _optional(tracks, "no-tracks"), "given-focal" if given else model_digest(run)]

    def compute() -> dict[str, Any]:
        frames = decoded["frames"]
        focal = given
        if not focal and cfg.refine == "ba":
            from st4r_cli.model.windows import network_focal, torch_threads

            with torch_threads(run.config.predict.cpu_threads, device):
                focal = network_focal(load_network(run, device), frames, device)
        return compute_cameras(tracks.load() if tracks else None, frames.shape[1:3], frames.shape[0], cfg, focal)

    key = {"cameras": keyed_fields(cfg), "focal": float(given)}
    artifact = run.stage("cameras", CAMERAS_VERSION, key, inputs, compute)
    _note_cameras(run, artifact)
    return artifact


def _note_cameras(run: Run, cameras: Artifact) -> None:
    """The camera solver's verdict in run.json (`cameras`: status, repaired spikes, breaks, reprojection);
    a repair or a rejection is also a warning (also when the artifact is reused)."""
    status = str(cameras["camera_status"])
    run.note("cameras", {"status": status, "spikes": [int(t) for t in cameras["camera_spikes"]],
                         "breaks": [int(t) for t in cameras["camera_breaks"]],
                         "median_reprojection_px": float(cameras["ba_residual_px"]),
                         "focal_px": float(cameras["intrinsics"][0, 0]),
                         "focal": str(cameras["focal_status"])})
    if status.startswith("rejected"):
        run.warn(f"cameras: the bundle adjustment was {status}; the network's cameras are used, without "
                 "multi-view depth")
    elif status == "repaired":
        spikes = ", ".join(str(int(t)) for t in cameras["camera_spikes"])
        run.warn(f"cameras: frame(s) {spikes} were off the camera path the images support; put back "
                 "between their neighbours")


MOSTLY_MOVING = 0.5   # more than this share of the tracks moving: the cameras rest on the few static ones


def _note_motion(run: Run, scene: Artifact) -> None:
    """How much of the video moves, in run.json (`motion`: the share of `dynamic_mask` pixels and of the
    tracks not called static); a warning when most tracks move although the cameras were solved (they
    then rest on few points; a rejected solve has its own warning and calls no track static)."""
    import numpy as np

    motion: dict[str, float] = {}
    if "dynamic_mask" in scene:
        motion["moving_pixels"] = round(float(np.mean(scene["dynamic_mask"])), 4)
    if "track_static" in scene and len(scene["track_static"]):
        motion["moving_tracks"] = round(1.0 - float(np.mean(scene["track_static"])), 4)
    run.note("motion", motion)
    _note_signal(run, scene)
    solved = "ba_accepted" in scene and bool(np.asarray(scene["ba_accepted"]).all())
    if solved and motion.get("moving_tracks", 0.0) > MOSTLY_MOVING:   # (unsolved cameras: already a warning)
        run.warn(f"motion: {100 * motion['moving_tracks']:.0f}% of the tracks move; the cameras rest on the "
                 "few static ones and may follow the movers")


def _note_signal(run: Run, scene: Artifact) -> None:
    """Where the video holds no signal, in run.json (`signal`, `viz.selection.signal_summary`), the log,
    and a warning naming the frames with no geometry of their own."""
    from st4r_cli.viz.selection import signal_summary

    signal = signal_summary({key: scene[key] for key in ("pointmap_source", "dynamic_mask") if key in scene})
    if signal is None:
        return
    run.note("signal", signal)
    share, frames = signal["pixels_without_geometry"], signal["frames_without_geometry"]
    if share:
        progress.log(f"[yellow]-[/yellow] {100 * share:.0f}% of the pixels have no geometry from the video (no "
                     "parallax there): the network's guess, low confidence, hidden in st4r view by default")
    if frames:
        run.warn(f"signal: {len(frames)} frame(s) hold no geometry of their own (a pure pan or a camera "
                 f"standing still): {', '.join(map(str, frames[:20]))}{' ...' if len(frames) > 20 else ''}")


def run_depth(run: Run, artifacts: dict[str, Artifact], device: str) -> Artifact | None:
    """Per-frame depth (`stages.depth.compute_depth`); skipped with a backend that computes nothing
    (`depth.backend: none`), and (said so) with one that needs the solved cameras (multiview) when the
    cameras stage did not solve them."""
    cfg = run.config.depth
    backend = backends.get("depth", cfg.backend)
    if not backend.computes:
        progress.debug(f"depth: backend {cfg.backend}, skipped")
        return None
    from st4r_cli.stages.depth import DEPTH_VERSION, compute_depth

    decoded, cameras = artifacts["decode"], artifacts.get("cameras")
    if backend.needs_cameras and (cameras is None or not bool(cameras["ba_accepted"])):
        status = str(cameras["camera_status"]) if cameras is not None else "no cameras stage"
        progress.log(f"[yellow]-[/yellow] depth ({cfg.backend}): skipped, the cameras were not solved ({status}); "
                     "the TTA runs without depth")
        return None
    key_config, inputs = depth_cache_key(cfg, decoded, cameras)
    return run.stage("depth", DEPTH_VERSION, key_config, inputs,
                     lambda: compute_depth(decoded["frames"], cfg, device, cameras.load() if cameras else None))


def model_path(run: Run) -> Path:
    """The run's checkpoint (St4rError when it is missing)."""
    from st4r_cli.paths import resolve_model_path

    path = Path(resolve_model_path(run.config.model))
    if not path.is_file():
        raise St4rError(f"model checkpoint not found: {run.config.model} (the embedded default is "
                        "weights/st4r-tiny/model.safetensors; pass --model PATH)")
    return path


def load_network(run: Run, device: str) -> Any:
    """The un-adapted network a stage starts from: a copy of an in-memory run's given network, else the
    run's checkpoint loaded on `device`."""
    if isinstance(run, MemoryRun) and run.network is not None:
        import copy

        return copy.deepcopy(run.network)
    from st4r_cli.model.io import load_model

    return load_model(model_path(run), device)


def model_digest(run: Run) -> str:
    """Content digest of the run's checkpoint (a placeholder naming the path when it is missing)."""
    from st4r_cli.paths import resolve_model_path

    return digest_file_or_missing(resolve_model_path(run.config.model))


def _device_key(device: str) -> str:
    return str(device).split(":")[0]


def _optional(artifact: Artifact | None, missing: str) -> str:
    return artifact.digest if artifact is not None else missing


def _adapt_tracks_digest(tracks: Artifact | None) -> str:
    """Content digest of the tracks adapt reads (`stages.adapt.tta_tracks`), so a camera-track setting
    (`tracks.camera_*`) re-runs tracks, cameras and fuse but not the network, nor does another query file
    (the TTA adapts on the tracker's own grid then)."""
    from st4r_cli.stages.adapt import tta_tracks

    if tracks is None:
        return "no-tracks"
    return digest_arrays(tta_tracks(tracks.load()))


def run_adapt(run: Run, artifacts: dict[str, Artifact], device: str) -> Artifact:
    """Test-time adaptation (`stages.adapt.adapt_model`): the adapted weights as deltas.

    Inputs: decode, tracks, depth (when present), the cameras (with `adapt.tta_cameras=solved` only: the
    default PnP cameras do not read them) and the checkpoint's content digest; key: the adapt, predict
    (windows, focal, batches) and visibility configs, the resolved device defaults, the seed.
    """
    import dataclasses

    from st4r_cli.stages.adapt import ADAPT_VERSION, adapt_model, check_adapt_config, resolve
    from st4r_cli.stages.predict import check_predict_config

    cfg = run.config
    check_adapt_config(cfg.adapt)
    check_predict_config(cfg.predict)
    decoded, tracks, depth = artifacts["decode"], artifacts.get("tracks"), artifacts.get("depth")
    key = {"adapt": keyed_fields(cfg.adapt), "predict": keyed_fields(cfg.predict),
           "visibility": keyed_fields(cfg.visibility),
           "resolved": dataclasses.asdict(resolve(cfg.adapt, device, cfg.predict.batch_size)),
           "seed": cfg.seed, "device": _device_key(device)}
    inputs = [decoded.digest, _adapt_tracks_digest(tracks), _optional(depth, "no-depth"), model_digest(run)]
    cameras = artifacts.get("cameras") if cfg.adapt.tta_cameras == "solved" else None
    if cfg.adapt.tta_cameras == "solved":
        inputs.append(_optional(cameras, "no-cameras"))

    def compute() -> dict[str, Any]:
        model = load_network(run, device)
        return adapt_model(model, decoded["frames"], tracks.load() if tracks else None,
                           depth.load() if depth else None, cfg.adapt, cfg.predict, cfg.visibility, device, cfg.seed,
                           cameras.load() if cameras else None)

    artifact = run.stage("adapt", ADAPT_VERSION, key, inputs, compute)
    for name in ("skipped_reason", "tta_cameras_fallback"):   # never silent, also when the artifact is reused
        if name in artifact:
            run.warn(f"adapt: {artifact[name]}")
    return artifact


def run_predict(run: Run, artifacts: dict[str, Artifact], device: str) -> Artifact:
    """The (adapted) network over every window (`stages.predict.compute_predict`).

    Inputs: decode, depth (its intrinsics may give the focal), adapt (weight deltas) and the checkpoint.
    """
    from st4r_cli.model.windows import apply_delta, batch_size_for
    from st4r_cli.stages.predict import PREDICT_VERSION, check_predict_config, compute_predict

    cfg = run.config.predict
    check_predict_config(cfg)
    decoded, depth, adapted = artifacts["decode"], artifacts.get("depth"), artifacts.get("adapt")
    key = {"predict": keyed_fields(cfg), "batch_size": batch_size_for(cfg.batch_size, device),
           "device": _device_key(device)}
    inputs = [decoded.digest, _optional(depth, "no-depth"), _optional(adapted, "not-adapted"), model_digest(run)]

    def compute() -> dict[str, Any]:
        model = load_network(run, device)
        if adapted is not None:
            apply_delta(model, adapted.load())
        return compute_predict(model, decoded["frames"], cfg, device, depth.load() if depth else None)

    return run.stage("predict", PREDICT_VERSION, key, inputs, compute)


def run_fuse(run: Run, artifacts: dict[str, Artifact], device: str) -> Artifact:
    """World 3D tracks, visibility and pointmaps (`stages.fuse.fuse_scene`): the `scene.npz` arrays,
    which `run_pipeline` publishes as `<run>/scene.npz`. Inputs: decode, tracks, cameras, depth, predict."""
    import dataclasses

    from st4r_cli.stages.fuse import CAMERAS_FIELDS, FUSE_VERSION, check_fuse_config, fuse_scene

    cfg = run.config.fuse
    check_fuse_config(cfg)
    decoded, tracks, depth = artifacts["decode"], artifacts.get("tracks"), artifacts.get("depth")
    predicted, cameras = artifacts["predict"], artifacts["cameras"]
    if tracks is None and cfg.queries == "tracks":
        progress.log("[yellow]-[/yellow] fuse: no 2D tracks, 3D tracks start from a frame-0 grid")
        cfg = dataclasses.replace(cfg, queries="grid")
    key = {"fuse": keyed_fields(cfg), "visibility": keyed_fields(run.config.visibility),
           "cameras": {name: getattr(run.config.cameras, name) for name in CAMERAS_FIELDS}}
    inputs = [decoded.digest, _optional(tracks, "no-tracks"), predicted.digest, cameras.digest,
              _optional(depth, "no-depth")]
    return run.stage("fuse", FUSE_VERSION, key, inputs,
                     lambda: fuse_scene(decoded["frames"], tracks.load() if tracks else None, predicted.load(),
                                        cameras.load(), cfg, run.config.cameras, run.config.visibility,
                                        depth.load() if depth else None))


# ----------------------------------------------------------------------------------------------
# the same steps in memory, without a run directory (benchmarks: one set of tracks shared by many
# settings, ground-truth tracks, ...): the `run_<stage>` steps above on a `MemoryRun`, whose cache keeps
# arrays instead of files (the given arrays are its artifacts: `MemoryRun.put`)
# ----------------------------------------------------------------------------------------------

def tracks_in_memory(frames: Any, source_frames: Any | None, cfg: Any, device: str, seed: int) -> dict[str, Any]:
    """The tracks stage on arrays, at the tracking resolution as in `run_tracks`: `frames (T,H,W,3)` the
    decoded (network) frames, `source_frames (T,H0,W0,3)` the same frames at the source's size (None: track
    `frames`), resized here to `tracks.long_side` as the decode stage would. Tracks in `frames`' pixels."""
    import cv2
    import numpy as np

    from st4r_cli.configs import DecodeConfig
    from st4r_cli.stages.decode import processing_hw
    from st4r_cli.stages.tracks import compute_tracks, tracking_long_side

    frames_hw = tuple(int(v) for v in frames.shape[1:3])
    long_side = tracking_long_side(source_frames.shape[1:3], frames_hw, cfg) if source_frames is not None else 0
    if not long_side:
        return compute_tracks(frames, cfg, device, seed)
    h, w = processing_hw(source_frames.shape[1:3], DecodeConfig(long_side=long_side, multiple=1))
    tracking = np.stack([frame if frame.shape[:2] == (h, w) else
                         cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA) for frame in source_frames])
    return compute_tracks(tracking, cfg, device, seed, decoded_hw=frames_hw)


def geometry_in_memory(model: Any, frames: Any, tracks: dict[str, Any] | None, config: RunConfig, device: str
                       ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """cameras -> depth on arrays (`run_cameras`, `run_depth` on a `MemoryRun`): (cameras arrays, depth
    arrays or None). `tracks` must hold the tracks stage's arrays (with its camera_* tracks) or be None;
    `model`: the un-adapted network (its frame-0 focal starts the camera solver unless the config gives one)."""
    run, artifacts = _memory_run(config, model, decode={"frames": frames}, tracks=tracks)
    artifacts = run_stages(run, device, ("cameras", "depth"), artifacts)
    return artifacts["cameras"].load(), _arrays_or_none(artifacts.get("depth"))


def predict_in_memory(model: Any, frames: Any, tracks: dict[str, Any] | None, depth: dict[str, Any] | None,
                      config: RunConfig, device: str, cameras: dict[str, Any] | None = None
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """adapt -> predict on arrays (`run_adapt`, `run_predict` on a `MemoryRun`): (adapt arrays, predict
    arrays). `model` (the un-adapted network) is left as it is: each stage starts from a copy; `cameras`:
    the cameras stage's arrays (`geometry_in_memory`), which `adapt.tta_cameras=solved` needs (without them
    the TTA falls back to the PnP cameras and says so)."""
    run, artifacts = _memory_run(config, model, decode={"frames": frames}, tracks=tracks, depth=depth,
                                 cameras=cameras)
    artifacts = run_stages(run, device, ("adapt", "predict"), artifacts)
    return artifacts["adapt"].load(), artifacts["predict"].load()


def scene_in_memory(frames: Any, tracks: dict[str, Any] | None, pred: dict[str, Any], cameras: dict[str, Any],
                    depth: dict[str, Any] | None, config: RunConfig) -> dict[str, Any]:
    """fuse on arrays (`run_fuse` on a `MemoryRun`): the scene.npz arrays."""
    run, artifacts = _memory_run(config, None, decode={"frames": frames}, tracks=tracks, predict=pred,
                                 cameras=cameras, depth=depth)
    return run_stages(run, "cpu", ("fuse",), artifacts)["fuse"].load()


def _memory_run(config: RunConfig, model: Any, **given: dict[str, Any] | None) -> tuple[MemoryRun, dict[str, Artifact]]:
    """An in-memory run of `config` starting from `model`, and the given stage arrays as its artifacts."""
    run = MemoryRun(config, network=model)
    return run, {stage: run.put(stage, arrays) for stage, arrays in given.items() if arrays is not None}


def _arrays_or_none(artifact: Artifact | None) -> dict[str, Any] | None:
    return artifact.load() if artifact is not None else None


def check_run_config(config: RunConfig) -> None:
    """Every stage's config checks (St4rError), for a command to call before it creates the run dir:
    a bad `--set` value fails at once, not after decoding and tracking (the stages check their own
    config again when they run)."""
    from st4r_cli.stages.adapt import check_adapt_config
    from st4r_cli.stages.cameras import check_cameras_config
    from st4r_cli.stages.depth import check_depth_config
    from st4r_cli.stages.fuse import check_fuse_config
    from st4r_cli.stages.predict import check_predict_config
    from st4r_cli.stages.tracks import check_tracks_config

    from st4r_cli.runs.config import check_limits

    check_decode_config(config.decode)
    check_tracks_config(config.tracks)
    check_depth_config(config.depth)
    check_adapt_config(config.adapt)
    check_predict_config(config.predict)
    check_cameras_config(config.cameras)
    check_fuse_config(config.fuse)
    check_limits(config)    # every bounded value (the checks above give the more specific messages)
    if config.input and Path(config.input).exists():   # (a run's input may be gone: its decode is cached)
        check_run_budget(config)


def check_run_inputs(config: RunConfig) -> None:
    """The files a run config names, checked before any stage runs (St4rError, one line): the
    model checkpoint (`model.io.check_checkpoint_file`) and, with `tracks.query_mode: file`, the
    query file (`tracking.queries.load_query_file`)."""
    from st4r_cli.model.io import check_checkpoint_file

    check_checkpoint_file(config.model)
    tracks = config.tracks
    if tracks.query_mode == "file":
        from st4r_cli.tracking.queries import load_query_file

        if not tracks.query_file:
            raise St4rError("tracks query mode 'file' needs a query file (--queries FILE)")
        import numpy as np

        points = load_query_file(tracks.query_file)
        if not np.isfinite(points).all():
            raise St4rError(f"query file {tracks.query_file} holds non-finite values (NaN or inf)")


def check_run_budget(config: RunConfig) -> None:
    """The sizes a run asks for, from the input's header (no decoding) and the config, checked before
    any stage runs (St4rError saying how much the request would need): the source's frame size
    (`stages.decode.probe_source`), the points tracked (the query grid or file, and the camera grid)
    and the points fused into 3D tracks (`tracking.queries.check_query_budget`)."""
    import math

    from st4r_cli.stages.decode import probe_source, processing_hw
    from st4r_cli.tracking.queries import check_query_budget, load_query_file

    source = probe_source(config.input, config.decode)
    num_frames = source.num_frames or 1
    tracks = config.tracks
    queries = {"grid": tracks.grid_size**2,
               "grid_every_k": tracks.grid_size**2 * math.ceil(num_frames / tracks.query_every_k)}
    if tracks.query_mode == "file" and tracks.query_file:
        queries["file"] = len(load_query_file(tracks.query_file))   # a .npy: its header checked first
    camera = tracks.camera_grid_size**2 * math.ceil(num_frames / tracks.camera_every_k) if tracks.camera_every_k else 0
    tracked = queries.get(tracks.query_mode, 0)
    check_query_budget(tracked + camera, num_frames, "tracks (query points and the camera grid)")
    fuse = config.fuse
    if fuse.queries == "grid":
        check_query_budget(fuse.grid_size**2, num_frames, f"fuse.grid_size={fuse.grid_size}")
    elif fuse.queries == "dense" and source.orig_hw is not None:
        height, width = processing_hw(source.orig_hw, config.decode)
        dense = math.ceil(height / fuse.dense_stride) * math.ceil(width / fuse.dense_stride)
        check_query_budget(dense, num_frames, f"fuse.queries=dense (stride {fuse.dense_stride})")


StageStep = Callable[[Run, dict[str, Artifact], str], "Artifact | None"]


def _stage_steps() -> dict[str, StageStep]:
    """Stage name -> its `run_<stage>` step, in pipeline order (`STAGES`)."""
    return {"decode": lambda run, artifacts, device: run_decode(run),
            "tracks": lambda run, artifacts, device: run_tracks(run, artifacts["decode"], device),
            "cameras": run_cameras, "depth": run_depth, "adapt": run_adapt, "predict": run_predict,
            "fuse": run_fuse}


def run_pipeline(run: Run, device: str, until: str | None = None, *, stages: Collection[str] | None = None,
                 given: Mapping[str, Artifact] | None = None, outputs: Mapping[str, str] | None = None,
                 finish: bool = True, memory_summary: bool = True) -> dict[str, Artifact]:
    """Run the stages through the run's cache (each recorded in run.json by `Run.stage`), publish the
    outputs, mark the run complete: the one orchestrator of `st4r adapt`, `st4r tracks`, `st4r depth`, the
    API, batch and (on a `MemoryRun`) the in-memory path.

    stages:  the stage names to run, in pipeline order (default: every stage, or up to and including
             `until`); a stage left out is absent for the ones after it (as with `depth.backend: none`)
    given:   artifacts at hand (e.g. a run directory's recorded decode), not run again
    outputs: stage name -> the file its arrays are published as (default: fuse -> scene.npz)
    finish:  mark the run complete at the end (False: a command working in an existing run leaves its
             status as it was)
    memory_summary: print the stages' peak memory at the end (run.json records it either way)

    On any error a running run is marked failed/interrupted (never complete) and the error propagates.
    """
    check_until(until)
    selected = _selected_stages(until, stages)
    outputs = {"fuse": SCENE_FILE} if outputs is None else dict(outputs)
    artifacts: dict[str, Artifact] = dict(given or {})
    with _failures_recorded(run):
        artifacts = run_stages(run, device, selected, artifacts)
        _publish(run, artifacts, outputs)
    if finish:
        run.mark_complete()
    _report(run, memory_summary)
    return artifacts


def run_stages(run: Run, device: str, names: Collection[str], artifacts: Mapping[str, Artifact]
               ) -> dict[str, Artifact]:
    """The `run_<stage>` steps of `names` (pipeline order) that `artifacts` does not hold yet; returns
    `artifacts` with theirs added (a stage that is switched off adds none)."""
    artifacts = dict(artifacts)
    steps = _stage_steps()
    for name in STAGES:
        if name in names and name not in artifacts:
            artifact = steps[name](run, artifacts, device)
            if artifact is not None:
                artifacts[name] = artifact
    return artifacts


def _selected_stages(until: str | None, stages: Collection[str] | None) -> list[str]:
    """The stage names to run, in pipeline order (St4rError for a name that is no stage)."""
    if stages is not None:
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            raise St4rError(f"unknown stage(s) {', '.join(unknown)} (stages: {', '.join(STAGES)})")
        return [name for name in STAGES if name in stages]
    return list(STAGES[:STAGES.index(until) + 1] if until else STAGES)


@contextmanager
def _failures_recorded(run: Run) -> Iterator[None]:
    """A running run is marked failed (or interrupted) when the body raises; a run another command
    finished (e.g. `st4r tracks RUN_DIR` in a complete run) keeps its status."""
    try:
        yield
    except KeyboardInterrupt:
        _mark_failed(run, "interrupted by the user", interrupted=True)
        raise
    except Exception as err:
        _mark_failed(run, str(err) if isinstance(err, St4rError) else f"{type(err).__name__}: {err}")
        raise


def _mark_failed(run: Run, message: str, interrupted: bool = False) -> None:
    try:
        if run.status == "running":
            run.mark_failed(message, interrupted=interrupted)
    except St4rError:  # e.g. the disk is full: the original error is the one to report
        pass


def _publish(run: Run, artifacts: dict[str, Artifact], outputs: Mapping[str, str]) -> None:
    """Each output stage's arrays as its file (the scene with the run's motion noted first)."""
    for stage, filename in outputs.items():
        if stage not in artifacts:
            continue
        if stage == "fuse":
            _note_motion(run, artifacts["fuse"])
        run.publish(filename, artifacts[stage].load())


def _report(run: Run, memory_summary: bool) -> None:
    """The peak memory of the stages this process ran, and the run's warnings (at the end, where they
    are seen, also with --quiet)."""
    memory = {name: mb for name, mb in run.stage_memory.items() if name in run.recorded_stages}
    if memory and memory_summary:
        top = max(memory, key=memory.get)
        progress.log(f"memory: peak {memory[top]:.0f} MiB resident ({top}); per stage in {run.dir / 'run.json'}")
    for message in run.session_warnings:
        progress.console.print(f"[yellow]warning[/yellow]: {message}")


# ----------------------------------------------------------------------------------------------
# what `st4r export` reads from a finished run besides its scene.npz
# ----------------------------------------------------------------------------------------------

def run_tracker_tracks(run_dir: Path | None) -> dict[str, np.ndarray] | None:
    """The tracks stage's tracks_xy / visible of a run, or None."""
    if run_dir is None:
        return None
    try:
        from st4r_cli.runs import Run

        artifact = Run.open(run_dir).artifact("tracks")
        return {"tracks_xy": artifact["tracks_xy"], "visible": artifact["visible"], "queries": artifact["queries"]}
    except Exception:  # noqa: BLE001 - the scene's tracks2d are the fallback
        return None


def run_timestamps(run_dir: Path | None, num_frames: int) -> np.ndarray | None:
    """(T,) frame times in seconds from a run's decode stage, when the run has one with `num_frames`
    times; None otherwise (a bare scene.npz folder, a run without its decode)."""
    if run_dir is None or not (Path(run_dir) / "config.yaml").is_file():
        return None
    try:
        run = Run.open(run_dir)
        stamps = run.artifact("decode")["timestamps_s"] if run.has_artifact("decode") else None
    except (St4rError, KeyError, OSError, ValueError):   # timestamps are a nicety: frame indices otherwise
        return None
    return stamps if stamps is not None and len(stamps) == num_frames else None


def source_frames(run_dir: Path) -> dict[str, np.ndarray] | None:
    """The run's frames at the source's own resolution (re-decoded with the run's frame selection):
    {'frames' (T, H0, W0, 3) uint8, 'orig_hw' (2,)}, or None when the input is gone or differs."""
    import dataclasses

    from st4r_cli import progress
    from st4r_cli.runs import Run
    from st4r_cli.stages.decode import decode

    try:
        run = Run.open(run_dir)
        decoded = run.artifact("decode")
        orig_hw = decoded["orig_hw"]
        cfg = dataclasses.replace(run.config.decode, long_side=int(max(orig_hw)), multiple=1, upscale=False)
        full = decode(Path(run.config.input), cfg)
    except Exception as err:  # noqa: BLE001 - the decoded frames are the fallback
        progress.log(f"colmap: the source frames are not available ({err}); images at the processing size")
        return None
    if (list(full["frame_indices"]) != list(decoded["frame_indices"])
            or tuple(full["frames"].shape[1:3]) != tuple(int(v) for v in orig_hw)):
        progress.log("colmap: the input changed since the run; images at the processing size")
        return None
    return {"frames": full["frames"], "orig_hw": full["orig_hw"]}
