"""Adapt stage: test-time adaptation, ST4RTrack's TTA (`baseline`) or ST4RTrack+ (`robust`, default).

Input artifacts: decode (frames), tracks (2D pseudo-tracks), depth (optional mono-depth), cameras
(with `tta_cameras=solved` only) and the checkpoint; config: `AdaptConfig` (its loss fields are
`TTALossConfig`'s), plus the shared `PredictConfig` (windows, focal, batches, threads) and
`VisibilityConfig` (the loss's z-buffer test and sigma). Output: the adapted weights as deltas
(`adapt_model`).

The video is cut into overlapping windows (`predict.window/overlap`), each anchored on its first
frame. Every TTA step picks a window, its anchor a and `frames_per_step - 1` other frames j, runs the
pairs (a, a), (a, j...) through the network, takes K from the anchor's own pointmap before TTA (or
the given focal; `tta_focal=per_step` re-fits it to the adapted pointmap at every step), solves each
camera j by differentiable PnP on head 2, and minimises the TTA loss (`st4r_cli.losses.tta`) against
the 2D pseudo-tracks (and mono-depth when available). Only the selected parameter groups change. The
predict stage then runs the adapted network over every window.

With `adapt.tta_cameras=solved` the loss's cameras are the cameras stage's instead (bundle adjustment on
the 2D tracks, input artifact `cameras`): anchor a -> camera j is cam_w2c[j] inv(cam_w2c[a]), its
translation converted to the network's units at every step by a factor without gradient
(`solved_poses`), with the K they were solved with. A step whose anchor has too few pixels with a
solved depth uses PnP (counted in `pnp_camera_steps`); when the cameras stage did not accept its
solution the whole TTA uses PnP and the artifact says why (`tta_cameras_fallback`, a run.json warning).

The TTA adapts on the tracker's own grid (`tta_tracks`): the tracks stage's tracks, or its `grid_*`
tracks when the output queries are the user's (a handful of points would leave most windows without
tracks). When the TTA cannot run all the same (no tracks, too few visible at every window anchor), the
artifact says why in `skipped_reason ()` (a string; absent when the TTA ran) and the pipeline records it
as a warning in run.json: a skipped TTA is never silent.

A guard rolls the adapted parameters and the optimiser back to the last good state, and halves the
learning rate, when a step's loss or gradient is non-finite, the loss jumps far above its running
average for that window, or the robust visibility mask collapses (under 30% of its running average).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from st4r_cli.configs import AdaptConfig, PredictConfig, TTALossConfig, VisibilityConfig
from st4r_cli.model.windows import PairRunner, window_frames, window_starts

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["ADAPT_VERSION", "AdaptConfig", "SolvedCameras", "TTALossConfig", "adapt_model", "check_adapt_config",
           "resolve", "solved_cameras", "tta_tracks"]

ADAPT_VERSION = 6
TTA_CAMERAS = ("pnp", "solved")

# Parameter groups by name prefix (St4rNet / DUSt3R naming).
PARAM_GROUPS: dict[str, tuple[str, ...]] = {
    "all": ("",),
    "decoders+heads": ("decoder_embed", "dec_blocks", "dec_blocks2", "dec_norm", "downstream_head1",
                       "downstream_head2"),
    "heads": ("downstream_head1", "downstream_head2"),
    "tracking": ("dec_blocks.", "downstream_head1"),
}


@dataclass
class ResolvedAdapt:
    iters: int
    lr: float
    frames_per_step: int
    batch_size: int


def resolve(config: AdaptConfig, device: str, batch_size: int = 0) -> ResolvedAdapt:
    """Fill the device-dependent defaults (the 0 values) of `config` (and of `predict.batch_size`)."""
    from st4r_cli.model.windows import batch_size_for

    cuda = str(device).startswith("cuda")
    return ResolvedAdapt(
        iters=config.iters or (300 if cuda else 20),
        lr=config.lr or (5e-5 if cuda else 2e-5),
        frames_per_step=config.frames_per_step or (10 if cuda else 4),
        batch_size=batch_size_for(batch_size, device),
    )


LARGE_MODEL_PARAMS = 100_000_000   # "auto" memory settings treat a network above this size as large
ENCODER_PREFIXES = ("patch_embed", "enc_blocks", "enc_norm")


@dataclass(frozen=True)
class MemoryPlan:
    """The adapt config's memory knobs for one device and network (`resolve_memory`)."""

    checkpoint: bool       # activation checkpointing in the TTA's forward
    micro_batch: int       # pairs per forward pass within a step (0: all)
    amp: bool              # bfloat16 autocast of the encoder / decoders
    cache_encoder: bool    # encoder tokens computed once per frame
    snapshots: str         # memory | disk: where the original weights and the rollback state live


def resolve_memory(config: AdaptConfig, device: str, num_params: int, encoder_adapts: bool) -> MemoryPlan:
    """The memory knobs of `config` with their "auto" / 0 values filled for `device` and a network of
    `num_params` parameters whose encoder adapts or not (AdaptConfig's field comments)."""
    cuda = str(device).startswith("cuda")
    large = num_params > LARGE_MODEL_PARAMS
    checkpoint = config.checkpointing == "on" or (config.checkpointing == "auto" and (large or cuda))
    micro_batch = config.micro_batch or ((2 if cuda else 1) if checkpoint else 0)
    return MemoryPlan(
        checkpoint=checkpoint, micro_batch=micro_batch,
        amp=config.amp == "bf16" or (config.amp == "auto" and cuda),
        cache_encoder=config.cache_encoder == "auto" and not encoder_adapts,
        snapshots=config.snapshots if config.snapshots != "auto" else ("disk" if large and not cuda else "memory"))


