"""Official St4RTrack compatibility: state-dict schema, golden forward pass, checkpoint loading/import."""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import pytest
import torch

from st4r_cli.errors import St4rError
from st4r_cli.model.config import (ST4RTRACK, ModelConfig, config_from_official_kwargs,
                                   config_from_state_dict_shapes, parse_official_model_string)
from st4r_cli.model.io import load_model, read_checkpoint, save_model
from st4r_cli.model.net import St4rNet

DATA = Path(__file__).resolve().parents[1] / "data" / "model"
GOLDEN = DATA / "st4rtrack_golden_small_landscape.pt"

OFFICIAL_SMALL_ARGS = ("AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', "
                       "img_size=(64, 48), head_type='dpt', output_mode='pts3d', depth_mode=('exp', -inf, inf), "
                       "conf_mode=('exp', 1, inf), enc_embed_dim=128, enc_depth=3, enc_num_heads=4, "
                       "dec_embed_dim=64, dec_depth=10, dec_num_heads=4)")


def readme_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The golden fixture's weights, rebuilt from key and shape alone (reference/README.md recipe)."""
    out = {}
    for key, shape in shapes.items():
        gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        x = torch.randn(tuple(shape), generator=gen, dtype=torch.float64)
        if len(shape) == 1:
            x = 1 + 0.1 * x if key.endswith(".weight") else 0.1 * x
        else:
            x = 0.02 * x
        out[key] = x.float()
    return out


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def small_config(golden: dict) -> ModelConfig:
    return config_from_official_kwargs(dict(golden["config"]))


@pytest.fixture(scope="module")
def golden_weights(golden: dict) -> dict[str, torch.Tensor]:
    return readme_weights({k: tuple(v) for k, v in golden["state_dict_shapes"].items()})


MICRO = ModelConfig(name="micro", img_size_hw=(32, 48), enc_embed_dim=32, enc_depth=2, enc_num_heads=2,
                    dec_embed_dim=32, dec_depth=2, dec_num_heads=2, dpt_feature_dim=16, dpt_last_dim=8,
                    dpt_layer_dims=(8, 16, 16, 16))


def test_full_size_schema_matches_official_keys_and_shapes() -> None:
    schema = json.loads((DATA / "st4rtrack_state_dict_schema.json").read_text())["tensors"]
    with torch.device("meta"):
        model = St4rNet(ST4RTRACK)
    state = model.state_dict()
    assert set(state) == set(schema)
    mismatched = [k for k in schema if list(state[k].shape) != list(schema[k])]
    assert mismatched == []
    assert sum(v.numel() for v in state.values()) == sum(torch.Size(s).numel() for s in schema.values())


def test_official_model_string_parses_without_eval() -> None:
    kwargs = parse_official_model_string(OFFICIAL_SMALL_ARGS)
    assert kwargs["depth_mode"] == ("exp", -float("inf"), float("inf"))
    config = config_from_official_kwargs(kwargs)
    assert config.img_size_hw == (48, 64) and config.enc_num_heads == 4 and config.dec_depth == 10
    with pytest.raises(ValueError):  # only literals are accepted: nothing is ever executed
        parse_official_model_string("AsymmetricCroCo3DStereo(enc_depth=__import__('os').getpid())")


def test_config_from_official_shapes_without_args() -> None:
    schema = json.loads((DATA / "st4rtrack_state_dict_schema.json").read_text())["tensors"]
    config = config_from_state_dict_shapes({k: tuple(v) for k, v in schema.items()})
    same = ("enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth", "dec_num_heads",
            "dpt_feature_dim", "dpt_last_dim", "dpt_layer_dims", "patch_size", "mlp_ratio")
    assert {k: getattr(config, k) for k in same} == {k: getattr(ST4RTRACK, k) for k in same}


def test_golden_forward_matches_official_code(golden: dict, small_config: ModelConfig,
                                              golden_weights: dict[str, torch.Tensor]) -> None:
    model = St4rNet(small_config).eval()
    shapes = {k: tuple(v) for k, v in golden["state_dict_shapes"].items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    model.load_state_dict(golden_weights)
    inputs, expected = golden["inputs"], golden["outputs"]
    with torch.no_grad():
        res1, res2 = model(inputs["img1"], inputs["img2"], inputs["true_shape"], inputs["true_shape"])
    pairs = [(res1["pts3d"], expected["head1_pts3d"]), (res1["conf"], expected["head1_conf"]),
             (res2["pts3d_in_other_view"], expected["head2_pts3d_in_other_view"]),
             (res2["conf"], expected["head2_conf"])]
    for ours, theirs in pairs:
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))


def test_official_checkpoint_loads_and_imports(tmp_path: Path, golden: dict,
                                               golden_weights: dict[str, torch.Tensor]) -> None:
    """A random-weight checkpoint in the official format: {'model': 'module.'-prefixed sd, 'args': ...}."""
    from st4r_cli.cli.app import run

    src = tmp_path / "official.pth"
    torch.save({"model": {f"module.{k}": v for k, v in golden_weights.items()}, "epoch": 3,
                "args": argparse.Namespace(model=OFFICIAL_SMALL_ARGS, lr=1e-4)}, src)
    model = load_model(src, "cpu")
    assert model.config.enc_num_heads == 4 and model.config.dec_num_heads == 4  # from args.model
    inputs, expected = golden["inputs"], golden["outputs"]
    with torch.no_grad():
        res1, res2 = model(inputs["img1"], inputs["img2"])
    torch.testing.assert_close(res1["pts3d"], expected["head1_pts3d"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res2["conf"], expected["head2_conf"], rtol=1e-4, atol=1e-5)

    dst = tmp_path / "out" / "converted.safetensors"
    assert run(["weights", "import", str(src), str(dst), "--quiet"]) == 0
    config, state = read_checkpoint(dst)
    assert config == model.config
    assert set(state) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    assert run(["weights", "import", str(tmp_path / "nope.pth"), str(dst), "--quiet"]) != 0


def test_self_describing_formats_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = St4rNet(MICRO).eval()
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        ref = model(x, x.flip(-1))[0]["pts3d"]
    for name, half in (("m.pt", False), ("m.safetensors", False), ("m16.safetensors", True)):
        path = save_model(model, tmp_path / name, half=half)
        loaded = load_model(path)
        assert loaded.config == model.config
        assert all(p.dtype == torch.float32 for p in loaded.parameters())
        with torch.no_grad():
            out = loaded(x, x.flip(-1))[0]["pts3d"]
        tol = 2e-2 if half else 0.0
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol * float(ref.abs().max()))
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave nothing behind


def test_bad_checkpoints_raise_user_errors(tmp_path: Path) -> None:
    with pytest.raises(St4rError, match="not found"):
        load_model(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(St4rError):
        load_model(garbage)
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, wrong)
    with pytest.raises(St4rError):
        load_model(wrong)
