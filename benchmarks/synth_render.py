"""Rendering speed of the synthetic presets (`st4r_cli.synthetic.render_clip`) on this machine.

    python benchmarks/synth_render.py [--frames 32] [--size 256x192] [--seeds 0 1] [--antialias 3]

Writes benchmarks/results/synth_render.json: per preset and seed, wall-clock and process CPU seconds for
one clip (NumPy, one thread), the load average when measured (the machine is shared: wall times under load
are upper bounds), and statistics of the clip: visible fraction at the last frame, dynamic pixels, and for
2000 random frame-0 tracks the 2D motion per frame, how many get hidden, and how many reappear.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from st4r_cli.synthetic import PRESETS, render_clip, sample_tracks


def track_statistics(clip) -> dict[str, float]:
    """How hard a clip is for trackers: 2D motion per frame, occlusion and re-appearance of frame-0 points."""
    tracks = sample_tracks(clip, 2000, seed=0)
    visible = tracks.visible
    both = visible[:, 1:] & visible[:, :-1]
    step = np.linalg.norm(np.diff(tracks.tracks2d, axis=1), axis=-1)[both]
    lost = ~visible[:, 1:] & visible[:, :-1]
    reappears = np.array([v[np.argmax(~v):].any() if (~v).any() else False for v in visible])
    return {"median_px_per_frame": round(float(np.median(step)), 2),
            "p90_px_per_frame": round(float(np.percentile(step, 90)), 2),
            "tracks_ever_hidden": round(float((~visible).any(axis=1).mean()), 3),
            "tracks_hidden_then_visible": round(float(reappears.mean()), 3),
            "visibility_losses_per_track": round(float(lost.sum(axis=1).mean()), 2),
            "dynamic_tracks": round(float(tracks.dynamic.mean()), 3)}

OUT = Path(__file__).resolve().parent / "results" / "synth_render.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", default="256x192", help="WxH")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--antialias", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    rows = []
    for preset in PRESETS:
        for seed in args.seeds:
            load = os.getloadavg()[0]
            wall, cpu = time.perf_counter(), time.process_time()
            clip = render_clip(preset, seed, args.frames, (height, width), antialias=args.antialias)
            rows.append({"preset": preset, "seed": seed, "wall_s": round(time.perf_counter() - wall, 3),
                         "cpu_s": round(time.process_time() - cpu, 3), "load_avg_1min": round(load, 2),
                         "camera_path": clip.camera_path, "objects": len(clip.object_names),
                         "visible_last_frame": round(float(clip.visible_dense[-1][clip.valid[0]].mean()), 3),
                         "dynamic_pixels_frame0": round(float(clip.dynamic_mask[0].mean()), 3),
                         **track_statistics(clip)})
            print(rows[-1])
    summary = {"median_wall_s": float(np.median([r["wall_s"] for r in rows])),
               "max_wall_s": float(np.max([r["wall_s"] for r in rows])),
               "median_cpu_s": float(np.median([r["cpu_s"] for r in rows]))}
    result = {"frames": args.frames, "size_wh": [width, height], "antialias": args.antialias,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "numpy": np.__version__}, "summary": summary, "clips": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(summary, "->", OUT)


if __name__ == "__main__":
    main()
