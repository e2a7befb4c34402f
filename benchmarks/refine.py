"""The camera refinement (cameras stage: bundle adjustment) and track fusion (fuse stage) on and off.

    python benchmarks/refine.py [--presets easy occlusion fast-motion static-scene] [--seeds 0 1 2]
        [--davis 10] [--sevenscenes] [--tta none robust] [--frames 24] [--out benchmarks/results/refine.json]

Per clip the network (shipped st4r-tiny) predicts every window once per TTA setting (`--tta`: `none`
= no adaptation, `robust` = the default `st4r adapt` TTA; `st4r_cli.pipeline.predict_in_memory`), and
the same predictions go through the fuse stage twice (`pipeline.scene_in_memory`), with and without the
cameras stage's solution (`pipeline.geometry_in_memory`: cameras and multi-view depth, computed once):
`cameras.refine=none` (the network's own cameras and head-1 tracks, as the TTA ablation scores them) and
`cameras.refine=ba` (the default of `st4r adapt`). Scored with `st4r_cli.eval.evaluate_clip` like
benchmarks/ablation.py: synthetic presets (exact ground truth), TAP-Vid DAVIS (2D metrics of the scene's
reprojected tracks, started at the human queries), 7-Scenes redkitchen (ATE/RPE, depth, world tracks from
the static-scene derivation; COLMAP's numbers are in benchmarks/results/colmap_7scenes.json).
`seconds_chain` is the cameras + fuse stages' time (bundle adjustment + re-lifting), 1 thread; the
camera solver's extra tracks are part of the tracks (computed once per clip).
Writes benchmarks/results/refine.json (partial results after every clip).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from ablation import (
    HEADLINE,
    davis_clip,
    davis_clips,
    grid_tracks,
    query_tracks,
    save_partial,
    score,
    sevenscenes_clip,
    sevenscenes_clips,
    synthetic_clip,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "refine.json"


def clip_rows(model, frames, tracks_tta, tracks_out, clip, args, seed: int) -> dict:
    """{tta}/{refine} -> headline metrics for one clip."""
    from st4r_cli.pipeline import geometry_in_memory, predict_in_memory, scene_in_memory
    from st4r_cli.runs.config import RunConfig

    rows = {}
    geometry = {}
    for refine in ("none", "ba"):
        config = RunConfig(seed=seed)
        config.cameras = replace(config.cameras, refine=refine)
        start = time.perf_counter()
        geometry[refine] = (*geometry_in_memory(model, frames, tracks_tta, config, "cpu"),
                            time.perf_counter() - start)
    for tta in args.tta:
        config = RunConfig(seed=seed)
        config.adapt = replace(config.adapt, loss=tta)
        start = time.perf_counter()
        _, pred = predict_in_memory(copy.deepcopy(model), frames, tracks_tta, geometry["ba"][1], config, "cpu")
        seconds_net = time.perf_counter() - start
        for refine in ("none", "ba"):
            config.cameras = replace(config.cameras, refine=refine)
            cameras, depth, seconds_geometry = geometry[refine]
            start = time.perf_counter() - seconds_geometry
            scene = scene_in_memory(frames, tracks_out, pred, cameras, depth, config)
            row = {**score(scene, clip), "seconds_network": round(seconds_net, 2),
                   "seconds_chain": round(time.perf_counter() - start, 2)}
            if refine == "ba":
                row.update(ba_accepted=bool(scene["ba_accepted"]),
                           ba_residual_px=[round(float(scene["ba_initial_residual_px"]), 3),
                                           round(float(scene["ba_residual_px"]), 3)],
                           focal=round(float(scene["intrinsics"][0, 0]), 2))
            rows[f"{tta}/{refine}"] = row
            print(f"{clip.name} {tta}/{refine}: {json.dumps(row)}", flush=True)
    return rows


def synthetic(model, args) -> dict:
    out = {}
    for preset in args.presets:
        for seed in args.seeds:
            clip, frames = synthetic_clip(preset, seed, args.frames)
            tracks = grid_tracks(frames, seed)
            out[clip.name] = clip_rows(model, frames, tracks, tracks, clip, args, seed)
            save_partial(args, {"synthetic": out})
    return out


def davis(model, args) -> dict:
    out = {}
    for path in davis_clips(args.davis):
        clip, frames, queries = davis_clip(path, 32)
        out[path.name] = clip_rows(model, frames, grid_tracks(frames, 0), query_tracks(frames, queries, 0), clip,
                                   args, 0)
        save_partial(args, {"davis": out})
    return out


def sevenscenes(model, args) -> dict:
    out = {}
    for path in sevenscenes_clips():
        clip, frames, tracks = sevenscenes_clip(path)
        out[path.name] = clip_rows(model, frames, tracks, tracks, clip, args, 0)
        save_partial(args, {"sevenscenes": out})
    return out


def summarize(results: dict) -> dict:
    """Mean of each headline metric per group ({synthetic/<preset>, davis, sevenscenes}) and setting."""
    groups: dict[str, list[dict]] = {}
    for name, rows in results.get("synthetic", {}).items():
        groups.setdefault(f"synthetic/{name.split('/')[0]}", []).append(rows)
    for group in ("davis", "sevenscenes"):
        for rows in results.get(group, {}).values():
            groups.setdefault(group, []).append(rows)
    summary = {}
    for group, clips in groups.items():
        summary[group] = {}
        for setting in clips[0]:
            keys = [k for k in HEADLINE + ["seconds_chain"] if any(k in c.get(setting, {}) for c in clips)]
            summary[group][setting] = {k: round(float(np.mean([c[setting][k] for c in clips if k in c[setting]])), 4)
                                       for k in keys}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "weights" / "st4r-tiny" / "model.safetensors"))
    parser.add_argument("--presets", nargs="*", default=["easy", "occlusion", "fast-motion", "static-scene"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--davis", type=int, default=10, help="number of DAVIS clips (0: skip)")
    parser.add_argument("--sevenscenes", action="store_true")
    parser.add_argument("--tta", nargs="+", default=["none", "robust"], choices=["none", "baseline", "robust"])
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()

    import torch

    from st4r_cli import progress
    from st4r_cli.model.io import load_model

    progress.set_verbosity(quiet=True)
    torch.set_num_threads(1)
    model = load_model(args.model, "cpu")
    from ablation import provenance
    from st4r_cli.runs.config import RunConfig

    args.header = {"provenance": provenance(), "config": RunConfig().to_dict(), "model": args.model,
                   "frames": args.frames, "tta": args.tta, "seeds": args.seeds, "threads": 1, "depth_backend": "none"}
    args.partial = {}
    if args.presets:
        synthetic(model, args)
    if args.davis:
        davis(model, args)
    if args.sevenscenes:
        sevenscenes(model, args)
    save_partial(args, {"summary": summarize(args.partial)})
    print("->", args.out)


if __name__ == "__main__":
    main()
