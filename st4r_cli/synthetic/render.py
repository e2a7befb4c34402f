"""Render a synthetic clip with exact ground truth (`render_clip`).

Per frame: one ray per pixel centre gives the exact geometry (z-depth, world point, object id) and the
colour (textures pre-filtered over the pixel footprint); at silhouettes the colour averages
`antialias x antialias` sub-pixel rays (box filter). Dense 3D tracks follow the
surface point seen at each frame-0 pixel through the clip (its canonical coordinates mapped through the
object's pose and shape at time t); the point is visible at frame t when it is in front of the camera,
projects inside the image, and the ray from camera t towards it hits nothing before it (an exact z-buffer
test, not limited to pixel centres).

All outputs are expressed in frame 0's camera coordinates (OpenCV axes), so `cam_c2w[0]` is the identity
and the world frame is the one St4RTrack predicts in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from st4r_cli.geometry import camera_np
from st4r_cli.synthetic.raycast import Hits, canonical_to_world, cast_rays, world_normals
from st4r_cli.synthetic.scene import Scene, build_scene, scene_in_camera0
from st4r_cli.synthetic.texture import NoiseTables, shade_texture

VISIBILITY_REL_TOL = 1e-5  # a blocker must be closer than (1 - tol) x the point's distance


@dataclass
class SyntheticClip:
    """A rendered clip with exact ground truth, in frame-0 camera coordinates (world = camera 0).

    Shapes: T frames of H x W pixels; K objects (index 0 is the room).
    """

    frames: np.ndarray            # (T, H, W, 3) uint8 RGB
    depth: np.ndarray             # (T, H, W) float32 z-depth (metres of the synthetic world), 0 where invalid
    valid: np.ndarray             # (T, H, W) bool, the pixel's ray hit a surface
    intrinsics: np.ndarray        # (3, 3) float32, pixels, principal point at ((W-1)/2, (H-1)/2)
    cam_c2w: np.ndarray           # (T, 4, 4) float32 camera-to-world, cam_c2w[0] = identity
    points_world: np.ndarray      # (T, H, W, 3) float32 world point seen at each pixel (0 where invalid)
    tracks3d_dense: np.ndarray    # (T, H, W, 3) float32 world position at time t of frame 0's pixel surface point
    visible_dense: np.ndarray     # (T, H, W) bool that point is visible in frame t (z-buffer test, in bounds)
    dynamic_mask: np.ndarray      # (T, H, W) bool pixel shows an object that moves or deforms
    object_ids: np.ndarray        # (T, H, W) int16 object index per pixel, -1 where invalid
    object_names: list[str]       # (K,) object kinds: room, furniture, rigid, deforming, arm-*, occluder
    object_dynamic: np.ndarray    # (K,) bool
    preset: str = ""
    seed: int = 0
    camera_path: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    @property
    def scene_scale(self) -> float:
        """Median frame-0 depth: the scale unit for scale-relative 3D thresholds."""
        return float(np.median(self.depth[0][self.valid[0]]))


def intrinsics_for(size_hw: tuple[int, int], fov_x_deg: float) -> np.ndarray:
    """Pinhole `(3, 3)` with square pixels, horizontal field of view `fov_x_deg`, centred principal point."""
    height, width = size_hw
    focal = width / (2.0 * np.tan(np.deg2rad(fov_x_deg) / 2.0))
    return np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def pixel_rays(size_hw: tuple[int, int], intrinsics: np.ndarray, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Camera-frame ray directions `(H*W, 3)` with z = 1 through pixel centres shifted by `offset` (dx, dy)."""
    xy = camera_np.pixel_grid(size_hw).reshape(-1, 2) + np.asarray(offset, np.float64)
    return camera_np.pixel_rays(xy, intrinsics)


