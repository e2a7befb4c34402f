"""Test-time adaptation losses: `baseline` (ST4RTrack) and `robust` (ST4RTrack+).

Both take a batch of P network outputs for pairs (a, j) sharing one anchor a, the intrinsics K, the
poses w2c_j (anchor camera -> camera j, from differentiable PnP), N 2D pseudo-tracks that start at
visible anchor pixels, and optionally mono-depth of the frames j.

Notation for track n in pair p (all in the anchor camera unless stated):
    X_n     = head-1 pointmap (anchor pixels at time j) sampled at the track's anchor pixel q_n
    x_hat_n = pi(K (R_j X_n + t_j))  the prediction's 2D track in frame j, z_n its depth in camera j
    y_n     = the 2D pseudo-track in frame j, v_n the tracker's visibility
    Y_n     = head-2 pointmap (frame j's pixels) at y_n

baseline (ST4RTrack's TTA, its `ConfLoss` with traj/depth/align3d weights 0.5/10/5):
    L_traj  = RMSE over tracks (both coordinates) of s * (x_hat - c) + c - y, where s is the
              mean ratio |y - c| / |x_hat - c| about the image centre c (ST4RTrack's eq. 7 scale
              alignment); tracks with y outside [-W/2, 3W/2] x [-H/2, 3H/2] are dropped; the
              tracker's visibility is not used.
    L_align = mean over visible, in-image tracks of |X_n - Y_n| with Y_n at the rounded pixel
              of y_n (eq. 10).
    L_depth = sum over frames of mean((alpha* d_pred - d_mono)^2) on valid pixels, d_pred the z of
              head 2 in camera j and alpha* = <d_pred, d_mono> / <d_pred, d_pred> (eq. 9).

robust (ST4RTrack+):
    m_n     = 1[y_n in image] AND NOT occluded_n, where occluded_n = [x_hat_n in image, z_n > 0,
              z_n > z_surf(x_hat_n) * (1 + eps)] with z_surf the depth, in camera j, of head 2 at the
              nearest pixel of x_hat_n (a z-buffer test of the two pointmaps); optionally ANDed with
              v_n; the mask carries no gradient. Projections that leave the image or fall behind the
              camera are NOT masked (the network must not escape the loss that way): their squared
              residual is capped at max(H, W)^2, a constant outlier cost (behind the camera: the cap).
    sigma_n = sqrt(sigma_floor^2 + (k * f * alpha_c * s / (c_n * z_n))^2) pixels, with c_n the head-1
              confidence at q_n (DUSt3R's ConfLoss makes 1/c proportional to the 3D error relative
              to the scene scale s = median z of the tracked points; alpha_c = ConfLoss's alpha).
              ConfLoss fixes 1/c only up to a factor, so with calibrate_sigma on (default) the
              factor k (no gradient) is set at every step so that the median sigma over the mask
              equals the median residual |x_hat - y| there: the network's confidence gives the
              relative sigmas, the residuals their size. Without it k = 1.
    gate    = with outlier_gate g > 0, tracks with |x_hat - y| > g * sigma_n (in front of the camera)
              also leave the mask, at every step, without gradient: a track that the prediction
              misses by several of its own sigmas is treated as a tracker error, not fitted. Without
              sigma (use_sigma off) sigma_n is one value, the median masked residual.
    w_n     = exp(-sigma_n / median(sigma)) or 1/(sigma_n^2 + eps_w), without gradient. (The
              median makes the exponential scale-free: exp(-sigma) of a sigma in pixels underflows for
              sigmas of tens of pixels and would keep only the single most confident track.)
    L_traj  = sigma_bar * sum m w (|x_hat - y|^2 / (2 sigma^2) + log sigma) / sum m w (Gaussian NLL;
              sigma is learnt through the confidence), sigma_bar = median sigma over the mask (no
              gradient): the factor puts the NLL in pixels, so its gradient per track is about
              r / sigma_bar, the size of the baseline RMSE's, and the same weights apply. With
              use_sigma off: sqrt(sum m |x_hat - y|^2 / sum m), i.e. the baseline RMSE restricted
              to the mask, without the scale alignment.
    L_align = sum m w |X_n - Y_n| / sum m w, divided by the mean distance of head 2's points to the
              anchor camera (so shrinking the whole scene cannot lower it), Y_n bilinear at y_n.
    L_depth = as baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from st4r_cli.configs import TTALossConfig, VisibilityConfig

if TYPE_CHECKING:
    import torch


@dataclass
class TrackBatch:
    """2D pseudo-tracks for one anchor, as tensors.

    query_xy (N, 2): anchor pixel of each track; target_xy (P, N, 2): its pixel in frame j of each
    pair; target_visible (P, N) bool: the tracker's visibility in frame j.
    """

    query_xy: torch.Tensor
    target_xy: torch.Tensor
    target_visible: torch.Tensor


def tta_loss(pred: dict[str, torch.Tensor], intrinsics: torch.Tensor, w2c: torch.Tensor,
             tracks: TrackBatch | None, depth: torch.Tensor | None, depth_valid: torch.Tensor | None,
             config: TTALossConfig, frozen: dict[str, torch.Tensor] | None = None,
             visibility: VisibilityConfig | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total TTA loss and its parts (as floats) for a batch of P pairs with one anchor.

    pred: `forward_pairs` output, track_pts / recon_pts (P, H, W, 3), track_conf / recon_conf (P, H, W);
    intrinsics (3, 3); w2c (P, 4, 4) anchor -> camera j; depth, depth_valid (P, H, W) or None.
    frozen: the pre-TTA network's outputs for the same pairs, for the self-distillation prior
    (`prior_loss`; used when config.prior_weight > 0): prior_kind points -> track_pts / recon_pts
    (P, h, w, 3) sampled every `stride`-th pixel (key `stride` () int); depth -> depth (P, H, W).
    visibility: the z-buffer tolerance and the confidence -> sigma constants (default VisibilityConfig()).
    """
    import torch

    if config.loss not in ("robust", "baseline"):
        raise ValueError(f"unknown TTA loss {config.loss!r} (robust | baseline)")
    visibility = visibility or VisibilityConfig()
    zero = pred["track_pts"].sum() * 0.0
    total = zero
    parts: dict[str, float] = {}
    has_tracks = tracks is not None and tracks.query_xy.shape[0] > 0
    if has_tracks and (config.traj_weight > 0 or config.align_weight > 0):
        geo = track_geometry(pred, intrinsics, w2c, tracks)
        if config.loss == "baseline":
            traj = baseline_traj_loss(geo, intrinsics, pred["track_pts"].shape[1:3])
            align = baseline_align_loss(geo, pred["recon_pts"], tracks)
        else:
            mask, weights, sigma = robust_mask_and_weights(geo, pred, intrinsics, w2c, tracks, config, visibility)
            traj = robust_traj_loss(geo, mask, weights, sigma, config.use_sigma, pred["track_pts"].shape[1:3])
            align = robust_align_loss(geo, pred["recon_pts"], tracks, mask, weights)
            parts["mask_frac"] = float(mask.float().mean())
            parts["sigma_px"] = float(sigma.detach()[mask].mean()) if bool(mask.any()) else 0.0
        total = total + config.traj_weight * traj + config.align_weight * align
        parts["traj"] = float(traj.detach())
        parts["align"] = float(align.detach())
    if depth is not None and config.depth_weight > 0:
        dep = depth_loss(pred["recon_pts"], w2c, depth, depth_valid)
        total = total + config.depth_weight * dep
        parts["depth"] = float(dep.detach())
    if frozen is not None and config.prior_weight > 0:
        prior = prior_loss(pred, w2c, frozen, config.prior_kind)
        total = total + config.prior_weight * prior
        parts["prior"] = float(prior.detach())
    parts["total"] = float(total.detach())
    if not torch.isfinite(total):
        parts["total"] = float("nan")
    return total, parts


