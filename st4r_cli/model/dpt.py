"""DPT pointmap head (DUSt3R's `PixelwiseTaskWithDPT`), our own code with the official key layout.

Four token maps (encoder output and three decoder depths) are reassembled at strides 4, 8, 16, 32,
projected to `feature_dim`, fused coarse-to-fine with residual conv units, and upsampled to full
resolution. Output channels: 3 for xyz, 1 for confidence, post-processed as
xyz = v/|v| * expm1(|v|), conf = conf_min + exp(c).

State-dict keys (under `downstream_head{1,2}.`): `dpt.act_postprocess.{0..3}.*`,
`dpt.scratch.layer{1..4}_rn.weight` (also exported as the alias `dpt.scratch.layer_rn.{0..3}.weight`,
the same tensors, as in the official checkpoints), `dpt.scratch.refinenet{1..4}.*`, `dpt.head.{0,2,4}.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _upsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class Upsample2x(nn.Module):
    """Bilinear x2 upsampling with align_corners=True (a parameter-free slot in `head`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _upsample2x(x)


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x))))."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """out_conv(upsample2x(rcu2(x + rcu1(skip))))."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        return self.out_conv(_upsample2x(self.resConfUnit2(x)))


class Scratch(nn.Module):
    """Projection convs (layer{1..4}_rn, aliased as layer_rn) and the four fusion blocks."""

    def __init__(self, layer_dims: tuple[int, ...], features: int) -> None:
        super().__init__()
        convs = [nn.Conv2d(d, features, kernel_size=3, padding=1, bias=False) for d in layer_dims]
        self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn = convs
        self.layer_rn = nn.ModuleList(convs)  # alias: same modules, official key layout
        self.refinenet1 = FusionBlock(features)
        self.refinenet2 = FusionBlock(features)
        self.refinenet3 = FusionBlock(features)
        self.refinenet4 = FusionBlock(features)


class DPTAdapter(nn.Module):
    """Reassemble + fuse + regress: token lists -> (B, out_channels, H, W)."""

    def __init__(self, token_dims: tuple[int, int, int, int], hooks: tuple[int, int, int, int],
                 patch_size: int, layer_dims: tuple[int, int, int, int], feature_dim: int,
                 last_dim: int, out_channels: int) -> None:
        super().__init__()
        self.hooks = hooks
        self.patch_size = patch_size
        d0, d1, d2, d3 = layer_dims
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(token_dims[0], d0, 1), nn.ConvTranspose2d(d0, d0, 4, stride=4)),
            nn.Sequential(nn.Conv2d(token_dims[1], d1, 1), nn.ConvTranspose2d(d1, d1, 2, stride=2)),
            nn.Sequential(nn.Conv2d(token_dims[2], d2, 1)),
            nn.Sequential(nn.Conv2d(token_dims[3], d3, 1), nn.Conv2d(d3, d3, 3, stride=2, padding=1)),
        ])
        self.scratch = Scratch(layer_dims, feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, kernel_size=3, padding=1),
            Upsample2x(),
            nn.Conv2d(feature_dim // 2, last_dim, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, out_channels, kernel_size=1),
        )

    def forward(self, tokens: list[torch.Tensor], image_hw: tuple[int, int]) -> torch.Tensor:
        """tokens: list of (B, N, C_i) with N = (H/p)*(W/p) -> (B, out_channels, H, W)."""
        rows, cols = image_hw[0] // self.patch_size, image_hw[1] // self.patch_size
        maps = []
        for level, hook in enumerate(self.hooks):
            t = tokens[hook]
            grid = t.reshape(t.shape[0], rows, cols, t.shape[-1]).permute(0, 3, 1, 2)
            maps.append(self.scratch.layer_rn[level](self.act_postprocess[level](grid)))
        s = self.scratch
        path = s.refinenet4(maps[3])[:, :, : maps[2].shape[2], : maps[2].shape[3]]
        path = s.refinenet3(path, maps[2])
        path = s.refinenet2(path, maps[1])
        path = s.refinenet1(path, maps[0])
        return self.head(path)


class PointmapHead(nn.Module):
    """DPT head with pointmap post-processing. Output: pts3d (B,H,W,3), conf (B,H,W)."""

    def __init__(self, token_dims: tuple[int, int, int, int], hooks: tuple[int, int, int, int],
                 patch_size: int, layer_dims: tuple[int, int, int, int], feature_dim: int,
                 last_dim: int, conf_min: float) -> None:
        super().__init__()
        self.conf_min = conf_min
        self.dpt = DPTAdapter(token_dims, hooks, patch_size, layer_dims, feature_dim, last_dim, 4)

    def forward(self, tokens: list[torch.Tensor], image_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        raw = self.dpt(tokens, image_hw).permute(0, 2, 3, 1)  # (B, H, W, 4)
        xyz = raw[..., :3]
        dist = xyz.norm(dim=-1, keepdim=True)
        pts3d = xyz / dist.clip(min=1e-8) * torch.expm1(dist)
        conf = self.conf_min + raw[..., 3].exp()
        return {"pts3d": pts3d, "conf": conf}