def check_adapt_config(config: AdaptConfig) -> None:
    """St4rError for invalid values (called before any work)."""
    from st4r_cli.errors import St4rError

    if config.loss not in ("robust", "baseline", "none"):
        raise St4rError(f"adapt.loss must be robust, baseline or none, got '{config.loss}'")
    if config.params not in PARAM_GROUPS:
        raise St4rError(f"adapt.params must be one of {', '.join(PARAM_GROUPS)}, got '{config.params}'")
    if config.weight_mode not in ("exp", "inv"):
        raise St4rError(f"adapt.weight_mode must be exp or inv, got '{config.weight_mode}'")
    if config.iters < 0 or config.frames_per_step < 0 or config.lr < 0:
        raise St4rError("adapt.iters, frames_per_step and lr must be >= 0")
    if config.frames_per_step == 1:
        raise St4rError("adapt.frames_per_step must be >= 2 (the anchor pair plus at least one frame)")
    if config.pnp_stride < 1 or config.max_tracks < 1 or config.prior_stride < 1:
        raise St4rError("adapt.pnp_stride, adapt.max_tracks and adapt.prior_stride must be >= 1")
    if config.prior_kind not in ("points", "anchor", "depth"):
        raise St4rError(f"adapt.prior_kind must be points, anchor or depth, got '{config.prior_kind}'")
    if config.tta_focal not in ("fixed", "per_step"):
        raise St4rError(f"adapt.tta_focal must be fixed or per_step, got '{config.tta_focal}'")
    if config.tta_cameras not in TTA_CAMERAS:
        raise St4rError(f"adapt.tta_cameras must be pnp or solved, got '{config.tta_cameras}'")
    if config.prior_weight < 0 or config.outlier_gate < 0:
        raise St4rError("adapt.prior_weight and adapt.outlier_gate must be >= 0")
    _check_memory_config(config)


def _check_memory_config(config: AdaptConfig) -> None:
    """St4rError for invalid memory knobs (checkpointing, micro_batch, amp, cache_encoder, snapshots)."""
    from st4r_cli.errors import St4rError

    choices = {"checkpointing": ("auto", "on", "off"), "amp": ("auto", "bf16", "off"),
               "cache_encoder": ("auto", "off"), "snapshots": ("auto", "memory", "disk")}
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise St4rError(f"adapt.{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, "
                            f"got '{getattr(config, name)}'")
    if config.micro_batch < 0:
        raise St4rError("adapt.micro_batch must be >= 0")


def select_parameters(model: torch.nn.Module, group: str) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) pairs of `group`; every other parameter gets requires_grad False."""
    prefixes = PARAM_GROUPS[group]
    chosen = []
    for name, param in model.named_parameters():
        keep = any(name.startswith(prefix) for prefix in prefixes)
        param.requires_grad_(keep)
        if keep:
            chosen.append((name, param))
    if not chosen:
        from st4r_cli.errors import St4rError

        raise St4rError(f"adapt.params={group}: no model parameter matches {prefixes}")
    return chosen


# ----------------------------------------------------------------------------------------------
# per-step geometry: K and camera poses
# ----------------------------------------------------------------------------------------------

def anchor_intrinsics(anchor_pts: torch.Tensor, focal: float | None) -> torch.Tensor:
    """K (3, 3) from the anchor's own pointmap (H, W, 3) by Weiszfeld, or with the given focal."""
    from st4r_cli.geometry.camera import intrinsics_from_pointmap

    return intrinsics_from_pointmap(anchor_pts, focal=focal)


def solve_poses(recon_pts: torch.Tensor, recon_conf: torch.Tensor, intrinsics: torch.Tensor,
                stride: int, seed: int = 0) -> torch.Tensor:
    """w2c (P, 4, 4), anchor camera -> camera j, by weighted differentiable PnP on head 2.

    recon_pts (P, H, W, 3) are frame j's pixels in the anchor camera; their pixels are the grid.
    Every `stride`-th pixel is used; weights are head 2's confidences.
    """
    from st4r_cli.geometry.camera import pixel_grid
    from st4r_cli.geometry.pnp import PnPOptions, solve_pnp

    count, h, w, _ = recon_pts.shape
    pts = recon_pts[:, ::stride, ::stride].reshape(count, -1, 3)
    conf = recon_conf[:, ::stride, ::stride].reshape(count, -1)
    grid = pixel_grid((h, w), device=pts.device, dtype=pts.dtype)[::stride, ::stride].reshape(1, -1, 2)
    return solve_pnp(pts, grid.expand(count, -1, -1), intrinsics, weights=conf,
                     options=PnPOptions(seed=seed))


# ----------------------------------------------------------------------------------------------
# the cameras stage's cameras in the reprojection loss (adapt.tta_cameras=solved)
# ----------------------------------------------------------------------------------------------

