"""The TTA loop on a tiny exact clip with a micro randomly initialised network."""

import numpy as np
import pytest
import torch

from st4r_cli.errors import St4rError
from st4r_cli.model.inference import forward_pairs, frames_to_tensor
from st4r_cli.configs import PredictConfig, VisibilityConfig
from st4r_cli.model.windows import PairRunner, window_starts
from st4r_cli.stages.adapt import AdaptConfig, adapt_model, check_adapt_config, select_parameters
from st4r_cli.stages.predict import compute_predict


def test_window_starts():
    assert window_starts(10, 24, 4) == [0]
    assert window_starts(24, 24, 4) == [0]
    assert window_starts(32, 24, 4) == [0, 8]
    assert window_starts(150, 24, 4) == [0, 20, 40, 60, 80, 100, 120, 126]
    starts = window_starts(150, 24, 4)
    assert all(b - a <= 20 for a, b in zip(starts, starts[1:]))


def test_cached_encoder_matches_full_forward(make_clip, make_model):
    frames, _ = make_clip(num_frames=3)
    model = make_model()
    images = frames_to_tensor(frames)
    with torch.no_grad():
        full = forward_pairs(model, images, [0, 0, 1], [0, 2, 2])
        cached = PairRunner(model, images, cache_encoder=True)([0, 0, 1], [0, 2, 2])
    for key in full:
        assert torch.allclose(full[key], cached[key], rtol=1e-5, atol=1e-6), key


def test_parameter_groups(make_model):
    model = make_model()
    names = [n for n, _ in select_parameters(model, "tracking")]
    assert names and all(n.startswith(("dec_blocks.", "downstream_head1")) for n in names)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("enc_blocks"))
    heads = [n for n, _ in select_parameters(model, "heads")]
    assert all(n.startswith("downstream_head") for n in heads)


def test_bad_config_is_a_user_error():
    for bad in (AdaptConfig(loss="magic"), AdaptConfig(params="encoder"), AdaptConfig(frames_per_step=1),
                AdaptConfig(prior_kind="l2"), AdaptConfig(prior_weight=-1.0), AdaptConfig(outlier_gate=-1.0),
                AdaptConfig(prior_stride=0), AdaptConfig(tta_focal="free")):
        with pytest.raises(St4rError):
            check_adapt_config(bad)


@pytest.fixture
def run_tta(make_clip, make_prefit_model):
    return lambda *args, **kw: _run(make_clip, make_prefit_model, *args, **kw)


def _run(make_clip, make_model, loss: str, params: str = "decoders+heads", iters: int = 12, seed: int = 0,
         lr: float = 2e-4, **kw):
    """TTA of the pre-fitted micro network on the plane clip (true focal given: K estimation is
    tested in tests/geometry)."""
    frames, tracks = make_clip()
    model = make_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = AdaptConfig(loss=loss, iters=iters, lr=lr, frames_per_step=6, params=params, pnp_stride=2, **kw)
    predict = PredictConfig(window=24, overlap=4, focal=40.0)
    out = adapt_model(model, frames, tracks, None, cfg, predict, VisibilityConfig(), "cpu", seed)
    out.update(compute_predict(model, frames, predict, "cpu"))
    return model, before, out


@pytest.mark.parametrize("loss", ["robust", "baseline"])
def test_tta_lowers_the_loss_and_touches_only_the_adapted_set(loss, run_tta):
    model, before, out = run_tta(loss, params="tracking")
    hist = out["loss_history"]
    assert len(hist) == 12 and np.isfinite(hist).all()
    assert hist[-3:].mean() < 0.9 * hist[:3].mean()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("dec_blocks.", "downstream_head1")) for n in changed)
    for name in changed:
        assert np.allclose(out[f"delta.{name}"], (dict(model.named_parameters())[name] - before[name]).numpy())
    # predictions of the one window: 6 pairs (0, j), made with the adapted weights
    assert out["window_start"].tolist() == [0]
    assert out["window_frames"].tolist() == [[0, 1, 2, 3, 4, 5]]
    assert out["track_pts"].shape == (6, 32, 48, 3) and out["recon_conf"].shape == (6, 32, 48)
    assert out["intrinsics"].shape == (3, 3) and out["intrinsics"][0, 0] > 0


