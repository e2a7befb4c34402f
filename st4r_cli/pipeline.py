"""The `st4r adapt` pipeline: decode -> tracks -> cameras -> depth -> adapt (TTA) -> predict -> fuse
-> scene.npz. The cameras come first, from the 2D tracks alone; the multi-view depth uses them, the TTA
uses that depth, and the fuse stage puts the adapted network's geometry into those cameras. This module is the only one that wires stages together: stages never import each other.

Every stage goes through the run's cache (`Run.stage`): its key is the hash of its input content
(upstream artifacts' digests, the input file's bytes), its config and its version, so a rerun reuses
finished stages and a config change recomputes only what depends on it.

Each `run_<stage>` takes the run and the artifacts computed so far and returns its Artifact, or None
when the stage is switched off (depth with backend `none`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st4r_cli import progress
from st4r_cli.errors import St4rError
from st4r_cli.runs import Artifact, Run, RunConfig, digest_arrays, digest_file_or_missing, digest_path
from st4r_cli.runs.config import keyed_fields
from st4r_cli.stages.decode import DECODE_VERSION, StoredFrames, check_decode_config, decode

if TYPE_CHECKING:
    import numpy as np

STAGES = ("decode", "tracks", "cameras", "depth", "adapt", "predict", "fuse")
# Former stage names: `chain` (window inference + chaining + bundle adjustment) is now predict,
# cameras and fuse. `--force chain` recomputes all three; `--until chain` stops after fuse.
STAGE_ALIASES: dict[str, tuple[str, ...]] = {"chain": ("cameras", "predict", "fuse")}
SCENE_FILE = "scene.npz"


def check_force(force: list[str] | set[str] | tuple[str, ...]) -> None:
    """St4rError for --force values that name no stage."""
    unknown = sorted(set(force) - set(STAGES) - set(STAGE_ALIASES) - {"all"})
    if unknown:
        raise St4rError(f"--force: unknown stage(s) {', '.join(unknown)} "
                        f"(stages: {', '.join(STAGES)}, or all)")


def check_until(until: str | None) -> None:
    """St4rError unless `until` is None or a stage name."""
    if until is not None and until not in STAGES and until not in STAGE_ALIASES:
        raise St4rError(f"--until: unknown stage '{until}' (stages: {', '.join(STAGES)})")


def _expand_aliases(run: Run, until: str | None) -> str | None:
    """Former stage names -> today's: in `run.force` (in place) and for `until`."""
    for old, new in STAGE_ALIASES.items():
        if old in run.force:
            run.force.update(new)
    return STAGE_ALIASES[until][-1] if until in STAGE_ALIASES else until


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
    """(config, inputs) keying the depth stage: frames, checkpoint contents (moge) or the solved cameras
    (multiview), config."""
    from st4r_cli.stages.depth import input_files

    inputs = [decoded.digest, *map(digest_file_or_missing, input_files(cfg))]
    if cfg.backend == "multiview":
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
            from st4r_cli.model.io import load_model
            from st4r_cli.model.windows import network_focal, torch_threads

            with torch_threads(run.config.predict.cpu_threads, device):
                focal = network_focal(load_model(model_path(run), device), frames, device)
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
    solved = "ba_accepted" in scene and bool(np.asarray(scene["ba_accepted"]).all())
    if solved and motion.get("moving_tracks", 0.0) > MOSTLY_MOVING:   # (unsolved cameras: already a warning)
        run.warn(f"motion: {100 * motion['moving_tracks']:.0f}% of the tracks move; the cameras rest on the "
                 "few static ones and may follow the movers")


