"""Rotations in torch: so(3) exponential / logarithm (Rodrigues), stable near the identity, and
pose composition helpers. Shapes: axis-angle vectors (..., 3), rotation matrices (..., 3, 3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def skew(vec: torch.Tensor) -> torch.Tensor:
    """[v]x (..., 3, 3) such that skew(v) @ u == cross(v, u)."""
    import torch

    zero = torch.zeros_like(vec[..., 0])
    x, y, z = vec[..., 0], vec[..., 1], vec[..., 2]
    return torch.stack([torch.stack([zero, -z, y], -1),
                        torch.stack([z, zero, -x], -1),
                        torch.stack([-y, x, zero], -1)], dim=-2)


def so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Rotation matrix exp([omega]x) (..., 3, 3) by Rodrigues' formula.

    Uses Taylor expansions of sin(t)/t and (1-cos t)/t^2 below 1e-4 rad so the value and the
    gradient are exact (to float precision) at and around zero.
    """
    import torch

    theta_sq = (omega * omega).sum(-1)
    theta = theta_sq.clamp(min=1e-24).sqrt()
    small = theta < 1e-4
    theta_safe = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1.0 - theta_sq / 6.0, torch.sin(theta_safe) / theta_safe)
    b = torch.where(small, 0.5 - theta_sq / 24.0, (1.0 - torch.cos(theta_safe)) / theta_safe**2)
    k = skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand(k.shape)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def so3_log(rot: torch.Tensor) -> torch.Tensor:
    """Axis-angle vector (..., 3) of rotation matrices (..., 3, 3); angle in [0, pi]."""
    import torch

    trace = rot[..., 0, 0] + rot[..., 1, 1] + rot[..., 2, 2]
    cos = ((trace - 1.0) / 2.0).clamp(-1.0, 1.0)
    theta = torch.acos(cos)
    vee = torch.stack([rot[..., 2, 1] - rot[..., 1, 2],
                       rot[..., 0, 2] - rot[..., 2, 0],
                       rot[..., 1, 0] - rot[..., 0, 1]], -1)
    small = theta < 1e-4
    sin = torch.sin(theta)
    scale = torch.where(small, 0.5 + theta**2 / 12.0, theta / (2.0 * torch.where(small, torch.ones_like(sin), sin)))
    omega = vee * scale[..., None]
    # Near pi, the antisymmetric part vanishes: recover the axis from the symmetric part.
    near_pi = theta > 3.14159265 - 1e-3
    if bool(near_pi.any()):
        sym = (rot + rot.transpose(-1, -2)) / 2.0 - cos[..., None, None] * torch.eye(3, dtype=rot.dtype, device=rot.device)
        col = sym.diagonal(dim1=-2, dim2=-1).argmax(-1)
        axis = torch.gather(sym, -1, col[..., None, None].expand(*sym.shape[:-1], 1))[..., 0]
        axis = axis / axis.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        axis = torch.where((axis * vee).sum(-1, keepdim=True) < 0, -axis, axis)
        omega = torch.where(near_pi[..., None], axis * theta[..., None], omega)
    return omega


def rotation_angle(rot_a: torch.Tensor, rot_b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle (radians) between rotations (..., 3, 3).

    atan2(sin, cos) of the relative rotation, accurate near 0 and pi (acos of the trace is not).
    """
    import torch

    rel = rot_a.transpose(-1, -2) @ rot_b
    cos = (rel[..., 0, 0] + rel[..., 1, 1] + rel[..., 2, 2] - 1.0) / 2.0
    vee = torch.stack([rel[..., 2, 1] - rel[..., 1, 2],
                       rel[..., 0, 2] - rel[..., 2, 0],
                       rel[..., 1, 0] - rel[..., 0, 1]], -1)
    sin = vee.norm(dim=-1) / 2.0
    return torch.atan2(sin, cos)


def make_pose(rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """4x4 poses (..., 4, 4) from rotations (..., 3, 3) and translations (..., 3)."""
    import torch

    top = torch.cat([rot, trans[..., None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom = bottom + torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=rot.dtype, device=rot.device)
    return torch.cat([top, bottom], dim=-2)