MIN_SCALE_SAMPLES = 8   # pixels (or bundle points) with a solved depth needed to scale one step's cameras


@dataclass
class SolvedCameras:
    """The cameras stage's solution as the TTA uses it (`solved_cameras`).

    cam_w2c (T, 4, 4) f64: world (camera of frame 0) -> camera t, in the solver's units (median track
    depth 1); intrinsics (3, 3) f64: the K they were solved with; reference: per window anchor a, the
    pixels (M, 2) f32 of frame a with a depth in the solver's units and those depths (M,) f64
    (`reference_depth`), empty when frame a has none; source: per anchor, where they came from.
    """

    cam_w2c: np.ndarray
    intrinsics: np.ndarray
    reference: dict[int, tuple[np.ndarray, np.ndarray]]
    source: dict[int, str]


def solved_cameras(cameras: dict[str, np.ndarray] | None, depth: dict[str, np.ndarray] | None,
                   tracks: dict[str, np.ndarray] | None, anchors: list[int], hw: tuple[int, int]
                   ) -> tuple[SolvedCameras | None, str]:
    """(the cameras stage's solution with each anchor's reference depth, "") or (None, why the TTA uses
    the PnP cameras instead: no cameras stage result, or its solution was not accepted).

    cameras: the cameras stage's arrays (cam_w2c, intrinsics, ba_accepted, camera_status,
    track_bundle_points, track_bundle_fixed); depth: the depth stage's arrays or None; tracks: the
    tracks stage's own tracks (the N the bundle points belong to), not the TTA's grid tracks.
    """
    import numpy as np

    if cameras is None:
        return None, "no solved cameras were given to the adapt stage"
    if not bool(cameras["ba_accepted"]):
        return None, f"the cameras stage did not solve the cameras ({cameras['camera_status']})"
    cam_w2c = np.asarray(cameras["cam_w2c"], np.float64)
    k_mat = np.asarray(cameras["intrinsics"], np.float64)
    reference, source = {}, {}
    for anchor in sorted(set(anchors)):
        xy, z, source[anchor] = reference_depth(cameras, depth, tracks, anchor, hw)
        reference[anchor] = (xy, z)
    return SolvedCameras(cam_w2c, k_mat, reference, source), ""


def reference_depth(cameras: dict[str, np.ndarray], depth: dict[str, np.ndarray] | None,
                    tracks: dict[str, np.ndarray] | None, frame: int, hw: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray, str]:
    """Pixels (M, 2) f32 of `frame` and their z-depth (M,) f64 in the solved cameras' units, and the
    source's name.

    First choice, the multi-view depth (the depth stage's `multiview` arrays, recognised by their
    `dynamic` flags: MoGe's depth is in other units): its valid pixels of `frame` not flagged moving,
    dense and triangulated from these very cameras. Else the bundle's own points: the tracks stage's
    tracks that are well fixed (`track_bundle_fixed`) and visible at `frame`, projected into its solved
    camera (in front of it, inside the image). Empty arrays when neither gives `MIN_SCALE_SAMPLES`.
    """
    import numpy as np

    from st4r_cli.geometry.camera_np import in_image, project_world

    if depth is not None and "dynamic" in depth and tuple(depth["depth"].shape[1:3]) == tuple(hw):
        z_map = np.asarray(depth["depth"][frame], np.float64)
        ok = (np.asarray(depth["valid"][frame], bool) & ~np.asarray(depth["dynamic"][frame], bool)
              & np.isfinite(z_map) & (z_map > 0))
        rows, cols = np.nonzero(ok)
        if rows.size >= MIN_SCALE_SAMPLES:
            return np.stack([cols, rows], -1).astype(np.float32), z_map[rows, cols], "multiview depth"
    points = np.asarray(cameras["track_bundle_points"], np.float64)
    keep = np.asarray(cameras["track_bundle_fixed"], bool) & np.isfinite(points).all(-1)
    if tracks is not None and len(tracks.get("visible", ())) == len(points):
        keep &= np.asarray(tracks["visible"][:, frame], bool)
    xy, z = project_world(points[keep], np.asarray(cameras["cam_w2c"][frame], np.float64),
                          np.asarray(cameras["intrinsics"], np.float64))
    inside = in_image(xy, hw) & (z > 0)
    if int(inside.sum()) >= MIN_SCALE_SAMPLES:
        return xy[inside].astype(np.float32), z[inside], "bundle points"
    return np.zeros((0, 2), np.float32), np.zeros(0), "none"


def network_scale(anchor_pts: torch.Tensor, xy: np.ndarray, z_solved: np.ndarray) -> float | None:
    """Network units per solver unit at one anchor, no gradient: the median over the reference pixels
    xy (M, 2) of the network's z-depth (head 1 of the pair (a, a), anchor_pts (H, W, 3), sampled
    bilinearly) over the solved depth z_solved (M,). None with fewer than `MIN_SCALE_SAMPLES` usable
    pixels (network depth > 0) or a non-finite / non-positive result."""
    import numpy as np
    import torch

    from st4r_cli.geometry.camera import sample_bilinear

    if len(xy) < MIN_SCALE_SAMPLES:
        return None
    with torch.no_grad():
        query = torch.as_tensor(xy, dtype=anchor_pts.dtype, device=anchor_pts.device)
        z_net = sample_bilinear(anchor_pts[..., 2:3].detach(), query)[:, 0].double().cpu().numpy()
    usable = np.isfinite(z_net) & (z_net > 0)
    if int(usable.sum()) < MIN_SCALE_SAMPLES:
        return None
    scale = float(np.median(z_net[usable] / z_solved[usable]))
    return scale if np.isfinite(scale) and scale > 0 else None


