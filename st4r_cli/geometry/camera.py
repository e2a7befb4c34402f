"""Pinhole cameras in torch: pixel grids, projection, unprojection, rigid transforms, intrinsics.

Conventions (docs/architecture.md): OpenCV axes (x right, y down, z forward); pixel centres at
integers, so the pixel in row i, column j is at (x=j, y=i) and the image centre of an (H, W) image is
((W-1)/2, (H-1)/2). Poses are 4x4; `w2c` maps world (or anchor-camera) points into a camera.

Every function is differentiable in its tensor inputs (no in-place ops on inputs) and accepts any
leading batch shape unless stated otherwise.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pixel_grid(hw: tuple[int, int], device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """(H, W, 2) pixel coordinates (x, y) of every pixel centre: grid[i, j] = (j, i)."""
    import torch

    h, w = int(hw[0]), int(hw[1])
    dtype = dtype or torch.float32
    ys = torch.arange(h, device=device, dtype=dtype)
    xs = torch.arange(w, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


def principal_point_center(hw: tuple[int, int]) -> tuple[float, float]:
    """(cx, cy) of the image centre under the integer-pixel-centre convention."""
    return ((hw[1] - 1) / 2.0, (hw[0] - 1) / 2.0)


def make_intrinsics(focal: torch.Tensor | float, hw: tuple[int, int],
                    principal_point: tuple[float, float] | None = None) -> torch.Tensor:
    """K (..., 3, 3) with square pixels; `focal` may be a tensor of any batch shape (keeps its grad)."""
    import torch

    focal_t = focal if isinstance(focal, torch.Tensor) else torch.tensor(float(focal))
    cx, cy = principal_point if principal_point is not None else principal_point_center(hw)
    zeros = torch.zeros_like(focal_t)
    ones = torch.ones_like(focal_t)
    rows = [torch.stack([focal_t, zeros, zeros + cx], -1),
            torch.stack([zeros, focal_t, zeros + cy], -1),
            torch.stack([zeros, zeros, ones], -1)]
    return torch.stack(rows, dim=-2)


def transform_points(pose: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply a 4x4 rigid (or similarity) transform to points.

    pose: (B, 4, 4) or (4, 4); points: (B, ..., 3) or (..., 3) -> same shape as points.
    """
    rot = pose[..., :3, :3]
    trans = pose[..., :3, 3]
    if pose.dim() == 2:
        return points @ rot.transpose(-1, -2) + trans
    batch = pose.shape[0]
    flat = points.reshape(batch, -1, 3)
    out = flat @ rot.transpose(-1, -2) + trans[:, None, :]
    return out.reshape(points.shape)


