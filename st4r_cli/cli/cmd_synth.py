"""`st4r synth OUT --preset P --seed S`: render a synthetic dynamic clip with exact ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from st4r_cli.cli.common import QuietOpt, SeedOpt, VerboseOpt, set_verbosity
from st4r_cli.errors import St4rError

PRESET_NAMES = ("easy", "occlusion", "fast-motion", "static-scene", "mixed")  # = synthetic.scene.PRESETS


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (H, W)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise St4rError(f"--size must look like 256x192 (width x height), got {text!r}")
    width, height = int(parts[0]), int(parts[1])
    if not (8 <= width <= 4096 and 8 <= height <= 4096):
        raise St4rError(f"--size {text}: width and height must be between 8 and 4096")
    return height, width


def command(
    out: Annotated[Path, typer.Argument(
        help="Clip folder to write (frames/ + gt.npz + meta.json), or a .npz file with --format tapvid3d.")],
    preset: Annotated[str, typer.Option(
        "--preset", "-p", help="easy | occlusion | fast-motion | static-scene | mixed")] = "easy",
    seed: SeedOpt = 0,
    frames: Annotated[int, typer.Option("--frames", "-t", help="Number of frames T.")] = 32,
    size: Annotated[str, typer.Option("--size", help="Frame size WxH.")] = "256x192",
    tracks: Annotated[int, typer.Option("--tracks", help="Sparse ground-truth tracks to sample.")] = 1024,
    dense: Annotated[bool, typer.Option(
        "--dense", help="Also store per-pixel ground truth (points_world, tracks3d_dense, visible_dense, "
                        "object_ids); large.")] = False,
    antialias: Annotated[int, typer.Option(
        "--antialias", help="Sub-pixel rays per axis at silhouettes (1 = off).")] = 3,
    out_format: Annotated[str, typer.Option(
        "--format", help="clip (st4r clip folder) | tapvid3d (TAPVid-3D .npz, camera-frame tracks)")] = "clip",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Render a procedural dynamic scene (exact ray casting) and write it as a st4r clip folder with
    depth, intrinsics, camera poses, world 3D tracks, 2D tracks, visibility and dynamic masks."""
    set_verbosity(quiet, verbose)
    if preset not in PRESET_NAMES:
        raise St4rError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    if not 1 <= frames <= 2000:
        raise St4rError("--frames must be between 1 and 2000")
    if tracks < 1:
        raise St4rError("--tracks must be at least 1")
    if not 1 <= antialias <= 8:
        raise St4rError("--antialias must be between 1 and 8")
    if out_format not in ("clip", "tapvid3d"):
        raise St4rError(f"unknown --format {out_format!r}; use clip or tapvid3d")
    size_hw = parse_size(size)
    if Path(out).exists() and not overwrite:
        raise St4rError(f"{out} already exists (use --overwrite to replace it)")
    import time

    from st4r_cli import progress
    from st4r_cli.formats.clip import synthetic_gt, write_clip
    from st4r_cli.synthetic import render_clip

    start = time.perf_counter()
    clip = render_clip(preset, seed, frames, size_hw, antialias=antialias, show_progress=True)
    seconds = time.perf_counter() - start
    gt, meta = synthetic_gt(clip, num_tracks=tracks, seed=seed, dense=dense)
    meta["render_seconds"] = round(seconds, 3)
    if out_format == "tapvid3d":
        from st4r_cli.formats.tapvid3d import from_clip_gt, write_tapvid3d

        write_tapvid3d(out, from_clip_gt(clip.frames, gt))
    else:
        write_clip(out, clip.frames, gt, meta, overwrite=overwrite)
    progress.log(f"{preset} seed {seed}: {frames} frames {size_hw[1]}x{size_hw[0]}, camera {clip.camera_path}, "
                 f"{len(gt['query_t'])} tracks ({int(gt['dynamic'].sum())} dynamic), rendered in {seconds:.1f} s "
                 f"-> {out}")
