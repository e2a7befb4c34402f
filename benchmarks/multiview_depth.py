"""Multi-view depth (`st4r_cli.depth.multiview`) against the network's depth on real static RGB-D clips.

    python benchmarks/multiview_depth.py [--clips ../shared/benchmarks/7scenes-redkitchen-0 ...]
        [--out benchmarks/results/multiview_depth.json]

Per 7-Scenes clip (32 frames): `st4r adapt` with no TTA (`--set adapt.loss=none`) solves the cameras
(bundle adjustment on the 2D tracks) and gives its scene (`scene_no_tta`; rows written before b0cd6de
call it `network`: then the scene was the network's own geometry); multi-view depth is computed from
those cameras and intrinsics at the run's resolution, and once more from the dataset's poses and nominal
intrinsics (a reference: 7-Scenes' poses are the depth camera's and fx = 585 is an approximation of the
colour camera, so "ground-truth" cameras are not exact for the colour frames). Scored against the
clip's depth (nearest-neighbour resized) with median scaling over the sequence (`metrics.depth`): AbsRel
and delta<1.25 on frame 0 and on all frames, with the fraction of pixels each method gives depth for.
A constant depth is the floor to beat.
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

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "benchmarks"
OUT = ROOT / "benchmarks" / "results" / "multiview_depth.json"


def solved_scene(clip: Path, workdir: Path) -> dict[str, np.ndarray]:
    """scene.npz of `st4r adapt` (no TTA) on the clip's colour frames."""
    frames_dir = workdir / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    for color in sorted(clip.glob("frame-*.color.*")):
        (frames_dir / color.name).symlink_to(color.resolve())
    command = [sys.executable, "-m", "st4r_cli.cli.app", "adapt", str(frames_dir), "--out", str(workdir / "run"),
               "--set", "adapt.loss=none", "--quiet"]
    subprocess.run(command, check=True, cwd=ROOT)
    with np.load(workdir / "run" / "scene.npz") as scene:
        return {key: scene[key] for key in scene.files}


def network_depth(scene: dict[str, np.ndarray]) -> np.ndarray:
    """Per-frame z-depth `(T, H, W)` of the network's world pointmaps in each frame's solved camera."""
    w2c = np.linalg.inv(scene["cam_c2w"].astype(np.float64))
    points = scene["pointmaps"].astype(np.float64)
    return np.einsum("tk,thwk->thw", w2c[:, 2, :3], points) + w2c[:, 2, 3][:, None, None]