def _shade(scene: Scene, frame: int, hits: Hits, dirs_world: np.ndarray, tables: NoiseTables,
           pixel_angle: float) -> np.ndarray:
    """Linear RGB `(R, 3)` in [0, 1]: solid texture x (ambient + Lambert); a sky gradient where rays miss.

    `pixel_angle` is the angle a pixel subtends (1 / focal): with the hit distance and the incidence
    angle it gives the pixel's footprint on the surface, used to pre-filter the texture.
    """
    rgb = np.zeros((len(hits.t), 3), dtype=np.float32)
    missed = np.flatnonzero(~hits.hit)
    if missed.size:
        up = dirs_world[missed] @ scene.up_dir / np.sqrt(np.einsum("ij,ij->i", dirs_world[missed], dirs_world[missed]))
        mix = np.clip(up, 0.0, 1.0)[:, None].astype(np.float32)
        rgb[missed] = (1 - mix) * np.array([0.75, 0.82, 0.92], np.float32) + mix * np.array([0.25, 0.45, 0.85], np.float32)
    rows = np.flatnonzero(hits.hit)
    obj = hits.obj[rows]
    u = hits.u[rows]
    params = _texture_params(scene)
    normals = world_normals(scene, frame, obj, u)
    ray_len = np.sqrt(np.einsum("ij,ij->i", dirs_world[rows], dirs_world[rows]))
    cos_incidence = np.einsum("ij,ij->i", normals, dirs_world[rows]) / ray_len
    normals[cos_incidence > 0] *= -1.0
    footprint = hits.t[rows] * ray_len * pixel_angle / np.sqrt(np.maximum(np.abs(cos_incidence), 0.05))
    albedo = shade_texture(
        (u * params["ref_scale"][obj] + params["offset"][obj]).astype(np.float32),
        footprint=footprint.astype(np.float32),
        checker_freq=params["checker_freq"][obj],
        noise_freq=params["noise_freq"][obj],
        color_a=params["color_a"][obj],
        color_b=params["color_b"][obj],
        color_blob=params["color_blob"][obj],
        tables=tables,
    )
    lambert = np.clip(normals @ scene.light_dir, 0.0, 1.0)
    rgb[rows] = albedo * (0.5 + 0.5 * lambert.astype(np.float32))[:, None]
    return rgb


def _texture_params(scene: Scene) -> dict[str, np.ndarray]:
    """Per-object texture parameters stacked into arrays `(K, ...)` (float32), cached on the scene."""
    cached = getattr(scene, "_texture_params", None)
    if cached is None:
        textures = [o.texture for o in scene.objects]
        cached = dict(ref_scale=np.stack([o.reference_scale for o in scene.objects]),
                      offset=np.stack([t.offset for t in textures]),
                      checker_freq=np.array([t.checker_freq for t in textures], dtype=np.float32),
                      noise_freq=np.array([t.noise_freq for t in textures], dtype=np.float32),
                      color_a=np.stack([t.color_a for t in textures]).astype(np.float32),
                      color_b=np.stack([t.color_b for t in textures]).astype(np.float32),
                      color_blob=np.stack([t.color_blob for t in textures]).astype(np.float32))
        scene._texture_params = cached  # type: ignore[attr-defined]
    return cached


