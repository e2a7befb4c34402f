"""Weighted, robust, differentiable Perspective-n-Point.

Given 3D points X_i (in some reference frame, e.g. the anchor camera of a St4R pair), their pixels
x_i in camera j, intrinsics K and per-point weights w_i, find the pose w2c = [R | t] of camera j that
minimises the robust reprojection cost

    C(R, t) = sum_i w_i * huber_delta(|| pi(K (R X_i + t)) - x_i ||)

How it is solved:
1. Initialisation (no gradient): OpenCV's RANSAC PnP (EPnP minimal sets, refined on inliers) on at
   most `max_init_points` of the most confident points, and the identity pose; the candidate with the
   lower robust cost wins (or a pose given by the caller).
2. Levenberg-Marquardt on the robust cost (IRLS Huber weights, Marquardt damping, step accepted only
   if the cost decreases), without gradient tracking, until converged.
3. `grad_steps` undamped Gauss-Newton steps from the detached optimum, with autograd on. At a
   minimum, the derivative of one Gauss-Newton step with respect to the inputs is the implicit
   derivative of the minimiser (exact for zero-residual problems, the Gauss-Newton approximation
   otherwise), so gradients flow to the 3D points, the pixels, the weights and K.

Pose update: R <- exp([w]x) R, t <- exp([w]x) t + v, so a camera-frame point moves by v + w x X_c and
the Jacobian of X_c with respect to (v, w) is [I | -[X_c]x].
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass
class PnPOptions:
    """Knobs of `solve_pnp` (defaults suit 100s-100000s of pointmap correspondences)."""

    lm_iters: int = 30              # max no-grad Levenberg-Marquardt iterations
    grad_steps: int = 1             # differentiable Gauss-Newton steps after convergence
    huber_rel: float = 0.05         # Huber threshold as a fraction of the pixels' spatial spread
    min_huber_px: float = 0.5       # ... but never below this many pixels
    ransac: bool = True             # try OpenCV RANSAC for the initialisation
    ransac_iters: int = 100
    ransac_thresh_rel: float = 0.02  # RANSAC inlier threshold as a fraction of the pixels' spread
    max_init_points: int = 2000     # most confident points handed to RANSAC
    min_depth: float = 1e-4         # points closer than this (in camera j) are ignored
    tol: float = 1e-10              # relative cost decrease below which LM stops
    trim_k: float = 3.0             # after the Huber fit, drop points beyond trim_k robust sigmas
                                    # and refit (0 disables this second, redescending stage)
    seed: int = 0


def solve_pnp(points3d: torch.Tensor, pixels: torch.Tensor, intrinsics: torch.Tensor,
              weights: torch.Tensor | None = None, init_w2c: torch.Tensor | None = None,
              options: PnPOptions | None = None) -> torch.Tensor:
    """Pose w2c (B, 4, 4) of cameras observing points3d (B, N, 3) at pixels (B, N, 2).

    intrinsics: (3, 3) or (B, 3, 3); weights: (B, N) >= 0 (0 drops a point; non-finite points are
    dropped automatically); init_w2c: optional (B, 4, 4) starting poses (also compared against RANSAC
    and the identity). Differentiable w.r.t. points3d, pixels, weights and intrinsics (see module doc).
    Unbatched inputs ((N, 3), (N, 2), (N,)) return (4, 4).
    """
    with _few_threads(points3d.numel()):
        return _solve_pnp(points3d, pixels, intrinsics, weights, init_w2c, options or PnPOptions())


@contextmanager
def _few_threads(numel: int) -> Iterator[None]:
    """Run small CPU problems single-threaded: the LM loop is many tiny ops, and intra-op threads
    only add synchronisation (7x slower on a busy 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    if numel < 2_000_000 and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _solve_pnp(points3d: torch.Tensor, pixels: torch.Tensor, intrinsics: torch.Tensor,
               weights: torch.Tensor | None, init_w2c: torch.Tensor | None, opts: PnPOptions) -> torch.Tensor:
    import torch

    single = points3d.dim() == 2
    if single:
        points3d, pixels = points3d[None], pixels[None]
        weights = None if weights is None else weights[None]
        init_w2c = None if init_w2c is None else init_w2c[None]
    batch, count, _ = points3d.shape
    k_mat = intrinsics if intrinsics.dim() == 3 else intrinsics.expand(batch, 3, 3)
    finite = torch.isfinite(points3d).all(-1) & torch.isfinite(pixels).all(-1)
    w_in = torch.ones(batch, count, dtype=points3d.dtype, device=points3d.device) if weights is None else weights
    w_in = torch.where(finite, w_in, torch.zeros_like(w_in))
    pts = torch.where(finite[..., None], points3d, torch.zeros_like(points3d))
    pix = torch.where(finite[..., None], pixels, torch.zeros_like(pixels))
    # Work on centred, unit-RMS points (constants, no gradient needed): keeps the normal equations
    # well conditioned in float32 whatever the pointmap's scale. pi(R X + t) = pi(R Xn + t_n) with
    # X = s Xn + c and t_n = (R c + t) / s.
    centre, scale = _normalisation(pts.detach(), w_in.detach())
    pts = (pts - centre[:, None, :]) / scale[:, None, None]
    starts = [torch.eye(4, dtype=pts.dtype, device=pts.device).expand(batch, 4, 4)]
    if init_w2c is not None:
        starts.append(init_w2c.to(pts).detach())
    starts = [(w2c[:, :3, :3], ((w2c[:, :3, :3] @ centre[..., None])[..., 0] + w2c[:, :3, 3]) / scale[:, None])
              for w2c in starts]
    delta = _huber_delta(pix.detach(), w_in.detach(), opts)

    with torch.no_grad():
        rot, trans = _initial_pose(pts.detach(), pix.detach(), k_mat.detach(), w_in.detach(), delta,
                                   starts, opts)
        rot, trans = _levenberg_marquardt(pts.detach(), pix.detach(), k_mat.detach(), w_in.detach(),
                                          delta, rot, trans, opts)
        keep = None
        if opts.trim_k > 0:
            keep, delta = _trim_outliers(pts.detach(), pix.detach(), k_mat.detach(), w_in.detach(),
                                         rot, trans, opts)
            rot, trans = _levenberg_marquardt(pts.detach(), pix.detach(), k_mat.detach(),
                                              w_in.detach() * keep, delta, rot, trans, opts)
    if keep is not None:
        w_in = w_in * keep  # outside no_grad: the weights keep their gradient
    for _ in range(opts.grad_steps):
        rot, trans = _gauss_newton_step(pts, pix, k_mat, w_in, delta, rot, trans, opts, damping=0.0)
    from st4r_cli.geometry.lie import make_pose

    trans = trans * scale[:, None] - (rot @ centre[..., None])[..., 0]
    pose = make_pose(rot, trans)
    return pose[0] if single else pose


def reprojection_residuals(points3d: torch.Tensor, pixels: torch.Tensor, intrinsics: torch.Tensor,
                           w2c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual pixels (B, N, 2) = projection - observation, and camera depth (B, N)."""
    from st4r_cli.geometry.camera import project

    cam = points3d @ w2c[:, :3, :3].transpose(-1, -2) + w2c[:, None, :3, 3]
    k_mat = intrinsics if intrinsics.dim() == 3 else intrinsics.expand(points3d.shape[0], 3, 3)
    proj, depth = project(cam, k_mat)
    return proj - pixels, depth


# ----------------------------------------------------------------------------------------------
# internals
# ----------------------------------------------------------------------------------------------

def _normalisation(pts: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,3) weighted centroid and (B,) RMS distance to it of the usable points."""
    wsum = w.sum(1).clamp(min=1e-12)
    centre = (w[..., None] * pts).sum(1) / wsum[:, None]
    rms = ((w * ((pts - centre[:, None]) ** 2).sum(-1)).sum(1) / wsum).sqrt()
    return centre, rms.clamp(min=1e-12)


def _huber_delta(pix: torch.Tensor, w: torch.Tensor, opts: PnPOptions) -> torch.Tensor:
    """(B,) Huber threshold in pixels: a fraction of the weighted spatial spread of the pixels."""
    wsum = w.sum(1).clamp(min=1e-12)
    mean = (w[..., None] * pix).sum(1) / wsum[:, None]
    var = (w * ((pix - mean[:, None]) ** 2).sum(-1)).sum(1) / wsum
    return (opts.huber_rel * var.sqrt()).clamp(min=opts.min_huber_px)


def _trim_outliers(pts: torch.Tensor, pix: torch.Tensor, k_mat: torch.Tensor, w: torch.Tensor,
                   rot: torch.Tensor, trans: torch.Tensor, opts: PnPOptions
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,N) 0/1 mask of points within trim_k robust sigmas, and the (B,) Huber delta to refit with.

    sigma = 1.4826 * weighted median of the residual norms (the MAD rule); the cut is never tighter
    than 2 * min_huber_px.
    """
    import torch

    res, _, front = _residuals_and_jacobian(pts, pix, k_mat, rot, trans, opts.min_depth)
    norm = res.norm(dim=-1)
    usable = front & (w > 0)
    sigmas = []
    for b in range(pts.shape[0]):
        vals = norm[b][usable[b]]
        sigmas.append(1.4826 * vals.median() if vals.numel() else norm.new_tensor(float("inf")))
    sigma = torch.stack(sigmas)
    cut = (opts.trim_k * sigma).clamp(min=2.0 * opts.min_huber_px)
    keep = (norm <= cut[:, None]).to(w.dtype)
    return keep, (1.5 * sigma).clamp(min=opts.min_huber_px)


def _residuals_and_jacobian(pts: torch.Tensor, pix: torch.Tensor, k_mat: torch.Tensor, rot: torch.Tensor,
                            trans: torch.Tensor, min_depth: float
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Residuals (B,N,2), Jacobian (B,N,2,6) w.r.t. (v, w), and a (B,N) mask of points in front.

    With X_c = (x, y, z), a = fx/z, c = -fx x/z^2, b = fy/z, d = -fy y/z^2, the rows of
    d(u, v)/d(X_c) [I | -[X_c]x] are written out: du = [a, 0, c, c y, a z - c x, -a y] and
    dv = [0, b, d, d y - b z, -d x, b x].
    """
    import torch

    cam = pts @ rot.transpose(-1, -2) + trans[:, None, :]
    x, y, z = cam.unbind(-1)
    front = z > min_depth
    inv_z = 1.0 / torch.where(front, z, torch.ones_like(z))
    fx = k_mat[:, 0, 0, None]
    fy = k_mat[:, 1, 1, None]
    xn, yn = x * inv_z, y * inv_z
    res = torch.stack([fx * xn + k_mat[:, 0, 2, None] - pix[..., 0],
                       fy * yn + k_mat[:, 1, 2, None] - pix[..., 1]], -1)
    a, b = fx * inv_z, fy * inv_z
    c, d = -a * xn, -b * yn
    zero = torch.zeros_like(z)
    du = torch.stack([a, zero, c, c * y, a * z - c * x, -a * y], -1)
    dv = torch.stack([zero, b, d, d * y - b * z, -d * x, b * x], -1)
    return res, torch.stack([du, dv], -2), front


def _robust_cost(res: torch.Tensor, w: torch.Tensor, front: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(B,) sum_i w_i * huber(|r_i|) over points in front of the camera."""
    import torch

    norm = res.norm(dim=-1)
    d = delta[:, None]
    huber = torch.where(norm <= d, 0.5 * norm**2, d * norm - 0.5 * d**2)
    return (w * front * huber).sum(1)


def _irls_weights(res: torch.Tensor, w: torch.Tensor, front: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(B,N) weights w_i * rho'(s)/s of the Huber cost (1 inside delta, delta/s outside)."""
    import torch

    norm = res.norm(dim=-1)
    d = delta[:, None]
    robust = torch.where(norm <= d, torch.ones_like(norm), d / norm.clamp(min=1e-12))
    return w * front * robust


def _normal_equations(res: torch.Tensor, jac: torch.Tensor, irls: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """H = sum w J^T J (B,6,6) and g = sum w J^T r (B,6), as two batched matmuls."""
    batch = jac.shape[0]
    jac_flat = jac.reshape(batch, -1, 6)                                   # (B, 2N, 6)
    wj = (jac * irls[..., None, None]).reshape(batch, -1, 6)
    hess = wj.transpose(1, 2) @ jac_flat
    grad = (wj.transpose(1, 2) @ res.reshape(batch, -1, 1))[..., 0]
    return hess, grad


def _apply_update(rot: torch.Tensor, trans: torch.Tensor, step: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    from st4r_cli.geometry.lie import so3_exp

    rot_step = so3_exp(step[:, 3:])
    return rot_step @ rot, (rot_step @ trans[..., None])[..., 0] + step[:, :3]


def _solve(hess: torch.Tensor, grad: torch.Tensor, damping: torch.Tensor | float) -> torch.Tensor:
    """Step solving (H + lambda * diag(H)) s = -g, with a tiny ridge so H is always invertible."""
    import torch

    diag = hess.diagonal(dim1=-2, dim2=-1)
    lam = damping[:, None] if isinstance(damping, torch.Tensor) else damping
    ridge = 1e-10 * diag.mean(-1, keepdim=True).clamp(min=1e-20)
    system = hess + torch.diag_embed(lam * diag.clamp(min=0) + ridge)
    return -torch.linalg.solve(system, grad[..., None])[..., 0]


def _gauss_newton_step(pts: torch.Tensor, pix: torch.Tensor, k_mat: torch.Tensor, w: torch.Tensor,
                       delta: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor, opts: PnPOptions,
                       damping: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    res, jac, front = _residuals_and_jacobian(pts, pix, k_mat, rot, trans, opts.min_depth)
    irls = _irls_weights(res, w, front, delta)
    hess, grad = _normal_equations(res, jac, irls)
    step = _solve(hess, grad, damping)
    return _apply_update(rot, trans, step)


def _levenberg_marquardt(pts: torch.Tensor, pix: torch.Tensor, k_mat: torch.Tensor, w: torch.Tensor,
                         delta: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor, opts: PnPOptions
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Damped IRLS Gauss-Newton with per-item accept/reject (no autograd)."""
    import torch

    batch = pts.shape[0]
    lam = torch.full((batch,), 1e-4, dtype=pts.dtype, device=pts.device)
    res, jac, front = _residuals_and_jacobian(pts, pix, k_mat, rot, trans, opts.min_depth)
    cost = _robust_cost(res, w, front, delta)
    active = torch.ones(batch, dtype=torch.bool, device=pts.device)
    for _ in range(opts.lm_iters):
        irls = _irls_weights(res, w, front, delta)
        hess, grad = _normal_equations(res, jac, irls)
        step = _solve(hess, grad, lam)
        new_rot, new_trans = _apply_update(rot, trans, step)
        new_res, new_jac, new_front = _residuals_and_jacobian(pts, pix, k_mat, new_rot, new_trans, opts.min_depth)
        new_cost = _robust_cost(new_res, w, new_front, delta)
        # Points dropping behind the camera lower the cost artificially: also require most stay in front.
        kept = (new_front & (w > 0)).sum(1) >= 0.9 * (front & (w > 0)).sum(1)
        accept = active & torch.isfinite(new_cost) & (new_cost <= cost) & kept
        rel_gain = (cost - new_cost) / cost.clamp(min=1e-30)
        sel = accept[:, None, None]
        rot = torch.where(sel, new_rot, rot)
        trans = torch.where(accept[:, None], new_trans, trans)
        res = torch.where(accept[:, None, None], new_res, res)
        jac = torch.where(accept[:, None, None, None], new_jac, jac)
        front = torch.where(accept[:, None], new_front, front)
        converged = accept & (rel_gain < opts.tol)
        cost = torch.where(accept, new_cost, cost)
        lam = torch.where(accept, (lam / 3.0).clamp(min=1e-9), lam * 8.0)
        active = active & ~converged & (lam < 1e8)
        if not bool(active.any()):
            break
    return rot, trans


def _initial_pose(pts: torch.Tensor, pix: torch.Tensor, k_mat: torch.Tensor, w: torch.Tensor,
                  delta: torch.Tensor, starts: list[tuple[torch.Tensor, torch.Tensor]], opts: PnPOptions
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Best of {starts (identity, caller's init), RANSAC} per item, by robust cost."""
    import torch

    batch = pts.shape[0]
    candidates = list(starts)
    if opts.ransac:
        ransac = _ransac_init(pts, pix, k_mat, w, opts)
        if ransac is not None:
            candidates.append(ransac)
    best_rot, best_trans = candidates[0]
    best_cost = torch.full((batch,), float("inf"), dtype=pts.dtype, device=pts.device)
    for rot, trans in candidates:
        res, _, front = _residuals_and_jacobian(pts, pix, k_mat, rot, trans, opts.min_depth)
        cost = _robust_cost(res, w, front, delta)
        # Penalise poses that put points behind the camera: count them at the Huber cap of 10 deltas.
        behind = ((~front) & (w > 0)).to(pts.dtype) * w
        cost = cost + (behind * (10.0 * delta[:, None]) ** 2).sum(1)
        better = torch.isfinite(cost) & (cost < best_cost)
        best_rot = torch.where(better[:, None, None], rot, best_rot)
        best_trans = torch.where(better[:, None], trans, best_trans)
        best_cost = torch.where(better, cost, best_cost)
    return best_rot, best_trans


def _ransac_init(pts: torch.Tensor, pix: torch.Tensor, k_mat: torch.Tensor, w: torch.Tensor,
                 opts: PnPOptions) -> tuple[torch.Tensor, torch.Tensor] | None:
    """OpenCV solvePnPRansac per batch item on the most confident points; identity where it fails."""
    import cv2
    import numpy as np
    import torch

    cv2.setRNGSeed(int(opts.seed))
    batch = pts.shape[0]
    rots = np.tile(np.eye(3), (batch, 1, 1))
    transs = np.zeros((batch, 3))
    pts_np = pts.double().cpu().numpy()
    pix_np = pix.double().cpu().numpy()
    w_np = w.double().cpu().numpy()
    k_np = k_mat.double().cpu().numpy()
    ok_any = False
    for b in range(batch):
        idx = _confident_subset(w_np[b], opts.max_init_points, opts.seed + b)
        if idx.size < 6:
            continue
        obj = np.ascontiguousarray(pts_np[b, idx])
        img = np.ascontiguousarray(pix_np[b, idx])
        spread = float(np.sqrt(img.var(0).sum()))
        thresh = max(1.0, opts.ransac_thresh_rel * spread)
        try:
            ok, rvec, tvec, _ = cv2.solvePnPRansac(obj, img, k_np[b], None, iterationsCount=opts.ransac_iters,
                                                   reprojectionError=thresh, confidence=0.999,
                                                   flags=cv2.SOLVEPNP_EPNP)
        except cv2.error:
            ok = False
        if not ok or not np.all(np.isfinite(rvec)) or not np.all(np.isfinite(tvec)):
            continue
        rots[b] = cv2.Rodrigues(rvec)[0]
        transs[b] = tvec[:, 0]
        ok_any = True
    if not ok_any:
        return None
    return (torch.as_tensor(rots, dtype=pts.dtype, device=pts.device),
            torch.as_tensor(transs, dtype=pts.dtype, device=pts.device))


def _confident_subset(weights: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Indices of up to `max_points` points with positive weight, favouring high weights.

    Takes the top quarter of points by weight (at least `max_points` of them when available) and
    draws `max_points` from those uniformly, so the subset covers the image rather than one blob.
    """
    import numpy as np

    valid = np.flatnonzero(weights > 0)
    if valid.size <= max_points:
        return valid
    keep = max(max_points, valid.size // 4)
    order = valid[np.argsort(-weights[valid], kind="stable")[:keep]]
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(order, size=max_points, replace=False))