def run_depth(run: Run, artifacts: dict[str, Artifact], device: str) -> Artifact | None:
    """Per-frame depth (`stages.depth.compute_depth`); skipped with `depth.backend: none`, and (said so)
    with `multiview` when the cameras stage did not solve the cameras."""
    cfg = run.config.depth
    if getattr(cfg, "backend", None) == "none":
        progress.debug("depth: backend none, skipped")
        return None
    from st4r_cli.stages.depth import DEPTH_VERSION, compute_depth

    decoded, cameras = artifacts["decode"], artifacts.get("cameras")
    if cfg.backend == "multiview" and (cameras is None or not bool(cameras["ba_accepted"])):
        status = str(cameras["camera_status"]) if cameras is not None else "no cameras stage"
        progress.log(f"[yellow]-[/yellow] depth (multiview): skipped, the cameras were not solved ({status}); "
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

    from st4r_cli.model.io import load_model
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
        model = load_model(model_path(run), device)
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
    from st4r_cli.model.io import load_model
    from st4r_cli.model.windows import apply_delta, batch_size_for
    from st4r_cli.stages.predict import PREDICT_VERSION, check_predict_config, compute_predict

    cfg = run.config.predict
    check_predict_config(cfg)
    decoded, depth, adapted = artifacts["decode"], artifacts.get("depth"), artifacts.get("adapt")
    key = {"predict": keyed_fields(cfg), "batch_size": batch_size_for(cfg.batch_size, device),
           "device": _device_key(device)}
    inputs = [decoded.digest, _optional(depth, "no-depth"), _optional(adapted, "not-adapted"), model_digest(run)]

    def compute() -> dict[str, Any]:
        model = load_model(model_path(run), device)
        if adapted is not None:
            apply_delta(model, adapted.load())
        return compute_predict(model, decoded["frames"], cfg, device, depth.load() if depth else None)

    return run.stage("predict", PREDICT_VERSION, key, inputs, compute)


def run_fuse(run: Run, artifacts: dict[str, Artifact], device: str) -> Artifact:
    """World 3D tracks, visibility and pointmaps (`stages.fuse.fuse_scene`): the `scene.npz` arrays,
    which `run_pipeline` publishes as `<run>/scene.npz`. Inputs: decode, tracks, cameras, depth, predict."""
    import dataclasses

    from st4r_cli.stages.fuse import FUSE_VERSION, check_fuse_config, fuse_scene

    cfg = run.config.fuse
    check_fuse_config(cfg)
    decoded, tracks, depth = artifacts["decode"], artifacts.get("tracks"), artifacts.get("depth")
    predicted, cameras = artifacts["predict"], artifacts["cameras"]
    if tracks is None and cfg.queries == "tracks":
        progress.log("[yellow]-[/yellow] fuse: no 2D tracks, 3D tracks start from a frame-0 grid")
        cfg = dataclasses.replace(cfg, queries="grid")
    key = {"fuse": keyed_fields(cfg), "cameras": keyed_fields(run.config.cameras),
           "visibility": keyed_fields(run.config.visibility)}
    inputs = [decoded.digest, _optional(tracks, "no-tracks"), predicted.digest, cameras.digest,
              _optional(depth, "no-depth")]
    return run.stage("fuse", FUSE_VERSION, key, inputs,
                     lambda: fuse_scene(decoded["frames"], tracks.load() if tracks else None, predicted.load(),
                                        cameras.load(), cfg, run.config.cameras, run.config.visibility,
                                        depth.load() if depth else None))


# ----------------------------------------------------------------------------------------------
# the same stages in memory, without a run directory (benchmarks: one set of tracks shared by many
# settings, ground-truth tracks, ...). Same stage functions and configs as the cached stages above.
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
    """cameras -> depth on arrays: (cameras arrays, depth arrays or None). `tracks` must hold the tracks
    stage's arrays (with its camera_* tracks) or be None; `model`: the un-adapted network (its frame-0
    focal starts the camera solver unless the config gives one)."""
    from st4r_cli.model.windows import network_focal
    from st4r_cli.stages.cameras import compute_cameras
    from st4r_cli.stages.depth import compute_depth

    num_frames, h, w = frames.shape[:3]
    focal = config.cameras.focal_init or config.predict.focal or network_focal(model, frames, device)
    cameras = compute_cameras(tracks, (h, w), num_frames, config.cameras, focal)
    depth = None
    if config.depth.backend == "multiview" and bool(cameras["ba_accepted"]):
        depth = compute_depth(frames, config.depth, device, cameras)
    return cameras, depth


def predict_in_memory(model: Any, frames: Any, tracks: dict[str, Any] | None, depth: dict[str, Any] | None,
                      config: RunConfig, device: str, cameras: dict[str, Any] | None = None
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """adapt -> predict on arrays: (adapt arrays, predict arrays). `model` is adapted in place; `cameras`:
    the cameras stage's arrays (`geometry_in_memory`), which `adapt.tta_cameras=solved` needs (without them
    the TTA falls back to the PnP cameras and says so)."""
    from st4r_cli.stages.adapt import adapt_model
    from st4r_cli.stages.predict import compute_predict

    adapted = adapt_model(model, frames, tracks, depth, config.adapt, config.predict, config.visibility, device,
                          config.seed, cameras)
    return adapted, compute_predict(model, frames, config.predict, device, depth)


def scene_in_memory(frames: Any, tracks: dict[str, Any] | None, pred: dict[str, Any], cameras: dict[str, Any],
                    depth: dict[str, Any] | None, config: RunConfig) -> dict[str, Any]:
    """fuse on arrays: the scene.npz arrays."""
    import dataclasses

    from st4r_cli.stages.fuse import fuse_scene

    fuse = config.fuse
    if tracks is None and fuse.queries == "tracks":
        fuse = dataclasses.replace(fuse, queries="grid")
    return fuse_scene(frames, tracks, pred, cameras, fuse, config.cameras, config.visibility, depth)


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


def run_pipeline(run: Run, device: str, until: str | None = None) -> dict[str, Artifact]:
    """Run every stage (or up to and including `until`), publish scene.npz, mark the run complete.

    On any error the run is marked failed/interrupted (never complete) and the error propagates.
    """
    check_until(until)
    until = _expand_aliases(run, until)
    stop_after = STAGES.index(until) if until else len(STAGES) - 1
    artifacts: dict[str, Artifact] = {}
    try:
        artifacts["decode"] = run_decode(run)
        steps: list[tuple[str, Callable[[], Artifact | None]]] = [
            ("tracks", lambda: run_tracks(run, artifacts["decode"], device)),
            ("cameras", lambda: run_cameras(run, artifacts, device)),
            ("depth", lambda: run_depth(run, artifacts, device)),
            ("adapt", lambda: run_adapt(run, artifacts, device)),
            ("predict", lambda: run_predict(run, artifacts, device)),
            ("fuse", lambda: run_fuse(run, artifacts, device)),
        ]
        for name, step in steps[:stop_after]:
            artifact = step()
            if artifact is not None:
                artifacts[name] = artifact
        if "fuse" in artifacts:
            _note_motion(run, artifacts["fuse"])
            run.publish(SCENE_FILE, artifacts["fuse"].load())
    except KeyboardInterrupt:
        run.mark_failed("interrupted by the user", interrupted=True)
        raise
    except St4rError as err:
        run.mark_failed(str(err))
        raise
    except Exception as err:
        run.mark_failed(f"{type(err).__name__}: {err}")
        raise
    run.mark_complete()
    memory = run.stage_memory
    if memory:
        top = max(memory, key=memory.get)
        progress.log(f"memory: peak {memory[top]:.0f} MiB resident ({top}); per stage in {run.dir / 'run.json'}")
    for message in run.warnings:   # at the end, where it is seen (also with --quiet)
        progress.console.print(f"[yellow]warning[/yellow]: {message}")
    return artifacts


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
