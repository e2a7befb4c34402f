"""COLMAP camera trajectories on the real 7-Scenes RGB-D clips, scored with st4r's camera metrics.

    python benchmarks/colmap_7scenes.py                           # both clips, PINHOLE (known K) and auto
    python benchmarks/colmap_7scenes.py --clips /path/to/7scenes-clip --modes pinhole --out /tmp/c.json

COLMAP (pycolmap from PyPI, CPU): SIFT features, exhaustive matching with geometric verification,
incremental mapping (`benchmarks/_colmap.py`), single-threaded and seeded (deterministic). Two camera
settings:
- `pinhole`: the known 7-Scenes intrinsics (fx = fy = 585, cx = 320, cy = 240, from
  `camera-intrinsics.txt`) as one fixed PINHOLE camera;
- `auto`: one shared SIMPLE_RADIAL camera that COLMAP calibrates itself (focal initialised at 1.2 x the
  long side); the estimated focal is reported beside the true 585.

Scoring: `st4r_cli.metrics.camera.camera_metrics` (evo APE/RPE, delta = 1 frame, after Sim(3) Umeyama
alignment of the camera centres; RMSEs; RPE rotation in degrees) of COLMAP's `cam_c2w` against the
ground-truth poses read by `st4r_cli.formats.sevenscenes.read_sevenscenes`. Metrics use the frames
COLMAP registered (all of them in every run so far); `registered` says how many of the T frames that is.
`seconds` is COLMAP's wall time (feature extraction + matching + mapping) on this 2-core machine, which
other jobs share (`load_average` at the start is recorded); `cpu_seconds` is the CPU time it used.

Writes benchmarks/results/colmap_7scenes.json. COLMAP's scratch files go to a temporary directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

from _colmap import list_frames, require_pycolmap, run_colmap
from st4r_cli.errors import St4rError
from st4r_cli.formats.sevenscenes import read_sevenscenes
from st4r_cli.metrics.camera import camera_metrics
from st4r_cli.progress import log, track

DEFAULT_CLIPS = [Path("/work/shared/benchmarks/7scenes-redkitchen-0"), Path("/work/shared/benchmarks/7scenes-redkitchen-3")]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "colmap_7scenes.json"
MODES = ("pinhole", "auto")


def score_clip(clip: Path, mode: str, seed: int, num_threads: int) -> dict:
    """Run COLMAP on one 7-Scenes clip in one camera mode and score its trajectory."""
    sequence = read_sevenscenes(clip)
    intrinsics = sequence.intrinsics if mode == "pinhole" else None
    result = run_colmap(list_frames(clip), intrinsics, seed=seed, num_threads=num_threads)
    registered = result.registered
    row = {"clip": clip.name, "mode": mode, "frames": int(len(registered)), "registered": int(registered.sum()),
           "camera_model": result.camera_model, "camera_params": result.camera_params,
           "focal_px": float(np.sqrt(result.intrinsics[0, 0] * result.intrinsics[1, 1])),
           "num_points3d": result.num_points3d, "num_models": result.num_models,
           "seconds": round(result.seconds["total"], 2), "cpu_seconds": round(result.seconds["cpu"], 2),
           "seconds_parts": {k: round(result.seconds[k], 2) for k in ("extract", "match", "map")}}
    if registered.sum() >= 2:
        metrics = camera_metrics(result.cam_c2w[registered], sequence.cam_c2w[registered])
        row.update(ate_m=metrics["ate"], rpe_trans_m=metrics["rpe_trans"], rpe_rot_deg=metrics["rpe_rot"],
                   align_scale=metrics["align_scale"])
    else:
        row.update(ate_m=None, rpe_trans_m=None, rpe_rot_deg=None, align_scale=None)
    return row


def print_table(rows: list[dict]) -> None:
    from rich import box
    from rich.table import Table

    from st4r_cli.progress import console

    table = Table(title="COLMAP on 7-Scenes: ATE, RPE t in m; RPE r in deg; f in px",
                  box=box.SIMPLE, pad_edge=False, collapse_padding=True)
    for column in ("clip", "K", "reg", "ATE", "RPE t", "RPE r", "f", "wall s", "cpu s"):
        table.add_column(column, justify="left" if column in ("clip", "K") else "right", no_wrap=True)
    for row in rows:
        fmt = (lambda v, spec: "-" if v is None else format(v, spec))
        table.add_row(row["clip"].removeprefix("7scenes-"), row["mode"], f"{row['registered']}/{row['frames']}",
                      fmt(row["ate_m"], ".4f"), fmt(row["rpe_trans_m"], ".4f"), fmt(row["rpe_rot_deg"], ".3f"),
                      f"{row['focal_px']:.1f}", f"{row['seconds']:.1f}", f"{row.get('cpu_seconds', float('nan')):.1f}")
    console.print(table)


def write_json(out: Path, payload: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=Path, nargs="+", default=DEFAULT_CLIPS, help="7-Scenes clip folders")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="camera settings")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="COLMAP threads (1 = deterministic)")
    args = parser.parse_args(argv)
    try:
        pycolmap = require_pycolmap()
        for clip in args.clips:
            if not clip.is_dir():
                raise St4rError(f"{clip}: not a directory")
        load_average = round(os.getloadavg()[0], 2)
        runs = [(clip, mode) for clip in args.clips for mode in args.modes]
        rows = []
        for clip, mode in track(runs, "COLMAP runs"):
            rows.append(score_clip(clip, mode, args.seed, args.threads))
            row = rows[-1]
            ate = "-" if row["ate_m"] is None else f"{row['ate_m']:.4f} m"
            log(f"{clip.name} {mode}: {row['registered']}/{row['frames']} registered, ATE {ate}, {row['seconds']:.1f} s")
    except St4rError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    payload = {"benchmark": "colmap_7scenes", "pycolmap": pycolmap.__version__, "colmap": pycolmap.COLMAP_version,
               "pipeline": "SIFT (CPU, 8192 max) + exhaustive matching + incremental mapping, largest model",
               "metrics": "st4r_cli.metrics.camera.camera_metrics: Sim(3) Umeyama, ATE/RPE RMSE, RPE delta 1",
               "seed": args.seed, "threads": args.threads, "cpu_count": os.cpu_count(),
               "load_average": load_average,
               "python": platform.python_version(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join(["python benchmarks/colmap_7scenes.py", *(argv if argv is not None else sys.argv[1:])]),
               "results": rows}
    write_json(args.out, payload)
    print_table(rows)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
