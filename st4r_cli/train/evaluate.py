"""Held-out synthetic evaluation of a St4R network without test-time adaptation.

    python -m st4r_cli.train.evaluate weights/st4r-tiny/model.safetensors --out metrics.json [--untrained]

Protocol (per held-out clip: every preset x `seeds`, `num_frames` frames at `size_hw`):
- World tracks (head 1): pairs (0, j) for every j; the tracking pointmap at frame-0 pixels on a grid
  (every `grid`-th pixel) gives predicted world tracks (N, T, 3) in camera 0 = world. Scored with
  `st4r_cli.metrics.worldtrack.evaluate_worldtrack` (tracks visible at frame 0; `global` median-norm
  scale and `sim3` alignment; APD/EPE in scene units and scale-relative apd_rel/epe_rel; dynamic subset).
- Depth (head 2): AbsRel and delta<1.25 with per-sequence median scaling
  (`st4r_cli.metrics.depth.depth_metrics`), on two depth definitions:
  `depth_cam0`: z in camera 0 of the reconstruction pointmap of pairs (0, j) vs the true z in camera 0
  of frame j's points; `depth_self`: z of head 2 on pairs (j, j) vs frame j's true depth.
- `static` reference: head 1 of pair (0, 0) used for every j (a model that predicts no motion).
Metrics are averaged over clips (mean of per-clip values).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from st4r_cli.model.net import St4rNet

HELDOUT_SEED0 = 90000  # training clips use seeds 1000 + i; held-out clips never overlap them
CACHE_FORMAT = 1  # version of the `--cache-dir` files; bump when SyntheticClip's fields change

# SyntheticClip array fields as cached: name -> (dtype, shape); T frames, H x W pixels, K objects
CLIP_ARRAYS: dict[str, tuple[type, tuple[int | str, ...]]] = {
    "frames": (np.uint8, ("T", "H", "W", 3)),
    "depth": (np.float32, ("T", "H", "W")),
    "valid": (np.bool_, ("T", "H", "W")),
    "intrinsics": (np.float32, (3, 3)),
    "cam_c2w": (np.float32, ("T", 4, 4)),
    "points_world": (np.float32, ("T", "H", "W", 3)),
    "tracks3d_dense": (np.float32, ("T", "H", "W", 3)),
    "visible_dense": (np.bool_, ("T", "H", "W")),
    "dynamic_mask": (np.bool_, ("T", "H", "W")),
    "object_ids": (np.int16, ("T", "H", "W")),
    "object_dynamic": (np.bool_, ("K",)),
}
# the other cached members: name -> (dtype kind, ndim); strings are unicode arrays, never object arrays
CLIP_FIELDS = {"object_names": ("U", 1), "preset": ("U", 0), "seed": ("i", 0), "camera_path": ("U", 0),
               "meta_json": ("U", 0), "cache_format": ("i", 0)}


def heldout_clips(presets: tuple[str, ...], seeds: int, num_frames: int, size_hw: tuple[int, int],
                  cache_dir: Path | None = None) -> list[Any]:
    """Render the held-out clips, or read them from `cache_dir`.

    The cache holds one `<preset>-<seed>-<T>-<H>x<W>.npz` of plain arrays per clip (written atomically,
    read with `allow_pickle=False`, so a file there cannot run code). A damaged file, or one whose arrays
    do not match the clip asked for, is rendered again and replaced. Other files (such as the `.pkl`
    files of older versions) are never opened.
    """
    from st4r_cli.synthetic import render_clip

    clips = []
    for p, preset in enumerate(presets):
        for s in range(seeds):
            seed = HELDOUT_SEED0 + 100 * p + s
            path = cache_dir / f"{preset}-{seed}-{num_frames}-{size_hw[0]}x{size_hw[1]}.npz" if cache_dir else None
            clip = read_cached_clip(path, preset, seed, num_frames, size_hw) if path is not None else None
            if clip is None:
                clip = render_clip(preset, seed=seed, num_frames=num_frames, size_hw=size_hw)
                if path is not None:
                    write_cached_clip(path, clip)
            clips.append(clip)
    return clips


def clip_to_arrays(clip: Any) -> dict[str, np.ndarray]:
    """A SyntheticClip as numeric and unicode arrays (no object arrays); `meta` as JSON text."""
    arrays = {name: np.asarray(getattr(clip, name)) for name in CLIP_ARRAYS}
    arrays.update(object_names=np.array(clip.object_names, dtype=np.str_),
                  preset=np.array(clip.preset, dtype=np.str_), seed=np.array(clip.seed, dtype=np.int64),
                  camera_path=np.array(clip.camera_path, dtype=np.str_),
                  meta_json=np.array(json.dumps(clip.meta, sort_keys=True), dtype=np.str_),
                  cache_format=np.array(CACHE_FORMAT, dtype=np.int64))
    return arrays


def clip_from_arrays(arrays: dict[str, np.ndarray], preset: str, seed: int, num_frames: int,
                     size_hw: tuple[int, int]) -> Any:
    """The SyntheticClip of `clip_to_arrays`; ValueError when the arrays are not those of that clip."""
    from st4r_cli.synthetic import SyntheticClip

    _check_clip_arrays(arrays, num_frames, size_hw)
    if (arrays["preset"].item(), arrays["seed"].item()) != (preset, seed):
        raise ValueError(f"holds clip {arrays['preset'].item()}:{arrays['seed'].item()}")
    meta = json.loads(arrays["meta_json"].item())
    if not isinstance(meta, dict):
        raise ValueError("meta is not a dict")
    return SyntheticClip(**{name: arrays[name] for name in CLIP_ARRAYS},
                         object_names=[str(name) for name in arrays["object_names"].tolist()],
                         preset=preset, seed=seed, camera_path=arrays["camera_path"].item(), meta=meta)


def _check_clip_arrays(arrays: dict[str, np.ndarray], num_frames: int, size_hw: tuple[int, int]) -> None:
    """ValueError unless `arrays` has exactly the members, dtypes and shapes of a cached clip."""
    expected = set(CLIP_ARRAYS) | set(CLIP_FIELDS)
    if set(arrays) != expected:
        raise ValueError(f"members {sorted(set(arrays) ^ expected)} missing or unexpected")
    for name, (kind, ndim) in CLIP_FIELDS.items():
        if arrays[name].dtype.kind != kind or arrays[name].ndim != ndim:
            raise ValueError(f"{name} is {arrays[name].dtype} with {arrays[name].ndim} dimensions")
    if arrays["cache_format"].item() != CACHE_FORMAT:
        raise ValueError(f"cache format {arrays['cache_format'].item()}, not {CACHE_FORMAT}")
    sizes = {"T": num_frames, "H": size_hw[0], "W": size_hw[1], "K": len(arrays["object_names"])}
    for name, (dtype, shape) in CLIP_ARRAYS.items():
        want = tuple(sizes[dim] if isinstance(dim, str) else dim for dim in shape)
        if arrays[name].dtype != dtype or arrays[name].shape != want:
            raise ValueError(f"{name} is {arrays[name].dtype} {arrays[name].shape}, not {np.dtype(dtype)} {want}")


def read_cached_clip(path: Path, preset: str, seed: int, num_frames: int, size_hw: tuple[int, int]) -> Any:
    """The clip cached at `path`, or None when there is none or it is unusable (one-line warning)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:  # an object-array member raises ValueError
            arrays = {name: data[name] for name in data.files}
        return clip_from_arrays(arrays, preset, seed, num_frames, size_hw)
    except Exception as err:  # noqa: BLE001 - whatever is wrong with the file (also a bare .npy), render again
        _warn(f"cached clip {path} is unusable ({_one_line(err)}); rendering it again")
        return None


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _warn(message: str) -> None:
    """A one-line warning on stderr (unless progress output is quiet)."""
    from rich.markup import escape

    from st4r_cli import progress

    if not progress.is_quiet():
        progress.console.print(f"[yellow]warning[/yellow]: {escape(message)}", soft_wrap=True, highlight=False)


