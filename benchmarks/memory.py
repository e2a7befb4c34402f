"""Memory and time per stage: the official-size network (random weights) and long videos on the default one.

    python benchmarks/memory.py [--official-frames 8 16] [--long ../shared/videos/pstudio.mp4]
        [--out benchmarks/results/memory.json]

- `official`: a St4RTrack-size checkpoint (ViT-L encoder, `ModelConfig()`, random weights, built here and
  saved as st4r safetensors) on the first N frames of the demo clip at 512x288, one TTA step;
- `long`: the default model on a whole long video (`pstudio.mp4`, 150 frames), at the default settings.
Each run is `st4r adapt` in its own process; the numbers are run.json's: every stage's seconds and the
process's peak resident memory while it ran (`peak_rss_mb`), plus the run's overall peak.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-frames", nargs="*", type=int, default=[8, 16])
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
            row = adapt(DEMO, Path(tmp) / f"official-{frames}", flags)
            result["runs"][f"official_{frames}_frames"] = row
            print(f"official {frames} frames", json.dumps(row), flush=True)
        if args.long and args.long.is_file():
            row = adapt(args.long, Path(tmp) / "long", [])
            result["runs"][f"default_{args.long.stem}"] = row
            print(f"default {args.long.name}", json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
