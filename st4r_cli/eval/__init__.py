"""`st4r eval`: pair predictions with ground truth, run every supported metric, report and save.

    report = run_eval(Path("runs/clip"), Path("clips/clip"))   # one clip
    report = run_eval(Path("runs"), Path("clips"))             # runs/<name>/scene.npz for clips/<name>
"""

from __future__ import annotations

from collections.abc import Callable

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from st4r_cli.errors import St4rError
from st4r_cli.eval.evaluate import EvalResult, evaluate_clip, mean_metrics

if TYPE_CHECKING:
    from st4r_cli.formats.clip import Clip

# (metric key, short column label) in display order; only keys present in a result are shown
DISPLAY: tuple[tuple[str, str], ...] = (
    ("worldtrack/global/apd", "WT APD"),
    ("worldtrack/global/epe", "WT EPE"),
    ("worldtrack/global/apd_rel", "WT APD rel"),
    ("worldtrack/sim3/apd", "WT APD sim3"),
    ("worldtrack/per_traj/apd", "WT APD traj"),
    ("worldtrack/global_dyn/apd", "WT APD dyn"),
    ("worldtrack/global_dyn/epe", "WT EPE dyn"),
    ("tapvid3d/average_pts_within_thresh", "APD3D"),
    ("tapvid3d/average_jaccard", "3D-AJ"),
    ("tapvid3d/occlusion_accuracy", "OA3D"),
    ("tapvid2d/average_pts_within_thresh", "d_avg"),
    ("tapvid2d/average_jaccard", "AJ"),
    ("tapvid2d/occlusion_accuracy", "OA"),
    ("depth/median/abs_rel", "AbsRel"),
    ("depth/median/delta_1.25", "d<1.25"),
    ("depth/scale_shift/abs_rel", "AbsRel ss"),
    ("camera/ate", "ATE"),
    ("camera/rpe_trans", "RPE t"),
    ("camera/rpe_rot", "RPE r"),
)


@dataclass
class EvalReport:
    prediction: Path
    ground_truth: Path
    results: list[EvalResult] = field(default_factory=list)

    @property
    def mean(self) -> dict[str, float]:
        return mean_metrics(self.results)

    def to_json(self) -> dict:
        def clean(metrics: dict[str, float]) -> dict[str, float | None]:
            return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}

        return {"prediction": str(self.prediction), "ground_truth": str(self.ground_truth),
                "clips": {r.name: {"metrics": clean(r.metrics), "notes": r.notes} for r in self.results},
                "mean": clean(self.mean)}


def _scene_path(path: Path) -> Path:
    return path / "scene.npz" if path.is_dir() else path


def pair_predictions(prediction: Path, ground_truth: Path) -> list[tuple[str, Path, Path]]:
    """`(name, scene.npz, ground truth)` for one clip, or for every clip of a directory of clips."""
    from st4r_cli.formats import ground_truth_kind

    prediction, ground_truth = Path(prediction), Path(ground_truth)
    if not ground_truth.exists():
        raise St4rError(f"ground truth not found: {ground_truth}")
    if not prediction.exists():
        raise St4rError(f"prediction not found: {prediction}")
    if ground_truth_kind(ground_truth) is not None:
        name = ground_truth.stem if ground_truth.is_file() else ground_truth.name
        return [(name, _scene_path(prediction), ground_truth)]
    if not ground_truth.is_dir():
        raise St4rError(f"{ground_truth}: not a clip, a benchmark file, or a directory of them")
    clips = sorted(p for p in ground_truth.iterdir() if not p.name.startswith(".") and ground_truth_kind(p))
    if not clips:
        raise St4rError(f"{ground_truth} contains no clips (clip folders, TAP-Vid folders, 7-Scenes sequences, "
                        "TAPVid-3D .npz)")
    if not prediction.is_dir():
        raise St4rError(f"--gt {ground_truth} is a directory of clips, so the prediction must be a directory "
                        "holding one run per clip (<run>/<clip name>/scene.npz)")
    pairs, missing = [], []
    for clip in clips:
        name = clip.stem if clip.is_file() else clip.name
        scene = prediction / name / "scene.npz"
        if not scene.is_file():
            missing.append(name)
        pairs.append((name, scene, clip))
    if missing:
        listed = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise St4rError(f"no prediction for {len(missing)} of {len(clips)} clips ({listed}): "
                        f"expected {prediction}/<clip name>/scene.npz")
    return pairs


