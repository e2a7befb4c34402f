"""The tiny config, ManyAR portrait handling, batched pair inference and the differentiable forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from st4r_cli.errors import St4rError
from st4r_cli.model.config import ST4R_TINY, ModelConfig
from st4r_cli.model.inference import forward_pairs, frames_to_tensor, predict_pairs
from st4r_cli.model.net import St4rNet

SMALL = ModelConfig(name="small", img_size_hw=(32, 48), enc_embed_dim=32, enc_depth=2, enc_num_heads=2,
                    dec_embed_dim=32, dec_depth=2, dec_num_heads=2, dpt_feature_dim=16, dpt_last_dim=8,
                    dpt_layer_dims=(8, 16, 16, 16))


def _model(config: ModelConfig = SMALL, seed: int = 0) -> St4rNet:
    torch.manual_seed(seed)
    return St4rNet(config).eval()


def test_tiny_preset_size_and_shapes() -> None:
    model = _model(ST4R_TINY)
    assert 3e6 < model.num_parameters < 10e6
    x = torch.rand(2, 3, 144, 256) * 2 - 1
    with torch.no_grad():
        res1, res2 = model(x[:1], x[1:])
    assert res1["pts3d"].shape == (1, 144, 256, 3) and res1["conf"].shape == (1, 144, 256)
    assert res2["pts3d_in_other_view"].shape == (1, 144, 256, 3) and res2["conf"].shape == (1, 144, 256)
    assert bool((res1["conf"] > 1).all()) and bool((res2["conf"] > 1).all())  # conf = 1 + exp(c)


def test_same_seed_same_weights_and_outputs() -> None:
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        a = _model(seed=3)(x[:1], x[1:])[0]["pts3d"]
        b = _model(seed=3)(x[:1], x[1:])[0]["pts3d"]
        c = _model(seed=4)(x[:1], x[1:])[0]["pts3d"]
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_batch_items_are_independent() -> None:
    model = _model()
    x = torch.rand(3, 3, 32, 48) * 2 - 1
    y = torch.rand(3, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        batched = model(x, y)[1]["pts3d_in_other_view"]
        single = model(x[1:2], y[1:2])[1]["pts3d_in_other_view"]
    torch.testing.assert_close(batched[1:2], single, rtol=1e-4, atol=1e-5)


def test_portrait_stored_transposed_equals_upright() -> None:
    """DUSt3R's ManyAR convention: a portrait image stored transposed gives the transposed outputs."""
    model = _model()
    portrait = torch.rand(2, 3, 48, 32) * 2 - 1   # upright H=48 > W=32
    landscape = torch.rand(2, 3, 32, 48) * 2 - 1
    true_portrait = torch.tensor([[48, 32], [48, 32]])
    true_landscape = torch.tensor([[32, 48], [32, 48]])
    with torch.no_grad():
        up1, up2 = model(portrait, portrait.flip(-1))
        st1, st2 = model(portrait.transpose(-1, -2), portrait.flip(-1).transpose(-1, -2), true_portrait, true_portrait)
        mixed1, _ = model(torch.stack([portrait[0].transpose(-1, -2), landscape[1]]), landscape,
                          torch.stack([true_portrait[0], true_landscape[1]]), true_landscape)
        ref_l, _ = model(landscape[1:], landscape[1:])
    torch.testing.assert_close(st1["pts3d"], up1["pts3d"].transpose(1, 2), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(st2["conf"], up2["conf"].transpose(1, 2), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed1["pts3d"][1:], ref_l["pts3d"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        model(landscape, landscape, torch.tensor([[16, 16], [16, 16]]), true_landscape)


def test_predict_pairs_matches_forward_and_handles_any_size() -> None:
    model = _model()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(4, 32, 48, 3), dtype=np.uint8)
    pairs = [(0, 1), (0, 3), (2, 2), (1, 0), (3, 2)]
    out = predict_pairs(model, frames, pairs, batch_size=2, device="cpu")
    assert out["track_pts"].shape == (5, 32, 48, 3) and out["recon_conf"].shape == (5, 32, 48)
    assert all(v.dtype == np.float32 for v in out.values())
    images = frames_to_tensor(frames)
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
    with torch.no_grad():
        ref = forward_pairs(model, images, [3], [2])
    np.testing.assert_allclose(out["recon_pts"][4], ref["recon_pts"][0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["track_conf"][4], ref["track_conf"][0].numpy(), rtol=1e-4, atol=1e-5)
    odd = rng.integers(0, 256, size=(2, 30, 50, 3), dtype=np.uint8)  # not multiples of 16
    assert predict_pairs(model, odd, [(0, 1)])["track_pts"].shape == (1, 30, 50, 3)
    with pytest.raises(St4rError):
        predict_pairs(model, frames, [(0, 9)])
    with pytest.raises(St4rError):
        predict_pairs(model, frames.astype(np.float32), [(0, 1)])


def test_forward_pairs_is_differentiable() -> None:
    model = _model().train()
    images = torch.rand(3, 3, 32, 48) * 2 - 1
    out = forward_pairs(model, images, [0, 0], [1, 2])
    loss = out["track_pts"].square().mean() + out["recon_conf"].mean()
    loss.backward()
    # refinenet4.resConfUnit1 has no input in DPT (as in the official model): it never gets a gradient
    grads = [p.grad for n, p in model.downstream_head1.named_parameters() if "refinenet4.resConfUnit1" not in n]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert model.dec_blocks[0].attn.qkv.weight.grad is not None


def test_parameter_subsets_for_adaptation() -> None:
    model = _model()
    names = {n for n, _ in model.parameter_subset("tracking_branch")}
    assert any(n.startswith("dec_blocks.0.") for n in names) and any(n.startswith("downstream_head1.") for n in names)
    assert not any(n.startswith(("dec_blocks2", "downstream_head2", "enc_blocks")) for n in names)
    total = sum(p.numel() for _, p in model.parameter_subset("all"))
    assert total == model.num_parameters
    with pytest.raises(ValueError):
        model.parameter_subset("nope")
