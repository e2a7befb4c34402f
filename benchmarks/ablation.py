"""TTA ablation: no TTA / ST4RTrack baseline / ST4RTrack+ robust / robust without mask, sigma or gate.

    python benchmarks/ablation.py [--model weights/st4r-tiny/model.safetensors] [--presets easy occlusion ...]
        [--seeds 0 1] [--frames 32] [--davis 3] [--sevenscenes] [--colmap] [--iters 30] [--threads 1] [--refine]
        [--oracle-tracks] [--set adapt.FIELD=VALUE ...] [--out results.json]
    python benchmarks/ablation.py --merge part_a.json part_b.json --out results.json

Per clip, the 2D pseudo-tracks (built-in tracker, 32x32 grid on frame 0, at the clip's own resolution as the
pipeline tracks: `st4r_cli.pipeline.tracks_in_memory`) are computed once and shared by
every variant; each variant starts from the same checkpoint and runs the pipeline's stages in memory
(`st4r_cli.pipeline.geometry_in_memory`: cameras, depth; `predict_in_memory`: adapt, predict;
`scene_in_memory`: fuse) with a
`RunConfig` (the cameras stage's bundle adjustment and the fusion of 3D tracks with the 2D tracks are
off, so the rows differ by the adapted network only, unless `--refine` asks for the full pipeline as
`st4r adapt` runs it), and the resulting scene is scored with `st4r_cli.eval.evaluate_clip`:
- synthetic presets (`st4r synth`, exact ground truth): world-track APD/EPE, ATE, RPE, AbsRel, 2D metrics;
- TAP-Vid DAVIS clips (../shared/benchmarks/tapvid-davis-32, first `--davis` clips): the scene's 3D tracks
  are started at the human-annotated queries (tracked in 2D by the built-in tracker, lifted and carried
  by the network) and their reprojections are scored against the annotation (AJ, delta_avg, OA);
- 7-Scenes redkitchen clips (real RGB-D): ATE, RPE, AbsRel, world-track APD from the static-scene
  derivation, with COLMAP (pycolmap: SIFT, exhaustive matching, incremental mapping) beside it (`--colmap`).
No mono-depth backend has weights here, so the depth term of the TTA loss is off in every variant.
Seconds per frame = (adapt + predict + cameras + fuse) / frames; peak memory = the process's peak
resident set growth while the variant runs. Writes benchmarks/results/ablation.json (or `--out`).
On 2 cores, run one process per preset group and join their files with `--merge` (same settings
required; the summary is recomputed over all clips).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from st4r_cli.configs import AdaptConfig
    from st4r_cli.runs.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "ablation.json"
SHARED = ROOT.parent / "shared" / "benchmarks"
GROUPS = ("synthetic", "davis", "sevenscenes")  # benchmark groups of a results file

VARIANTS = {
    "no_tta": {"loss": "none"},
    "baseline": {"loss": "baseline"},
    "robust": {"loss": "robust"},
    "robust_no_mask": {"loss": "robust", "use_mask": False, "use_tracker_visibility": False},
    "robust_no_sigma": {"loss": "robust", "use_sigma": False},
    "robust_no_gate": {"loss": "robust", "outlier_gate": 0.0},
    "baseline_solved": {"loss": "baseline", "tta_cameras": "solved"},
    "robust_solved": {"loss": "robust", "tta_cameras": "solved"},
}
HEADLINE = ["worldtrack/global/apd", "worldtrack/global/epe", "worldtrack/global/apd_rel",
            "worldtrack/global/epe_anchor", "worldtrack/global/epe_motion", "worldtrack/global_dyn/epe",
            "worldtrack/global_dyn/epe_motion", "camera/ate", "camera/rpe_trans", "camera/rpe_rot",
            "depth/median/abs_rel", "tapvid2d/average_jaccard", "tapvid2d/average_pts_within_thresh",
            "tapvid2d/occlusion_accuracy"]


class PeakRss:
    """Peak resident-set growth (MiB) of this process while the context runs (sampled every 20 ms)."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())

    @property
    def growth_mib(self) -> float:
        return self.peak - self.start


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


_GEOMETRY: dict = {}


