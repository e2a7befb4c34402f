"""`st4r export RUN_DIR [--ply] [--glb] [--tum] [--colmap] [--npz] [--intrinsics] [--masks] [--video] [--maps]`:
a run's scene in other tools' formats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from st4r_cli.cli.common import QuietOpt, VerboseOpt, set_verbosity
from st4r_cli.errors import St4rError


def command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of `st4r adapt` (or a scene.npz file).")],
    ply: Annotated[bool, typer.Option("--ply", help="Per-frame and accumulated coloured point clouds.")] = False,
    glb: Annotated[bool, typer.Option("--glb", help="glTF binary: points, camera frusta, track polylines.")] = False,
    tum: Annotated[bool, typer.Option("--tum", help="Camera trajectory in TUM format.")] = False,
    colmap: Annotated[bool, typer.Option("--colmap", help="COLMAP text model (+ images/).")] = False,
    npz: Annotated[bool, typer.Option("--npz", help="Compressed copy of scene.npz.")] = False,
    intrinsics: Annotated[bool, typer.Option(
        "--intrinsics", help="intrinsics.json: per-frame K, field of view, frame size, units.")] = False,
    masks: Annotated[bool, typer.Option(
        "--masks", help="masks/dynamic_00000.png ... (255 = moving); COLMAP exports get colmap/masks/ too.")] = False,
    video: Annotated[bool, typer.Option(
        "--video", help="tracks2d.mp4 (tracks on the frames) and depth.mp4 (frame | depth | confidence).")] = False,
    maps: Annotated[bool, typer.Option(
        "--maps", help="Per-frame depth and confidence PNGs and 16-bit depth PNGs (maps/).")] = False,
    out: Annotated[Optional[str], typer.Option(  # noqa: UP007 (str: an empty --out is refused, not '.')
        "--out", "-o", help="Output directory (default: RUN_DIR/export); an existing one must be empty or "
                            "an earlier export.")] = None,
    conf_quantile: Annotated[float, typer.Option(
        "--conf-quantile", help="Drop this fraction of each frame's least confident points.")] = 0.3,
    every: Annotated[int, typer.Option("--every", help="Frame stride of the accumulated cloud.")] = 1,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Export a run's scene: PLY, GLB, TUM, COLMAP, NPZ, intrinsics, dynamic masks (all of them when no
    format is given)."""
    set_verbosity(quiet, verbose)
    from st4r_cli import progress
    from st4r_cli.formats.scene import read_scene
    from st4r_cli.stages.export import FORMATS, ExportConfig, check_export_dir, export_scene, write_export_manifest

    from st4r_cli.runs.run import checked_run_output

    if not run_dir.exists():
        raise St4rError(f"not found: {run_dir}")
    scene_path = run_dir if run_dir.is_file() else run_dir / "scene.npz"
    scene_path = checked_run_output(scene_path)   # a run's scene: only when the run is complete
    if not scene_path.is_file():
        raise St4rError(f"{run_dir} has no scene.npz (run `st4r adapt` to completion first)")
    chosen = [name for name, flag in zip(FORMATS, (ply, glb, tum, colmap, npz, intrinsics, masks)) if flag]
    if out is not None and not str(out).strip():
        raise St4rError("--out is empty: give the export directory")
    home = run_dir.parent if run_dir.is_file() else run_dir
    out_dir = Path(out) if out is not None else home / "export"
    check_export_dir(out_dir, run_dir=home if out is None else None)   # before anything is read or written
    scene = read_scene(scene_path)
    if not chosen and not (video or maps):   # every format the scene has what it needs for
        chosen = [name for name in FORMATS if name != "masks" or "dynamic_mask" in scene]
    config = ExportConfig(conf_quantile=conf_quantile, every=every)
    source_run = None if run_dir.is_file() else run_dir
    tracker = original = None
    if "colmap" in chosen and source_run is not None:
        from st4r_cli.pipeline import run_tracker_tracks, source_frames

        tracker, original = run_tracker_tracks(source_run), source_frames(source_run)
    written = export_scene(scene, out_dir, chosen, config, timestamps=_timestamps(run_dir, scene),
                           tracker=tracker, original=original)
    written += _export_pictures(run_dir, out_dir, video, maps)
    write_export_manifest(out_dir, written, scene_path)
    progress.log(f"[green]done[/green]: {len(written)} file(s) in {out_dir}")


def _export_pictures(run_dir: Path, out_dir: Path, video: bool, maps: bool) -> list[Path]:
    """--video / --maps (st4r_cli.viz.video)."""
    if not (video or maps):
        return []
    from st4r_cli import progress
    from st4r_cli.viz.data import load_view_data
    from st4r_cli.viz.video import export_maps, export_videos

    view = load_view_data(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = export_videos(view, out_dir) if video else []
    written += export_maps(view, out_dir) if maps else []
    for path in written:
        if path.suffix == ".mp4":
            progress.log(f"[green]✓[/green] video: {path}")
    if maps:
        progress.log(f"[green]✓[/green] maps: {out_dir / 'maps'}")
    return written


def _timestamps(run_dir: Path, scene: dict) -> object:
    """Frame times in seconds from the run's decode stage, when available and consistent."""
    if run_dir.is_file() or "cam_c2w" not in scene:
        return None
    try:
        from st4r_cli.runs import Run

        stamps = Run.open(run_dir).artifact("decode")["timestamps_s"]
    except Exception:  # noqa: BLE001 - timestamps are a nicety; frame indices are the fallback
        return None
    return stamps if len(stamps) == len(scene["cam_c2w"]) else None
