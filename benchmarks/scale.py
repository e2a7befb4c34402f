"""Scaling of `st4r adapt` with the number of frames, and of `st4r batch` with Ray workers.

    python benchmarks/scale.py [--video ../shared/videos/pstudio.mp4] [--frames 32 64 150 300 600]
        [--batch-videos 4 --batch-frames 24 --workers 1 2] [--set adapt.iters=20 ...]
        [--out benchmarks/results/scale.json]

Frame scaling: the video's frames are joined forward-backward-forward... (ping-pong, so every frame
follows its neighbour) into an image folder of N frames, and `st4r adapt FOLDER` runs on it in a
fresh child process (every stage computed). Per point: wall seconds, peak RSS of the child, the
run's per-stage seconds, and the bundle adjustment's own seconds (timed around `bundle_adjust`).
Batch: `st4r batch` on `--batch-videos` clips (the video's first `--batch-frames` frames, each
started at a different frame) with local Ray limited to 1 and 2 CPUs, 1 CPU per video: videos per
hour. Writes the JSON after every point (commit, command, config and date included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "scale.json"
VIDEO = ROOT.parent / "shared" / "videos" / "pstudio.mp4"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def decode_all(video: Path) -> list:
    """Every frame of the video (RGB uint8), at its own size."""
    import av

    with av.open(str(video)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def ping_pong(count: int, total: int, start: int = 0) -> list[int]:
    """`total` source frame indices walking 0..count-1 forward, then back, ... from `start`."""
    period = 2 * count - 2
    out = []
    for k in range(start, start + total):
        phase = k % period
        out.append(phase if phase < count else period - phase)
    return out


def write_folder(frames: list, indices: list[int], folder: Path) -> Path:
    """An image folder of the given frames (JPEG, quality 95); reused when complete."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == len(indices):
        return folder
    for k, index in enumerate(indices):
        Image.fromarray(frames[index]).save(folder / f"{k:05d}.jpg", quality=95)
    return folder


class PeakSampler:
    """Samples this process's RSS every 0.2 s; keeps the main thread's Python stack at the highest one
    (where the peak memory is)."""

    def __init__(self) -> None:
        import threading

        self.peak_mb = 0.0
        self.stack: list[str] = []
        self.main = threading.main_thread().ident
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _rss_mb(self) -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _loop(self) -> None:
        import traceback

        while not self.done.wait(0.2):
            rss = self._rss_mb()
            if rss > self.peak_mb:
                self.peak_mb = rss
                frame = sys._current_frames().get(self.main)
                self.stack = [f"{Path(f.filename).name}:{f.lineno} {f.name}"
                              for f in traceback.extract_stack(frame)][-8:] if frame else []

    def __enter__(self) -> PeakSampler:
        if Path("/proc/self/statm").exists():
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()


def child(args: list[str], report: Path) -> None:
    """Run the CLI in this process with bundle_adjust timed; write wall/BA seconds and peak RSS."""
    import st4r_cli.geometry.bundle as bundle
    from st4r_cli.cli.app import run

    ba_seconds: list[float] = []
    original = bundle.bundle_adjust

    def timed(*a, **k):
        start = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            ba_seconds.append(time.perf_counter() - start)

    bundle.bundle_adjust = timed
    start = time.perf_counter()
    with PeakSampler() as sampler:
        code = run(args)
    report.write_text(json.dumps({
        "exit_code": code, "seconds": time.perf_counter() - start, "ba_seconds": sum(ba_seconds),
        "cpu_seconds": time.process_time(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_stack": sampler.stack}))


def run_child(cli_args: list[str], work: Path) -> dict:
    report = work / "child.json"
    report.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, __file__, "--child", str(report), "--", *cli_args], env=env, check=False)
    return json.loads(report.read_text())


def frame_point(frames: list, count: int, work: Path, overrides: list[str]) -> dict:
    folder = write_folder(frames, ping_pong(len(frames), count), work / f"frames_{count}")
    run_dir = work / f"run_{count}"
    args = ["adapt", str(folder), "--out", str(run_dir), "--device", "cpu", "-q", "--force", "all"]
    for item in overrides:
        args += ["--set", item]
    result = run_child(args, work)
    status = json.loads((run_dir / "run.json").read_text())
    result["stages"] = {name: round(stage.get("seconds", 0.0), 2) for name, stage in status.get("stages", {}).items()}
    result["frames"] = count
    return result


def batch_point(frames: list, workers: int, args: argparse.Namespace, work: Path) -> dict:
    clips = work / "batch_clips"
    for k in range(args.batch_videos):
        write_folder(frames, ping_pong(len(frames), args.batch_frames, start=k * 7), clips / f"clip{k}")
    runs = work / f"batch_runs_{workers}"
    cli = ["batch", str(clips), "--out", str(runs), "--num-cpus", str(workers), "--cpus-per-video", "1",
           "--device", "cpu", "-q", "--force", "all"]
    for item in args.set or []:
        cli += ["--set", item]
    result = run_child(cli, work)
    summary = json.loads((runs / "summary.json").read_text())
    result.update(workers=workers, videos=args.batch_videos, frames_per_video=args.batch_frames,
                  counts=summary["counts"],
                  videos_per_hour=round(summary["counts"]["complete"] / result["seconds"] * 3600, 1))
    result.pop("ba_seconds", None)
    return result


def main() -> None:
    if "--child" in sys.argv:
        k = sys.argv.index("--child")
        child(sys.argv[k + 3:], Path(sys.argv[k + 1]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=VIDEO)
    parser.add_argument("--frames", type=int, nargs="*", default=[32, 64, 150, 300, 600])
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config overrides for every run (e.g. a smaller TTA budget)")
    parser.add_argument("--set-large", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="extra overrides for points above --large-from frames")
    parser.add_argument("--large-from", type=int, default=10**9)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--batch-videos", type=int, default=4)
    parser.add_argument("--batch-frames", type=int, default=24)
    parser.add_argument("--work", type=Path, default=Path("/tmp/st4r-scale"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--merge", action="store_true", help="keep the points already in --out")
    args = parser.parse_args()
    frames = decode_all(args.video)
    previous = json.loads(args.out.read_text()) if args.merge and args.out.is_file() else {}
    result = {"commit": commit(), "command": " ".join(["python", "benchmarks/scale.py", *sys.argv[1:]]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "config": {"video": str(args.video), "video_frames": len(frames), "set": args.set,
                         "set_large": args.set_large, "large_from": args.large_from, "device": "cpu",
                         "machine": f"{os.cpu_count()} CPUs (shared with other jobs: times are noisy)"},
              "frames": previous.get("frames", []), "batch": previous.get("batch", [])}
    args.work.mkdir(parents=True, exist_ok=True)
    for count in args.frames:
        overrides = args.set + (args.set_large if count >= args.large_from else [])
        point = frame_point(frames, count, args.work, overrides)
        point["set"] = overrides
        result["frames"] = [p for p in result["frames"] if p["frames"] != count] + [point]
        args.out.write_text(json.dumps(result, indent=1))
        print(json.dumps(point), flush=True)
    for workers in args.workers:
        point = batch_point(frames, workers, args, args.work)
        result["batch"] = [p for p in result["batch"] if p["workers"] != workers] + [point]
        args.out.write_text(json.dumps(result, indent=1))
        print(json.dumps(point), flush=True)


if __name__ == "__main__":
    main()
