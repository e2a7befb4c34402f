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


def heldout_clips(presets: tuple[str, ...], seeds: int, num_frames: int, size_hw: tuple[int, int],
                  cache_dir: Path | None = None) -> list[Any]:
    """Render (or read from `cache_dir`, pickles of our own SyntheticClip objects) the held-out clips."""
    import pickle

    from st4r_cli.synthetic import render_clip

    clips = []
    for p, preset in enumerate(presets):
        for s in range(seeds):
            seed = HELDOUT_SEED0 + 100 * p + s
            path = cache_dir / f"{preset}-{seed}-{num_frames}-{size_hw[0]}x{size_hw[1]}.pkl" if cache_dir else None
            if path is not None and path.is_file():
                clips.append(pickle.loads(path.read_bytes()))
                continue
            clip = render_clip(preset, seed=seed, num_frames=num_frames, size_hw=size_hw)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(pickle.dumps(clip))
            clips.append(clip)
    return clips


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
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep rendered held-out clips here")
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
    main()
