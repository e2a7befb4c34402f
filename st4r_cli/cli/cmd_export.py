"""`st4r export RUN_DIR [--ply] [--glb] [--tum] [--colmap] [--npz] [--intrinsics] [--masks] [--video] [--maps]`:
a run's scene in other tools' formats."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from st4r_cli.cli.common import QuietOpt, VerboseOpt, set_verbosity
from st4r_cli.errors import St4rError


class Axes(str, Enum):
    """Axes of the PLY and GLB files (`st4r_cli.stages.export.AXES`)."""

    gltf = "gltf"
    opencv = "opencv"


def command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of `st4r adapt` (or a scene.npz file).")],
    ply: Annotated[bool, typer.Option(
        "--ply", help="Per-frame, accumulated and static (fused) coloured point clouds.")] = False,
    glb: Annotated[bool, typer.Option(
        "--glb", help="glTF binary: points, cameras, camera frusta, track polylines.")] = False,
    tum: Annotated[bool, typer.Option("--tum", help="Camera trajectory in TUM format.")] = False,
    colmap: Annotated[bool, typer.Option("--colmap", help="COLMAP model, text and binary (+ images/).")] = False,
    npz: Annotated[bool, typer.Option("--npz", help="Compressed copy of scene.npz.")] = False,
    intrinsics: Annotated[bool, typer.Option(
        "--intrinsics", help="intrinsics.json: per-frame K, field of view, frame size, units.")] = False,
    masks: Annotated[bool, typer.Option(
        "--masks", help="masks/dynamic_00000.png ... (255 = moving); COLMAP exports get colmap/masks/ too.")] = False,
    video: Annotated[bool, typer.Option(
        "--video", help="tracks2d.mp4 (tracks on the frames) and depth.mp4 (frame | depth | confidence).")] = False,
    maps: Annotated[bool, typer.Option(
        "--maps", help="Per-frame depth and confidence PNGs and 16-bit depth PNGs (maps/).")] = False,
    rrd: Annotated[bool, typer.Option(
        "--rrd", help="scene.rrd: a Rerun recording (points, cameras with images, track trails); needs "
                      "rerun-sdk (the rerun extra).")] = False,
    out: Annotated[Optional[str], typer.Option(  # noqa: UP007 (str: an empty --out is refused, not '.')
        "--out", "-o", help="Output directory (default: RUN_DIR/export); an existing one must be empty or "
                            "an earlier export.")] = None,
    conf_quantile: Annotated[float, typer.Option(
        "--conf-quantile", help="Drop this fraction of each frame's least confident points.")] = 0.3,
    every: Annotated[int, typer.Option("--every", help="Frame stride of the accumulated cloud.")] = 1,
    axes: Annotated[Axes, typer.Option(
        "--axes", case_sensitive=False,
        help="Axes of the PLY and GLB files: gltf (y up: upright in MeshLab, Open3D, three.js, model-viewer) "
             "or opencv (st4r's world, y down). COLMAP and TUM always use OpenCV cameras.")] = Axes.gltf,
    glb_point_size: Annotated[str, typer.Option(
        "--glb-point-size", metavar="SIZE|auto",
        help="GLB points as squares of SIZE scene units facing their camera (visible in model-viewer and "
             "Blender); 0 = glTF points (1 pixel wide); auto = 1.5 x the points' spacing at the median "
             "depth.")] = "auto",
    static_voxel: Annotated[float, typer.Option(
        "--static-voxel", help="Voxel size of ply/static.ply in scene units (0 = 1% of the median depth).")] = 0.0,
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
    if rrd:
        from st4r_cli.stages.export_rerun import export_rrd, import_rerun

        import_rerun()   # a missing rerun-sdk fails before anything is written
    scene = read_scene(scene_path)
    if not chosen and not (video or maps or rrd):   # every format the scene has what it needs for
        chosen = [name for name in FORMATS if name != "masks" or "dynamic_mask" in scene]
    config = ExportConfig(conf_quantile=conf_quantile, every=every, axes=axes.value, static_voxel=static_voxel,
                          glb_point_size=_point_size(glb_point_size))
    source_run = None if run_dir.is_file() else run_dir
    tracker = original = None
    if "colmap" in chosen and source_run is not None:
        from st4r_cli.pipeline import run_tracker_tracks, source_frames

        tracker, original = run_tracker_tracks(source_run), source_frames(source_run)
    written = export_scene(scene, out_dir, chosen, config, timestamps=_timestamps(run_dir, scene),
                           tracker=tracker, original=original)
    written += _export_pictures(run_dir, out_dir, video, maps)
    if rrd:
        written.append(export_rrd(scene, out_dir / "scene.rrd", config, timestamps=_timestamps(run_dir, scene)))
        progress.log(f"[green]✓[/green] rrd: {out_dir / 'scene.rrd'}")
    write_export_manifest(out_dir, written, scene_path)
    progress.log(f"[green]done[/green]: {len(written)} file(s) in {out_dir}")


def _point_size(text: str) -> float | None:
    """--glb-point-size: a size >= 0, or None for auto."""
    import math

    if text.strip().lower() == "auto":
        return None
    try:
        size = float(text)
    except ValueError:
        raise St4rError(f"--glb-point-size must be a number >= 0 or auto (got {text!r})") from None
    if not (math.isfinite(size) and size >= 0):
        raise St4rError(f"--glb-point-size must be a number >= 0 or auto (got {text!r})")
    return size


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
    from st4r_cli.pipeline import run_timestamps

    return run_timestamps(run_dir, len(scene["cam_c2w"]))
