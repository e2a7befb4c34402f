"""Pretraining: ConfLoss(Regr3D) on hand-computed cases, pair sampling, loss decrease, exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from st4r_cli.errors import St4rError
from st4r_cli.losses.pretrain import pretrain_loss
from st4r_cli.model.config import ModelConfig
from st4r_cli.model.io import load_model, save_model
from st4r_cli.model.net import St4rNet
from st4r_cli.train.config import PretrainConfig
from st4r_cli.train.data import ClipSpec, collate, load_or_render, make_pair
from st4r_cli.train.loop import lr_at, max_stride_at, pretrain, sample_pairs

MICRO = ModelConfig(name="micro", img_size_hw=(32, 48), enc_embed_dim=32, enc_depth=2, enc_num_heads=2,
                    dec_embed_dim=32, dec_depth=2, dec_num_heads=2, dpt_feature_dim=16, dpt_last_dim=8,
                    dpt_layer_dims=(8, 16, 16, 16))


def _pred(track: torch.Tensor, recon: torch.Tensor, conf1: torch.Tensor, conf2: torch.Tensor):
    return {"pts3d": track, "conf": conf1}, {"pts3d_in_other_view": recon, "conf": conf2}


def test_conf_loss_hand_computed() -> None:
    # one sample, 1 x 2 pixels. GT recon points at distance 1 and 3 -> GT scale 2.
    gt_recon = torch.tensor([[[[0.0, 0.0, 1.0], [0.0, 0.0, 3.0]]]])
    gt_track = torch.tensor([[[[0.0, 0.0, 2.0], [0.0, 0.0, 2.0]]]])
    # prediction: recon at distances 2 and 2 -> pred scale 2; track at (0, 0, 4), (0, 0, 2)
    pr_recon = torch.tensor([[[[0.0, 0.0, 2.0], [0.0, 0.0, 2.0]]]])
    pr_track = torch.tensor([[[[0.0, 0.0, 4.0], [0.0, 0.0, 2.0]]]])
    conf1 = torch.tensor([[[2.0, 1.0]]])
    conf2 = torch.tensor([[[1.0, 3.0]]])
    valid = torch.ones(1, 1, 2, dtype=torch.bool)
    loss, details = pretrain_loss(*_pred(pr_track, pr_recon, conf1, conf2), gt_track, valid, gt_recon, valid,
                                  alpha=0.2)
    # normalised: gt recon (0.5, 1.5), pred recon (1, 1) -> d = 0.5, 0.5; gt track (1, 1), pred track (2, 1) -> 1, 0
    track = ((1.0 * 2 - 0.2 * math.log(2)) + (0.0 * 1 - 0.2 * math.log(1))) / 2
    recon = ((0.5 * 1 - 0.2 * math.log(1)) + (0.5 * 3 - 0.2 * math.log(3))) / 2
    assert float(loss) == pytest.approx(track + recon, rel=1e-6)
    assert details["regr_track"] == pytest.approx(0.5) and details["regr_recon"] == pytest.approx(0.5)


def test_conf_loss_is_scale_invariant_and_masks_invalid() -> None:
    rng = np.random.default_rng(0)
    gt_track = torch.from_numpy(rng.normal(size=(2, 3, 4, 3)) + [0, 0, 5]).float()
    gt_recon = torch.from_numpy(rng.normal(size=(2, 3, 4, 3)) + [0, 0, 5]).float()
    valid = torch.ones(2, 3, 4, dtype=torch.bool)
    ones = torch.ones(2, 3, 4)
    scaled = _pred(gt_track * 7.0, gt_recon * 7.0, ones, ones)
    loss, details = pretrain_loss(*scaled, gt_track, valid, gt_recon, valid)
    assert float(loss) == pytest.approx(0.0, abs=1e-5) and details["regr_track"] < 1e-5
    # garbage at invalid pixels does not matter
    track_valid = valid.clone()
    track_valid[:, 0] = False
    corrupted = gt_track.clone() * 7.0
    corrupted[:, 0] = 1e3
    loss2, _ = pretrain_loss(*_pred(corrupted, gt_recon * 7.0, ones, ones), gt_track, track_valid, gt_recon, valid)
    assert float(loss2) == pytest.approx(0.0, abs=1e-5)


def test_schedules_and_sampling() -> None:
    cfg = PretrainConfig(out_dir="unused", steps=1000, warmup_steps=100, lr=1e-3, min_lr=1e-5, num_frames=24,
                         stride_start=3, curriculum_frac=0.5, num_clips=10, batch_size=8)
    assert lr_at(0, cfg) == pytest.approx(1e-5) and lr_at(99, cfg) == pytest.approx(1e-3)
    assert lr_at(1000, cfg) == pytest.approx(1e-5) and lr_at(550, cfg) == pytest.approx((1e-3 + 1e-5) / 2)
    assert max_stride_at(0, cfg) == 3 and max_stride_at(500, cfg) == 23 and max_stride_at(250, cfg) == 13
    early, late = sample_pairs(cfg, 0, 0), sample_pairs(cfg, 900, 0)
    assert early == sample_pairs(cfg, 0, 0) and early != sample_pairs(cfg, 0, 1)  # deterministic, per rank
    assert all(0 <= j - a <= 3 for _, a, j, _ in early)
    sizes = cfg.sizes_hw
    for step, batch in ((0, early), (901, sample_pairs(cfg, 901, 0))):
        assert {c % len(sizes) for c, _, _, _ in batch} == {step % len(sizes)}  # one size per batch
    assert all(a <= j <= 23 for _, a, j, _ in late)


def test_pairs_from_synthetic_clip_are_consistent(tmp_path: Path) -> None:
    spec = ClipSpec("mixed", 7, 6, (32, 48), num_anchors=2)
    clip = load_or_render(spec, tmp_path)
    anchor = int(clip["anchors"][1])
    assert anchor > 0
    same = make_pair(clip, anchor, anchor)  # (a, a): tracking target == reconstruction target
    ok = same["track_valid"] & same["recon_valid"]
    np.testing.assert_allclose(same["gt_track"][ok], same["gt_recon"][ok], atol=1e-4)
    pair = make_pair(clip, anchor, 5)
    flipped = make_pair(clip, anchor, 5, flip=True)
    np.testing.assert_allclose(flipped["gt_recon"][:, ::-1] * [-1, 1, 1], pair["gt_recon"], atol=1e-6)
    np.testing.assert_array_equal(flipped["img2"][:, :, ::-1], pair["img2"])
    # anchor-frame depth is positive in camera a
    assert (pair["gt_track"][..., 2][pair["track_valid"]] > 0).mean() > 0.9
    with pytest.raises(ValueError):
        make_pair(clip, 1, 3)


def _config(tmp_path: Path, name: str, **kw) -> PretrainConfig:
    init = tmp_path / "micro.safetensors"
    if not init.exists():
        torch.manual_seed(0)
        save_model(St4rNet(MICRO), init)
    base = dict(out_dir=str(tmp_path / name), init=str(init), presets=("easy", "mixed"), num_clips=2,
                num_frames=5, num_anchors=2, sizes_hw=((32, 48),), steps=4, batch_size=2, lr=2e-3,
                warmup_steps=1, ckpt_every=100, log_every=1, cache_dir=str(tmp_path / "cache"), device="cpu")
    base.update(kw)
    return PretrainConfig(**base)


def test_training_reduces_loss_on_fixed_batch(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "run", steps=20)
    clip = load_or_render(ClipSpec("easy", cfg.clip_seed0, 5, (32, 48), 2), cfg.clip_cache)
    batch = collate([make_pair(clip, 0, 2), make_pair(clip, 0, 4)])

    def loss_of(model: St4rNet) -> float:
        with torch.no_grad():
            p1, p2 = model(batch["img1"], batch["img2"])
            return float(pretrain_loss(p1, p2, batch["gt_track"], batch["track_valid"], batch["gt_recon"],
                                       batch["recon_valid"])[0])

    before = loss_of(load_model(cfg.init))
    summary = pretrain(cfg)
    after = loss_of(load_model(summary["checkpoint"]))  # the run's checkpoint.pt loads as a model
    assert summary["step"] == 20
    assert after < 0.8 * before
    lines = [json.loads(line) for line in (Path(cfg.out_dir) / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 21))
    assert json.loads((Path(cfg.out_dir) / "config.json").read_text())["steps"] == 20


def test_killed_run_resumes_exactly(tmp_path: Path) -> None:
    straight = pretrain(_config(tmp_path, "straight"))
    # the same run stopped after every step (time limit 0 -> checkpoint and exit), then rerun
    for expected in range(1, 5):
        summary = pretrain(_config(tmp_path, "resumed", max_minutes=0.0))
        assert summary["step"] == expected
    a = torch.load(straight["checkpoint"], weights_only=False)
    b = torch.load(summary["checkpoint"], weights_only=False)
    assert a["step"] == b["step"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    with pytest.raises(St4rError, match="different settings"):
        pretrain(_config(tmp_path, "resumed", lr=1e-2))