def _edge_pixels(object_ids: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """`(H, W)` bool: pixels whose 4-neighbourhood shows another object or a depth jump (> 3%)."""
    edges = np.zeros(object_ids.shape, dtype=bool)
    for axis in (0, 1):
        index_a = [slice(None), slice(None)]
        index_b = [slice(None), slice(None)]
        index_a[axis], index_b[axis] = slice(1, None), slice(None, -1)
        a, b = tuple(index_a), tuple(index_b)
        jump = (object_ids[a] != object_ids[b]) | (np.abs(depth[a] - depth[b]) > 0.03 * np.minimum(depth[a], depth[b]))
        edges[a] |= jump
        edges[b] |= jump
    return edges


def render_scene(scene: Scene, size_hw: tuple[int, int], seed: int, antialias: int = 3,
                 show_progress: bool = False) -> dict[str, np.ndarray]:
    """Render every frame of `scene`; all arrays in the scene world frame (see `render_clip`).

    Colour: one pixel-centre ray with a footprint-filtered texture everywhere, plus `antialias^2`
    sub-pixel rays (box filter) at silhouette and crease pixels, where geometry would alias.
    """
    height, width = size_hw
    num_frames = scene.num_frames
    intrinsics = intrinsics_for(size_hw, scene.fov_x_deg)
    pixel_angle = 1.0 / intrinsics[0, 0]
    tables = NoiseTables(seed)
    centre_rays = pixel_rays(size_hw, intrinsics)
    offsets = [((i + 0.5) / antialias - 0.5, (j + 0.5) / antialias - 0.5)
               for j in range(antialias) for i in range(antialias)] if antialias > 1 else []
    num_pixels = height * width

    frames = np.zeros((num_frames, num_pixels, 3), dtype=np.uint8)
    depth = np.zeros((num_frames, num_pixels))
    object_ids = np.full((num_frames, num_pixels), -1, dtype=np.int64)
    points = np.zeros((num_frames, num_pixels, 3))
    first_hits = None
    frame_indices = range(num_frames)
    if show_progress:
        from st4r_cli import progress

        frame_indices = progress.track(frame_indices, "rendering")
    for frame in frame_indices:
        rot, origin = scene.cam_c2w[frame, :3, :3], scene.cam_c2w[frame, :3, 3]
        dirs = centre_rays @ rot.T
        hits = cast_rays(scene, frame, origin, dirs)
        if frame == 0:
            first_hits = hits
        ok = hits.hit
        depth[frame, ok] = hits.t[ok]            # camera-frame rays have z = 1, so t is z-depth
        object_ids[frame] = hits.obj
        points[frame, ok] = origin + hits.t[ok, None] * dirs[ok]
        rgb = _shade(scene, frame, hits, dirs, tables, pixel_angle)
        if offsets:
            # all sub-pixel rays of all edge pixels in one cast: (S * E, 3), sample-major
            edges = np.flatnonzero(_edge_pixels(object_ids[frame].reshape(size_hw), depth[frame].reshape(size_hw)))
            shifts = np.array([[dx / intrinsics[0, 0], dy / intrinsics[1, 1], 0.0] for dx, dy in offsets])
            sub_dirs = ((centre_rays[edges][None] + shifts[:, None]).reshape(-1, 3)) @ rot.T
            sub_hits = cast_rays(scene, frame, origin, sub_dirs)
            sub_rgb = _shade(scene, frame, sub_hits, sub_dirs, tables, pixel_angle / antialias)
            rgb[edges] = sub_rgb.reshape(len(offsets), len(edges), 3).mean(axis=0)
        frames[frame] = np.round(255.0 * np.clip(rgb, 0.0, 1.0) ** (1 / 1.4)).astype(np.uint8)

    tracks, visible = _dense_tracks(scene, first_hits, intrinsics, size_hw)
    return dict(frames=frames.reshape(num_frames, height, width, 3),
                depth=depth.reshape(num_frames, height, width),
                object_ids=object_ids.reshape(num_frames, height, width),
                points_world=points.reshape(num_frames, height, width, 3),
                tracks3d_dense=tracks.reshape(num_frames, height, width, 3),
                visible_dense=visible.reshape(num_frames, height, width),
                intrinsics=intrinsics)


def _dense_tracks(scene: Scene, first_hits: Hits, intrinsics: np.ndarray,
                  size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """World tracks `(T, P, 3)` of frame-0 pixel surface points and their visibility `(T, P)`."""
    height, width = size_hw
    num_frames = scene.num_frames
    valid0 = first_hits.hit
    rows = np.flatnonzero(valid0)
    tracks = np.zeros((num_frames, len(valid0), 3))
    tracks[:, rows] = canonical_to_world(scene, first_hits.obj[rows], first_hits.u[rows], np.arange(num_frames))
    visible = np.zeros((num_frames, len(valid0)), dtype=bool)
    visible[0] = valid0
    for frame in range(1, num_frames):
        rot, origin = scene.cam_c2w[frame, :3, :3], scene.cam_c2w[frame, :3, 3]
        to_point = tracks[frame, rows] - origin
        cam = to_point @ rot
        xy, z = camera_np.project(cam, intrinsics)
        x, y = xy[:, 0], xy[:, 1]
        in_front = z > 1e-6
        inside = in_front & (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)
        candidates = np.flatnonzero(inside)
        hits = cast_rays(scene, frame, origin, to_point[candidates])
        unblocked = hits.t >= 1.0 - VISIBILITY_REL_TOL
        visible[frame, rows[candidates[unblocked]]] = True
    return tracks, visible


def render_clip(preset: str, seed: int, num_frames: int = 32, size_hw: tuple[int, int] = (192, 256),
                antialias: int = 3, show_progress: bool = False) -> SyntheticClip:
    """Render a procedural dynamic clip with exact ground truth.

    Args:
        preset: `easy`, `occlusion`, `fast-motion`, `static-scene` or `mixed`.
        seed: scene seed (the clip is a deterministic function of `preset, seed, num_frames, size_hw`).
        num_frames: T.
        size_hw: (H, W) of the frames.
        antialias: sub-pixel rays per axis at silhouette pixels of the colour image (1 = none; textures
            are always pre-filtered); ground truth always uses the exact pixel-centre ray.
        show_progress: show a progress bar over frames (`st4r_cli.progress`).
    Returns:
        a `SyntheticClip` in frame-0 camera coordinates.
    """
    scene = scene_in_camera0(build_scene(preset, seed, num_frames))
    out = render_scene(scene, size_hw, seed, antialias, show_progress)
    valid = out["object_ids"] >= 0
    dynamic_objects = np.array([obj.is_dynamic for obj in scene.objects])
    return SyntheticClip(
        frames=out["frames"],
        depth=out["depth"].astype(np.float32),
        valid=valid,
        intrinsics=out["intrinsics"].astype(np.float32),
        cam_c2w=scene.cam_c2w.astype(np.float32),
        points_world=out["points_world"].astype(np.float32),
        tracks3d_dense=out["tracks3d_dense"].astype(np.float32),
        visible_dense=out["visible_dense"],
        dynamic_mask=valid & dynamic_objects[np.clip(out["object_ids"], 0, None)],
        object_ids=out["object_ids"].astype(np.int16),
        object_names=[obj.name for obj in scene.objects],
        object_dynamic=dynamic_objects,
        preset=preset,
        seed=seed,
        camera_path=scene.camera_path,
        meta=dict(fov_x_deg=scene.fov_x_deg, antialias=antialias),
    )