def run_variant(model, frames, tracks_tta, tracks_out, variant: dict, args, seed: int) -> tuple[dict, dict]:
    """(scene arrays, stats) of one variant on one clip."""
    from st4r_cli.pipeline import geometry_in_memory, predict_in_memory, scene_in_memory

    config = variant_config(args, variant, "tracks" if tracks_out is not None else "grid", seed)
    net = copy.deepcopy(model)
    with PeakRss() as mem:
        start = time.perf_counter()
        key = (id(frames), id(tracks_tta), repr(config.cameras), repr(config.depth))
        if key not in _GEOMETRY:   # the cameras and depth do not depend on the TTA variant: once per clip
            _GEOMETRY.clear()
            _GEOMETRY[key] = geometry_in_memory(model, frames, tracks_tta, config, "cpu")
        cameras, depth = _GEOMETRY[key]
        adapted, pred = predict_in_memory(net, frames, tracks_tta, depth, config, "cpu", cameras)
        t_network = time.perf_counter() - start
        scene = scene_in_memory(frames, tracks_out, pred, cameras, depth, config)
        total = time.perf_counter() - start
    hist = adapted["loss_history"]
    stats = {"seconds_network": round(t_network, 2), "seconds_total": round(total, 2),
             "seconds_per_frame": round(total / len(frames), 3), "peak_mem_mib": round(mem.growth_mib, 1),
             "rollbacks": int(adapted["rollbacks"]),
             "loss_first": float(np.nanmean(hist[:3])) if hist.size else None,
             "loss_last": float(np.nanmean(hist[-3:])) if hist.size else None}
    return scene, stats


def variant_config(args, variant: dict, queries: str, seed: int) -> RunConfig:
    """The RunConfig of one variant: defaults; for the TTA comparison (no `--refine`) the cameras stage's
    bundle adjustment and the fusion with the 2D tracks off and visibility from the z-buffer test (OA
    then scores the network too); `--threads`; every `--set SECTION.FIELD=VALUE`; the shared TTA flags
    (--iters, --lr, --params, --prior-weight); the variant's adapt fields."""
    from st4r_cli.runs.config import RunConfig, apply_overrides

    config = RunConfig(seed=seed)
    config.fuse = replace(config.fuse, queries=queries)
    if not args.refine:
        config.cameras = replace(config.cameras, refine="none")
        config.fuse = replace(config.fuse, fuse_tracks=False, visibility="mask")
    config.predict = replace(config.predict, cpu_threads=args.threads)
    apply_overrides(config, list(args.set))
    config.adapt = replace(config.adapt, **_adapt_flags(args), **variant)
    return config


def _adapt_flags(args) -> dict:
    shared = {"iters": args.iters, "lr": args.lr, "params": args.params, "prior_weight": args.prior_weight}
    return {k: v for k, v in shared.items() if v is not None}


def grid_tracks(frames: np.ndarray, seed: int, source_frames: np.ndarray | None = None) -> dict:
    """Built-in tracker on its default grid, at the pipeline's tracking resolution (`source_frames`: the
    frames at the source's size; None tracks `frames`); tracks in `frames`' pixels."""
    from st4r_cli.pipeline import tracks_in_memory
    from st4r_cli.stages.tracks import TracksConfig

    return tracks_in_memory(frames, source_frames, TracksConfig(), "cpu", seed)


def query_tracks(frames: np.ndarray, queries: np.ndarray, seed: int, source_frames: np.ndarray | None = None) -> dict:
    """Built-in tracker from explicit (t, x, y) queries (decoded-frame pixels), at the pipeline's tracking
    resolution (as `grid_tracks`)."""
    from st4r_cli.pipeline import tracks_in_memory
    from st4r_cli.stages.tracks import TracksConfig

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "queries.npy"
        np.save(path, queries.astype(np.float32))
        return tracks_in_memory(frames, source_frames, TracksConfig(query_mode="file", query_file=str(path)),
                                "cpu", seed)