def write_cached_clip(path: Path, clip: Any) -> None:
    """Store `clip` at `path` (`.npz`, atomically); St4rError when the cache folder is not writable."""
    from st4r_cli.errors import St4rError
    from st4r_cli.runs.atomic import atomic_save_npz

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise St4rError(f"cannot create the clip cache folder {path.parent}: {err.strerror or err}") from None
    atomic_save_npz(path, clip_to_arrays(clip))


def evaluate_clip(model: St4rNet, clip: Any, grid: int = 8) -> dict[str, float]:
    """All metrics of one clip (see module docstring)."""
    from st4r_cli.metrics.depth import depth_metrics
    from st4r_cli.metrics.worldtrack import evaluate_worldtrack
    from st4r_cli.model.inference import predict_pairs

    num_frames = clip.frames.shape[0]
    out = predict_pairs(model, clip.frames, [(0, j) for j in range(num_frames)], batch_size=4)
    self_pairs = predict_pairs(model, clip.frames, [(j, j) for j in range(num_frames)], batch_size=4)
    rows = slice(grid // 2, None, grid)
    pred = out["track_pts"][:, rows, rows].reshape(num_frames, -1, 3).transpose(1, 0, 2)
    gt = clip.tracks3d_dense[:, rows, rows].reshape(num_frames, -1, 3).transpose(1, 0, 2)
    visible = clip.visible_dense[:, rows, rows].reshape(num_frames, -1).T
    static = np.repeat(pred[:, :1], num_frames, axis=1)
    metrics: dict[str, float] = {}
    for name, tracks in (("track", pred), ("static", static)):
        report = evaluate_worldtrack(tracks, gt, visible, alignments=("global", "sim3"), relative=True)
        metrics.update({f"{name}/{k}": v for k, v in report.items() if not k.startswith("num_")})
    gt_z_cam0 = clip.points_world[..., 2]
    cam0 = depth_metrics(out["recon_pts"][..., 2], gt_z_cam0, clip.valid, alignment="median")
    own = depth_metrics(self_pairs["recon_pts"][..., 2], clip.depth, clip.valid, alignment="median")
    metrics.update({f"depth_cam0/{k}": v for k, v in cam0.items() if k != "num_pixels"})
    metrics.update({f"depth_self/{k}": v for k, v in own.items() if k != "num_pixels"})
    return metrics


def evaluate_model(model: St4rNet, clips: list[Any], grid: int = 8) -> dict[str, float]:
    """Mean over clips of `evaluate_clip`."""
    per_clip = [evaluate_clip(model, clip, grid) for clip in clips]
    keys = per_clip[0].keys()
    return {k: float(np.nanmean([m[k] for m in per_clip])) for k in keys}


def main(argv: list[str] | None = None) -> None:
    import torch

    from st4r_cli.model.config import ST4R_TINY
    from st4r_cli.model.io import load_model
    from st4r_cli.model.net import St4rNet

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--presets", default="easy,occlusion,fast-motion,static-scene,mixed")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="256x192", help="WxH")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep rendered held-out clips here (plain .npz arrays, never pickles)")
    parser.add_argument("--untrained", action="store_true", help="also score a freshly initialised model")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    t0 = time.time()
    clips = heldout_clips(tuple(args.presets.split(",")), args.seeds, args.frames, (height, width),
                          args.cache_dir)
    render_s = time.time() - t0
    results: dict[str, Any] = {"protocol": __doc__.split("Protocol")[1].strip(), "checkpoint": str(args.checkpoint),
                               "clips": [f"{c.preset}:{c.seed}" for c in clips], "size_hw": [height, width],
                               "num_frames": args.frames, "render_s": round(render_s, 1)}
    t0 = time.time()
    results["trained"] = evaluate_model(load_model(args.checkpoint, "cpu"), clips)
    results["eval_s"] = round(time.time() - t0, 1)
    if args.untrained:
        torch.manual_seed(0)
        results["untrained"] = evaluate_model(St4rNet(ST4R_TINY).eval(), clips)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k in ("trained", "untrained")}, indent=1))


if __name__ == "__main__":
    from st4r_cli.errors import St4rError

    try:
        main()
    except St4rError as exc:
        raise SystemExit(f"error: {exc}") from None
