"""Transformer building blocks of the St4R network (CroCo conventions, our own code).

Tokens are `(B, N, C)`; token positions are integer `(B, N, 2)` grids in `(row, col)` = `(y, x)`
patch units. Attention uses 2D rotary embeddings: the first half of each head's channels rotates
with the row index, the second half with the column index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RoPE2D(nn.Module):
    """2D rotary position embedding (RoPE with base frequency `freq`, e.g. 100 for `RoPE100`)."""

    def __init__(self, freq: float = 100.0) -> None:
        super().__init__()
        self.freq = float(freq)

    def _rotate_1d(self, tokens: torch.Tensor, pos_1d: torch.Tensor) -> torch.Tensor:
        """tokens (B, heads, N, D) rotated by integer positions pos_1d (B, N)."""
        dim = tokens.shape[-1]
        inv_freq = 1.0 / (self.freq ** (torch.arange(0, dim, 2, device=tokens.device).float() / dim))
        angles = pos_1d.to(inv_freq.dtype)[..., None] * inv_freq  # (B, N, D/2)
        angles = torch.cat((angles, angles), dim=-1).to(tokens.dtype)
        cos, sin = angles.cos()[:, None], angles.sin()[:, None]  # (B, 1, N, D)
        half = dim // 2
        rotated = torch.cat((-tokens[..., half:], tokens[..., :half]), dim=-1)
        return tokens * cos + rotated * sin

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens (B, heads, N, D), positions (B, N, 2) as (y, x) -> (B, heads, N, D)."""
        rows, cols = tokens.chunk(2, dim=-1)
        rows = self._rotate_1d(rows, positions[..., 0])
        cols = self._rotate_1d(cols, positions[..., 1])
        return torch.cat((rows, cols), dim=-1)


class Mlp(nn.Module):
    """Linear -> GELU (exact) -> Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C/heads)."""
    batch, tokens, channels = x.shape
    return x.reshape(batch, tokens, num_heads, channels // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, D) -> (B, N, heads*D)."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and 2D RoPE on queries and keys."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, D)
        q, k = self.rope(q, pos), self.rope(k, pos)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Multi-head cross-attention (separate q/k/v projections), 2D RoPE on both sides."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, query: torch.Tensor, memory: torch.Tensor, query_pos: torch.Tensor,
                memory_pos: torch.Tensor) -> torch.Tensor:
        q = self.rope(_split_heads(self.projq(query), self.num_heads), query_pos)
        k = self.rope(_split_heads(self.projk(memory), self.num_heads), memory_pos)
        v = _split_heads(self.projv(memory), self.num_heads)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class EncoderBlock(nn.Module):
    """Pre-norm ViT block: x + attn(norm1 x); x + mlp(norm2 x)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads, rope)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Self-attention, then cross-attention to the other view's tokens (normalised by norm_y), then MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads, rope)
        self.cross_attn = CrossAttention(dim, num_heads, rope)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, other: torch.Tensor, pos: torch.Tensor,
                other_pos: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pos)
        memory = self.norm_y(other)
        x = x + self.cross_attn(self.norm2(x), memory, pos, other_pos)
        return x + self.mlp(self.norm3(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; any H, W that are multiples of the patch size."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) -> tokens (B, H/p * W/p, C), positions (B, N, 2) int64 (y, x)."""
        batch, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        tokens = self.proj(images).flatten(2).transpose(1, 2)
        rows, cols = height // self.patch_size, width // self.patch_size
        grid = torch.cartesian_prod(torch.arange(rows, device=images.device),
                                    torch.arange(cols, device=images.device))
        return tokens, grid[None].expand(batch, -1, -1)