def relative_w2c(cam_w2c: np.ndarray, anchor: int, targets: list[int], scale: float = 1.0) -> np.ndarray:
    """(P, 4, 4) anchor camera -> camera j for j in `targets`: cam_w2c[j] @ inv(cam_w2c[anchor]), its
    translation multiplied by `scale` (solver units -> network units)."""
    import numpy as np

    rel = cam_w2c[targets] @ np.linalg.inv(cam_w2c[anchor])[None]
    rel[:, :3, 3] *= scale
    return rel


def solved_poses(solved: SolvedCameras, anchor: int, targets: list[int], anchor_pts: torch.Tensor
                 ) -> torch.Tensor | None:
    """w2c (P, 4, 4), anchor camera -> camera j, from the cameras stage in the network's units (no
    gradient), or None when this anchor's scale cannot be measured (the step then uses PnP).

    The solved cameras' rotations need no conversion; their translations are in the solver's units
    (the bundle's median track depth is 1) while the points the loss projects are head 1's, in the
    network's. One factor per step converts them: the median ratio of the network's z-depth of frame a
    (head 1 of the pair (a, a): the very points the reprojection loss projects, at the same step's
    weights) to the solved depth at the same pixels (`reference_depth`: the multi-view depth, else the
    bundle points). A median of per-pixel ratios is a scale-only fit that ignores the pixels where
    either depth is wrong (moving objects, holes, sky). It carries no gradient: it is a change of
    units, so the network cannot lower the loss by moving the cameras through its own scale, and the
    loss sees exactly the solved rotation and baseline direction.
    """
    import torch

    xy, z_solved = solved.reference[anchor]
    scale = network_scale(anchor_pts, xy, z_solved)
    if scale is None:
        return None
    rel = relative_w2c(solved.cam_w2c, anchor, targets, scale)
    return torch.as_tensor(rel, dtype=anchor_pts.dtype, device=anchor_pts.device)


# ----------------------------------------------------------------------------------------------
# the stage
# ----------------------------------------------------------------------------------------------

@dataclass
class WindowTracks:
    """Pseudo-tracks usable by one window: tracks visible (and inside the image) at its anchor."""

    index: np.ndarray       # (N_w,) track ids
    query_xy: np.ndarray    # (N_w, 2) pixel at the anchor


def tracks_for_window(tracks: dict[str, np.ndarray] | None, anchor: int, hw: tuple[int, int]
                      ) -> WindowTracks | None:
    """Tracks whose query frame is <= anchor and that are visible inside the image at the anchor."""
    import numpy as np

    if tracks is None:
        return None
    xy = tracks["tracks_xy"][:, anchor]
    ok = (tracks["visible"][:, anchor].astype(bool) & np.isfinite(xy).all(-1)
          & (tracks["queries"][:, 0] <= anchor + 0.5)
          & (xy[:, 0] >= 0) & (xy[:, 0] <= hw[1] - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= hw[0] - 1))
    index = np.flatnonzero(ok)
    if index.size == 0:
        return None
    return WindowTracks(index, xy[index].astype(np.float32))


# the tracks stage's arrays the TTA reads (`tta_tracks`)
TTA_TRACK_ARRAYS = ("tracks_xy", "visible", "confidence", "queries")
MIN_WINDOW_TRACKS = 8   # a window trains only with this many tracks visible at its anchor


