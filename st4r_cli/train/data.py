"""Training pairs from synthetic clips (`st4r_cli.synthetic`), cached on disk.

A training clip is a dict of numpy arrays (world frame = camera of frame 0):
  frames (T,H,W,3) uint8, cam_c2w (T,4,4), points_world (T,H,W,3) (frame t's pixels at time t),
  recon_valid (T,H,W) bool (pixel hits a surface), anchors (A,) int frame indices (0 first),
  anchor_tracks (A,T,H,W,3) (anchor frame's pixels at time t), anchor_track_valid (A,H,W) bool.
Clips are rendered once and stored as `.npy` files in `cache_dir/<preset>-<seed>-<T>-<H>x<W>/`
(memory-mapped when read, written atomically: a temp dir renamed into place).

A pair (a, j) gives, in camera a: head-1 target = frame a's pixels at time j, head-2 target = frame j's
pixels. `render_clip` gives the dense tracks of frame 0's pixels; for the other anchors we re-anchor
exactly: cast frame a's pixel rays into the same scene (`st4r_cli.synthetic.raycast`) and follow each
hit surface point through the clip.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

CLIP_KEYS = ("frames", "cam_c2w", "points_world", "recon_valid", "anchors", "anchor_tracks",
             "anchor_track_valid")


@dataclass(frozen=True)
class ClipSpec:
    """Which synthetic clip to render: preset, seed, number of frames, size (H, W), anchor frames."""

    preset: str
    seed: int
    num_frames: int
    size_hw: tuple[int, int]
    num_anchors: int = 1

    @property
    def anchors(self) -> tuple[int, ...]:
        """Anchor frames: 0 and evenly spread frames in the first two thirds of the clip."""
        count = max(1, min(self.num_anchors, self.num_frames - 1))
        return tuple(sorted({round(k * (2 * self.num_frames / 3) / count) for k in range(count)}))

    @property
    def key(self) -> str:
        return (f"{self.preset}-{self.seed}-{self.num_frames}-{self.size_hw[0]}x{self.size_hw[1]}"
                f"-a{'.'.join(map(str, self.anchors))}")


def render_training_clip(spec: ClipSpec) -> dict[str, np.ndarray]:
    """Render a clip with `st4r_cli.synthetic.render_clip` and keep what pretraining needs."""
    from st4r_cli.synthetic.render import render_clip

    clip = render_clip(spec.preset, seed=spec.seed, num_frames=spec.num_frames, size_hw=spec.size_hw)
    arrays = training_arrays(clip)
    tracks, valid = [arrays.pop("tracks3d_dense")], [arrays.pop("track_valid")]
    for anchor in spec.anchors[1:]:
        track, ok = reanchored_tracks(spec, anchor)
        tracks.append(track)
        valid.append(ok)
    arrays["anchors"] = np.asarray(spec.anchors, dtype=np.int64)
    arrays["anchor_tracks"] = np.stack(tracks)
    arrays["anchor_track_valid"] = np.stack(valid)
    return arrays


def reanchored_tracks(spec: ClipSpec, anchor: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact dense tracks (T,H,W,3) of frame `anchor`'s pixels (frame-0 camera coordinates) + valid (H,W)."""
    from st4r_cli.synthetic.raycast import canonical_to_world, cast_rays
    from st4r_cli.synthetic.render import intrinsics_for, pixel_rays
    from st4r_cli.synthetic.scene import build_scene

    scene = build_scene(spec.preset, spec.seed, spec.num_frames)
    height, width = spec.size_hw
    rays_cam = pixel_rays(spec.size_hw, intrinsics_for(spec.size_hw, scene.fov_x_deg))
    rotation, origin = scene.cam_c2w[anchor, :3, :3], scene.cam_c2w[anchor, :3, 3]
    hits = cast_rays(scene, anchor, origin, rays_cam @ rotation.T)
    rows = np.flatnonzero(hits.hit)
    tracks = np.zeros((spec.num_frames, height * width, 3))
    tracks[:, rows] = canonical_to_world(scene, hits.obj[rows], hits.u[rows], np.arange(spec.num_frames))
    w2c0 = np.linalg.inv(scene.cam_c2w[0])
    tracks = tracks @ w2c0[:3, :3].T + w2c0[:3, 3]
    return (tracks.reshape(spec.num_frames, height, width, 3).astype(np.float32),
            hits.hit.reshape(height, width))