def resize_frames(frames: np.ndarray, long_side: int = 256, multiple: int = 16) -> np.ndarray:
    import cv2

    h, w = frames.shape[1:3]
    scale = long_side / max(h, w)
    new_h = max(multiple, int(round(h * scale / multiple)) * multiple)
    new_w = max(multiple, int(round(w * scale / multiple)) * multiple)
    return np.stack([cv2.resize(f, (new_w, new_h), interpolation=cv2.INTER_AREA) for f in frames])


def score(scene: dict, clip) -> dict:
    from st4r_cli.eval.evaluate import evaluate_clip

    metrics = evaluate_clip(scene, clip).metrics
    return {k: round(float(metrics[k]), 4) for k in HEADLINE if k in metrics and np.isfinite(metrics[k])}


def evaluate_variants(name: str, model, frames, tracks_tta, tracks_out, clip, args, seed: int) -> dict:
    rows = {}
    for variant in args.variants:
        scene, stats = run_variant(model, frames, tracks_tta, tracks_out, VARIANTS[variant], args, seed)
        rows[variant] = {**score(scene, clip), **stats}
        print(f"{name} {variant}: {json.dumps(rows[variant])}", flush=True)
    return rows


def synthetic_clip(preset: str, seed: int, num_frames: int):
    """(Clip with dense ground truth, frames (T, 192, 256, 3) uint8) of one `st4r synth` preset."""
    from st4r_cli.formats.clip import clip_from_synthetic
    from st4r_cli.synthetic import render_clip

    clip = clip_from_synthetic(render_clip(preset, seed, num_frames, (192, 256)), seed=seed, dense=True)
    clip.name = f"{preset}/{seed}"
    return clip, np.asarray(clip.frames)


def davis_clips(count: int) -> list[Path]:
    """The first `count` TAP-Vid DAVIS clip folders of ../shared (sorted by name)."""
    return sorted(p for p in (SHARED / "tapvid-davis-32").iterdir() if p.is_dir())[:count]


def sevenscenes_clips() -> list[Path]:
    """The 7-Scenes redkitchen clip folders of ../shared (sorted by name)."""
    return sorted(SHARED.glob("7scenes-redkitchen-*"))


def sevenscenes_clip(path: Path):
    """(Clip with its RGB-D ground truth, frames resized for the network, built-in grid tracks)."""
    from st4r_cli.formats import load_ground_truth

    clip = load_ground_truth(path, load_frames=True)
    frames = resize_frames(np.asarray(clip.frames))
    return clip, frames, grid_tracks(frames, 0, np.asarray(clip.frames))


def davis_clip(path: Path, num_frames: int):
    """(Clip cut to its first frames, frames resized for the network, human queries (Q, 3) (t, x, y) in
    the resized frames' pixels)."""
    from st4r_cli.formats import load_ground_truth

    clip = load_ground_truth(path, load_frames=True)
    frames = resize_frames(np.asarray(clip.frames)[:num_frames])
    clip = _first_frames(clip, len(frames))
    h0, w0 = clip.size_hw
    h, w = frames.shape[1:3]
    qt, qxy = clip.gt["query_t"], clip.gt["query_xy"]
    keep = qt < len(frames)
    queries = np.concatenate([qt[keep, None], (qxy[keep] + 0.5) * [w / w0, h / h0] - 0.5], 1)
    return clip, frames, queries


def oracle_tracks(clip, tracks: dict) -> dict:
    """The tracker's frame-0 tracks with their positions and visibility replaced by the synthetic clip's
    ground truth (2D projections of the exact 3D tracks, exact visibility); tracks without ground truth
    (off-geometry queries) and frames where the point is behind the camera keep the tracker's values,
    invisible. An upper bound on what a better tracker can give the TTA."""
    from st4r_cli.eval.evaluate import dense_gt_at

    query_xy = tracks["tracks_xy"][:, 0].astype(np.float64)
    gt = dense_gt_at(clip, np.zeros(len(query_xy), np.int64), query_xy, 1.0)
    rows = gt["query_rows"]
    known = np.isfinite(gt["tracks2d"]).all(-1)  # (M, T)
    out = dict(tracks)
    out["tracks_xy"] = tracks["tracks_xy"].copy()
    out["visible"] = tracks["visible"].copy()
    out["tracks_xy"][rows] = np.where(known[..., None], gt["tracks2d"], tracks["tracks_xy"][rows])
    out["visible"][rows] = gt["visible"].astype(bool) & known
    return out


