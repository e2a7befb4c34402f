"""Pretraining loss of ST4RTrack: confidence-weighted 3D regression (DUSt3R's ConfLoss over Regr3D).

For a pair (anchor a, frame j), everything is expressed in camera a:
- head 1 (tracking): predicted vs true positions at time j of frame a's pixels, on `track_valid`;
- head 2 (reconstruction): predicted vs true points of frame j's pixels, on `recon_valid`.

Scale normalisation ('avg_dis', St4RTrack's sequence variant): per sample, both predicted pointmaps are
divided by the mean distance to the origin of the *predicted* head-2 points over `recon_valid`, and both
ground-truth pointmaps by the mean distance of the *true* head-2 points. The pixel loss is the Euclidean
distance between normalised points. With confidence c = 1 + exp(.) from the network, the per-pixel loss
is  d * c - alpha * log(c)  (alpha = 0.2), averaged over the valid pixels of each head; the total is the
sum of both heads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def avg_dis_scale(points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean distance to the origin of valid points, per sample: points (B,H,W,3), valid (B,H,W) -> (B,)."""
    dist = points.norm(dim=-1) * valid
    count = valid.flatten(1).sum(dim=1)
    return (dist.flatten(1).sum(dim=1) / (count + 1e-8)).clip(min=1e-8)


def regr3d_distances(pred_track: torch.Tensor, pred_recon: torch.Tensor, gt_track: torch.Tensor,
                     gt_recon: torch.Tensor, recon_valid: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel distances (B,H,W) between scale-normalised pointmaps (head 1, head 2)."""
    pred_scale = avg_dis_scale(pred_recon, recon_valid)[:, None, None, None]
    gt_scale = avg_dis_scale(gt_recon, recon_valid)[:, None, None, None]
    dist_track = (pred_track / pred_scale - gt_track / gt_scale).norm(dim=-1)
    dist_recon = (pred_recon / pred_scale - gt_recon / gt_scale).norm(dim=-1)
    return dist_track, dist_recon


def conf_weighted(dist: torch.Tensor, conf: torch.Tensor, valid: torch.Tensor, alpha: float) -> torch.Tensor:
    """mean over valid pixels of dist * conf - alpha * log(conf); 0 when nothing is valid."""
    d, c = dist[valid], conf[valid]
    if d.numel() == 0:
        return dist.sum() * 0.0
    return (d * c - alpha * c.log()).mean()


def pretrain_loss(pred1: dict[str, torch.Tensor], pred2: dict[str, torch.Tensor],
                  gt_track: torch.Tensor, track_valid: torch.Tensor, gt_recon: torch.Tensor,
                  recon_valid: torch.Tensor, alpha: float = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """ConfLoss(Regr3D) for a batch of pairs.

    pred1: {'pts3d' (B,H,W,3), 'conf' (B,H,W)}; pred2: {'pts3d_in_other_view', 'conf'};
    gt_track, gt_recon (B,H,W,3) in the anchor camera; track_valid, recon_valid (B,H,W) bool.
    Returns the scalar loss and float details (conf-weighted and plain regression terms per head).
    """
    dist_track, dist_recon = regr3d_distances(pred1["pts3d"], pred2["pts3d_in_other_view"], gt_track,
                                              gt_recon, recon_valid)
    loss_track = conf_weighted(dist_track, pred1["conf"], track_valid, alpha)
    loss_recon = conf_weighted(dist_recon, pred2["conf"], recon_valid, alpha)
    loss = loss_track + loss_recon
    details = {
        "loss": float(loss.detach()),
        "conf_track": float(loss_track.detach()),
        "conf_recon": float(loss_recon.detach()),
        "regr_track": float(dist_track[track_valid].mean().detach()) if track_valid.any() else 0.0,
        "regr_recon": float(dist_recon[recon_valid].mean().detach()) if recon_valid.any() else 0.0,
    }
    return loss, details
