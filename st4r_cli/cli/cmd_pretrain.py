"""`st4r pretrain OUT_DIR`: pretrain the St4R network on synthetic clips (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from st4r_cli.cli.common import Device, DeviceOpt, QuietOpt, SeedOpt, VerboseOpt, set_verbosity
from st4r_cli.errors import St4rError


def _parse_size(size: str) -> tuple[int, int]:
    """'WxH' -> (H, W)."""
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError as exc:
        raise St4rError(f"--size must look like 256x192 (W x H), got {size!r}") from exc
    if width % 16 or height % 16 or width <= 0 or height <= 0:
        raise St4rError(f"--size {size}: width and height must be positive multiples of 16")
    return height, width


def command(
    out_dir: Annotated[Path, typer.Argument(help="Run directory (config.json, checkpoint.pt, loss.jsonl).")],
    model: Annotated[str, typer.Option(help="Model preset to train from scratch (st4r-tiny, st4rtrack).")] = "st4r-tiny",
    init: Annotated[Optional[Path], typer.Option(help="Start from this checkpoint instead.")] = None,  # noqa: UP007
    steps: Annotated[int, typer.Option(help="Total optimisation steps.")] = 2000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Pairs per step (per process).")] = 4,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 4e-4,
    warmup: Annotated[int, typer.Option(help="Linear warmup steps.")] = 100,
    clips: Annotated[int, typer.Option(help="Number of synthetic training clips.")] = 40,
    frames: Annotated[int, typer.Option(help="Frames per clip.")] = 24,
    stride_start: Annotated[int, typer.Option("--stride-start", help="Largest frame gap at step 0 of the "
                                              "stride curriculum (grows to frames-1 over half the steps).")] = 3,
    anchors: Annotated[int, typer.Option(help="Anchor frames per clip (exact re-anchored tracks).")] = 3,
    size: Annotated[str, typer.Option(help="Clip sizes WxH (multiples of 16), comma-separated; "
                                           "clips alternate between them.")] = "256x192,256x144",
    presets: Annotated[str, typer.Option(help="Comma-separated synthetic presets.")] =
        "easy,occlusion,fast-motion,static-scene,mixed",
    clip_seed: Annotated[int, typer.Option("--clip-seed", help="Seed of the first training clip.")] = 1000,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where rendered clips are cached "  # noqa: UP007
                                                      "(default OUT_DIR/clip_cache).")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads for torch.")] = 1,
    max_minutes: Annotated[Optional[float], typer.Option(help="Checkpoint and stop after this "  # noqa: UP007
                                                         "much training time.")] = None,
    ckpt_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 50,
    device: DeviceOpt = Device.auto,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Pretrain on synthetic clips with ST4RTrack's ConfLoss(Regr3D); rerun the same command to resume.

    Multi-GPU: `torchrun --nproc_per_node N -m st4r_cli.cli.app pretrain OUT ...` (DDP, one process per GPU).
    """
    set_verbosity(quiet, verbose)
    from st4r_cli import progress
    from st4r_cli.train.config import PretrainConfig
    from st4r_cli.train.loop import pretrain

    preset_list = tuple(p.strip() for p in presets.split(",") if p.strip())
    from st4r_cli.synthetic.scene import PRESETS as SYNTH_PRESETS

    unknown = [p for p in preset_list if p not in SYNTH_PRESETS]
    if unknown or not preset_list:
        raise St4rError(f"unknown synthetic preset(s) {unknown}; choose from {', '.join(SYNTH_PRESETS)}")
    if init is not None:
        from st4r_cli.model.io import check_checkpoint_file

        check_checkpoint_file(init, "--init")   # missing, not a checkpoint, or refused: before any work
    try:
        config = PretrainConfig(
            out_dir=str(out_dir), model=model, init=str(init) if init else None, presets=preset_list,
            num_clips=clips, clip_seed0=clip_seed, num_frames=frames, num_anchors=anchors, stride_start=stride_start,
            sizes_hw=tuple(_parse_size(s) for s in size.split(",") if s.strip()), steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup,
            seed=seed, threads=threads, device=device.value if device != Device.auto else "auto",
            cache_dir=str(cache_dir) if cache_dir else None, max_minutes=max_minutes, ckpt_every=ckpt_every)
    except ValueError as exc:
        raise St4rError(str(exc)) from exc
    summary = pretrain(config)
    progress.log(f"step {summary['step']}/{steps}, loss {summary['last_loss']}, "
                 f"{summary['elapsed_s'] / 60:.1f} min; checkpoint {summary['checkpoint']}")