def synthetic_rows(model, args) -> dict:
    out = {}
    for preset in args.presets:
        for seed in args.seeds:
            clip, frames = synthetic_clip(preset, seed, args.frames)
            tracks = grid_tracks(frames, seed)
            tracks_tta = oracle_tracks(clip, tracks) if args.oracle_tracks else tracks
            out[f"{preset}/{seed}"] = evaluate_variants(f"{preset}/{seed}", model, frames, tracks_tta, tracks, clip,
                                                        args, seed)
            save_partial(args, {"synthetic": out})
    return out


def davis_rows(model, args) -> dict:
    out = {}
    for path in davis_clips(args.davis):
        clip, frames, queries = davis_clip(path, args.frames)
        source = np.asarray(clip.frames)          # the clip's own size (854x480): the tracking resolution
        tracks_tta = grid_tracks(frames, 0, source)
        tracks_out = query_tracks(frames, queries, 0, source)
        out[path.name] = evaluate_variants(path.name, model, frames, tracks_tta, tracks_out, clip, args, 0)
        save_partial(args, {"davis": out})
    return out


def _first_frames(clip, count: int):
    """The clip cut to its first `count` frames (per-frame ground-truth arrays sliced)."""
    if clip.num_frames == count:
        return clip
    from st4r_cli.formats.clip import Clip

    num = clip.num_frames
    gt = {}
    for key, value in clip.gt.items():
        value = np.asarray(value)
        if value.ndim >= 1 and value.shape[0] == num and key not in ("query_t", "query_xy", "dynamic"):
            gt[key] = value[:count]
        elif value.ndim >= 2 and value.shape[1] == num:
            gt[key] = value[:, :count]
        else:
            gt[key] = value
    return Clip(frames=np.asarray(clip.frames)[:count], gt=gt, meta=clip.meta, name=clip.name)


def sevenscenes_rows(model, args) -> dict:
    from st4r_cli.metrics.camera import camera_metrics

    out = {}
    for path in sevenscenes_clips():
        clip, frames, tracks = sevenscenes_clip(path)
        rows = evaluate_variants(path.name, model, frames, tracks, tracks, clip, args, 0)
        if args.colmap:
            from _colmap import run_colmap  # benchmarks/_colmap.py, beside this script

            start = time.perf_counter()
            result = run_colmap(np.asarray(clip.frames), intrinsics=None, seed=0)
            seconds = time.perf_counter() - start
            reg = np.isfinite(result.cam_c2w).all(axis=(1, 2))
            row = {"registered": int(reg.sum()), "seconds_total": round(seconds, 2)}
            if reg.sum() >= 3:
                cam = camera_metrics(result.cam_c2w[reg], np.asarray(clip.gt["cam_c2w"])[reg])
                row.update({f"camera/{k}": round(float(v), 4) for k, v in cam.items()})
            rows["colmap"] = row
            print(f"{path.name} colmap: {json.dumps(row)}", flush=True)
        out[path.name] = rows
        save_partial(args, {"sevenscenes": out})
    return out


