"""Exact ray casting against the canonical-shape objects of a `Scene` (pure NumPy, float64).

A ray `origin + t * dirs[r]` is mapped into each object's canonical frame,
`o' = R^T (origin - c) / s`, `d' = R^T d / s`; the map is affine, so the hit parameter `t` is the same in
both frames and the canonical hit point `u = o' + t d'` lies exactly on the unit sphere or cube.
Objects are culled per ray by their bounding sphere before the exact test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from st4r_cli.synthetic.scene import BOX, ROOM, SPHERE, Scene


@dataclass
class Hits:
    """First hits of R rays: `t (R,)` ray parameter (inf = miss), `obj (R,)` object index (-1 = miss),
    `u (R, 3)` canonical coordinates of the hit (0 for misses)."""

    t: np.ndarray
    obj: np.ndarray
    u: np.ndarray

    @property
    def hit(self) -> np.ndarray:
        return self.obj >= 0


def _max3(a: np.ndarray) -> np.ndarray:
    """Row-wise max of an `(R, 3)` array (faster than `a.max(axis=1)` for a short last axis)."""
    return np.maximum(np.maximum(a[:, 0], a[:, 1]), a[:, 2])


def _min3(a: np.ndarray) -> np.ndarray:
    return np.minimum(np.minimum(a[:, 0], a[:, 1]), a[:, 2])


def _argmax3(a: np.ndarray) -> np.ndarray:
    """Row-wise argmax of an `(R, 3)` array (first index on ties)."""
    first = np.where(a[:, 1] > a[:, 0], 1, 0)
    best = np.maximum(a[:, 0], a[:, 1])
    return np.where(a[:, 2] > best, 2, first)


def _to_canonical(origin: np.ndarray, dirs: np.ndarray, center: np.ndarray, rotation: np.ndarray,
                  scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    origin_c = (rotation.T @ (origin - center)) / scale
    dirs_c = (dirs @ rotation) / scale
    return origin_c, dirs_c


def _hit_sphere(origin_c: np.ndarray, dirs_c: np.ndarray, t_min: float) -> np.ndarray:
    """Entry parameter of rays against the unit sphere seen from outside (inf = miss)."""
    a = np.einsum("ij,ij->i", dirs_c, dirs_c)
    b = dirs_c @ origin_c
    c = origin_c @ origin_c - 1.0
    disc = b * b - a * c
    t = np.full(a.shape, np.inf)
    ok = disc >= 0.0
    t_near = (-b[ok] - np.sqrt(disc[ok])) / a[ok]
    t[ok] = np.where(t_near > t_min, t_near, np.inf)
    return t


def _slabs(origin_c: np.ndarray, dirs_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs_c
        t1 = (-1.0 - origin_c) * inv
        t2 = (1.0 - origin_c) * inv
    t_lo = np.fmin(t1, t2)
    t_hi = np.fmax(t1, t2)
    return t_lo, t_hi


def _hit_box(origin_c: np.ndarray, dirs_c: np.ndarray, t_min: float) -> np.ndarray:
    """Entry parameter of rays against the cube [-1, 1]^3 seen from outside (inf = miss)."""
    t_lo, t_hi = _slabs(origin_c, dirs_c)
    t_near = _max3(t_lo)
    t_far = _min3(t_hi)
    return np.where((t_near <= t_far) & (t_near > t_min), t_near, np.inf)


def _hit_room(origin_c: np.ndarray, dirs_c: np.ndarray, t_min: float, open_top: bool = False) -> np.ndarray:
    """Exit parameter of rays leaving the cube [-1, 1]^3 from inside (the room's walls).

    With `open_top`, rays leaving through the ceiling (the face y = -1; y points down) miss.
    """
    _, t_hi = _slabs(origin_c, dirs_c)
    t_far = _min3(t_hi)
    hit = t_far > t_min
    if open_top:
        through_ceiling = (t_hi[:, 1] <= np.minimum(t_hi[:, 0], t_hi[:, 2])) & (dirs_c[:, 1] < 0)
        hit &= ~through_ceiling
    return np.where(hit, t_far, np.inf)


def snap_canonical(kind: int, u: np.ndarray) -> np.ndarray:
    """Project canonical hit points exactly onto their unit shape (removes float round-off)."""
    if kind == SPHERE:
        return u / np.sqrt(np.einsum("ij,ij->i", u, u))[:, None]
    u = np.clip(u, -1.0, 1.0)
    face = _argmax3(np.abs(u))
    rows = np.arange(len(u))
    u[rows, face] = np.sign(u[rows, face])
    return u


def cast_rays(scene: Scene, frame: int, origin: np.ndarray, dirs: np.ndarray, t_min: float = 1e-9) -> Hits:
    """First hit of rays `origin (3,) + t * dirs (R, 3)` with the scene at `frame` (world coordinates)."""
    num_rays = dirs.shape[0]
    best_t = np.full(num_rays, np.inf)
    best_obj = np.full(num_rays, -1, dtype=np.int64)
    dir_sq = np.einsum("ij,ij->i", dirs, dirs)
    for index, obj in enumerate(scene.objects):
        center, rotation, scale = obj.center[frame], obj.rotation[frame], obj.scale[frame]
        if obj.kind == ROOM:
            rays = np.arange(num_rays)
        else:
            radius = scale.max() if obj.kind == SPHERE else np.linalg.norm(scale)
            to_center = center - origin
            along = dirs @ to_center
            miss_sq = to_center @ to_center - along * along / dir_sq
            rays = np.flatnonzero((miss_sq < radius * radius) & (along > 0.0))
            if rays.size == 0:
                continue
        origin_c, dirs_c = _to_canonical(origin, dirs[rays], center, rotation, scale)
        if obj.kind == SPHERE:
            t = _hit_sphere(origin_c, dirs_c, t_min)
        elif obj.kind == BOX:
            t = _hit_box(origin_c, dirs_c, t_min)
        else:
            t = _hit_room(origin_c, dirs_c, t_min, obj.open_top)
        closer = t < best_t[rays]
        best_t[rays[closer]] = t[closer]
        best_obj[rays[closer]] = index
    u = np.zeros((num_rays, 3))
    for index in np.flatnonzero(np.bincount(best_obj + 1, minlength=len(scene.objects) + 1)[1:]):
        obj = scene.objects[index]
        rays = np.flatnonzero(best_obj == index)
        origin_c, dirs_c = _to_canonical(origin, dirs[rays], obj.center[frame], obj.rotation[frame],
                                         obj.scale[frame])
        u[rays] = snap_canonical(obj.kind, origin_c[None] + best_t[rays, None] * dirs_c)
    return Hits(t=best_t, obj=best_obj, u=u)


def canonical_to_world(scene: Scene, obj_index: np.ndarray, u: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """World positions `(F, M, 3)` at `frames (F,)` of surface points `(obj_index (M,), u (M, 3))`."""
    out = np.zeros((len(frames), len(u), 3))
    for index in np.unique(obj_index[obj_index >= 0]):
        obj = scene.objects[index]
        rows = np.flatnonzero(obj_index == index)
        local = obj.scale[frames][:, None, :] * u[rows][None]                    # (F, m, 3)
        rotation, center = obj.rotation[frames], obj.center[frames]
        for i in range(3):  # out_i = sum_j R_ij local_j + c_i, broadcast over (F, m): faster than batched matmul
            out[:, rows, i] = (rotation[:, i, 0, None] * local[..., 0] + rotation[:, i, 1, None] * local[..., 1]
                               + rotation[:, i, 2, None] * local[..., 2] + center[:, i, None])
    return out


def world_normals(scene: Scene, frame: int, obj_index: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Unit surface normals `(M, 3)` in world coordinates (room walls face inwards)."""
    normals = np.zeros_like(u)
    for index in np.unique(obj_index[obj_index >= 0]):
        obj = scene.objects[index]
        rows = np.flatnonzero(obj_index == index)
        local = u[rows]
        if obj.kind != SPHERE:
            face = _argmax3(np.abs(local))
            axis_normal = np.zeros_like(local)
            axis_normal[np.arange(len(rows)), face] = np.sign(local[np.arange(len(rows)), face])
            local = -axis_normal if obj.kind == ROOM else axis_normal
        n = (local / obj.scale[frame]) @ obj.rotation[frame].T
        normals[rows] = n / np.sqrt(np.einsum("ij,ij->i", n, n))[:, None]
    return normals
