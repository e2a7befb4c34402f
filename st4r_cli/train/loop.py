"""`st4r pretrain`: the training loop (single process, or DDP when launched by torchrun).

Run directory (`config.out_dir`):
  config.json     the run's `PretrainConfig`, written first
  checkpoint.pt   {'model_config', 'model', 'optimizer', 'step', 'elapsed_s', 'train_config'}; written
                  atomically every `ckpt_every` steps, at the end, on SIGTERM/SIGINT and at the time limit.
                  `load_model` reads it directly; `st4r weights import` converts it to safetensors.
  loss.jsonl      one JSON line per logged step: step, lr, loss terms, max_stride, elapsed_s
  clip_cache/     rendered synthetic clips (unless `cache_dir` points elsewhere)

Re-running the same command resumes from checkpoint.pt. The batch of step s depends only on
(seed, s, rank), so a resumed run sees the same data as an uninterrupted one, and CPU runs are
deterministic for a fixed seed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from st4r_cli import progress
from st4r_cli.errors import St4rError
from st4r_cli.train.config import RESUMABLE_FIELDS, PretrainConfig
from st4r_cli.train.data import ClipSpec, collate, load_or_render, make_pair

if TYPE_CHECKING:
    import torch

    from st4r_cli.model.net import St4rNet


def lr_at(step: int, config: PretrainConfig) -> float:
    """Linear warmup to `lr` over warmup_steps, then cosine decay to `min_lr` at `steps`."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress_frac = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * progress_frac))


def max_stride_at(step: int, config: PretrainConfig) -> int:
    """Stride curriculum: largest |j - a| allowed at `step`."""
    final = config.num_frames - 1
    ramp = max(1, int(config.steps * config.curriculum_frac))
    start = min(config.stride_start, final)
    return int(round(start + (final - start) * min(1.0, step / ramp)))


def clip_specs(config: PretrainConfig) -> list[ClipSpec]:
    presets = config.presets
    sizes = config.sizes_hw
    return [ClipSpec(presets[i % len(presets)], config.clip_seed0 + i, config.num_frames, sizes[i % len(sizes)],
                     config.num_anchors) for i in range(config.num_clips)]


def sample_pairs(config: PretrainConfig, step: int, rank: int) -> list[tuple[int, int, int, bool]]:
    """(clip index, anchor, target, flip) for each item of this rank's batch at `step`."""
    out = []
    max_stride = max_stride_at(step, config)
    anchors = clip_specs(config)[0].anchors
    num_sizes = len(config.sizes_hw)
    same_size = np.arange(step % num_sizes, config.num_clips, num_sizes)
    for item in range(config.batch_size):
        rng = np.random.default_rng([config.seed, step, rank, item])
        clip = int(same_size[rng.integers(len(same_size))])
        anchor = int(anchors[rng.integers(len(anchors))])
        target = int(rng.integers(anchor, min(config.num_frames - 1, anchor + max_stride) + 1))
        flip = bool(config.flip and rng.random() < 0.5)
        out.append((clip, anchor, target, flip))
    return out