def save_partial(args, part: dict) -> None:
    """Merge `part` into the results so far and rewrite `args.out` atomically (header first)."""
    args.partial.update(part)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**args.header, **args.partial}, indent=2) + "\n")
    os.replace(tmp, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "weights" / "st4r-tiny" / "model.safetensors"))
    parser.add_argument("--presets", nargs="*", default=["easy", "occlusion", "fast-motion", "static-scene"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--davis", type=int, default=0, help="number of DAVIS clips (0: skip)")
    parser.add_argument("--sevenscenes", action="store_true")
    parser.add_argument("--colmap", action="store_true", help="run COLMAP beside st4r on 7-Scenes")
    parser.add_argument("--iters", type=int, default=None, help="TTA steps (default: AdaptConfig's CPU default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=None, help="TTA learning rate (default: the CPU default)")
    parser.add_argument("--params", default=None, help="adapted parameter group (default: AdaptConfig's)")
    parser.add_argument("--prior-weight", type=float, default=None,
                        help="self-distillation prior weight, shared by every TTA variant (default: AdaptConfig's)")
    parser.add_argument("--refine", action="store_true",
                        help="score the full pipeline (camera bundle adjustment and track fusion on) instead of the adapted network alone")
    parser.add_argument("--oracle-tracks", action="store_true",
                        help="synthetic presets: adapt on the ground-truth 2D tracks instead of the tracker's "
                             "(outputs keep the tracker's queries and visibility)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a run config setting (adapt.*, predict.*, cameras.*, fuse.*, ...) for "
                             "every variant (repeatable), e.g. --set adapt.prior_kind=anchor")
    parser.add_argument("--merge", nargs="+", metavar="PART.json",
                        help="run nothing: merge result files of one setting run in parallel (e.g. one per "
                             "preset) into --out, recomputing the summary")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    if args.merge:
        merge_results(args.merge, args.out)
        return
    from st4r_cli.errors import St4rError

    try:
        args.adapt_config = shared_adapt_config(args)
        variant_config(args, {}, "tracks", 0)   # every --set checked before any work
    except St4rError as err:
        parser.error(str(err))

    import torch

    from st4r_cli import progress
    from st4r_cli.model.io import load_model

    progress.set_verbosity(quiet=True)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, "cpu")
    args.header = {"provenance": provenance(),
                   "config": variant_config(args, {}, "tracks", 0).to_dict(),
                   "model": args.model, "frames": args.frames, "adapt": adapt_header(args),
                   "pipeline": ("defaults: cameras.refine ba, fuse.fuse_tracks on (full pipeline)" if args.refine
                                else "cameras.refine none, fuse.fuse_tracks off, fuse.visibility mask (TTA comparison)"),
                   "threads": args.threads, "variants": args.variants, "depth_backend": "none",
                   "tta_tracks": "ground truth (--oracle-tracks)" if args.oracle_tracks else "built-in tracker",
                   "seeds": args.seeds, "overrides": args.set}
    args.partial = {}
    if args.presets:
        save_partial(args, {"synthetic": synthetic_rows(model, args)})
    if args.davis:
        save_partial(args, {"davis": davis_rows(model, args)})
    if args.sevenscenes:
        save_partial(args, {"sevenscenes": sevenscenes_rows(model, args)})
    summary = summarize(args.partial)
    save_partial(args, {"summary": summary})
    print_comparisons(summary)
    print("->", args.out)


def merge_results(parts: list[str], out: str) -> None:
    """Merge result files of ablation runs that differ only in their clips (same header otherwise) into
    `out`, with the summary recomputed over all clips."""
    results = [json.loads(Path(p).read_text()) for p in parts]
    def header_of(res: dict) -> dict:  # the settings (files written before a fix also hold clip rows, "x/0")
        return {k: v for k, v in res.items()
                if k not in (*GROUPS, "summary", "seeds", "provenance", "merged_provenance") and "/" not in k}

    header = header_of(results[0])
    for part, res in zip(parts, results):
        if header_of(res) != header:
            raise SystemExit(f"ablation.py: error: {part} was run with other settings than {parts[0]}")
    merged: dict = {"provenance": provenance(), **header,
                    "seeds": sorted({s for r in results for s in r.get("seeds", [])}),
                    "merged_from": [Path(p).name for p in parts],
                    "merged_provenance": [r.get("provenance") for r in results]}
    for group in GROUPS:
        rows = {name: row for res in results for name, row in res.get(group, {}).items()}
        if rows:
            merged[group] = rows
    merged["summary"] = summarize({g: merged[g] for g in GROUPS if g in merged})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(merged, indent=2) + "\n")
    print_comparisons(merged["summary"])
    print("->", out)


def provenance() -> dict:
    """benchmarks/_provenance.py's record (commit, command, date), loaded by path: this script also runs
    as a module of the tests, where benchmarks/ is not on the import path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("st4r_bench_provenance", Path(__file__).with_name("_provenance.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.provenance()


def print_comparisons(summary: dict) -> None:
    """Per synthetic preset: each variant's world EPE = frame-0 part + motion part (means), then one line per
    comparison: world-EPE gain of the mean, per-clip gain +- s.e., wins."""
    for group, variants in sorted(summary.items()):
        for name, row in variants.items():
            if name != "compare" and "worldtrack/global/epe_anchor" in row:
                print(f"{group} {name}: EPE {row['worldtrack/global/epe']:.3f}, frame-0 part "
                      f"{row['worldtrack/global/epe_anchor']:.3f}, motion part {row['worldtrack/global/epe_motion']:.3f}")
        for name, c in variants.get("compare", {}).items():
            if c:
                print(f"{group} {name}: EPE {100 * c['gain_of_mean']:+.1f}% (per clip {100 * c['gain_mean']:+.1f} "
                      f"+- {100 * c['gain_sem']:.1f}%, better on {c['wins']}/{c['clips']})")


def adapt_header(args) -> dict:
    """The shared TTA settings of the run, CPU defaults resolved."""
    import dataclasses

    from st4r_cli.stages.adapt import resolve

    cfg = args.adapt_config
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "loss"}
    out.update(dataclasses.asdict(resolve(cfg, "cpu")))
    return out


def shared_adapt_config(args) -> AdaptConfig:
    """The TTA settings every variant shares: AdaptConfig's defaults, then `--set adapt.*`, then the
    dedicated flags (--iters, --lr, --params, --prior-weight)."""
    from st4r_cli.runs.config import RunConfig, apply_overrides

    cfg = apply_overrides(RunConfig(), [s for s in args.set if s.startswith("adapt.")]).adapt
    return replace(cfg, **_adapt_flags(args))


def summarize(results: dict) -> dict:
    """Mean of every headline metric per variant, per benchmark group."""
    summary = {}
    for group in GROUPS:
        clips = results.get(group, {})
        if not clips:
            continue
        by_variant: dict[str, dict[str, list[float]]] = {}
        for rows in clips.values():
            for variant, row in rows.items():
                for key, value in row.items():
                    if isinstance(value, (int, float)) and value is not None:
                        by_variant.setdefault(variant, {}).setdefault(key, []).append(float(value))
        summary[group] = {v: {k: round(float(np.mean(x)), 4) for k, x in keys.items()}
                          for v, keys in by_variant.items()}
    # per synthetic preset
    for preset in {name.split("/")[0] for name in results.get("synthetic", {})}:
        rows = [r for n, r in results["synthetic"].items() if n.startswith(preset + "/")]
        summary[f"synthetic/{preset}"] = {
            v: {k: round(float(np.mean([r[v][k] for r in rows if k in r.get(v, {})])), 4)
                for k in HEADLINE + ["seconds_per_frame", "peak_mem_mib"] if any(k in r.get(v, {}) for r in rows)}
            for v in rows[0]}
        summary[f"synthetic/{preset}"]["compare"] = {
            f"{a}_vs_{b}": compare(rows, a, b) for a, b in COMPARISONS if a in rows[0] and b in rows[0]}
    return summary


COMPARISONS = [("robust", "baseline"), ("robust", "no_tta"), ("baseline", "no_tta")]


def compare(rows: list[dict], better: str, than: str, key: str = "worldtrack/global/epe") -> dict:
    """How much lower (better) `key` is for variant `better` than for `than` over paired clips.

    Returns `gain_of_mean` (1 - mean(better) / mean(than), the issue's "x% better"), the per-clip
    relative gains' mean and standard error (`gain_mean`, `gain_sem`: the spread across seeds), and
    `wins` / `clips` (clips where `better` is strictly lower).
    """
    pairs = [(r[better][key], r[than][key]) for r in rows if key in r.get(better, {}) and key in r.get(than, {})]
    if not pairs:
        return {}
    new, old = np.array(pairs, dtype=np.float64).T
    gains = 1.0 - new / old
    sem = float(gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else float("nan")
    return {"gain_of_mean": round(float(1.0 - new.mean() / old.mean()), 4), "gain_mean": round(float(gains.mean()), 4),
            "gain_sem": round(sem, 4), "wins": int((new < old).sum()), "clips": len(gains)}


if __name__ == "__main__":
    main()
