"""Reference points for the metrics on the synthetic presets: what trivial predictions score.

    python benchmarks/eval_baselines.py [--seeds 0 1] [--frames 32] [--size 256x192]

Baselines built from the ground truth itself (no network), scored with `st4r_cli.eval.evaluate_clip`:
- `gt`: the exact ground truth (must be perfect);
- `frozen`: every track stays at its frame-0 position (a method that sees no motion), true cameras and
  depth;
- `identity_cam`: exact tracks and depth, but every camera pose is the identity (no camera motion);
- `noisy`: tracks with 5% of the scene scale Gaussian noise, depth with 10% log-normal noise, camera
  centres with 2% of the scene scale noise.
Writes benchmarks/results/eval_baselines.json (per preset: mean over seeds of the headline metrics) and
the seconds `evaluate_clip` takes per clip.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from st4r_cli.eval import DISPLAY
from st4r_cli.eval.evaluate import evaluate_clip
from st4r_cli.formats.clip import clip_from_synthetic
from st4r_cli.synthetic import PRESETS, render_clip

OUT = Path(__file__).resolve().parent / "results" / "eval_baselines.json"


def perfect_scene(clip) -> dict[str, np.ndarray]:
    gt = clip.gt
    return {"tracks3d": gt["tracks3d"], "tracks2d": gt["tracks2d"], "visible": gt["visible"],
            "query_xy": gt["query_xy"], "query_t": gt["query_t"], "pointmaps": gt["points_world"],
            "cam_c2w": gt["cam_c2w"], "intrinsics": gt["intrinsics"]}


def baselines(clip, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    perfect = perfect_scene(clip)
    scale = float(clip.meta["scene_scale"])
    frozen = dict(perfect, tracks3d=np.repeat(perfect["tracks3d"][:, :1], clip.num_frames, axis=1))
    identity = np.tile(np.eye(4, dtype=np.float32), (clip.num_frames, 1, 1))
    # identity cameras: keep each frame's camera-frame geometry, so the world moves with the camera
    w2c = np.linalg.inv(perfect["cam_c2w"].astype(np.float64))
    cam_points = np.einsum("tij,thwj->thwi", w2c[:, :3, :3], perfect["pointmaps"]) + w2c[:, None, None, :3, 3]
    identity_cam = dict(perfect, cam_c2w=identity, pointmaps=cam_points)
    noisy = dict(perfect)
    noisy["tracks3d"] = perfect["tracks3d"] + rng.normal(scale=0.05 * scale, size=perfect["tracks3d"].shape)
    depth_noise = np.exp(rng.normal(scale=0.1, size=perfect["pointmaps"].shape[:3]))[..., None]
    c2w = perfect["cam_c2w"].astype(np.float64)
    noisy["pointmaps"] = (cam_points * depth_noise)
    noisy_c2w = c2w.copy()
    noisy_c2w[:, :3, 3] += rng.normal(scale=0.02 * scale, size=(clip.num_frames, 3))
    noisy["pointmaps"] = np.einsum("tij,thwj->thwi", noisy_c2w[:, :3, :3], noisy["pointmaps"]) + noisy_c2w[:, None, None, :3, 3]
    noisy["cam_c2w"] = noisy_c2w
    return {"gt": perfect, "frozen": frozen, "identity_cam": identity_cam, "noisy": noisy}


def _mean(values: list[float]) -> float | None:
    """Mean of the finite values rounded to 4 digits; None (JSON null) when there are none."""
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", default="256x192")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    keys = [key for key, _ in DISPLAY]
    table: dict[str, dict[str, dict[str, float]]] = {}
    seconds = []
    for preset in PRESETS:
        per_baseline: dict[str, list[dict[str, float]]] = {}
        for seed in args.seeds:
            clip = clip_from_synthetic(render_clip(preset, seed, args.frames, (height, width)), seed=seed, dense=True)
            for name, scene in baselines(clip, np.random.default_rng(seed)).items():
                start = time.perf_counter()
                metrics = evaluate_clip(scene, clip).metrics
                seconds.append(time.perf_counter() - start)
                per_baseline.setdefault(name, []).append(metrics)
        table[preset] = {name: {k: _mean([m.get(k, np.nan) for m in runs]) for k in keys}
                         for name, runs in per_baseline.items()}
        print(preset, json.dumps(table[preset]["frozen"]))
    result = {"frames": args.frames, "size_wh": [width, height], "seeds": args.seeds,
              "evaluate_clip_seconds_median": round(float(np.median(seconds)), 3), "presets": table}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print("->", OUT)


if __name__ == "__main__":
    main()