# ----------------------------------------------------------------------------------------------
# shared geometry
# ----------------------------------------------------------------------------------------------

@dataclass
class TrackGeometry:
    """Per (pair, track) quantities shared by the trajectory and align losses."""

    points: torch.Tensor      # (P, N, 3) X_n, head 1 at the anchor pixels, anchor camera
    conf: torch.Tensor        # (P, N) head-1 confidence at the anchor pixels
    proj_xy: torch.Tensor     # (P, N, 2) x_hat_n in frame j
    proj_z: torch.Tensor      # (P, N) depth of X_n in camera j
    target_xy: torch.Tensor   # (P, N, 2) y_n


def track_geometry(pred: dict[str, torch.Tensor], intrinsics: torch.Tensor, w2c: torch.Tensor,
                   tracks: TrackBatch) -> TrackGeometry:
    """Sample head 1 at the anchor pixels and project into each frame j."""
    from st4r_cli.geometry.camera import project, sample_bilinear

    count = pred["track_pts"].shape[0]
    query = tracks.query_xy.to(pred["track_pts"]).expand(count, -1, -1)
    points = sample_bilinear(pred["track_pts"], query)
    conf = sample_bilinear(pred["track_conf"][..., None], query)[..., 0]
    cam = points @ w2c[:, :3, :3].transpose(-1, -2) + w2c[:, None, :3, 3]
    proj_xy, proj_z = project(cam, intrinsics)
    return TrackGeometry(points, conf, proj_xy, proj_z, tracks.target_xy.to(proj_xy))


