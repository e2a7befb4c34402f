"""TAP-Vid DAVIS benchmark of the 2D trackers (`builtin`, the plain-LK baseline, optionally CoTracker3).

Protocol (TAP-Vid, Doersch et al. 2022): `first` query mode (each ground-truth track is queried at its
first visible frame, only later frames are scored), metrics on a 256x256 raster with thresholds
1, 2, 4, 8, 16 px: delta_avg (position accuracy on visible points), OA (occlusion accuracy) and AJ
(average Jaccard), from `st4r_cli.metrics.tapvid2d`. Per clip and mean over clips, plus the tracker's
wall-clock seconds per clip (frames already decoded; tracker call only).

Input resolution (`--input`): `full` gives the trackers the original frames (854x480 for most clips)
and rescales their tracks to the 256x256 raster for scoring; `256` gives them frames resized to
256x256, as TAP-Vid feeds learned trackers. The reference numbers of the plain LK baseline
(delta ~66 / AJ ~50 / OA ~87) are for `full`.

Ground-truth pixel coordinates are taken as TAP-Vid's (pixel corners at integers: the first pixel's
centre is at 0.5); trackers use OpenCV's convention (centres at integers), so queries are shifted by
-0.5 px and predictions by +0.5 px.

    python benchmarks/tapvid_davis.py                       # builtin + LK baseline -> results/tapvid_davis.json
    python benchmarks/tapvid_davis.py --ablation            # every design choice -> results/tapvid_davis_ablation.json
    python benchmarks/tapvid_davis.py --trackers cotracker3 # needs weights/scaled_offline.pth
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from st4r_cli.metrics.tapvid2d import compute_tapvid2d_metrics, queries_first, scale_tracks_to_256
from st4r_cli.tracking.builtin import BuiltinTrackerParams, track_points

DEFAULT_DATA = Path("/work/shared/benchmarks/tapvid-davis-32")
RESULTS = Path(__file__).resolve().parent / "results"
METRIC_KEYS = {"delta_avg": "average_pts_within_thresh", "OA": "occlusion_accuracy",
               "AJ": "average_jaccard"}

# Design choices of the built-in tracker, measured one at a time against the default (--ablation).
ABLATION: dict[str, dict] = {
    "default": {},
    "occlusion=dis_fb": {"occlusion": "dis_fb"},
    "occlusion=none": {"occlusion": "none", "reacquire": False},
    "no re-acquisition": {"reacquire": False},
    "re-acquisition without NCC": {"reacquire_ncc": 0.0},
    "reacquire_ncc=0.5": {"reacquire_ncc": 0.5},
    "lost points follow the flow": {"lost_motion": "flow"},
    "lost points follow the flow, sticky": {"lost_motion": "flow", "sticky": True},
    "appearance NCC gate 0.3": {"appearance_ncc": 0.3},
    "flow_long_side=256": {"flow_long_side": 256},
    "flow_long_side=320": {"flow_long_side": 320},
    "flow_long_side=384": {"flow_long_side": 384},
    "flow_long_side=640": {"flow_long_side": 640},
    "dis_preset=fast": {"dis_preset": "fast"},
    "dis_preset=medium": {"dis_preset": "medium"},
    "fb_threshold=2": {"fb_threshold": 2.0},
    "fb_threshold=5": {"fb_threshold": 5.0},
}


# -- data -------------------------------------------------------------------------------------------
def load_clip(clip_dir: Path, input_size: str) -> dict:
    """Frames `(T, H, W, 3)` uint8 RGB and ground truth of one clip (pixels of the returned frames)."""
    import cv2

    data = np.load(clip_dir / "tracks2d.npz")
    width, height = int(data["width"]), int(data["height"])
    frames = [cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
              for path in sorted((clip_dir / "frames").glob("*.jpg"))]
    points = data["points"].astype(np.float64)
    if input_size == "256":
        frames = [cv2.resize(frame, (256, 256), interpolation=cv2.INTER_AREA) for frame in frames]
        points = scale_tracks_to_256(points, (height, width))
    gt_visible = ~data["occluded"].astype(bool)
    keep = gt_visible.any(axis=1)
    return {"name": clip_dir.name, "frames": np.stack(frames), "gt_xy": points[keep],
            "gt_visible": gt_visible[keep]}


# -- trackers ---------------------------------------------------------------------------------------
def lk_baseline(frames: np.ndarray, queries: np.ndarray, fb_threshold: float = 3.0) -> tuple:
    """Plain pyramidal LK, frame to frame (21 px window, 3 levels), `fb_threshold` px (at a 256 long
    side) forward-backward check; points keep being tracked while flagged occluded."""
    import cv2

    grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames]
    num_frames, height, width = frames.shape[:3]
    threshold_px = fb_threshold * max(height, width) / 256.0
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
    lk_args = {"winSize": (21, 21), "maxLevel": 3, "criteria": criteria}
    query_t = np.round(queries[:, 0]).astype(int)
    tracks = np.repeat(queries[:, None, 1:], num_frames, axis=1).astype(np.float32)
    visible = np.zeros(tracks.shape[:2], dtype=bool)
    visible[np.arange(len(queries)), query_t] = True
    current = queries[:, 1:].astype(np.float32).copy()
    for t in range(1, num_frames):
        active = np.flatnonzero(query_t < t)
        if len(active) == 0:
            continue
        start = current[active].reshape(-1, 1, 2)
        moved, ok, _ = cv2.calcOpticalFlowPyrLK(grey[t - 1], grey[t], start, None, **lk_args)
        back, ok_back, _ = cv2.calcOpticalFlowPyrLK(grey[t], grey[t - 1], moved, None, **lk_args)
        error = np.linalg.norm((back - start).reshape(-1, 2), axis=1)
        current[active] = moved.reshape(-1, 2)
        tracks[active, t] = current[active]
        visible[active, t] = (ok.ravel() == 1) & (ok_back.ravel() == 1) & (error < threshold_px)
    return tracks, visible


def make_tracker(name: str, overrides: dict | None = None, device: str = "cpu"):
    """A function `(frames, queries) -> (tracks (N,T,2), visible (N,T))` for a tracker name."""
    if name == "lk_baseline":
        return lk_baseline
    if name == "builtin":
        params = dataclasses.replace(BuiltinTrackerParams(), **(overrides or {}))

        def builtin(frames: np.ndarray, queries: np.ndarray) -> tuple:
            out = track_points(frames, queries, params)
            return out["tracks_xy"], out["visible"]

        return builtin
    if name in ("cotracker3", "cotracker3_online"):
        from st4r_cli.tracking.cotracker3 import track_points_cotracker3

        mode = "online" if name.endswith("online") else "offline"

        def cotracker(frames: np.ndarray, queries: np.ndarray) -> tuple:
            out = track_points_cotracker3(frames, queries, mode=mode, device=device)
            return out["tracks_xy"], out["visible"]

        return cotracker
    raise SystemExit(f"unknown tracker {name!r}")


# -- evaluation -------------------------------------------------------------------------------------
def evaluate(tracker, clips: list[dict]) -> dict:
    """Run a tracker on every clip; per-clip and mean metrics (in %) and seconds per clip."""
    rows = []
    for clip in clips:
        gt_xy, gt_visible = clip["gt_xy"], clip["gt_visible"]
        query_t = queries_first(gt_visible)
        query_xy = gt_xy[np.arange(len(query_t)), query_t] - 0.5
        queries = np.concatenate([query_t[:, None], query_xy], axis=1).astype(np.float32)
        start = time.perf_counter()
        tracks, visible = tracker(clip["frames"], queries)
        seconds = time.perf_counter() - start
        size_hw = clip["frames"].shape[1:3]
        metrics = compute_tapvid2d_metrics(
            scale_tracks_to_256(gt_xy, size_hw), gt_visible,
            scale_tracks_to_256(np.asarray(tracks, dtype=np.float64) + 0.5, size_hw),
            np.asarray(visible, dtype=bool), query_t, query_mode="first")
        row = {"clip": clip["name"], "num_tracks": int(len(gt_xy))}
        row.update({key: round(100.0 * metrics[name], 2) for key, name in METRIC_KEYS.items()})
        row["seconds"] = round(seconds, 3)
        rows.append(row)
    mean = {key: round(float(np.mean([row[key] for row in rows])), 2)
            for key in (*METRIC_KEYS, "seconds")}
    return {"mean": mean, "clips": rows}


def print_table(results: dict[str, dict]) -> None:
    names = list(results)
    print(f"{'clip':28s}" + "".join(f"{name:>34s}" for name in names))
    print(f"{'':28s}" + "".join(f"{'d_avg   OA    AJ    s':>34s}" for _ in names))
    clip_names = [row["clip"] for row in results[names[0]]["clips"]] + ["mean"]
    for i, clip in enumerate(clip_names):
        cells = []
        for name in names:
            row = results[name]["mean"] if clip == "mean" else results[name]["clips"][i]
            cells.append(f"{row['delta_avg']:6.1f}{row['OA']:6.1f}{row['AJ']:6.1f}{row['seconds']:6.2f}")
        print(f"{clip:28s}" + "".join(f"{cell:>34s}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--trackers", default="builtin,lk_baseline",
                        help="comma list: builtin, lk_baseline, cotracker3, cotracker3_online")
    parser.add_argument("--input", choices=("full", "256"), default="full")
    parser.add_argument("--ablation", action="store_true", help="run every builtin design variant")
    parser.add_argument("--threads", type=int, default=0, help="cv2.setNumThreads (0: OpenCV default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import cv2

    if args.threads:
        cv2.setNumThreads(args.threads)
    clip_dirs = sorted(path for path in args.data.iterdir() if (path / "tracks2d.npz").is_file())
    clips = [load_clip(path, args.input) for path in clip_dirs]
    if args.ablation:
        runs = {f"builtin[{name}]": make_tracker("builtin", overrides) for name, overrides in ABLATION.items()}
        runs["lk_baseline"] = make_tracker("lk_baseline")
        default_out = RESULTS / f"tapvid_davis_ablation{'_256' if args.input == '256' else ''}.json"
    else:
        runs = {name: make_tracker(name, device=args.device) for name in args.trackers.split(",")}
        default_out = RESULTS / f"tapvid_davis{'_256' if args.input == '256' else ''}.json"
    results = {}
    for name, tracker in runs.items():
        results[name] = evaluate(tracker, clips)
        mean = results[name]["mean"]
        print(f"{name:40s} d_avg {mean['delta_avg']:5.1f}  OA {mean['OA']:5.1f}  AJ {mean['AJ']:5.1f}"
              f"  {mean['seconds']:.2f} s/clip", flush=True)
    print_table(results)
    out = args.out or default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "TAP-Vid DAVIS, first 32 frames of 10 clips, query mode 'first', 256x256 raster",
        "input": args.input, "data": str(args.data),
        "builtin_defaults": dataclasses.asdict(BuiltinTrackerParams()),
        "ablation_overrides": ABLATION if args.ablation else None,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "opencv": cv2.__version__, "cv2_threads": cv2.getNumThreads()},
        "results": results,
    }
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