def test_tta_is_deterministic_for_a_seed(run_tta):
    _, _, out_a = run_tta("robust", iters=3, seed=3)
    _, _, out_b = run_tta("robust", iters=3, seed=3)
    assert np.array_equal(out_a["loss_history"], out_b["loss_history"])
    assert np.array_equal(out_a["track_pts"], out_b["track_pts"])


def test_no_tta_leaves_the_model_unchanged(run_tta):
    model, before, out = run_tta("none", iters=5)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert out["loss_history"].size == 0


def test_divergence_rolls_back_and_lowers_the_step(run_tta):
    # An absurd learning rate makes the loss blow up; the guard must roll back and end finite.
    model, _, out = run_tta("robust", params="all", iters=6, lr=5.0, grad_clip=0.0, diverge_factor=1.5)
    assert out["rollbacks"] > 0
    assert out["lr_history"][-1] < out["lr_history"][0]
    assert np.isfinite(out["track_pts"]).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_prior_keeps_the_adapted_network_near_the_frozen_one(run_tta):
    """The self-distillation prior (both loss kinds) pulls the adapted predictions towards the
    pre-TTA ones: the larger its weight, the closer they stay; with weight 0 nothing changes."""
    _, _, frozen = run_tta("none")
    for loss in ("baseline", "robust"):
        drift = {}
        for weight in (0.0, 50.0):
            _, _, out = run_tta(loss, prior_weight=weight)
            drift[weight] = np.abs(out["track_pts"] - frozen["track_pts"]).mean() + np.abs(
                out["recon_pts"] - frozen["recon_pts"]).mean()
        assert drift[0.0] > 0
        assert drift[50.0] < 0.5 * drift[0.0], (loss, drift)


def test_frozen_outputs_are_the_pre_tta_predictions(make_clip, make_prefit_model):
    from st4r_cli.model.inference import frames_to_tensor, predict_pairs
    from st4r_cli.stages.adapt import frozen_window_outputs

    frames, _ = make_clip()
    model = make_prefit_model()
    runner = PairRunner(model, frames_to_tensor(frames), cache_encoder=True)
    cfg = AdaptConfig(prior_weight=1.0, prior_stride=2)
    frozen = frozen_window_outputs(runner, 0, list(range(6)), cfg, focal=40.0, batch_size=4, seed=0)
    ref = predict_pairs(model, frames, [(0, j) for j in range(6)], batch_size=6, device="cpu")
    assert frozen["track_pts"].shape == (6, 16, 24, 3) and int(frozen["stride"]) == 2
    np.testing.assert_allclose(frozen["track_pts"].numpy(), ref["track_pts"][:, ::2, ::2], atol=1e-5)
    np.testing.assert_allclose(frozen["recon_pts"].numpy(), ref["recon_pts"][:, ::2, ::2], atol=1e-5)


def test_anchor_prior_pins_the_geometry_but_not_the_motion(run_tta):
    """prior_kind=anchor: head 2 (every pair) and head 1 on the (0, 0) pair stay near the pre-TTA
    network as with the points prior, while head 1 at time j > 0 (the motion) moves more freely."""
    _, _, frozen = run_tta("none")

    def drift(out: dict) -> dict[str, float]:
        return {"motion": float(np.abs(out["track_pts"][1:] - frozen["track_pts"][1:]).mean()),
                "recon": float(np.abs(out["recon_pts"] - frozen["recon_pts"]).mean())}

    free = drift(run_tta("robust", prior_weight=0.0)[2])
    points = drift(run_tta("robust", prior_weight=50.0)[2])
    anchor = drift(run_tta("robust", prior_weight=50.0, prior_kind="anchor")[2])
    assert anchor["recon"] < 0.5 * free["recon"]              # measured: 0.020 vs 0.176
    assert anchor["motion"] > 1.3 * points["motion"]          # measured: 0.048 vs 0.029
