"""Test-time adaptation stage: ST4RTrack's TTA (`baseline`) or ST4RTrack+ (`robust`, default).

The video is cut into overlapping windows (`ChainConfig.window/overlap`), each anchored on its first
frame. Every TTA step picks a window, its anchor a and `frames_per_step - 1` other frames j, runs the
pairs (a, a), (a, j...) through the network, takes K from the anchor's own pointmap before TTA (or
the given focal; `tta_focal=per_step` re-fits it to the adapted pointmap at every step), solves each
camera j by differentiable PnP on head 2, and minimises the TTA loss (`st4r_cli.losses.tta`) against
the 2D pseudo-tracks (and mono-depth when available). Only the selected parameter groups change. After
adaptation, every window is predicted once: the arrays the chain stage turns into `scene.npz`.

A guard rolls the adapted parameters and the optimiser back to the last good state, and halves the
learning rate, when a step's loss or gradient is non-finite, the loss jumps far above its running
average for that window, or the robust visibility mask collapses (under 30% of its running average).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from st4r_cli.losses.tta import TTALossConfig
    from st4r_cli.stages.chain import ChainConfig

ADAPT_VERSION = 3

# Parameter groups by name prefix (St4rNet / DUSt3R naming).
PARAM_GROUPS: dict[str, tuple[str, ...]] = {
    "all": ("",),
    "decoders+heads": ("decoder_embed", "dec_blocks", "dec_blocks2", "dec_norm", "downstream_head1",
                       "downstream_head2"),
    "heads": ("downstream_head1", "downstream_head2"),
    "tracking": ("dec_blocks.", "downstream_head1"),
}


@dataclass
class AdaptConfig:
    """Test-time adaptation settings (0 means: the device's default, see `resolve`)."""

    loss: str = "robust"              # robust (ST4RTrack+) | baseline (ST4RTrack) | none (no TTA)
    iters: int = 0                    # TTA steps; 0 -> 20 on CPU, 300 on CUDA
    lr: float = 0.0                   # AdamW learning rate; 0 -> 2e-5 on CPU, 5e-5 on CUDA
    frames_per_step: int = 0          # pairs per step incl. (a, a); 0 -> 4 on CPU, 10 on CUDA
    params: str = "decoders+heads"    # decoders+heads | heads | tracking | all
    weight_decay: float = 0.0
    grad_clip: float = 1.0            # max gradient norm (0 disables)
    max_tracks: int = 512             # 2D tracks per step (random subset)
    pnp_stride: int = 4               # PnP uses every k-th pixel of head 2 in x and y
    focal: float = 0.0                # focal in pixels of the decoded frames; 0 -> estimate
    use_depth_intrinsics: bool = True  # use the depth backend's K when it gives one (and focal is 0)
    tta_focal: str = "fixed"          # estimated focal during TTA: fixed (pre-TTA anchor pointmap) |
                                      # per_step (re-fitted to the adapted pointmap at every step)
    traj_weight: float = 0.5
    depth_weight: float = 10.0
    align_weight: float = 5.0
    use_mask: bool = True             # robust: z-buffer visibility mask
    use_tracker_visibility: bool = True
    use_sigma: bool = True            # robust: per-point sigma NLL
    weight_mode: str = "exp"          # robust: exp | inv
    sigma_floor_px: float = 1.0
    calibrate_sigma: bool = True      # robust: sigma's size from the residuals, its shape from the confidence
    outlier_gate: float = 3.0         # robust: mask tracks whose residual exceeds gate x sigma (0: off)
    mask_eps_rel: float = 0.05
    prior_weight: float = 5.0         # self-distillation prior towards the pre-TTA network (both losses;
                                      # 0 disables): without a depth term nothing else pins the geometry
    prior_kind: str = "points"        # points (both heads' pointmaps) | anchor (head 2, and head 1 on the
                                      # (a, a) pair only: motion free) | depth (head-2 z-depth, eq. 9)
    prior_stride: int = 4             # points prior: every k-th pixel in x and y
    diverge_factor: float = 4.0       # a loss above this x its running average triggers a rollback
    batch_size: int = 0               # inference pairs per batch; 0 -> 4 on CPU, 16 on CUDA
    cpu_threads: int = 1              # torch threads on CPU for TTA and inference (0: torch's default).
                                      # 1 is 3-5x faster than 2 on a busy 2-core machine (tiny ops
                                      # + thread synchronisation); raise it on an idle many-core CPU

    def loss_config(self) -> TTALossConfig:
        from st4r_cli.losses.tta import TTALossConfig

        return TTALossConfig(kind=self.loss, traj_weight=self.traj_weight, depth_weight=self.depth_weight,
                             align_weight=self.align_weight, use_mask=self.use_mask,
                             use_tracker_visibility=self.use_tracker_visibility, use_sigma=self.use_sigma,
                             weight_mode=self.weight_mode, sigma_floor_px=self.sigma_floor_px,
                             calibrate_sigma=self.calibrate_sigma, outlier_gate=self.outlier_gate,
                             mask_eps_rel=self.mask_eps_rel, prior_weight=self.prior_weight,
                             prior_kind=self.prior_kind)


@dataclass
class ResolvedAdapt:
    iters: int
    lr: float
    frames_per_step: int
    batch_size: int


def resolve(config: AdaptConfig, device: str) -> ResolvedAdapt:
    """Fill the device-dependent defaults (the 0 values) of `config`."""
    cuda = str(device).startswith("cuda")
    return ResolvedAdapt(
        iters=config.iters or (300 if cuda else 20),
        lr=config.lr or (5e-5 if cuda else 2e-5),
        frames_per_step=config.frames_per_step or (10 if cuda else 4),
        batch_size=config.batch_size or (16 if cuda else 4),
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
    if config.iters < 0 or config.frames_per_step < 0 or config.lr < 0 or config.focal < 0 or config.cpu_threads < 0:
        raise St4rError("adapt.iters, frames_per_step, lr, focal and cpu_threads must be >= 0")
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


def window_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """First frames of overlapping windows covering [0, num_frames).

    Windows are `window` frames long and advance by `window - overlap`; the last one is moved back so
    it ends at the last frame (it then overlaps its predecessor by more). One window if the video is
    not longer than `window`.
    """
    if num_frames <= window:
        return [0]
    stride = max(1, window - overlap)
    starts = list(range(0, num_frames - window, stride))
    starts.append(num_frames - window)
    return sorted(set(starts))


def window_frames(start: int, num_frames: int, window: int) -> list[int]:
    """Frame indices of the window starting at `start` (anchor first)."""
    return list(range(start, min(start + window, num_frames)))


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
# network forward with an optional cached encoder
# ----------------------------------------------------------------------------------------------

class PairRunner:
    """Runs pairs (a, j) of a fixed set of frames through the network.

    When the encoder does not adapt, its tokens are computed once per frame and reused by every
    step and by the final inference (the decoders and heads run as in `St4rNet.forward`).
    images: (T, 3, H, W) in [-1, 1] on the model's device, H and W multiples of the patch size.
    """

    def __init__(self, model: Any, images: torch.Tensor, cache_encoder: bool, chunk: int = 8) -> None:
        import torch

        self.model = model
        self.images = images
        self.feats: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        if cache_encoder:
            feats, poss = [], []
            with torch.no_grad():
                for start in range(0, images.shape[0], chunk):
                    feat, pos = model.encode(images[start:start + chunk])
                    feats.append(feat)
                    poss.append(pos)
            self.feats = torch.cat(feats)
            self.pos = torch.cat(poss)

    def __call__(self, anchors: list[int], targets: list[int]) -> dict[str, torch.Tensor]:
        """forward_pairs-style dict: track_pts/recon_pts (P,H,W,3), track_conf/recon_conf (P,H,W)."""
        if self.feats is None:
            from st4r_cli.model.inference import forward_pairs

            return forward_pairs(self.model, self.images, anchors, targets)
        model = self.model
        hw = tuple(self.images.shape[-2:])
        dec1, dec2 = model.decode(self.feats[anchors], self.pos[anchors], self.feats[targets], self.pos[targets])
        res1 = model.downstream_head1([t.float() for t in dec1], hw)
        res2 = model.downstream_head2([t.float() for t in dec2], hw)
        return {"track_pts": res1["pts3d"], "track_conf": res1["conf"],
                "recon_pts": res2["pts3d"], "recon_conf": res2["conf"]}


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


def adapt_model(model: Any, frames: np.ndarray, tracks: dict[str, np.ndarray] | None,
                depth: dict[str, np.ndarray] | None, config: AdaptConfig, chain: ChainConfig,
                device: str, seed: int) -> dict[str, np.ndarray]:
    """Test-time adaptation of `model` (in place) on one video: see `_adapt_model`."""
    check_adapt_config(config)
    with cpu_threads(config, device):
        return _adapt_model(model, frames, tracks, depth, config, chain, device, seed)


@contextmanager
def cpu_threads(config: AdaptConfig, device: str) -> Iterator[None]:
    """Run with `config.cpu_threads` torch threads on CPU (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    change = not str(device).startswith("cuda") and config.cpu_threads > 0
    if change:
        torch.set_num_threads(config.cpu_threads)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)


def _adapt_model(model: Any, frames: np.ndarray, tracks: dict[str, np.ndarray] | None,
                 depth: dict[str, np.ndarray] | None, config: AdaptConfig, chain: ChainConfig,
                 device: str, seed: int) -> dict[str, np.ndarray]:
    """Test-time adaptation of `model` (in place) on one video: the adapt stage's arrays.

    frames (T, H, W, 3) uint8; tracks: the tracks-stage arrays (tracks_xy (N,T,2), visible (N,T),
    queries (N,3)) or None; depth: depth-stage arrays (depth (T,H,W), valid (T,H,W), optional
    intrinsics (3,3)) or None.
    Returns `delta.<param>` arrays (adapted minus original parameters), loss_history (S,) f32,
    lr_history (S,) f32, rollbacks () int64, seconds_tta () f32.
    """
    import time

    import numpy as np
    import torch

    from st4r_cli import progress

    check_adapt_config(config)
    resolved = resolve(config, device)
    torch.manual_seed(seed)
    _check_frames(model, frames)
    model = model.to(device)
    model.eval()  # no dropout / batch-norm in St4rNet; eval keeps inference and TTA identical
    num_frames, h, w = frames.shape[:3]
    starts = window_starts(num_frames, chain.window, chain.overlap)
    chosen = select_parameters(model, config.params) if config.loss != "none" else []
    original = {name: param.detach().clone() for name, param in chosen}
    history: list[float] = []
    lrs: list[float] = []
    rollbacks = 0
    t0 = time.perf_counter()
    if config.loss != "none" and tracks is not None and resolved.iters > 0:
        from st4r_cli.model.inference import frames_to_tensor

        encoder_adapts = any(name.startswith(("patch_embed", "enc_blocks", "enc_norm")) for name, _ in chosen)
        runner = PairRunner(model, frames_to_tensor(frames, device), cache_encoder=not encoder_adapts)
        focal = given_focal(config, depth)
        history, lrs, rollbacks = _tta_loop(runner, chosen, frames.shape[:3], starts, tracks, depth,
                                            config, resolved, chain.window, focal, seed)
    elif config.loss != "none":
        progress.log("[yellow]-[/yellow] adapt: no 2D tracks, test-time adaptation skipped")
    for param in model.parameters():
        param.requires_grad_(False)
    out = {f"delta.{name}": (param.detach() - original[name]).cpu().numpy().astype(np.float32)
           for name, param in chosen}
    out["loss_history"] = np.asarray(history, dtype=np.float32)
    out["lr_history"] = np.asarray(lrs, dtype=np.float32)
    out["rollbacks"] = np.asarray(rollbacks, dtype=np.int64)
    out["seconds_tta"] = np.asarray(time.perf_counter() - t0, dtype=np.float32)
    return out


def apply_delta(model: Any, adapted: dict[str, np.ndarray]) -> None:
    """Add the adapt stage's `delta.<param>` arrays to the model's parameters (in place)."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in adapted.items():
            if key.startswith("delta."):
                name = key[len("delta."):]
                if name not in params:
                    from st4r_cli.errors import St4rError

                    raise St4rError(f"adapted weights do not match the model (no parameter {name}); "
                                    "rerun with --force adapt")
                params[name].add_(torch.as_tensor(value, device=params[name].device, dtype=params[name].dtype))


def predict_windows(model: Any, frames: np.ndarray, config: AdaptConfig, chain: ChainConfig, device: str,
                    depth: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Predict every pair (anchor, j) of every window with the (adapted) model.

    Returns window_start (W,) int64, window_frames (W, L) int64 (-1 pads short windows),
    track_pts / recon_pts (W*L, H, W, 3) f32, track_conf / recon_conf (W*L, H, W) f32 (slot k of
    window w at index w*L + k, in that window's anchor camera), intrinsics (3, 3) f32 (from the
    frame-0 pointmap unless a focal is given), seconds_infer () f32.
    """
    with cpu_threads(config, device):
        return _predict_windows_all(model, frames, config, chain, device, depth)


def _predict_windows_all(model: Any, frames: np.ndarray, config: AdaptConfig, chain: ChainConfig, device: str,
                         depth: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    import time

    import numpy as np
    import torch

    from st4r_cli.model.inference import frames_to_tensor

    _check_frames(model, frames)
    t0 = time.perf_counter()
    model = model.to(device)
    model.eval()
    resolved = resolve(config, device)
    num_frames = frames.shape[0]
    starts = window_starts(num_frames, chain.window, chain.overlap)
    with torch.no_grad():
        runner = PairRunner(model, frames_to_tensor(frames, device), cache_encoder=True)
        out = _predict_windows(runner, starts, num_frames, chain.window, resolved.batch_size)
        anchor0 = torch.as_tensor(out["track_pts"][0], device=device)
        k_mat = anchor_intrinsics(anchor0, given_focal(config, depth))
    out["intrinsics"] = k_mat.cpu().numpy().astype(np.float32)
    out["seconds_infer"] = np.asarray(time.perf_counter() - t0, dtype=np.float32)
    return out


def adapt_and_predict(model: Any, frames: np.ndarray, tracks: dict[str, np.ndarray] | None,
                      depth: dict[str, np.ndarray] | None, config: AdaptConfig, chain: ChainConfig,
                      device: str, seed: int) -> dict[str, np.ndarray]:
    """`adapt_model` then `predict_windows`: both stages' arrays in one dict."""
    out = adapt_model(model, frames, tracks, depth, config, chain, device, seed)
    out.update(predict_windows(model, frames, config, chain, device, depth))
    return out


def _check_frames(model: Any, frames: np.ndarray) -> None:
    from st4r_cli.errors import St4rError

    h, w = frames.shape[1:3]
    patch = model.config.patch_size
    if h % patch or w % patch:
        raise St4rError(f"frames of {h}x{w} are not a multiple of the model's patch size {patch}")


def given_focal(config: AdaptConfig, depth: dict[str, np.ndarray] | None) -> float | None:
    """The user's focal, else the depth backend's (when allowed), else None (estimate)."""
    if config.focal > 0:
        return float(config.focal)
    if config.use_depth_intrinsics and depth is not None and "intrinsics" in depth:
        k_mat = depth["intrinsics"]
        if k_mat.shape == (3, 3) and float(k_mat[0, 0]) > 0:
            return float((k_mat[0, 0] + k_mat[1, 1]) / 2.0)
    return None


def _predict_windows(runner: PairRunner, starts: list[int], num_frames: int, window: int,
                     batch_size: int) -> dict[str, np.ndarray]:
    """No-grad predictions of every pair (anchor, j) of every window."""
    import numpy as np
    import torch

    from st4r_cli import progress

    length = min(window, num_frames)
    slots = np.full((len(starts), length), -1, dtype=np.int64)
    pairs: list[tuple[int, int, int]] = []  # (flat slot, anchor, frame)
    for w_idx, start in enumerate(starts):
        frames_w = window_frames(start, num_frames, window)
        slots[w_idx, :len(frames_w)] = frames_w
        pairs += [(w_idx * length + k, start, j) for k, j in enumerate(frames_w)]
    h, w = runner.images.shape[-2:]
    total = len(starts) * length
    out = {"track_pts": np.zeros((total, h, w, 3), np.float32), "track_conf": np.zeros((total, h, w), np.float32),
           "recon_pts": np.zeros((total, h, w, 3), np.float32), "recon_conf": np.zeros((total, h, w), np.float32)}
    batches = [pairs[i:i + batch_size] for i in range(0, len(pairs), batch_size)]
    with torch.no_grad():
        for batch in progress.track(batches, "predict windows"):
            pred = runner([p[1] for p in batch], [p[2] for p in batch])
            idx = [p[0] for p in batch]
            for key in out:
                out[key][idx] = pred[key].float().cpu().numpy()
    out["window_start"] = np.asarray(starts, dtype=np.int64)
    out["window_frames"] = slots
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
              resolved: ResolvedAdapt, window: int, focal: float | None, seed: int
              ) -> tuple[list[float], list[float], int]:
    """The optimisation loop with the rollback guard. Returns (loss history, lr history, rollbacks)."""
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
    loss_cfg = config.loss_config()
    rng = np.random.default_rng(seed)
    per_window = [tracks_for_window(tracks, start, (h, w)) for start in starts]
    trainable = [k for k, wt in enumerate(per_window) if wt is not None and wt.index.size >= 8]
    if not trainable:
        progress.log("[yellow]-[/yellow] adapt: too few visible tracks at the window anchors, TTA skipped")
        return [], [], 0
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
        return tta_loss(pred, k_mat, w2c, batch, dep, val, loss_cfg, prior)

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
    return history, lrs, rollbacks


# ----------------------------------------------------------------------------------------------
# pipeline glue (called by st4r_cli.pipeline.run_adapt)
# ----------------------------------------------------------------------------------------------

def load_run_model(run: Any, device: str) -> Any:
    """The run's checkpoint as an St4rNet on `device` (St4rError when it is missing)."""
    from pathlib import Path

    from st4r_cli.errors import St4rError
    from st4r_cli.model.io import load_model
    from st4r_cli.runs.config import resolve_model_path

    path = Path(resolve_model_path(run.config.model))
    if not path.is_file():
        raise St4rError(f"model checkpoint not found: {run.config.model} (the embedded default is "
                        "weights/st4r-tiny/model.safetensors; pass --model PATH)")
    return load_model(path, device)


def model_digest(run: Any) -> str:
    """Content digest of the run's checkpoint (a placeholder naming the path when it is missing)."""
    from st4r_cli.runs import digest_file_or_missing
    from st4r_cli.runs.config import resolve_model_path

    return digest_file_or_missing(resolve_model_path(run.config.model))


def stage_key_config(run: Any, device: str) -> dict[str, Any]:
    """What the adapt result depends on besides input digests: configs, resolved defaults, seed."""
    import dataclasses

    cfg = run.config.adapt
    return {"adapt": dataclasses.asdict(cfg), "resolved": dataclasses.asdict(resolve(cfg, device)),
            "window": run.config.chain.window, "overlap": run.config.chain.overlap,
            "seed": run.config.seed, "device": str(device).split(":")[0]}


def run_adapt_stage(run: Any, artifacts: dict[str, Any], device: str) -> Any:
    """The adapt stage through the run cache: TTA of the run's model on its frames, tracks and depth.

    Inputs: decode, tracks, depth artifacts (when present) and the checkpoint's content digest.
    """
    from st4r_cli.stages.chain import check_chain_config

    check_adapt_config(run.config.adapt)
    check_chain_config(run.config.chain)
    decoded, tracks, depth = artifacts["decode"], artifacts.get("tracks"), artifacts.get("depth")
    inputs = [decoded.digest, tracks.digest if tracks else "no-tracks", depth.digest if depth else "no-depth",
              model_digest(run)]

    def compute() -> dict[str, Any]:
        model = load_run_model(run, device)
        return adapt_model(model, decoded["frames"], tracks.load() if tracks else None,
                           depth.load() if depth else None, run.config.adapt, run.config.chain, device,
                           run.config.seed)

    return run.stage("adapt", ADAPT_VERSION, stage_key_config(run, device), inputs, compute)
