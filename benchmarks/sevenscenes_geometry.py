"""`st4r adapt` end to end on real static RGB-D clips: is the 3D it writes real?

    python benchmarks/sevenscenes_geometry.py [--clips ../shared/benchmarks/7scenes-redkitchen-0 ...]
        [--variants default no_mv no_tta] [--out benchmarks/results/sevenscenes_geometry.json]

Per 7-Scenes clip (32 colour frames; the scene is static) and per variant:
- `default`: `st4r adapt` as a user runs it (cameras from the tracks, multi-view depth, ST4RTrack+ TTA);
- `no_mv`: `--depth none` (the adapted network's geometry in the solved cameras, no multi-view depth);
- `no_tta`: the default without TTA (`--set adapt.loss=none`);
- `tta_solved`: the default with the cameras stage's cameras in the TTA's reprojection loss
  (`--set adapt.tta_cameras=solved`) instead of the network's PnP cameras.
Scored on `scene.npz`: depth of every frame's pointmap in its camera (AbsRel, delta<1.25 after one
median scale for the sequence, frame 0 and all frames); the 3D tracks against the clip's frame-0 depth
back-projected at their queries (world = camera 0; st4r units to metres with the same depth scale):
median error over every (track, frame) in metres and the fraction within 5 cm; the fraction of tracks
that stay within 5% of the scene depth of their query-frame position (all should: nothing moves);
ATE / RPE of the cameras (Sim(3)-aligned; COLMAP on these clips: 0.011 / 0.021 m,
`colmap_7scenes.json`); seconds end to end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from multiview_depth import git_commit, network_depth, query_truth

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "benchmarks"
OUT = ROOT / "benchmarks" / "results" / "sevenscenes_geometry.json"
VARIANTS = {"default": [], "no_mv": ["--depth", "none"], "no_tta": ["--set", "adapt.loss=none"],
            "tta_solved": ["--set", "adapt.tta_cameras=solved"]}


def run_adapt(clip: Path, workdir: Path, flags: list[str]) -> tuple[dict[str, np.ndarray], float]:
    frames_dir = workdir / "frames"
    if not frames_dir.exists():
        frames_dir.mkdir(parents=True)
        for color in sorted(clip.glob("frame-*.color.*")):
            (frames_dir / color.name).symlink_to(color.resolve())
    out = workdir / f"run-{len(list(workdir.glob('run-*')))}"
    command = [sys.executable, "-m", "st4r_cli.cli.app", "adapt", str(frames_dir), "--out", str(out), "--quiet",
               *flags]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    with np.load(out / "scene.npz") as scene:
        return {key: scene[key] for key in scene.files}, seconds


def score(scene: dict[str, np.ndarray], sequence) -> dict[str, float]:
    import cv2

    from st4r_cli.geometry.align import median_depth_scale
    from st4r_cli.metrics.camera import camera_metrics
    from st4r_cli.metrics.depth import depth_metrics

    height, width = scene["pointmaps"].shape[1:3]
    gt = np.stack([cv2.resize(d, (width, height), interpolation=cv2.INTER_NEAREST) for d in sequence.depth_m])
    depth = network_depth(scene)
    row: dict[str, float] = {}
    for name, sel in (("frame0", slice(0, 1)), ("all", slice(None))):
        metrics = depth_metrics(depth[sel], gt[sel], alignment="median")
        row[f"depth_{name}_abs_rel"] = round(metrics["abs_rel"], 4)
        row[f"depth_{name}_delta_1.25"] = round(metrics["delta_1.25"], 4)
    scale = median_depth_scale(depth, gt, (gt > 0) & np.isfinite(depth))
    truth, z = query_truth(scene, sequence)
    scored = (z > 0) & (scene["query_t"] == 0)
    tracks = scene["tracks3d"].astype(np.float64)[scored] * scale                     # (N, T, 3) metres
    error = np.linalg.norm(tracks - truth[scored][:, None], axis=-1)
    row["tracks_median_world_error_m"] = round(float(np.median(error)), 4)
    row["tracks_within_5cm"] = round(float(np.mean(error < 0.05)), 4)
    start = tracks[:, 0]
    motion = np.linalg.norm(tracks - start[:, None], axis=-1).max(axis=1)
    row["tracks_static_fraction"] = round(float(np.mean(motion < 0.05 * np.median(z[z > 0]))), 4)
    gt_c2w = np.linalg.inv(sequence.cam_c2w[0]) @ sequence.cam_c2w
    cams = camera_metrics(scene["cam_c2w"], gt_c2w)
    row.update(ate_m=round(cams["ate"], 4), rpe_trans_m=round(cams["rpe_trans"], 4),
               rpe_rot_deg=round(cams["rpe_rot"], 3), focal_px=round(float(scene["intrinsics"][0, 0]), 1),
               camera_status=str(scene.get("camera_status", "")))
    if "pointmap_source" in scene:
        row["multiview_pixels"] = round(float(np.mean(scene["pointmap_source"] == 1)), 4)
        row["filled_pixels"] = round(float(np.mean(scene["pointmap_source"] == 2)), 4)
    return row


def main() -> None:
    from st4r_cli.formats.sevenscenes import read_sevenscenes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", nargs="+", type=Path,
                        default=[SHARED / "7scenes-redkitchen-0", SHARED / "7scenes-redkitchen-3"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    result = {"commit": git_commit(), "command": " ".join(["python", *sys.argv]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "config": {name: "st4r adapt FRAMES " + " ".join(VARIANTS[name]) for name in args.variants},
              "colmap_ate_m": {"7scenes-redkitchen-0": 0.011, "7scenes-redkitchen-3": 0.021}, "clips": {}}
    for clip in args.clips:
        sequence = read_sevenscenes(clip)
        rows = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.variants:
                scene, seconds = run_adapt(clip, Path(tmp), VARIANTS[name])
                rows[name] = {**score(scene, sequence), "seconds": round(seconds, 1)}
                print(clip.name, name, json.dumps(rows[name]), flush=True)
        result["clips"][clip.name] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