def _get(clip: Any, name: str) -> Any:
    if isinstance(clip, dict):
        return clip.get(name)
    return getattr(clip, name, None)


def training_arrays(clip: Any) -> dict[str, np.ndarray]:
    """The pretraining arrays of a rendered clip (dict or object with attributes)."""
    frames = np.asarray(_get(clip, "frames"), dtype=np.uint8)
    depth = np.asarray(_get(clip, "depth"), dtype=np.float32)
    valid = _get(clip, "valid")
    if valid is None:
        valid = _get(clip, "depth_valid")
    recon_valid = np.isfinite(depth) & (depth > 0) if valid is None else np.asarray(valid, dtype=bool)
    tracks = np.asarray(_get(clip, "tracks3d_dense"), dtype=np.float32)
    track_valid = _get(clip, "tracks3d_dense_valid")
    if track_valid is None:
        track_valid = np.isfinite(tracks).all(axis=-1).all(axis=0) & recon_valid[0]
    track_valid = np.asarray(track_valid, dtype=bool)
    if track_valid.ndim == 3:
        track_valid = track_valid.all(axis=0)
    return {
        "frames": frames,
        "cam_c2w": np.asarray(_get(clip, "cam_c2w"), dtype=np.float32),
        "points_world": np.nan_to_num(np.asarray(_get(clip, "points_world"), dtype=np.float32)),
        "recon_valid": recon_valid,
        "tracks3d_dense": np.nan_to_num(tracks),
        "track_valid": track_valid,
    }


def load_or_render(spec: ClipSpec, cache_dir: str | os.PathLike[str] | None) -> dict[str, np.ndarray]:
    """Cached clip arrays (memory-mapped), rendering and storing them on a cache miss."""
    if cache_dir is None:
        return render_training_clip(spec)
    folder = Path(cache_dir) / spec.key
    if not all((folder / f"{k}.npy").is_file() for k in CLIP_KEYS):
        arrays = render_training_clip(spec)
        tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for key in CLIP_KEYS:
            np.save(tmp / f"{key}.npy", arrays[key])
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in CLIP_KEYS}


def _to_camera(points: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    return points @ w2c[:3, :3].T + w2c[:3, 3]


def make_pair(clip: dict[str, np.ndarray], anchor: int, target: int, flip: bool = False
              ) -> dict[str, np.ndarray]:
    """One training pair (anchor frame, target frame) of a clip; `anchor` must be in clip['anchors'].

    Returns img1, img2 (3,H,W) float32 in [-1, 1]; gt_track, gt_recon (H,W,3) in camera `anchor`;
    track_valid, recon_valid (H,W) bool. `flip` mirrors both images horizontally (x -> -x in 3D,
    exact for a centred principal point).
    """
    w2c = np.linalg.inv(np.asarray(clip["cam_c2w"][anchor], dtype=np.float64)).astype(np.float32)
    frames = clip["frames"]
    img1 = np.asarray(frames[anchor], dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    img2 = np.asarray(frames[target], dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    anchors = [int(a) for a in clip["anchors"]]
    if anchor not in anchors:
        raise ValueError(f"no tracking ground truth for anchor {anchor} (anchors: {anchors})")
    slot = anchors.index(anchor)
    gt_track = _to_camera(np.asarray(clip["anchor_tracks"][slot, target]), w2c)
    gt_recon = _to_camera(np.asarray(clip["points_world"][target]), w2c)
    track_valid = np.asarray(clip["anchor_track_valid"][slot], dtype=bool)
    recon_valid = np.asarray(clip["recon_valid"][target], dtype=bool)
    if flip:
        img1, img2 = img1[:, :, ::-1], img2[:, :, ::-1]
        gt_track = gt_track[:, ::-1] * np.array([-1.0, 1.0, 1.0], dtype=np.float32)
        gt_recon = gt_recon[:, ::-1] * np.array([-1.0, 1.0, 1.0], dtype=np.float32)
        track_valid, recon_valid = track_valid[:, ::-1], recon_valid[:, ::-1]
    return {
        "img1": np.ascontiguousarray(img1), "img2": np.ascontiguousarray(img2),
        "gt_track": np.ascontiguousarray(gt_track, dtype=np.float32),
        "gt_recon": np.ascontiguousarray(gt_recon, dtype=np.float32),
        "track_valid": np.ascontiguousarray(track_valid), "recon_valid": np.ascontiguousarray(recon_valid),
    }


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack pair dicts into a batch of tensors."""
    import torch

    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}
