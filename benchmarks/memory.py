"""Memory and time per stage: the official-size network (random weights) and long videos on the default one.

    python benchmarks/memory.py [--official-frames 8 16] [--long ../shared/videos/pstudio.mp4]
        [--out benchmarks/results/memory.json]

- `official`: a St4RTrack-size checkpoint (ViT-L encoder, `ModelConfig()`, random weights, built here and
  saved as st4r safetensors) on the first N frames of the demo clip at 512x288, one TTA step, the adapt
  stage's memory knobs at their "auto" values (on CPU for this network: activation checkpointing, one pair
  per micro-batch, the encoder cached, snapshots on disk: `stages.adapt.resolve_memory`);
- `long`: the default model on a whole long video (`pstudio.mp4`, 150 frames), at the default settings.
Each run is `st4r adapt` in its own process; the numbers are run.json's: every stage's seconds and the
process's peak resident memory while it ran (`peak_rss_mb`), plus the run's overall peak, and per run the
predict stage's seconds per predicted pair (`predict_s_per_pair`). With one TTA step the adapt stage's
seconds are one step plus its set-up (encoder tokens of every frame, the prior's frozen outputs, the
final check's forward). The result file is rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "memory.json"
DEMO = ROOT / "examples" / "feng.mp4"
LONG = ROOT.parent / "shared" / "videos" / "pstudio.mp4"


def official_checkpoint(path: Path) -> Path:
    """A random-weight checkpoint of the official architecture (ModelConfig's defaults)."""
    import torch

    from st4r_cli.model.config import ModelConfig
    from st4r_cli.model.io import save_model
    from st4r_cli.model.net import St4rNet

    torch.manual_seed(0)
    return save_model(St4rNet(ModelConfig(name="official-size-random")).eval(), path)


def adapt(video: Path, out: Path, flags: list[str]) -> dict:
    """One `st4r adapt` run: per stage seconds and peak RSS (MiB), and the wall time."""
    command = [sys.executable, "-m", "st4r_cli.cli.app", "adapt", str(video), "--out", str(out), "-q", *flags]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    stages = json.loads((out / "run.json").read_text())["stages"]
    rows = {name: {"seconds": round(float(r["seconds"]), 1), "peak_rss_mb": r.get("peak_rss_mb")}
            for name, r in stages.items()}
    peak = max((r["peak_rss_mb"] or 0) for r in rows.values())
    return {"seconds": round(seconds, 1), "peak_rss_mb": peak, "stages": rows, "flags": flags}


def predicted_pairs(num_frames: int, window: int = 24, overlap: int = 4) -> int:
    """Pairs the predict stage runs at the default windows (`model.windows.window_starts`)."""
    from st4r_cli.model.windows import window_starts

    return len(window_starts(num_frames, window, overlap)) * min(window, num_frames)


def with_rates(row: dict, num_frames: int) -> dict:
    """`row` plus the predict stage's seconds per predicted pair."""
    pairs = predicted_pairs(num_frames)
    predict = row["stages"].get("predict", {}).get("seconds")
    return {**row, "frames": num_frames, "predicted_pairs": pairs,
            "predict_s_per_pair": round(predict / pairs, 2) if predict else None}


def video_frames(video: Path) -> int:
    import cv2

    capture = cv2.VideoCapture(str(video))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-frames", nargs="*", type=int, default=[8, 16, 32])
    parser.add_argument("--long", type=Path, default=LONG)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    result = {"provenance": provenance(), "config": {"official": "st4r adapt feng.mp4 --long-side 512 "
                                                     "--max-frames N --set adapt.iters=1 (ModelConfig(), random)",
                                                     "long": "st4r adapt VIDEO (defaults)"}, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if args.official_frames:
            checkpoint = official_checkpoint(Path(tmp) / "official.safetensors")
        for frames in args.official_frames:
            flags = ["--model", str(checkpoint), "--long-side", "512", "--max-frames", str(frames),
                     "--set", "adapt.iters=1"]
            row = with_rates(adapt(DEMO, Path(tmp) / f"official-{frames}", flags), frames)
            result["runs"][f"official_{frames}_frames"] = row
            print(f"official {frames} frames", json.dumps(row), flush=True)
            write(result, args.out)
        if args.long and args.long.is_file():
            row = with_rates(adapt(args.long, Path(tmp) / "long", []), video_frames(args.long))
            result["runs"][f"default_{args.long.stem}"] = row
            print(f"default {args.long.name}", json.dumps(row), flush=True)
    write(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