def _pickle_clips(prediction: Path, ground_truth: Path) -> list[tuple[str, Path, Clip]]:
    """Pairs for an official TAP-Vid pickle: one clip per video, runs at `<prediction>/<name>/scene.npz`."""
    from st4r_cli.formats.clip import Clip
    from st4r_cli.formats.tapvid2d import read_tapvid_pickle, to_clip_gt

    clips = read_tapvid_pickle(ground_truth)
    if len(clips) == 1 and not (prediction / clips[0].name / "scene.npz").is_file():
        return [(clips[0].name, _scene_path(prediction),
                 Clip(clips[0].frames, to_clip_gt(clips[0]), {"source": "tapvid2d"}, clips[0].name))]
    missing = [c.name for c in clips if not (prediction / c.name / "scene.npz").is_file()]
    if missing:
        listed = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise St4rError(f"no prediction for {len(missing)} of {len(clips)} videos ({listed}): "
                        f"expected {prediction}/<video name>/scene.npz")
    return [(c.name, prediction / c.name / "scene.npz", Clip(c.frames, to_clip_gt(c), {"source": "tapvid2d"}, c.name))
            for c in clips]


def run_eval(prediction: Path, ground_truth: Path, match_px: float = 1.0,
             check_scene: Callable[[Path], object] | None = None) -> EvalReport:
    """Evaluate one prediction or a directory of runs against ground truth (see `pair_predictions`).

    `ground_truth` may also be an official TAP-Vid pickle (`.pkl`): each video is a clip, scored
    against `<prediction>/<video name>/scene.npz` (or `prediction` itself for a one-video pickle).
    """
    from st4r_cli import progress
    from st4r_cli.formats import load_ground_truth
    from st4r_cli.formats.scene import read_scene

    prediction, ground_truth = Path(prediction), Path(ground_truth)
    if ground_truth.suffix == ".pkl" and ground_truth.is_file():
        if not prediction.exists():
            raise St4rError(f"prediction not found: {prediction}")
        pairs = _pickle_clips(prediction, ground_truth)
    else:
        pairs = pair_predictions(prediction, ground_truth)
    report = EvalReport(prediction, ground_truth)
    if check_scene is not None:
        for _, scene_path, _ in pairs:  # e.g. every run complete and its scene intact, before any work
            check_scene(scene_path)
    for name, scene_path, clip_or_path in progress.track(pairs, "evaluating"):
        scene = read_scene(scene_path)
        clip = clip_or_path if not isinstance(clip_or_path, Path) else load_ground_truth(clip_or_path)
        result = evaluate_clip(scene, clip, match_px=match_px, name=name)
        for note in result.notes:
            progress.log(f"[yellow]{name}: {note}[/yellow]")
        report.results.append(result)
    return report


def metrics_json_path(prediction: Path) -> Path:
    """Where `metrics.json` goes: in the run directory (the scene file's directory)."""
    prediction = Path(prediction)
    return (prediction if prediction.is_dir() else prediction.parent) / "metrics.json"


def write_metrics_json(report: EvalReport, path: Path) -> Path:
    from st4r_cli.runs.atomic import atomic_write_text

    atomic_write_text(Path(path), json.dumps(report.to_json(), indent=2, sort_keys=False) + "\n")
    return Path(path)


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def render_table(report: EvalReport):
    """A Rich table: metric/value rows for one clip; clip rows + mean for several."""
    from rich.table import Table

    present = [(key, label) for key, label in DISPLAY if any(key in r.metrics for r in report.results)]
    if len(report.results) == 1:
        result = report.results[0]
        table = Table(title=f"st4r eval: {result.name}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, label in present:
            table.add_row(f"{label} [dim]({key})[/dim]", _fmt(result.metrics.get(key)))
        if "tracks/matched" in result.metrics:
            table.add_row("[dim]tracks matched[/dim]",
                          f"{int(result.metrics['tracks/matched'])}/{int(result.metrics['tracks/gt_tracks'])}")
        return table
    table = Table(title=f"st4r eval: {len(report.results)} clips")
    table.add_column("clip")
    for _, label in present:
        table.add_column(label, justify="right")
    for result in report.results:
        table.add_row(result.name, *[_fmt(result.metrics.get(key)) for key, _ in present])
    mean = report.mean
    table.add_row("[bold]mean[/bold]", *[f"[bold]{_fmt(mean.get(key))}[/bold]" for key, _ in present])
    return table


__all__ = ["DISPLAY", "EvalReport", "EvalResult", "evaluate_clip", "metrics_json_path", "pair_predictions",
           "render_table", "run_eval", "write_metrics_json"]