def surface_depth(recon_pts: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    """(P, H, W) z-depth in camera j of head 2's points (frame j's own pixels)."""
    rot_z = w2c[:, 2, :3]  # (P, 3)
    return (recon_pts * rot_z[:, None, None, :]).sum(-1) + w2c[:, None, None, 2, 3]


# ----------------------------------------------------------------------------------------------
# baseline (ST4RTrack)
# ----------------------------------------------------------------------------------------------

def baseline_traj_loss(geo: TrackGeometry, intrinsics: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """RMSE of scale-aligned predicted 2D tracks vs pseudo-tracks (ST4RTrack eq. 7)."""
    import torch

    h, w = int(hw[0]), int(hw[1])
    target = geo.target_xy
    keep = ((target[..., 0] >= -0.5 * w) & (target[..., 0] < 1.5 * w)
            & (target[..., 1] >= -0.5 * h) & (target[..., 1] < 1.5 * h)
            & (geo.proj_z > 0) & torch.isfinite(geo.proj_xy).all(-1))
    if not bool(keep.any()):
        return geo.proj_xy.sum() * 0.0
    centre = intrinsics[:2, 2].detach()
    pred = geo.proj_xy[keep]
    tgt = target[keep]
    scale = ((tgt - centre).norm(dim=-1) / ((pred - centre).norm(dim=-1) + 1e-6)).mean()
    aligned = (pred - centre) * scale + centre
    return ((aligned - tgt) ** 2).mean().sqrt()


def baseline_align_loss(geo: TrackGeometry, recon_pts: torch.Tensor, tracks: TrackBatch) -> torch.Tensor:
    """Mean 3D distance between head 1 at the anchor pixel and head 2 at the rounded tracked pixel."""
    h, w = recon_pts.shape[1:3]
    rounded = geo.target_xy.round().long()
    inside = ((rounded[..., 0] >= 0) & (rounded[..., 0] < w) & (rounded[..., 1] >= 0)
              & (rounded[..., 1] < h) & tracks.target_visible.to(rounded.device))
    if not bool(inside.any()):
        return geo.points.sum() * 0.0
    col = rounded[..., 0].clamp(0, w - 1)
    row = rounded[..., 1].clamp(0, h - 1)
    import torch

    batch_idx = torch.arange(recon_pts.shape[0], device=recon_pts.device)[:, None]
    head2 = recon_pts[batch_idx, row, col]  # (P, N, 3)
    return (geo.points - head2).norm(dim=-1)[inside].mean()


def depth_loss(recon_pts: torch.Tensor, w2c: torch.Tensor, depth: torch.Tensor,
               depth_valid: torch.Tensor | None) -> torch.Tensor:
    """Sum over frames of the MSE between alpha* x predicted z-depth and mono-depth (ST4RTrack eq. 9)."""
    import torch

    pred_depth = surface_depth(recon_pts, w2c)
    valid = torch.isfinite(depth) & (depth > 0)
    if depth_valid is not None:
        valid = valid & depth_valid.bool()
    total = pred_depth.sum() * 0.0
    for p in range(pred_depth.shape[0]):
        sel = valid[p]
        if not bool(sel.any()):
            continue
        pd = pred_depth[p][sel]
        gd = depth[p][sel].to(pd)
        alpha = (pd * gd).sum() / ((pd * pd).sum() + 1e-8)
        total = total + ((alpha * pd - gd) ** 2).mean()
    return total


def prior_loss(pred: dict[str, torch.Tensor], w2c: torch.Tensor, frozen: dict[str, torch.Tensor],
               kind: str) -> torch.Tensor:
    """Self-distillation prior: keeps the adapted network near the pre-TTA one (no ground truth).

    points: mean over the P pairs and both heads of the mean 3D distance between the adapted and the
        frozen pointmaps at every `frozen["stride"]`-th pixel, divided by the frozen pointmap's mean
        distance to the anchor camera (a relative, scale-pinning pull).
    anchor: the same distance for head 2 on every pair, but for head 1 only on the pairs marked in
        `frozen["is_anchor"]` (P,) bool, the (a, a) pairs: the geometry (frame a's and every frame j's
        own points) stays pinned while head 1's points at time j, i.e. the motion, are left to the
        trajectory and align losses. (With `points` the pull on head 1 at time j holds the motion to the
        pre-TTA network's.)
    depth: the eq.-9 depth loss (`depth_loss`, per-frame scale alpha*) against the frozen head-2
        z-depth `frozen["depth"]` (P, H, W), i.e. the pre-TTA network as its own mono-depth.
    """
    import torch

    if kind == "depth":
        return depth_loss(pred["recon_pts"], w2c, frozen["depth"], None)
    if kind not in ("points", "anchor"):
        raise ValueError(f"unknown prior kind {kind!r} (points | anchor | depth)")
    stride = int(frozen["stride"])

    def pull(key: str) -> torch.Tensor:  # (P,) relative mean 3D distance to the frozen pointmap
        cur = pred[key][:, ::stride, ::stride]
        ref = frozen[key].to(cur)
        scale = ref.norm(dim=-1).mean(dim=(1, 2)).clamp(min=1e-6)
        return (cur - ref).norm(dim=-1).mean(dim=(1, 2)) / scale

    head2 = pull("recon_pts").mean()
    if kind == "points":
        return (pull("track_pts").mean() + head2) / 2.0
    is_anchor = frozen["is_anchor"].to(device=pred["track_pts"].device, dtype=torch.bool)
    head1 = pull("track_pts")[is_anchor].mean() if bool(is_anchor.any()) else head2 * 0.0
    return (head1 + head2) / 2.0


# ----------------------------------------------------------------------------------------------
# robust (ST4RTrack+)
# ----------------------------------------------------------------------------------------------

def robust_mask_and_weights(geo: TrackGeometry, pred: dict[str, torch.Tensor], intrinsics: torch.Tensor,
                            w2c: torch.Tensor, tracks: TrackBatch, config: TTALossConfig,
                            visibility: VisibilityConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Visibility mask m (P, N) bool, weights w (P, N) (no grad) and sigma (P, N) pixels (with grad)."""
    import torch

    from st4r_cli.geometry.camera import in_image

    hw = pred["recon_pts"].shape[1:3]
    with torch.no_grad():
        mask = in_image(geo.target_xy, hw) & torch.isfinite(geo.target_xy).all(-1)
        if config.use_mask:
            z_surf = _nearest(surface_depth(pred["recon_pts"], w2c), geo.proj_xy)
            projected_inside = (geo.proj_z > 0) & in_image(geo.proj_xy, hw)
            occluded = projected_inside & (geo.proj_z > z_surf * (1.0 + visibility.mask_eps_rel))
            mask = mask & ~occluded
        if config.use_tracker_visibility:
            mask = mask & tracks.target_visible.to(mask.device)
    if not config.use_sigma:
        ones = torch.ones_like(geo.proj_z)
        uniform = ones * _median_residual(geo, mask).clamp(min=visibility.sigma_floor_px)
        return _gate(mask, geo, uniform, config.outlier_gate), ones, ones
    raw = raw_sigma_px(geo.conf, geo.proj_z, intrinsics, visibility.conf_alpha)
    if config.calibrate_sigma:
        raw = raw * sigma_calibration(raw, geo, mask, visibility.sigma_floor_px)
    sigma = (visibility.sigma_floor_px**2 + raw**2).sqrt()
    mask = _gate(mask, geo, sigma, config.outlier_gate)
    with torch.no_grad():
        if config.weight_mode == "exp":
            sig = sigma.detach()
            typical = sig[mask].median() if bool(mask.any()) else sig.median()
            weights = torch.exp(-sig / typical.clamp(min=1e-6))
        elif config.weight_mode == "inv":
            weights = 1.0 / (sigma**2 + config.inv_weight_eps)
        else:
            raise ValueError(f"unknown weight_mode {config.weight_mode!r} (exp | inv)")
    return mask, weights, sigma


def raw_sigma_px(conf: torch.Tensor, proj_z: torch.Tensor, intrinsics: torch.Tensor, conf_alpha: float
                 ) -> torch.Tensor:
    """(P, N) per-point reprojection sigma in pixels from the head-1 confidence, before the floor
    and the calibration: f * alpha_c * s / (c_n * z_n) (see module doc)."""
    import torch

    z = proj_z.detach().clamp(min=1e-6)
    valid = proj_z.detach() > 0
    scale = torch.stack([z[p][valid[p]].median() if bool(valid[p].any()) else z.new_tensor(1.0)
                         for p in range(z.shape[0])])  # (P,)
    focal = intrinsics[0, 0].detach()
    return focal * conf_alpha * scale[:, None] / (conf.clamp(min=1e-6) * z)


def _usable(geo: TrackGeometry, mask: torch.Tensor) -> torch.Tensor:
    """(P, N) bool: masked tracks whose projection is finite and in front of the camera."""
    import torch

    return mask & (geo.proj_z.detach() > 0) & torch.isfinite(geo.proj_xy.detach()).all(-1)


def _median_residual(geo: TrackGeometry, mask: torch.Tensor) -> torch.Tensor:
    """() median reprojection residual (pixels) over the masked tracks in front of the camera (NaN if none)."""
    import torch

    with torch.no_grad():
        usable = _usable(geo, mask)
        if not bool(usable.any()):
            return geo.proj_z.new_tensor(float("nan"))
        return (geo.proj_xy - geo.target_xy).norm(dim=-1)[usable].median()


def _gate(mask: torch.Tensor, geo: TrackGeometry, sigma: torch.Tensor, gate: float) -> torch.Tensor:
    """The mask without tracks whose residual exceeds gate * sigma (gate 0: unchanged). Projections
    behind the camera are not gated: they keep the capped outlier cost of `robust_traj_loss`."""
    import torch

    if gate <= 0:
        return mask
    with torch.no_grad():
        residual = (geo.proj_xy - geo.target_xy).norm(dim=-1)
        outlier = (geo.proj_z > 0) & torch.isfinite(residual) & (residual > gate * sigma.detach())
        return mask & ~outlier


def sigma_calibration(raw: torch.Tensor, geo: TrackGeometry, mask: torch.Tensor, floor_px: float) -> torch.Tensor:
    """() factor (no gradient) that makes the median of `raw` sigma (P, N) over the mask equal the
    median reprojection residual there (at least the floor); 1 when the mask is empty."""
    import torch

    with torch.no_grad():
        usable = _usable(geo, mask)
        if not bool(usable.any()):
            return raw.new_tensor(1.0)
        return _median_residual(geo, mask).clamp(min=floor_px) / raw.detach()[usable].median().clamp(min=1e-6)


def robust_traj_loss(geo: TrackGeometry, mask: torch.Tensor, weights: torch.Tensor, sigma: torch.Tensor,
                     use_sigma: bool, hw: tuple[int, int]) -> torch.Tensor:
    """Masked, weighted Gaussian NLL of the reprojection residuals (RMSE when use_sigma is off).

    Squared residuals are capped at max(H, W)^2 (and set to it behind the camera): an outlier cost.
    """
    import torch

    if not bool(mask.any()):
        return geo.proj_xy.sum() * 0.0
    cap = float(max(hw)) ** 2
    sq = ((geo.proj_xy - geo.target_xy) ** 2).sum(-1)
    sq = torch.where(geo.proj_z > 0, sq.clamp(max=cap), torch.full_like(sq, cap))[mask]
    if not use_sigma:
        return sq.mean().sqrt()
    s = sigma[mask]
    w = weights[mask]
    nll = sq / (2.0 * s**2) + s.log()
    return s.detach().median() * (w * nll).sum() / w.sum().clamp(min=1e-12)


def robust_align_loss(geo: TrackGeometry, recon_pts: torch.Tensor, tracks: TrackBatch, mask: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
    """Masked, weighted, scale-normalised 3D distance between head 1 and head 2 at the tracked pixel."""
    from st4r_cli.geometry.camera import in_image, sample_bilinear

    inside = mask & in_image(geo.target_xy, recon_pts.shape[1:3])
    if not bool(inside.any()):
        return geo.points.sum() * 0.0
    head2 = sample_bilinear(recon_pts, geo.target_xy)
    scene_scale = recon_pts.norm(dim=-1).mean(dim=(1, 2))  # (P,)
    dist = (geo.points - head2).norm(dim=-1) / scene_scale[:, None].clamp(min=1e-6)
    w = weights[inside]
    return (w * dist[inside]).sum() / w.sum().clamp(min=1e-12)


def _nearest(depth_map: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """(P, N) values of (P, H, W) maps at the nearest pixel of xy (P, N, 2) (clamped to the image)."""
    import torch

    h, w = depth_map.shape[1:3]
    col = xy[..., 0].round().long().clamp(0, w - 1)
    row = xy[..., 1].round().long().clamp(0, h - 1)
    batch_idx = torch.arange(depth_map.shape[0], device=depth_map.device)[:, None]
    return depth_map[batch_idx, row, col]
