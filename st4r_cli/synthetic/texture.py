"""Solid procedural textures: checkers + two octaves of value noise + colour blobs, all functions of a
point's canonical object coordinates, so the pattern is glued to the surface as it moves or deforms."""

from __future__ import annotations

import numpy as np

_TABLE_SIZE = 256


class NoiseTables:
    """Hash permutation and lattice values of a 3D value noise (fixed per clip seed)."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng([seed, 7919])
        self.perm = rng.permutation(_TABLE_SIZE).astype(np.intp)
        self.values = rng.uniform(0.0, 1.0, _TABLE_SIZE).astype(np.float32)

    def noise(self, points: np.ndarray) -> np.ndarray:
        """Smooth value noise in [0, 1] at `points (M, 3)` (one lattice cell per unit)."""
        cell = np.floor(points)
        frac = points - cell
        weight = frac * frac * (3.0 - 2.0 * frac)
        ix, iy, iz = (cell.astype(np.intp) & (_TABLE_SIZE - 1)).T
        perm, mask = self.perm, _TABLE_SIZE - 1
        hx = (perm[ix], perm[(ix + 1) & mask])
        wx, wy, wz = weight.T
        corners = {}
        for dx in (0, 1):
            for dy in (0, 1):
                hxy = perm[(hx[dx] + iy + dy) & mask]
                for dz in (0, 1):
                    corners[dx, dy, dz] = self.values[perm[(hxy + iz + dz) & mask]]
        lerp_z = {(dx, dy): corners[dx, dy, 0] + wz * (corners[dx, dy, 1] - corners[dx, dy, 0])
                  for dx in (0, 1) for dy in (0, 1)}
        lerp_y = [lerp_z[dx, 0] + wy * (lerp_z[dx, 1] - lerp_z[dx, 0]) for dx in (0, 1)]
        return lerp_y[0] + wx * (lerp_y[1] - lerp_y[0])


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _filtered_square_wave(x: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Box-filtered square wave (-1)^floor(x) over a window of `width` cells (analytic, anti-aliased).

    The wave's integral is the triangle S(x) = 1 - |(x mod 2) - 1|; the filtered value is
    (S(x + w/2) - S(x - w/2)) / w, which tends to the square wave as w -> 0.
    """
    def integral(v: np.ndarray) -> np.ndarray:
        return 1.0 - np.abs(v - 2.0 * np.floor(0.5 * v) - 1.0)

    half = 0.5 * width
    return (integral(x + half) - integral(x - half)) / width


def shade_texture(tex_points: np.ndarray, footprint: np.ndarray, checker_freq: np.ndarray,
                  noise_freq: np.ndarray, color_a: np.ndarray, color_b: np.ndarray,
                  color_blob: np.ndarray, tables: NoiseTables) -> np.ndarray:
    """Albedo `(M, 3)` in [0, 1] at texture-space points `(M, 3)` (metres, object-attached).

    `footprint (M,)` is the size of the pixel on the surface (metres): the checker is box-filtered over
    it analytically and noise octaves finer than a pixel fade to their mean, so one ray per pixel gives
    an alias-free texture. Per-point parameters (`checker_freq (M,)` cells per metre, `noise_freq (M,)`,
    colours `(M, 3)`) are gathered from each point's object, so all objects shade in one call.
    """
    checker_width = np.maximum(footprint * checker_freq, np.float32(1e-4))[:, None]
    waves = _filtered_square_wave(tex_points * checker_freq[:, None], checker_width)
    checker = 0.5 - 0.5 * (waves[:, 0] * waves[:, 1] * waves[:, 2])           # 0/1 checker, smoothed over the pixel
    base = color_a + (color_b - color_a) * checker[:, None]

    def octave(freq: np.ndarray, shift: float) -> np.ndarray:
        cycles_per_pixel = footprint * freq
        keep = 1.0 - _smoothstep(0.3, 0.6, cycles_per_pixel)
        return 0.5 + keep * (tables.noise(tex_points * freq[:, None] + np.float32(shift)) - 0.5)

    fine = octave(noise_freq, 0.0)
    finer = octave(2.7 * noise_freq, 17.0)
    blob = _smoothstep(0.58, 0.66, octave(0.35 * noise_freq, 41.0))
    modulation = 0.55 + 0.6 * fine + 0.3 * (finer - 0.5)
    albedo = base * modulation[:, None]
    albedo = albedo + (color_blob - albedo) * (0.85 * blob[:, None])
    return np.clip(albedo, 0.0, 1.0, out=albedo)
