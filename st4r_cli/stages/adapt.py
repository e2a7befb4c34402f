"""Adapt stage: test-time adaptation, ST4RTrack's TTA (`baseline`) or ST4RTrack+ (`robust`, default).

Input artifacts: decode (frames), tracks (2D pseudo-tracks), depth (optional mono-depth) and the
checkpoint; config: `AdaptConfig` (its loss fields are `TTALossConfig`'s), plus the shared
`PredictConfig` (windows, focal, batches, threads) and `VisibilityConfig` (the loss's z-buffer test and
sigma). Output: the adapted weights as deltas (`adapt_model`).

The video is cut into overlapping windows (`predict.window/overlap`), each anchored on its first
frame. Every TTA step picks a window, its anchor a and `frames_per_step - 1` other frames j, runs the
pairs (a, a), (a, j...) through the network, takes K from the anchor's own pointmap before TTA (or
the given focal; `tta_focal=per_step` re-fits it to the adapted pointmap at every step), solves each
camera j by differentiable PnP on head 2, and minimises the TTA loss (`st4r_cli.losses.tta`) against
the 2D pseudo-tracks (and mono-depth when available). Only the selected parameter groups change. The
predict stage then runs the adapted network over every window.

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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from st4r_cli.configs import AdaptConfig, PredictConfig, TTALossConfig, VisibilityConfig
from st4r_cli.model.windows import PairRunner, window_frames, window_starts

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["ADAPT_VERSION", "AdaptConfig", "TTALossConfig", "adapt_model", "check_adapt_config", "resolve",
           "tta_tracks"]

ADAPT_VERSION = 5

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
    if config.prior_weight < 0 or config.outlier_gate < 0:
        raise St4rError("adapt.prior_weight and adapt.outlier_gate must be >= 0")


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
                visibility: VisibilityConfig, device: str, seed: int) -> dict[str, np.ndarray]:
    """Test-time adaptation of `model` (in place) on one video: see `_adapt_model`."""
    from st4r_cli.model.windows import torch_threads

    check_adapt_config(config)
    with torch_threads(predict.cpu_threads, device):
        return _adapt_model(model, frames, tracks, depth, config, predict, visibility, device, seed)


def _adapt_model(model: Any, frames: np.ndarray, tracks: dict[str, np.ndarray] | None,
                 depth: dict[str, np.ndarray] | None, config: AdaptConfig, predict: PredictConfig,
                 visibility: VisibilityConfig, device: str, seed: int) -> dict[str, np.ndarray]:
    """Test-time adaptation of `model` (in place) on one video: the adapt stage's arrays.

    frames (T, H, W, 3) uint8; tracks: the tracks-stage arrays (tracks_xy (N,T,2), visible (N,T),
    queries (N,3)) or None; depth: depth-stage arrays (depth (T,H,W), valid (T,H,W), optional
    intrinsics (3,3)) or None.
    Returns `delta.<param>` arrays (adapted minus original parameters), loss_history (S,) f32,
    lr_history (S,) f32, rollbacks () int64 (the stage's time is in run.json, not in its arrays, so the
    artifact's digest depends on its content only).
    """
    import numpy as np
    import torch

    from st4r_cli import progress

    check_adapt_config(config)
    from st4r_cli.model.windows import check_frames, given_focal

    resolved = resolve(config, device, predict.batch_size)
    torch.manual_seed(seed)
    check_frames(model, frames)
    model = model.to(device)
    model.eval()  # no dropout / batch-norm in St4rNet; eval keeps inference and TTA identical
    num_frames, h, w = frames.shape[:3]
    starts = window_starts(num_frames, predict.window, predict.overlap)
    chosen = select_parameters(model, config.params) if config.loss != "none" else []
    original = {name: param.detach().clone() for name, param in chosen}
    history: list[float] = []
    lrs: list[float] = []
    rollbacks = 0
    tracks = tta_tracks(tracks)
    skipped = ""
    if config.loss != "none" and tracks is not None and resolved.iters > 0:
        from st4r_cli.model.inference import frames_to_tensor

        encoder_adapts = any(name.startswith(("patch_embed", "enc_blocks", "enc_norm")) for name, _ in chosen)
        runner = PairRunner(model, frames_to_tensor(frames, device), cache_encoder=not encoder_adapts)
        focal = given_focal(predict, depth)
        history, lrs, rollbacks, skipped = _tta_loop(runner, chosen, frames.shape[:3], starts, tracks, depth,
                                                     config, visibility, resolved, predict.window, focal, seed)
    elif config.loss != "none":
        skipped = "no 2D tracks"
    if skipped:
        progress.log(f"[yellow]warning[/yellow]: adapt: test-time adaptation skipped: {skipped}")
    for param in model.parameters():
        param.requires_grad_(False)
    out = {f"delta.{name}": (param.detach() - original[name]).cpu().numpy().astype(np.float32)
           for name, param in chosen}
    out["loss_history"] = np.asarray(history, dtype=np.float32)
    out["lr_history"] = np.asarray(lrs, dtype=np.float32)
    out["rollbacks"] = np.asarray(rollbacks, dtype=np.int64)
    if skipped:
        out["skipped_reason"] = np.asarray(f"test-time adaptation skipped: {skipped}")
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


def _tta_loop(runner: PairRunner, chosen: list, frames_thw: tuple[int, int, int], starts: list[int],
              tracks: dict[str, np.ndarray], depth: dict[str, np.ndarray] | None, config: AdaptConfig,
              visibility: VisibilityConfig, resolved: ResolvedAdapt, window: int, focal: float | None, seed: int
              ) -> tuple[list[float], list[float], int, str]:
    """The optimisation loop with the rollback guard. Returns (loss history, lr history, rollbacks, why
    the TTA was skipped or "")."""
    import copy
    import math

    import numpy as np
    import torch

    from st4r_cli import progress
    from st4r_cli.losses.tta import TrackBatch, tta_loss

    num_frames, h, w = frames_thw
    device = runner.images.device
    params = [param for _, param in chosen]
    optimizer = torch.optim.AdamW(params, lr=resolved.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(seed)
    per_window = [tracks_for_window(tracks, start, (h, w)) for start in starts]
    trainable = [k for k, wt in enumerate(per_window) if wt is not None and wt.index.size >= MIN_WINDOW_TRACKS]
    if not trainable:
        most = max((wt.index.size for wt in per_window if wt is not None), default=0)
        return [], [], 0, (f"too few visible tracks at the window anchors (at most {most} at an anchor, "
                           f"{MIN_WINDOW_TRACKS} needed, {len(tracks['tracks_xy'])} tracks)")
    tracks_xy = torch.as_tensor(tracks["tracks_xy"], dtype=torch.float32)
    visible = torch.as_tensor(tracks["visible"].astype(bool))
    depth_t = valid_t = None
    if depth is not None and config.depth_weight > 0:
        depth_t = torch.as_tensor(np.nan_to_num(depth["depth"], nan=0.0), dtype=torch.float32)
        valid_t = torch.as_tensor(depth["valid"].astype(bool))

    frozen: dict[int, dict[str, torch.Tensor]] = {}
    if config.prior_weight > 0:
        for w_idx in trainable:
            frozen[w_idx] = frozen_window_outputs(runner, starts[w_idx], window_frames(starts[w_idx], num_frames, window),
                                                  config, focal, resolved.batch_size, seed)

    fixed_k: dict[int, torch.Tensor] = {}
    if focal is None and config.tta_focal == "fixed":
        with torch.no_grad():
            for w_idx in trainable:
                anchor = starts[w_idx]
                fixed_k[w_idx] = anchor_intrinsics(runner([anchor], [anchor])["track_pts"][0], None)

    good_params = [p.detach().clone() for p in params]
    good_opt = copy.deepcopy(optimizer.state_dict())
    ema: dict[int, float] = {}
    ema_frac: dict[int, float] = {}
    history: list[float] = []
    lrs: list[float] = []
    rollbacks = 0
    lr = resolved.lr

    def make_batch(step: int) -> tuple[int, list[int], TrackBatch]:
        w_idx = trainable[step % len(trainable)]
        anchor = starts[w_idx]
        others = [j for j in window_frames(anchor, num_frames, window) if j != anchor]
        take = min(len(others), resolved.frames_per_step - 1)
        chosen_j = sorted(rng.choice(others, size=take, replace=False).tolist()) if take > 0 else []
        targets = [anchor] + chosen_j
        win = per_window[w_idx]
        sub = win.index if win.index.size <= config.max_tracks else np.sort(
            rng.choice(win.index, size=config.max_tracks, replace=False))
        query = torch.as_tensor(tracks["tracks_xy"][sub, anchor], dtype=torch.float32, device=device)
        batch = TrackBatch(query, tracks_xy[sub][:, targets].transpose(0, 1).to(device),
                           visible[sub][:, targets].transpose(0, 1).to(device))
        return w_idx, targets, batch

    def evaluate(step: int, w_idx: int, targets: list[int], batch: TrackBatch
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        anchor = targets[0]
        pred = runner([anchor] * len(targets), targets)
        k_mat = fixed_k[w_idx] if w_idx in fixed_k else anchor_intrinsics(pred["track_pts"][0], focal)
        w2c = solve_poses(pred["recon_pts"], pred["recon_conf"], k_mat, config.pnp_stride, seed + step)
        dep = None if depth_t is None else depth_t[targets].to(device)
        val = None if valid_t is None else valid_t[targets].to(device)
        prior = None
        if w_idx in frozen:
            rows = [j - anchor for j in targets]  # window frames are anchor, anchor + 1, ...
            prior = {key: (value if key == "stride" else value[rows]) for key, value in frozen[w_idx].items()}
            prior["is_anchor"] = torch.tensor([j == anchor for j in targets])
        return tta_loss(pred, k_mat, w2c, batch, dep, val, config, prior, visibility)

    def is_bad(w_idx: int, parts: dict[str, float]) -> bool:
        value, frac = parts["total"], parts.get("mask_frac", 1.0)
        return (not math.isfinite(value)
                or (w_idx in ema and value > config.diverge_factor * ema[w_idx])
                # the robust mask collapsing means the geometry broke, not that the fit got good
                or (w_idx in ema_frac and frac < 0.3 * ema_frac[w_idx]))

    def roll_back() -> None:
        nonlocal lr, rollbacks
        rollbacks += 1
        with torch.no_grad():
            for param, saved in zip(params, good_params):
                param.copy_(saved)
        optimizer.load_state_dict(good_opt)
        lr *= 0.5
        for group in optimizer.param_groups:
            group["lr"] = lr

    step = 0
    for step in progress.track(range(resolved.iters), f"adapt ({config.loss})"):
        w_idx, targets, batch = make_batch(step)
        optimizer.zero_grad(set_to_none=True)
        loss, parts = evaluate(step, w_idx, targets, batch)
        bad = is_bad(w_idx, parts)
        if not bad:
            loss.backward()
            bad = not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
        if bad:
            roll_back()
            progress.debug(f"adapt step {step}: loss {parts['total']:.4g} rejected, rolled back, lr -> {lr:.3g}")
            history.append(float("nan"))
            lrs.append(lr)
            if lr < resolved.lr / 64:
                progress.log("[yellow]-[/yellow] adapt: stopped early, the loss kept diverging")
                break
            continue
        if len(history) % 5 == 0:  # these parameters just gave a good loss: remember them
            good_params = [p.detach().clone() for p in params]
            good_opt = copy.deepcopy(optimizer.state_dict())
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        value, frac = parts["total"], parts.get("mask_frac", 1.0)
        ema[w_idx] = value if w_idx not in ema else 0.8 * ema[w_idx] + 0.2 * value
        ema_frac[w_idx] = frac if w_idx not in ema_frac else 0.8 * ema_frac[w_idx] + 0.2 * frac
        history.append(value)
        lrs.append(lr)
        progress.debug(f"adapt step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in parts.items()))
        if not all(torch.isfinite(p).all() for p in params):
            roll_back()
    # The last update has not been checked by a following loss: check it once.
    if history:
        w_idx, targets, batch = make_batch(step + 1)
        with torch.no_grad():
            _, parts = evaluate(step + 1, w_idx, targets, batch)
        if is_bad(w_idx, parts) or not all(torch.isfinite(p).all() for p in params):
            roll_back()
            progress.debug("adapt: the final update was rejected, rolled back")
    return history, lrs, rollbacks, ""
