"""`st4r eval RUN --gt CLIP`: score a prediction (scene.npz) with every metric the ground truth supports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from st4r_cli.cli.common import QuietOpt, VerboseOpt, set_verbosity
from st4r_cli.errors import St4rError


def command(
    run: Annotated[Path, typer.Argument(
        help="Run directory holding scene.npz, or a scene.npz file; with a directory of clips as --gt, "
             "a directory holding one run per clip (<run>/<clip name>/scene.npz).")],
    gt: Annotated[Path, typer.Option(
        "--gt", help="Ground truth: a st4r clip folder, a TAP-Vid folder, a 7-Scenes sequence, a "
                     "TAPVid-3D .npz, a directory of them, or an official TAP-Vid .pkl.")],
    match_px: Annotated[float, typer.Option(
        "--match-px", help="Match a ground-truth track to the predicted track whose query lies within "
                           "this many ground-truth pixels.")] = 1.0,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Where to write the metrics JSON (default: RUN/metrics.json).")] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the metrics as JSON on stdout (and nothing else there) instead of the table.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Evaluate a prediction: world-frame 3D tracks (WorldTrack APD/EPE), TAPVid-3D, TAP-Vid 2D, depth and
    camera metrics, whichever the ground truth supports. Prints a table and writes metrics.json."""
    set_verbosity(quiet, verbose)
    from st4r_cli import progress
    from st4r_cli.eval import metrics_json_path, render_table, run_eval, write_metrics_json

    if match_px <= 0:
        raise St4rError("--match-px must be positive")
    from st4r_cli.runs.run import checked_run_output

    # a run's scene counts only when the run is complete and its scene.npz intact
    report = run_eval(run, gt, match_px=match_px, check_scene=checked_run_output)
    path = write_metrics_json(report, out or metrics_json_path(run))
    if json_out:
        _print_json(path)
    elif not progress.is_quiet():
        from rich.console import Console

        Console().print(render_table(report))
    progress.log(f"metrics written to {path}")


def _print_json(metrics_file: Path) -> None:
    """The metrics JSON just written, on stdout (NaN/inf as null, so any JSON parser reads it)."""
    import json
    import math

    def clean(value: object) -> object:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    print(json.dumps(clean(json.loads(metrics_file.read_text())), indent=1), flush=True)