def param_groups(model: St4rNet, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on 1-D parameters (norms, biases) and the mask token."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name == "mask_token" else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _StopFlag:
    """Set by SIGTERM/SIGINT so the loop checkpoints and exits cleanly."""

    def __init__(self) -> None:
        self.stop = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.stop = True


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _prepare_run_dir(config: PretrainConfig) -> PretrainConfig:
    """Create the run dir and write config.json, or check it against the saved one when resuming."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved_path = out / "config.json"
    if saved_path.is_file():
        saved = PretrainConfig.from_dict(json.loads(saved_path.read_text()))
        changed = {k for k, v in config.to_dict().items() if saved.to_dict().get(k) != v}
        fixed = sorted(changed - RESUMABLE_FIELDS - {"out_dir"})
        if fixed:
            raise St4rError(f"{out} holds a run with different settings ({', '.join(fixed)}); "
                            "use another --out or the same options")
    config.save(saved_path)
    return config


def _device(config: PretrainConfig, local_rank: int) -> torch.device:
    import torch

    if config.device != "auto":
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _resume_from(ckpt_path: Path, model: St4rNet, optimizer: Any) -> tuple[int, float]:
    """Load a pretraining checkpoint (weights_only: it is a file a user could have replaced) into
    `model` and `optimizer`; returns (step, elapsed seconds)."""
    from st4r_cli.safe_load import load_torch_checkpoint

    ckpt = load_torch_checkpoint(ckpt_path, "pretraining checkpoint")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        return int(ckpt["step"]), float(ckpt["elapsed_s"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise St4rError(f"{ckpt_path} is not a resumable st4r pretraining checkpoint "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None


def build_model(config: PretrainConfig) -> St4rNet:
    """Fresh model from the preset (seeded) or from `config.init`."""
    import torch

    from st4r_cli.model.config import preset
    from st4r_cli.model.io import load_model
    from st4r_cli.model.net import St4rNet

    if config.init:
        return load_model(config.init, "cpu").train()
    torch.manual_seed(config.seed)
    try:
        return St4rNet(preset(config.model))
    except KeyError as exc:
        raise St4rError(str(exc.args[0])) from exc


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Train (or resume) and return a summary {'step', 'elapsed_s', 'last_loss', 'checkpoint'}."""
    import torch
    import torch.distributed as dist

    from st4r_cli.losses.pretrain import pretrain_loss

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    distributed = world_size > 1
    threads_before = torch.get_num_threads()
    torch.set_num_threads(max(1, config.threads))
    device = _device(config, local_rank)
    if distributed:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    is_main = rank == 0
    if is_main:
        config = _prepare_run_dir(config)
    out = Path(config.out_dir)
    ckpt_path = out / "checkpoint.pt"

    model = build_model(config).to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95))
    start_step, elapsed_before = 0, 0.0
    if ckpt_path.is_file():
        start_step, elapsed_before = _resume_from(ckpt_path, model, optimizer)
        if is_main:
            progress.log(f"resuming {out} at step {start_step}")
    net = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        # mask_token and DPT refinenet4.resConfUnit1 are unused by design (as in the official model)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True)

    specs = clip_specs(config)
    clips: dict[int, dict[str, np.ndarray]] = {}
    if start_step < config.steps:
        mine = [i for i in range(len(specs)) if i % world_size == rank]
        for i in progress.track(mine, "rendering clips") if is_main else mine:
            clips[i] = load_or_render(specs[i], config.clip_cache)
        if distributed:
            dist.barrier()
        for i in range(len(specs)):
            clips.setdefault(i, load_or_render(specs[i], config.clip_cache))

    def save(step: int, elapsed: float) -> None:
        if not is_main:
            return
        _atomic_torch_save({"model_config": model.config.to_dict(), "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), "step": step, "elapsed_s": elapsed,
                            "train_config": config.to_dict()}, ckpt_path)

    stop = _StopFlag()
    stop.install()
    use_amp = device.type == "cuda"
    t_start = time.time()
    done, last = start_step, {}
    elapsed = elapsed_before
    log_file = open(out / "loss.jsonl", "a") if is_main else None  # noqa: SIM115
    try:
        steps = range(start_step, config.steps)
        for step in progress.track(steps, "pretraining") if is_main else steps:
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = collate([make_pair(clips[c], a, j, flip) for c, a, j, flip in sample_pairs(config, step, rank)])
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                pred1, pred2 = net(batch["img1"], batch["img2"])
            loss, last = pretrain_loss(pred1, pred2, batch["gt_track"], batch["track_valid"],
                                       batch["gt_recon"], batch["recon_valid"], alpha=config.alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if torch.isfinite(grad_norm):
                optimizer.step()
            elapsed = elapsed_before + time.time() - t_start
            done = step + 1
            if log_file is not None and (done % config.log_every == 0 or done == config.steps):
                record = {"step": done, "lr": lr, "grad_norm": float(grad_norm),
                          "max_stride": max_stride_at(step, config), "elapsed_s": round(elapsed, 2), **last}
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            out_of_time = config.max_minutes is not None and elapsed > 60.0 * config.max_minutes
            if done % config.ckpt_every == 0 or done == config.steps or stop.stop or out_of_time:
                save(done, elapsed)
            if stop.stop or out_of_time:
                break
    finally:
        stop.restore()
        torch.set_num_threads(threads_before)
        if log_file is not None:
            log_file.close()
        if distributed:
            dist.destroy_process_group()
    return {"step": done, "elapsed_s": elapsed_before + time.time() - t_start,
            "last_loss": last.get("loss"), "checkpoint": str(ckpt_path)}