def invert_pose(pose: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid 4x4 poses (..., 4, 4) (rotation transposed, no general matrix inverse)."""
    import torch

    rot_t = pose[..., :3, :3].transpose(-1, -2)
    trans = -(rot_t @ pose[..., :3, 3:4])
    bottom = torch.zeros_like(pose[..., 3:4, :])
    bottom[..., 3] = 1.0
    return torch.cat([torch.cat([rot_t, trans], dim=-1), bottom], dim=-2)


def project(points_cam: torch.Tensor, intrinsics: torch.Tensor,
            min_depth: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Project camera-frame points (..., 3) with K (3, 3) or (B, 3, 3) (B = first dim of points).

    Returns pixels (..., 2) and z-depth (...,). Depths below `min_depth` are clamped in the division
    only (the returned z is the true one), so points behind the camera give finite garbage pixels:
    callers mask them with `z > 0`.
    """
    z = points_cam[..., 2]
    z_safe = z.clamp(min=min_depth)
    x_n = points_cam[..., 0] / z_safe
    y_n = points_cam[..., 1] / z_safe
    if intrinsics.dim() == 2:
        fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    else:
        shape = (intrinsics.shape[0],) + (1,) * (points_cam.dim() - 2)
        fx = intrinsics[:, 0, 0].reshape(shape)
        fy = intrinsics[:, 1, 1].reshape(shape)
        cx = intrinsics[:, 0, 2].reshape(shape)
        cy = intrinsics[:, 1, 2].reshape(shape)
    import torch

    return torch.stack([fx * x_n + cx, fy * y_n + cy], dim=-1), z


def unproject_depth(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Back-project z-depth (..., H, W) with K (3, 3) into camera-frame points (..., H, W, 3)."""
    import torch

    hw = depth.shape[-2:]
    grid = pixel_grid((hw[0], hw[1]), device=depth.device, dtype=depth.dtype)
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    x_n = (grid[..., 0] - cx) / fx
    y_n = (grid[..., 1] - cy) / fy
    return torch.stack([x_n * depth, y_n * depth, depth], dim=-1)


def estimate_focal_weiszfeld(pointmap: torch.Tensor, principal_point: tuple[float, float] | None = None,
                             weights: torch.Tensor | None = None, iters: int = 10) -> torch.Tensor:
    """Focal length (pixels) that best explains a camera-frame pointmap seen from its own camera.

    Solves f = argmin_f sum_i w_i * || p_i - c - f * (x_i, y_i) / z_i ||  (an L1-of-norms fit, robust to
    outliers) by Weiszfeld iterations (iteratively reweighted least squares), started from the
    closed-form L2 solution, as DUSt3R does. Points with z <= 0 or non-finite values are ignored.

    pointmap: (H, W, 3) or (B, H, W, 3) in the camera of its own pixels;
    weights: optional (H, W) / (B, H, W) non-negative confidences.
    Returns focal () or (B,), differentiable with respect to the pointmap.
    """
    import torch

    single = pointmap.dim() == 3
    pts = pointmap[None] if single else pointmap
    batch, h, w, _ = pts.shape
    cx, cy = principal_point if principal_point is not None else principal_point_center((h, w))
    grid = pixel_grid((h, w), device=pts.device, dtype=pts.dtype)
    centred = (grid - grid.new_tensor([cx, cy])).reshape(1, -1, 2)
    flat = pts.reshape(batch, -1, 3)
    z = flat[..., 2:3]
    usable = (z[..., 0] > 0) & torch.isfinite(flat).all(-1)
    ray_xy = torch.where(usable[..., None], flat[..., :2] / z.clamp(min=1e-12), torch.zeros_like(flat[..., :2]))
    base_w = usable.to(pts.dtype)
    if weights is not None:
        base_w = base_w * weights.reshape(batch, -1).to(pts.dtype)
    dot_xy_px = (ray_xy * centred).sum(-1)
    dot_xy_xy = ray_xy.square().sum(-1)
    focal = (base_w * dot_xy_px).sum(1) / (base_w * dot_xy_xy).sum(1).clamp(min=1e-12)
    for _ in range(iters):
        dist = (centred - focal[:, None, None] * ray_xy).norm(dim=-1)
        irls_w = base_w / dist.clamp(min=1e-8)
        focal = (irls_w * dot_xy_px).sum(1) / (irls_w * dot_xy_xy).sum(1).clamp(min=1e-12)
    return focal[0] if single else focal


def intrinsics_from_pointmap(pointmap: torch.Tensor, weights: torch.Tensor | None = None,
                             focal: float | None = None,
                             principal_point: tuple[float, float] | None = None) -> torch.Tensor:
    """K (3, 3) for a pointmap (H, W, 3) in its own camera: focal by Weiszfeld unless given.

    The focal is clamped to [0.2, 20] x the focal of a 60-degree field of view so a degenerate
    pointmap (e.g. an untrained network) never yields a zero or negative focal.
    """
    import torch

    hw = (pointmap.shape[0], pointmap.shape[1])
    if focal is None:
        est = estimate_focal_weiszfeld(pointmap, principal_point, weights)
        base = max(hw) / (2.0 * math.tan(math.radians(30.0)))
        est = torch.nan_to_num(est, nan=base).clamp(0.2 * base, 20.0 * base)
    else:
        est = pointmap.new_tensor(float(focal))
    return make_intrinsics(est, hw, principal_point)


def sample_bilinear(image: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample an (H, W, C) or (B, H, W, C) map at pixel positions xy (N, 2) / (B, N, 2).

    Positions outside the image are clamped to the border (callers mask them). Differentiable in the
    map and in xy. Returns (N, C) or (B, N, C).
    """
    import torch

    single = image.dim() == 3
    img = image[None] if single else image
    pos = xy[None] if single else xy
    _, h, w, _ = img.shape
    x = pos[..., 0].clamp(0, w - 1)
    y = pos[..., 1].clamp(0, h - 1)
    x0 = x.detach().floor().clamp(0, max(w - 2, 0))
    y0 = y.detach().floor().clamp(0, max(h - 2, 0))
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    x0i, y0i = x0.long(), y0.long()
    x1i = (x0i + 1).clamp(max=w - 1)
    y1i = (y0i + 1).clamp(max=h - 1)
    batch_idx = torch.arange(img.shape[0], device=img.device)[:, None]

    def at(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return img[batch_idx, yi, xi]

    out = (at(y0i, x0i) * (1 - fx) * (1 - fy) + at(y0i, x1i) * fx * (1 - fy)
           + at(y1i, x0i) * (1 - fx) * fy + at(y1i, x1i) * fx * fy)
    return out[0] if single else out


def in_image(xy: torch.Tensor, hw: tuple[int, int], margin: float = 0.0) -> torch.Tensor:
    """Bool mask of pixel positions (..., 2) inside [-margin, W-1+margin] x [-margin, H-1+margin]."""
    return ((xy[..., 0] >= -margin) & (xy[..., 0] <= hw[1] - 1 + margin)
            & (xy[..., 1] >= -margin) & (xy[..., 1] <= hw[0] - 1 + margin))
