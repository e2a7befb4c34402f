"""The TTA's memory knobs (activation checkpointing, micro-batches, the encoder cache, snapshots on disk)
give the plain path's numbers: per-step losses within 1e-5 relative on CPU fp32 (the issue's bar), and
bit for bit for the knobs the adapt stage's cache key leaves out (`AdaptConfig.NOT_KEYED`)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from st4r_cli.configs import AdaptConfig, PredictConfig, VisibilityConfig
from st4r_cli.model.io import load_model
from st4r_cli.model.snapshot import TensorStore, TrainingSnapshot
from st4r_cli.stages.adapt import adapt_model, resolve_memory

TINY = Path(__file__).resolve().parents[2] / "weights" / "st4r-tiny" / "model.safetensors"
PLAIN = {"checkpointing": "off", "micro_batch": 0, "cache_encoder": "off", "snapshots": "memory", "amp": "off"}
LEAN = {"checkpointing": "on", "micro_batch": 1, "cache_encoder": "auto", "snapshots": "disk", "amp": "off"}


def _adapt(make_clip, memory: dict, params: str = "decoders+heads", iters: int = 3) -> dict:
    """The tiny default model adapted for `iters` steps on a 64x96 plane clip with the memory knobs `memory`."""
    frames, tracks = make_clip(num_frames=6, hw=(64, 96), grid=8)
    model = load_model(TINY)
    cfg = AdaptConfig(iters=iters, frames_per_step=4, params=params, lr=1e-4, **memory)
    predict = PredictConfig(window=24, overlap=4, focal=80.0)
    return adapt_model(model, frames, tracks, None, cfg, predict, VisibilityConfig(), "cpu", seed=1)


def _deltas(out: dict) -> dict:
    return {key: value for key, value in out.items() if key.startswith("delta.")}


@pytest.mark.skipif(not TINY.is_file(), reason="the default tiny weights are not in this checkout")
def test_lean_tta_gives_the_plain_losses(make_clip):
    plain = _adapt(make_clip, PLAIN)
    lean = _adapt(make_clip, LEAN)
    assert plain["loss_history"].size == 3 and np.isfinite(plain["loss_history"]).all()
    np.testing.assert_allclose(lean["loss_history"], plain["loss_history"], rtol=1e-5, atol=0)
    # Adam divides by the gradient's running magnitude: a near-zero gradient component's float noise can
    # flip its update, so the weights are compared as a whole, not element by element
    for key, value in _deltas(plain).items():
        assert np.linalg.norm(lean[key] - value) <= 1e-2 * np.linalg.norm(value), key


@pytest.mark.skipif(not TINY.is_file(), reason="the default tiny weights are not in this checkout")
def test_checkpointing_and_disk_snapshots_are_bit_exact(make_clip):
    """What the cache key ignores must not change a bit: checkpointing (same micro-batches), the encoder
    cache and the snapshots on disk."""
    base = {**PLAIN, "micro_batch": 2, "cache_encoder": "auto"}
    plain = _adapt(make_clip, base)
    lean = _adapt(make_clip, {**base, "checkpointing": "on", "snapshots": "disk", "cache_encoder": "off"})
    assert np.array_equal(lean["loss_history"], plain["loss_history"])
    assert all(np.array_equal(lean[key], value) for key, value in _deltas(plain).items())


@pytest.mark.skipif(not TINY.is_file(), reason="the default tiny weights are not in this checkout")
def test_adapting_the_encoder_with_checkpointing(make_clip):
    plain = _adapt(make_clip, PLAIN, params="all", iters=2)
    lean = _adapt(make_clip, LEAN, params="all", iters=2)
    np.testing.assert_allclose(lean["loss_history"], plain["loss_history"], rtol=1e-5, atol=0)
    assert "delta.enc_blocks.0.attn.qkv.weight" in lean


def test_memory_defaults_per_device_and_size():
    cfg = AdaptConfig()
    tiny = resolve_memory(cfg, "cpu", 5_000_000, encoder_adapts=False)
    assert (tiny.checkpoint, tiny.micro_batch, tiny.amp, tiny.cache_encoder, tiny.snapshots) == (
        False, 0, False, True, "memory")
    big = resolve_memory(cfg, "cpu", 571_000_000, encoder_adapts=False)
    assert (big.checkpoint, big.micro_batch, big.amp, big.snapshots) == (True, 1, False, "disk")
    gpu = resolve_memory(cfg, "cuda", 571_000_000, encoder_adapts=True)
    assert (gpu.checkpoint, gpu.micro_batch, gpu.amp, gpu.cache_encoder, gpu.snapshots) == (
        True, 2, True, False, "memory")


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_training_snapshot_restores_parameters_and_optimizer_state(where):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.AdamW(params, lr=0.1)
    first = TrainingSnapshot(TensorStore(where))
    first.take(params, optimizer)              # before any step: no optimiser state
    initial = [p.detach().clone() for p in params]
    snapshot = TrainingSnapshot(TensorStore(where))
    for _ in range(2):
        sum((p ** 2).sum() for p in params).backward()
        optimizer.step()
    saved = [p.detach().clone() for p in params]
    saved_state = {k: v.clone() for k, v in optimizer.state[params[0]].items()}
    snapshot.take(params, optimizer)
    sum((p ** 3).sum() for p in params).backward()
    optimizer.step()
    snapshot.restore(params, optimizer)
    assert all(torch.equal(p, s) for p, s in zip(params, saved))
    assert all(torch.equal(optimizer.state[params[0]][k], v) for k, v in saved_state.items())
    first.restore(params, optimizer)
    assert all(torch.equal(p, s) for p, s in zip(params, initial)) and not optimizer.state
    for store in (first.store, snapshot.store):
        store.close()