def tta_tracks(tracks: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    """The tracks the TTA adapts on: the tracker's own frame-0 grid (`grid_tracks_xy`, `grid_visible`,
    `grid_confidence`, `grid_queries`) when the tracks stage has it (user-given queries), else the
    stage's tracks; `tracks_xy`, `visible`, `confidence`, `queries`. None without tracks."""
    if tracks is None:
        return None
    prefix = "grid_" if "grid_tracks_xy" in tracks else ""
    return {name: tracks[prefix + name] for name in TTA_TRACK_ARRAYS if prefix + name in tracks}


def adapt_model(model: Any, frames: np.ndarray, tracks: dict[str, np.ndarray] | None,
                depth: dict[str, np.ndarray] | None, config: AdaptConfig, predict: PredictConfig,
                visibility: VisibilityConfig, device: str, seed: int,
                cameras: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Test-time adaptation of `model` (in place) on one video: see `_adapt_model`. The heap pages freed
    before and by the TTA go back to the OS (`model.heap`), so neither it nor the next stage carries them."""
    from st4r_cli.model.heap import release_freed_memory
    from st4r_cli.model.windows import torch_threads

    check_adapt_config(config)
    release_freed_memory()
    with torch_threads(predict.cpu_threads, device):
        out = _adapt_model(model, frames, tracks, depth, config, predict, visibility, device, seed, cameras)
    release_freed_memory()
    return out


def _adapt_model(model: Any, frames: np.ndarray, tracks: dict[str, np.ndarray] | None,
                 depth: dict[str, np.ndarray] | None, config: AdaptConfig, predict: PredictConfig,
                 visibility: VisibilityConfig, device: str, seed: int,
                 cameras: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Test-time adaptation of `model` (in place) on one video: the adapt stage's arrays.

    frames (T, H, W, 3) uint8; tracks: the tracks-stage arrays (tracks_xy (N,T,2), visible (N,T),
    queries (N,3)) or None; depth: depth-stage arrays (depth (T,H,W), valid (T,H,W), optional
    intrinsics (3,3)) or None; cameras: the cameras stage's arrays (read with `tta_cameras=solved`
    only) or None.
    Returns `delta.<param>` arrays (adapted minus original parameters), loss_history (S,) f32,
    lr_history (S,) f32, rollbacks () int64 (the stage's time is in run.json, not in its arrays, so the
    artifact's digest depends on its content only). With `tta_cameras=solved` also `solved_camera_steps
    ()` and `pnp_camera_steps ()` int64 (loss evaluations that used the solved cameras / fell back to
    PnP), and `tta_cameras_fallback ()` str when the solved cameras could not be used at all (why).
    """
    import numpy as np
    import torch

    from st4r_cli import progress
    from st4r_cli.model.snapshot import TensorStore
    from st4r_cli.model.windows import check_frames

    check_adapt_config(config)
    resolved = resolve(config, device, predict.batch_size)
    torch.manual_seed(seed)
    check_frames(model, frames)
    model = model.to(device)
    model.eval()  # no dropout / batch-norm in St4rNet; eval keeps inference and TTA identical
    num_frames, h, w = frames.shape[:3]
    starts = window_starts(num_frames, predict.window, predict.overlap)
    chosen = select_parameters(model, config.params) if config.loss != "none" else []
    encoder_adapts = any(name.startswith(ENCODER_PREFIXES) for name, _ in chosen)
    plan = resolve_memory(config, device, sum(p.numel() for p in model.parameters()), encoder_adapts)
    progress.debug(f"adapt: memory {plan}")
    original = TensorStore(plan.snapshots)
    original.save([param for _, param in chosen])
    solved, fallback = None, ""
    if config.tta_cameras == "solved" and config.loss != "none":
        solved, fallback = solved_cameras(cameras, depth, tracks, starts, (h, w))
        if fallback:
            progress.log(f"[yellow]warning[/yellow]: adapt: the TTA uses the PnP cameras: {fallback}")
    tracks = tta_tracks(tracks)
    counts = {"solved": 0, "pnp": 0}
    result = TTAResult()
    if config.loss != "none" and tracks is not None and resolved.iters > 0:
        result = _run_tta(model, frames, chosen, tracks, depth, config, predict, visibility, device, seed,
                          resolved, plan, solved, counts)
    elif config.loss != "none":
        result.skipped = "no 2D tracks"
    _log_outcome(result.skipped, solved, counts)
    for param in model.parameters():
        param.requires_grad_(False)
    out = _deltas(chosen, original)
    original.close()
    out.update(result.arrays())
    if config.tta_cameras == "solved" and config.loss != "none":
        out["solved_camera_steps"] = np.asarray(counts["solved"], dtype=np.int64)
        out["pnp_camera_steps"] = np.asarray(counts["pnp"], dtype=np.int64)
        if fallback:
            out["tta_cameras_fallback"] = np.asarray(f"adapt.tta_cameras=solved: the TTA used the PnP cameras: "
                                                     f"{fallback}")
    return out


@dataclass
class TTAResult:
    """The optimisation's record: per-step loss and learning rate, rollbacks, why it was skipped ("")."""

    history: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    rollbacks: int = 0
    skipped: str = ""

    def arrays(self) -> dict[str, np.ndarray]:
        """loss_history (S,) f32, lr_history (S,) f32, rollbacks () int64, skipped_reason () str when skipped."""
        import numpy as np

        out = {"loss_history": np.asarray(self.history, dtype=np.float32),
               "lr_history": np.asarray(self.lrs, dtype=np.float32),
               "rollbacks": np.asarray(self.rollbacks, dtype=np.int64)}
        if self.skipped:
            out["skipped_reason"] = np.asarray(f"test-time adaptation skipped: {self.skipped}")
        return out


def _run_tta(model: Any, frames: np.ndarray, chosen: list, tracks: dict[str, np.ndarray],
             depth: dict[str, np.ndarray] | None, config: AdaptConfig, predict: PredictConfig,
             visibility: VisibilityConfig, device: str, seed: int, resolved: ResolvedAdapt, plan: MemoryPlan,
             solved: SolvedCameras | None, counts: dict[str, int]) -> TTAResult:
    """The TTA proper on frames (T, H, W, 3) uint8: the runner, the problem, the loop."""
    from st4r_cli.model.inference import frames_to_tensor
    from st4r_cli.model.windows import RunOptions, given_focal

    options = RunOptions(checkpoint=plan.checkpoint, micro_batch=plan.micro_batch, amp=plan.amp)
    runner = PairRunner(model, frames_to_tensor(frames, device), cache_encoder=plan.cache_encoder, options=options)
    focal = given_focal(predict, depth) if solved is None else float(solved.intrinsics[0, 0])
    starts = window_starts(len(frames), predict.window, predict.overlap)
    problem = prepare_problem(runner, tracks, depth, config, visibility, resolved, (starts, predict.window), focal,
                              seed, solved, counts)
    if isinstance(problem, str):
        return TTAResult(skipped=problem)
    return _tta_loop(runner, problem, [param for _, param in chosen], resolved, plan.snapshots)


def _log_outcome(skipped: str, solved: SolvedCameras | None, counts: dict[str, int]) -> None:
    """Warnings for a skipped TTA and for steps whose solved cameras fell back to PnP."""
    from st4r_cli import progress

    if skipped:
        progress.log(f"[yellow]warning[/yellow]: adapt: test-time adaptation skipped: {skipped}")
    if solved is not None and counts["pnp"]:
        progress.log(f"[yellow]-[/yellow] adapt: the solved cameras could not be scaled at {counts['pnp']} of "
                     f"{counts['pnp'] + counts['solved']} steps (too few pixels with a solved depth at the "
                     "anchor); those used the PnP cameras")


def _deltas(chosen: list, original: Any) -> dict[str, np.ndarray]:
    """`delta.<name>` (adapted minus original, float32) of every adapted parameter; original: the
    `TensorStore` of their values before the TTA, in `chosen`'s order (read one at a time)."""
    import numpy as np

    out = {}
    for index, (name, param) in enumerate(chosen):
        delta = param.detach().cpu() - original.read(index)
        out[f"delta.{name}"] = delta.numpy().astype(np.float32, copy=False)
    return out


def frozen_window_outputs(runner: PairRunner, anchor: int, frames_w: list[int], config: AdaptConfig,
                          focal: float | None, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """The pre-TTA network's outputs for the pairs (anchor, j), j in `frames_w`, for the prior.

    prior_kind points: track_pts / recon_pts (L, H/k, W/k, 3) at every k = prior_stride-th pixel and
    `stride` (); depth: head 2's z-depth in camera j (L, H, W), cameras by PnP as in the TTA step.
    """
    import torch

    keys = ("track_pts", "recon_pts", "recon_conf")
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
    with torch.no_grad():
        for start in range(0, len(frames_w), batch_size):
            chunk = frames_w[start:start + batch_size]
            pred = runner([anchor] * len(chunk), chunk)
            for key in keys:
                parts[key].append(pred[key])
        full = {key: torch.cat(value) for key, value in parts.items()}
        if config.prior_kind == "depth":
            from st4r_cli.losses.tta import surface_depth

            k_mat = anchor_intrinsics(full["track_pts"][frames_w.index(anchor)], focal)
            w2c = solve_poses(full["recon_pts"], full["recon_conf"], k_mat, config.pnp_stride, seed)
            return {"depth": surface_depth(full["recon_pts"], w2c)}
    stride = config.prior_stride
    return {"track_pts": full["track_pts"][:, ::stride, ::stride].clone(),
            "recon_pts": full["recon_pts"][:, ::stride, ::stride].clone(),
            "stride": torch.tensor(stride)}


# ----------------------------------------------------------------------------------------------
# the optimisation: what every step reads, one step's pairs and loss, the rollback guard, the loop
# ----------------------------------------------------------------------------------------------

@dataclass
class TTAProblem:
    """Everything the TTA steps read, built once (`prepare_problem`).

    tracks: the TTA's tracks (numpy, `tta_tracks`); tracks_xy (N, T, 2) f32 / visible (N, T) bool: the
    same as CPU tensors; depth_t / valid_t (T, H, W): the mono-depth when its loss is on, else None;
    frozen: per trainable window, the pre-TTA outputs for the prior; fixed_k: per window, K (3, 3) when
    it does not change during the TTA.
    """

    config: AdaptConfig
    visibility: VisibilityConfig
    starts: list[int]
    num_frames: int
    window: int
    frames_per_step: int
    focal: float | None
    seed: int
    tracks: dict[str, np.ndarray]
    tracks_xy: torch.Tensor
    visible: torch.Tensor
    per_window: list[WindowTracks | None]
    trainable: list[int]
    depth_t: torch.Tensor | None = None
    valid_t: torch.Tensor | None = None
    frozen: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    fixed_k: dict[int, torch.Tensor] = field(default_factory=dict)
    solved: SolvedCameras | None = None
    counts: dict[str, int] = field(default_factory=dict)


def prepare_problem(runner: PairRunner, tracks: dict[str, np.ndarray], depth: dict[str, np.ndarray] | None,
                    config: AdaptConfig, visibility: VisibilityConfig, resolved: ResolvedAdapt,
                    windows: tuple[list[int], int], focal: float | None, seed: int, solved: SolvedCameras | None,
                    counts: dict[str, int]) -> TTAProblem | str:
    """The TTA's fixed inputs (`TTAProblem`), or why it cannot run (too few tracks at every anchor).
    windows: (the windows' first frames, the window length)."""
    import numpy as np
    import torch

    num_frames, _, h, w = runner.images.shape
    starts, window = windows
    per_window = [tracks_for_window(tracks, start, (h, w)) for start in starts]
    trainable = [k for k, wt in enumerate(per_window) if wt is not None and wt.index.size >= MIN_WINDOW_TRACKS]
    if not trainable:
        most = max((wt.index.size for wt in per_window if wt is not None), default=0)
        return (f"too few visible tracks at the window anchors (at most {most} at an anchor, "
                f"{MIN_WINDOW_TRACKS} needed, {len(tracks['tracks_xy'])} tracks)")
    problem = TTAProblem(config, visibility, starts, num_frames, window, resolved.frames_per_step, focal, seed,
                         tracks, torch.as_tensor(tracks["tracks_xy"], dtype=torch.float32),
                         torch.as_tensor(tracks["visible"].astype(bool)), per_window, trainable,
                         solved=solved, counts=counts)
    if depth is not None and config.depth_weight > 0:
        problem.depth_t = torch.as_tensor(np.nan_to_num(depth["depth"], nan=0.0), dtype=torch.float32)
        problem.valid_t = torch.as_tensor(depth["valid"].astype(bool))
    if config.prior_weight > 0:
        for w_idx in trainable:
            frames_w = window_frames(starts[w_idx], num_frames, window)
            problem.frozen[w_idx] = frozen_window_outputs(runner, starts[w_idx], frames_w, config, focal,
                                                          resolved.batch_size, seed)
    problem.fixed_k = _fixed_intrinsics(runner, problem)
    return problem


def _fixed_intrinsics(runner: PairRunner, problem: TTAProblem) -> dict[int, torch.Tensor]:
    """Per trainable window, K (3, 3) when it is fixed during the TTA: the solved cameras' K, or (focal
    estimated, `tta_focal=fixed`) the pre-TTA anchor pointmap's; empty when every step re-fits K."""
    import torch

    if problem.solved is not None:   # the K the cameras were solved with, for every window
        k_solved = torch.as_tensor(problem.solved.intrinsics, dtype=torch.float32, device=runner.images.device)
        return {w_idx: k_solved for w_idx in problem.trainable}
    fixed: dict[int, torch.Tensor] = {}
    if problem.focal is None and problem.config.tta_focal == "fixed":
        with torch.no_grad():
            for w_idx in problem.trainable:
                anchor = problem.starts[w_idx]
                fixed[w_idx] = anchor_intrinsics(runner([anchor], [anchor])["track_pts"][0], None)
    return fixed


@dataclass
class StepSample:
    """One step's pairs: window index, frames (anchor first; the pairs are (anchor, j)) and 2D tracks."""

    w_idx: int
    targets: list[int]
    batch: Any   # losses.tta.TrackBatch


def sample_step(problem: TTAProblem, rng: np.random.Generator, step: int, device: Any) -> StepSample:
    """The pairs and tracks of step `step`: windows in turn, `frames_per_step - 1` random frames of the
    window besides its anchor, at most `max_tracks` random tracks visible at the anchor."""
    import numpy as np
    import torch

    from st4r_cli.losses.tta import TrackBatch

    w_idx = problem.trainable[step % len(problem.trainable)]
    anchor = problem.starts[w_idx]
    others = [j for j in window_frames(anchor, problem.num_frames, problem.window) if j != anchor]
    take = min(len(others), problem.frames_per_step - 1)
    chosen_j = sorted(rng.choice(others, size=take, replace=False).tolist()) if take > 0 else []
    targets = [anchor] + chosen_j
    win = problem.per_window[w_idx]
    max_tracks = problem.config.max_tracks
    sub = win.index if win.index.size <= max_tracks else np.sort(rng.choice(win.index, size=max_tracks,
                                                                            replace=False))
    query = torch.as_tensor(problem.tracks["tracks_xy"][sub, anchor], dtype=torch.float32, device=device)
    batch = TrackBatch(query, problem.tracks_xy[sub][:, targets].transpose(0, 1).to(device),
                       problem.visible[sub][:, targets].transpose(0, 1).to(device))
    return StepSample(w_idx, targets, batch)


def step_loss(runner: PairRunner, problem: TTAProblem, step: int, sample: StepSample
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """The TTA loss of one step's pairs (anchor, j) at the current weights, and its parts."""
    import torch

    from st4r_cli.losses.tta import tta_loss

    config, targets, w_idx = problem.config, sample.targets, sample.w_idx
    device = runner.images.device
    anchor = targets[0]
    pred = runner([anchor] * len(targets), targets)
    k_mat = problem.fixed_k[w_idx] if w_idx in problem.fixed_k else anchor_intrinsics(pred["track_pts"][0],
                                                                                      problem.focal)
    w2c = None if problem.solved is None else solved_poses(problem.solved, anchor, targets, pred["track_pts"][0])
    if problem.solved is not None:
        problem.counts["pnp" if w2c is None else "solved"] += 1
    if w2c is None:
        w2c = solve_poses(pred["recon_pts"], pred["recon_conf"], k_mat, config.pnp_stride, problem.seed + step)
    dep = None if problem.depth_t is None else problem.depth_t[targets].to(device)
    val = None if problem.valid_t is None else problem.valid_t[targets].to(device)
    prior = None
    if w_idx in problem.frozen:
        rows = [j - anchor for j in targets]  # window frames are anchor, anchor + 1, ...
        prior = {key: (value if key == "stride" else value[rows]) for key, value in problem.frozen[w_idx].items()}
        prior["is_anchor"] = torch.tensor([j == anchor for j in targets])
    return tta_loss(pred, k_mat, w2c, sample.batch, dep, val, config, prior, problem.visibility)


class RollbackGuard:
    """Rolls the adapted parameters and the optimiser back to the last good state and halves the learning
    rate when a step goes bad (`is_bad`); the good state is a `TrainingSnapshot` (memory or disk)."""

    def __init__(self, params: list[torch.Tensor], optimizer: Any, config: AdaptConfig, lr: float,
                 snapshots: str) -> None:
        from st4r_cli.model.snapshot import TensorStore, TrainingSnapshot

        self.params, self.optimizer, self.config, self.lr = params, optimizer, config, lr
        self.rollbacks = 0
        self.ema: dict[int, float] = {}
        self.ema_frac: dict[int, float] = {}
        self.good = TrainingSnapshot(TensorStore(snapshots))
        self.remember()

    def remember(self) -> None:
        """The current parameters and optimiser state become the state to roll back to."""
        self.good.take(self.params, self.optimizer)

    def is_bad(self, w_idx: int, parts: dict[str, float]) -> bool:
        """A non-finite loss, one far above the window's running average, or a collapsed robust mask."""
        import math

        value, frac = parts["total"], parts.get("mask_frac", 1.0)
        return (not math.isfinite(value)
                or (w_idx in self.ema and value > self.config.diverge_factor * self.ema[w_idx])
                # the robust mask collapsing means the geometry broke, not that the fit got good
                or (w_idx in self.ema_frac and frac < 0.3 * self.ema_frac[w_idx]))

    def accept(self, w_idx: int, parts: dict[str, float]) -> None:
        """Fold a good step's loss and mask fraction into the window's running averages."""
        value, frac = parts["total"], parts.get("mask_frac", 1.0)
        self.ema[w_idx] = value if w_idx not in self.ema else 0.8 * self.ema[w_idx] + 0.2 * value
        self.ema_frac[w_idx] = frac if w_idx not in self.ema_frac else 0.8 * self.ema_frac[w_idx] + 0.2 * frac

    def params_finite(self) -> bool:
        import torch

        return all(bool(torch.isfinite(p).all()) for p in self.params)

    def grads_finite(self) -> bool:
        import torch

        return all(bool(torch.isfinite(p.grad).all()) for p in self.params if p.grad is not None)

    def roll_back(self) -> None:
        """Restore the good state; halve the learning rate."""
        self.rollbacks += 1
        self.good.restore(self.params, self.optimizer)
        self.lr *= 0.5
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def close(self) -> None:
        self.good.store.close()


def _tta_loop(runner: PairRunner, problem: TTAProblem, params: list[torch.Tensor], resolved: ResolvedAdapt,
              snapshots: str) -> TTAResult:
    """The optimisation loop with the rollback guard (AdamW on `params` only, so the optimiser state is
    the adapted parameters'). Returns the loss and lr histories and the rollbacks."""
    import numpy as np
    import torch

    from st4r_cli import progress

    config = problem.config
    device = runner.images.device
    optimizer = torch.optim.AdamW(params, lr=resolved.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(problem.seed)
    guard = RollbackGuard(params, optimizer, config, resolved.lr, snapshots)
    result = TTAResult()
    step = 0
    for step in progress.track(range(resolved.iters), f"adapt ({config.loss})"):
        sample = sample_step(problem, rng, step, device)
        if not _train_step(runner, problem, step, sample, guard, result) and guard.lr < resolved.lr / 64:
            progress.log("[yellow]-[/yellow] adapt: stopped early, the loss kept diverging")
            break
    if result.history:   # the last update has not been checked by a following loss: check it once
        sample = sample_step(problem, rng, step + 1, device)
        with torch.no_grad():
            _, parts = step_loss(runner, problem, step + 1, sample)
        if guard.is_bad(sample.w_idx, parts) or not guard.params_finite():
            guard.roll_back()
            progress.debug("adapt: the final update was rejected, rolled back")
    guard.close()
    result.rollbacks = guard.rollbacks
    return result


def _train_step(runner: PairRunner, problem: TTAProblem, step: int, sample: StepSample, guard: RollbackGuard,
                result: TTAResult) -> bool:
    """One step: loss, backward, checks, optimiser step (or a rollback). False when the step was rejected."""
    import torch

    from st4r_cli import progress

    guard.optimizer.zero_grad(set_to_none=True)
    loss, parts = step_loss(runner, problem, step, sample)
    bad = guard.is_bad(sample.w_idx, parts)
    if not bad:
        loss.backward()
        bad = not guard.grads_finite()
    del loss
    if bad:
        guard.roll_back()
        progress.debug(f"adapt step {step}: loss {parts['total']:.4g} rejected, rolled back, lr -> {guard.lr:.3g}")
        result.history.append(float("nan"))
        result.lrs.append(guard.lr)
        return False
    if len(result.history) % 5 == 0:  # these parameters just gave a good loss: remember them
        guard.remember()
    if problem.config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(guard.params, problem.config.grad_clip)
    guard.optimizer.step()
    guard.accept(sample.w_idx, parts)
    result.history.append(parts["total"])
    result.lrs.append(guard.lr)
    progress.debug(f"adapt step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in parts.items()))
    if not guard.params_finite():
        guard.roll_back()
    return True