def scores(depth: np.ndarray, valid: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    from st4r_cli.metrics.depth import depth_metrics

    row = {}
    for name, sel in (("frame0", slice(0, 1)), ("all", slice(None))):
        metrics = depth_metrics(depth[sel], gt[sel], valid[sel], alignment="median")
        row[f"{name}_abs_rel"] = round(metrics["abs_rel"], 4)
        row[f"{name}_delta_1.25"] = round(metrics["delta_1.25"], 4)
        row[f"{name}_coverage"] = round(float(valid[sel].mean()), 4)
    return row


def lifted_tracks(scene: dict[str, np.ndarray], depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """World points `(N, 3)` of the scene's 2D tracks lifted with per-frame depth: each visible (track,
    frame) with valid depth at its nearest pixel gives a world point; the track's point is their median."""
    tracks_xy, visible = scene["tracks2d"].astype(np.float64), scene["visible"]
    num_frames, height, width = depth.shape
    cols, rows = np.round(tracks_xy[..., 0]), np.round(tracks_xy[..., 1])
    usable = visible & np.isfinite(cols) & (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    track_ids, frame_ids = np.nonzero(usable)
    r, c = rows[usable].astype(int), cols[usable].astype(int)
    keep = valid[frame_ids, r, c]
    track_ids, frame_ids, r, c = track_ids[keep], frame_ids[keep], r[keep], c[keep]
    k = scene["intrinsics"].astype(np.float64)
    z = depth[frame_ids, r, c].astype(np.float64)
    xy = tracks_xy[track_ids, frame_ids]
    cam = np.stack([(xy[:, 0] - k[0, 2]) / k[0, 0] * z, (xy[:, 1] - k[1, 2]) / k[1, 1] * z, z], axis=1)
    c2w = scene["cam_c2w"].astype(np.float64)[frame_ids]
    world = np.einsum("nij,nj->ni", c2w[:, :3, :3], cam) + c2w[:, :3, 3]
    out = np.full((len(tracks_xy), 3), np.nan)
    for n in np.unique(track_ids):
        out[n] = np.median(world[track_ids == n], axis=0)
    return out


def query_truth(scene: dict[str, np.ndarray], sequence) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 3) metres in camera 0, depth (N,)): the clip's frame-0 depth back-projected at the
    scene's queries (mapped from the scene's pixels to the clip's; depth 0 where invalid)."""
    height, width = scene["pointmaps"].shape[1:3]
    h0, w0 = sequence.frames.shape[1:3]
    query_xy = scene["query_xy"].astype(np.float64)
    native = np.stack([(query_xy[:, 0] + 0.5) * w0 / width - 0.5, (query_xy[:, 1] + 0.5) * h0 / height - 0.5], 1)
    cols = np.clip(np.round(native[:, 0]).astype(int), 0, w0 - 1)
    rows = np.clip(np.round(native[:, 1]).astype(int), 0, h0 - 1)
    z = sequence.depth_m[0][rows, cols].astype(np.float64)
    k = sequence.intrinsics
    return np.stack([(native[:, 0] - k[0, 2]) / k[0, 0] * z, (native[:, 1] - k[1, 2]) / k[1, 1] * z, z], 1), z


def track_scores(scene: dict[str, np.ndarray], points: np.ndarray, scale: float, sequence) -> dict[str, float]:
    """Median world error (metres) of the tracks' points and the fraction within 5 cm, against the
    clip's frame-0 depth back-projected at the queries (world = camera 0; `scale` maps st4r units to
    metres)."""
    truth, z = query_truth(scene, sequence)
    scored = (z > 0) & (scene["query_t"] == 0) & np.isfinite(points).all(1)
    error = np.linalg.norm(points[scored] * scale - truth[scored], axis=1)
    return {"tracks_scored": int(scored.sum()), "tracks_total": int(len(points)),
            "median_world_error_m": round(float(np.median(error)), 4) if error.size else float("nan"),
            "within_5cm": round(float(np.mean(error < 0.05)), 4) if error.size else float("nan")}


def clip_rows(clip: Path) -> dict[str, dict]:
    import cv2

    from st4r_cli.depth.multiview import multiview_depth
    from st4r_cli.formats.sevenscenes import read_sevenscenes

    sequence = read_sevenscenes(clip)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        scene = solved_scene(clip, Path(tmp))
        seconds_adapt = time.perf_counter() - start
    height, width = scene["pointmaps"].shape[1:3]
    frames = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in sequence.frames])
    gt = np.stack([cv2.resize(d, (width, height), interpolation=cv2.INTER_NEAREST) for d in sequence.depth_m])
    rows = {"scene_no_tta": {**scores(network_depth(scene), np.ones_like(gt, bool), gt),
                        "seconds": round(seconds_adapt, 2)},
            "constant": scores(np.ones_like(gt), np.ones_like(gt, bool), gt)}
    written_depth = network_depth(scene)
    start = time.perf_counter()
    # the depth stage gives a frame no depth when no pair's baseline subtends min_parallax_deg at the
    # scene's median depth; here: the median of the written depth maps (solved units) and of the clip's
    # depth (metres)
    mv = multiview_depth(frames, scene["intrinsics"], scene["cam_c2w"],
                         scene_depth=float(np.median(written_depth[written_depth > 0])))
    rows["multiview_solved_cameras"] = {**scores(mv["depth"], mv["valid"], gt),
                                        "seconds": round(time.perf_counter() - start, 2),
                                        "dynamic_fraction": round(float(mv["dynamic"].mean()), 4),
                                        "low_parallax_frames": int(mv["low_parallax"].sum()),
                                        "focal_px": round(float(scene["intrinsics"][0, 0]), 2)}
    k_nominal = sequence.intrinsics.copy()
    h0, w0 = sequence.frames.shape[1:3]
    k_nominal[0] *= width / w0
    k_nominal[1] *= height / h0
    k_nominal[0, 2] = (sequence.intrinsics[0, 2] + 0.5) * width / w0 - 0.5
    k_nominal[1, 2] = (sequence.intrinsics[1, 2] + 0.5) * height / h0 - 0.5
    mv_gt = multiview_depth(frames, k_nominal, np.linalg.inv(sequence.cam_c2w[0]) @ sequence.cam_c2w,
                            scene_depth=float(np.median(gt[gt > 0])))
    from st4r_cli.geometry.align import median_depth_scale

    scale = float(median_depth_scale(mv["depth"], gt, mv["valid"] & (gt > 0)))
    rows["multiview_solved_cameras"].update(
        track_scores(scene, lifted_tracks(scene, mv["depth"], mv["valid"]), scale, sequence),
        depth_scale_to_metres=round(scale, 4))
    net_scale = float(median_depth_scale(network_depth(scene), gt, gt > 0))
    rows["scene_no_tta"].update(track_scores(scene, scene["tracks3d"][:, 0].astype(np.float64), net_scale, sequence))
    rows["multiview_dataset_cameras"] = scores(mv_gt["depth"], mv_gt["valid"], gt)
    return rows


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip()


def main() -> None:
    from dataclasses import asdict

    from st4r_cli.depth.multiview import MultiviewOptions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", nargs="+", type=Path,
                        default=[SHARED / "7scenes-redkitchen-0", SHARED / "7scenes-redkitchen-3"])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    result = {"commit": git_commit(), "command": " ".join(["python", *sys.argv]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "config": {"multiview": asdict(MultiviewOptions()), "adapt": "st4r adapt --set adapt.loss=none"},
              "clips": {}}
    for clip in args.clips:
        result["clips"][clip.name] = clip_rows(clip)
        print(clip.name, json.dumps(result["clips"][clip.name], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
