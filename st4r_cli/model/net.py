"""`St4rNet`: the ST4RTrack network (DUSt3R's AsymmetricCroCo3DStereo), our own implementation.

    img1 (anchor a), img2 (frame j)
      -> shared patch embed + ViT encoder with 2D RoPE
      -> decoder_embed, two decoders (dec_blocks for view 1, dec_blocks2 for view 2) that
         cross-attend to each other's previous-layer tokens in every block
      -> downstream_head1 (DPT): pts3d = anchor's pixels at time j (tracking), in camera a
         downstream_head2 (DPT): pts3d_in_other_view = frame j's pixels (reconstruction), in camera a

State-dict keys and shapes match the official checkpoints for the official config.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from st4r_cli.model.blocks import DecoderBlock, EncoderBlock, PatchEmbed, RoPE2D
from st4r_cli.model.config import ModelConfig
from st4r_cli.model.dpt import PointmapHead


class St4rNet(nn.Module):
    """Two-view pointmap network. See the module docstring and docs/architecture.md."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.rope = RoPE2D(c.rope_freq)
        self.patch_embed = PatchEmbed(c.patch_size, c.enc_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.dec_embed_dim))  # unused; kept for key parity
        self.enc_blocks = nn.ModuleList([
            EncoderBlock(c.enc_embed_dim, c.enc_num_heads, c.mlp_ratio, self.rope, c.norm_eps)
            for _ in range(c.enc_depth)])
        self.enc_norm = nn.LayerNorm(c.enc_embed_dim, eps=c.norm_eps)
        self.decoder_embed = nn.Linear(c.enc_embed_dim, c.dec_embed_dim)
        self.dec_blocks = nn.ModuleList([
            DecoderBlock(c.dec_embed_dim, c.dec_num_heads, c.mlp_ratio, self.rope, c.norm_eps)
            for _ in range(c.dec_depth)])
        self.dec_blocks2 = nn.ModuleList([
            DecoderBlock(c.dec_embed_dim, c.dec_num_heads, c.mlp_ratio, self.rope, c.norm_eps)
            for _ in range(c.dec_depth)])
        self.dec_norm = nn.LayerNorm(c.dec_embed_dim, eps=c.norm_eps)
        token_dims = (c.enc_embed_dim, c.dec_embed_dim, c.dec_embed_dim, c.dec_embed_dim)
        head_args = (token_dims, c.hooks, c.patch_size, c.dpt_layer_dims, c.dpt_feature_dim,
                     c.dpt_last_dim, c.conf_min)
        self.downstream_head1 = PointmapHead(*head_args)
        self.downstream_head2 = PointmapHead(*head_args)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """CroCo initialisation: xavier-uniform linears and patch projection, zero biases, unit norms."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        weight = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.normal_(self.mask_token, std=0.02)

    # ---------------------------------------------------------------------------------- encoder
    def encode(self, images: torch.Tensor, checkpoint: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [-1, 1] -> tokens (B, N, enc_dim), positions (B, N, 2).

        checkpoint: activation checkpointing of every block (`run_block`)."""
        tokens, pos = self.patch_embed(images)
        for block in self.enc_blocks:
            tokens = run_block(block, checkpoint, tokens, pos)
        return self.enc_norm(tokens), pos

    def decode(self, feat1: torch.Tensor, pos1: torch.Tensor, feat2: torch.Tensor,
               pos2: torch.Tensor, checkpoint: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Both decoders. Returns per view [encoder tokens, block 1 .. block L (last normalised)].

        checkpoint: activation checkpointing of every block (`run_block`)."""
        out1, out2 = [feat1], [feat2]
        x1, x2 = self.decoder_embed(feat1), self.decoder_embed(feat2)
        for block1, block2 in zip(self.dec_blocks, self.dec_blocks2):
            x1, x2 = (run_block(block1, checkpoint, x1, x2, pos1, pos2),
                      run_block(block2, checkpoint, x2, x1, pos2, pos1))
            out1.append(x1)
            out2.append(x2)
        out1[-1], out2[-1] = self.dec_norm(out1[-1]), self.dec_norm(out2[-1])
        return out1, out2

    def heads(self, dec1: list[torch.Tensor], dec2: list[torch.Tensor], hw1: tuple[int, int],
              hw2: tuple[int, int], checkpoint: bool = False
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Both DPT heads in float32 (autocast off) on `decode`'s token lists (B, N, C_i) of images of
        size hw1 (view 1) and hw2: head 1 {'pts3d' (B,H,W,3), 'conf' (B,H,W)}, head 2 the same keys.
        checkpoint: each head's activations recomputed in the backward pass (`run_block`)."""
        device_type = dec1[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            res1 = run_block(self.downstream_head1, checkpoint, [t.float() for t in dec1], hw1)
            res2 = run_block(self.downstream_head2, checkpoint, [t.float() for t in dec2], hw2)
        return res1, res2

    def _forward_upright(self, img1: torch.Tensor, img2: torch.Tensor, checkpoint: bool = False
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Images stored in their true orientation (any multiple of the patch size)."""
        if img1.shape == img2.shape:
            feats, pos = self.encode(torch.cat((img1, img2), dim=0), checkpoint)
            feat1, feat2 = feats.chunk(2, dim=0)
            pos1, pos2 = pos.chunk(2, dim=0)
        else:
            feat1, pos1 = self.encode(img1, checkpoint)
            feat2, pos2 = self.encode(img2, checkpoint)
        dec1, dec2 = self.decode(feat1, pos1, feat2, pos2, checkpoint)
        res1, res2 = self.heads(dec1, dec2, tuple(img1.shape[-2:]), tuple(img2.shape[-2:]), checkpoint)
        return res1, {"pts3d_in_other_view": res2["pts3d"], "conf": res2["conf"]}

    def forward(self, img1: torch.Tensor, img2: torch.Tensor, true_shape1: torch.Tensor | None = None,
                true_shape2: torch.Tensor | None = None, checkpoint: bool = False
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """img1, img2 (B, 3, H, W) in [-1, 1]; true_shape (B, 2) = (H, W) of each real image.
        checkpoint: activation checkpointing of the encoder and decoder blocks and the heads (the
        activations are recomputed in the backward pass: same values, less memory, more time).

        Images are normally stored upright (true_shape == tensor size). DUSt3R's ManyAR convention is
        also accepted: a portrait image stored transposed into a landscape tensor (true_shape == (W, H));
        it is processed upright and its outputs are transposed back to the stored layout.
        Returns head 1 {'pts3d' (B,H,W,3), 'conf' (B,H,W)} and
        head 2 {'pts3d_in_other_view' (B,H,W,3), 'conf' (B,H,W)}, both in img1's camera frame.
        """
        flip1 = _stored_transposed(img1, true_shape1)
        flip2 = _stored_transposed(img2, true_shape2)
        if not flip1.any() and not flip2.any():
            return self._forward_upright(img1, img2, checkpoint)
        keys = flip1.long() * 2 + flip2.long()
        res1: dict[str, torch.Tensor] = {}
        res2: dict[str, torch.Tensor] = {}
        for key in keys.unique().tolist():
            sel = keys == key
            a, b = img1[sel], img2[sel]
            if key & 2:
                a = a.transpose(-1, -2)
            if key & 1:
                b = b.transpose(-1, -2)
            out1, out2 = self._forward_upright(a, b, checkpoint)
            for out, res, flipped in ((out1, res1, key & 2), (out2, res2, key & 1)):
                for name, value in out.items():
                    value = value.transpose(1, 2) if flipped else value
                    if name not in res:
                        res[name] = value.new_empty((img1.shape[0], *value.shape[1:]))
                    res[name][sel] = value
        return res1, res2

    #: Named parameter subsets for test-time adaptation (module-name prefixes).
    SUBSETS = {
        "all": ("",),
        "decoders_heads": ("decoder_embed", "dec_blocks", "dec_norm", "downstream_head"),
        "tracking_branch": ("dec_blocks.", "downstream_head1"),
        "heads": ("downstream_head",),
        "head1": ("downstream_head1",),
    }

    def parameter_subset(self, name: str) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs of a named subset (see `SUBSETS`), e.g. to adapt only some of them.

        `tracking_branch` = the view-1 decoder (dec_blocks) + head 1: what predicts the tracking pointmap.
        """
        if name not in self.SUBSETS:
            raise ValueError(f"unknown parameter subset {name!r}; choose from {sorted(self.SUBSETS)}")
        prefixes = self.SUBSETS[name]
        return [(n, p) for n, p in self.named_parameters() if n.startswith(prefixes)]

    @property
    def num_parameters(self) -> int:
        """Number of distinct parameters (aliased DPT convs counted once)."""
        return sum(p.numel() for p in self.parameters())


def run_block(module: nn.Module, checkpoint: bool, *args: object) -> Any:
    """module(*args), with activation checkpointing when `checkpoint` and gradients are on: only the
    inputs are kept, the activations inside are recomputed in the backward pass (torch.utils.checkpoint,
    non-reentrant: same values, any argument structure, autocast state replayed)."""
    if not checkpoint or not torch.is_grad_enabled():
        return module(*args)
    from torch.utils.checkpoint import checkpoint as torch_checkpoint

    return torch_checkpoint(module, *args, use_reentrant=False)


def _stored_transposed(images: torch.Tensor, true_shape: torch.Tensor | None) -> torch.Tensor:
    """(B,) bool: True where the image is a portrait stored transposed (true_shape == (W, H) != (H, W))."""
    batch, _, height, width = images.shape
    if true_shape is None:
        return torch.zeros(batch, dtype=torch.bool)
    shape = torch.as_tensor(true_shape).reshape(batch, 2).cpu()
    upright = (shape[:, 0] == height) & (shape[:, 1] == width)
    transposed = (shape[:, 0] == width) & (shape[:, 1] == height) & ~upright
    if not bool((upright | transposed).all()):
        raise ValueError(f"true_shape {shape.tolist()} does not match image tensors of size {height}x{width}")
    return transposed
