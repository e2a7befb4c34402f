"""MoGe depth backend end to end with small random-weight checkpoints in the official format.

Official MoGe checkpoints are `{'model_config': dict, 'model': state_dict}`; here the configs are the
official MoGe-2 / MoGe-1 layouts shrunk to a ViT-S backbone and narrow decoders, with seeded random
weights. Nothing may be downloaded: torch hub and the Hugging Face downloader are made to fail.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from st4r_cli.errors import St4rError
from st4r_cli.stages.depth import DepthConfig, check_backend_available, compute_depth

NUM_TOKENS = 24          # ViT tokens per frame: tiny, to keep the CPU run short
DIMS = [64, 32, 32, 32, 32]


def _conv_stack(dim_in: list, dim_out: list) -> dict:
    return {"dim_in": dim_in, "dim_out": dim_out, "dim_res_blocks": DIMS, "num_res_blocks": [0, 1, 1, 1, 0],
            "res_block_in_norm": "none", "res_block_hidden_norm": "none",
            "resamplers": ["conv_transpose"] * 3 + ["bilinear"]}


MOGE2_SMALL = {
    "encoder": {"backbone": "dinov2_vits14", "intermediate_layers": [2, 5, 8, 11], "dim_out": 64},
    "neck": _conv_stack([66, 2, 2, 2, 2], None),
    "points_head": _conv_stack(DIMS, [None, None, None, None, 3]),
    "mask_head": _conv_stack(DIMS, [None, None, None, None, 1]),
    "scale_head": {"dims": [384, 64, 1]},
    "remap_output": "exp",
    "num_tokens_range": [1200, 3600],
}
MOGE1_SMALL = {"encoder": "dinov2_vits14", "intermediate_layers": 4, "dim_proj": 64,
               "dim_upsample": [32, 32, 32], "last_conv_channels": 32, "remap_output": "exp"}


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("MoGe tried to download something")

    monkeypatch.setattr(torch.hub, "load", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    import moge.model.v1
    import moge.model.v2

    monkeypatch.setattr(moge.model.v1, "hf_hub_download", refuse)
    monkeypatch.setattr(moge.model.v2, "hf_hub_download", refuse)


def _save_checkpoint(path: Path, version: str, config: dict, seed: int = 0) -> Path:
    import importlib

    import torch

    torch.manual_seed(seed)   # (random weights; MoGe's constructor builds its ViT without pretrained weights)
    model = importlib.import_module(f"moge.model.{version}").MoGeModel(**config)
    if version == "v2":                       # a confident mask, so most pixels come out valid
        torch.nn.init.constant_(model.mask_head.output_blocks[-1].bias, 4.0)
    torch.save({"model_config": config, "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def moge2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_checkpoint(tmp_path_factory.mktemp("moge") / "model.pt", "v2", MOGE2_SMALL)


def _frames() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (2, 28, 42, 3), dtype=np.uint8)


# MoGe's own `infer` (the reference) runs an fp32 autocast block that warns on the CPU; our backend silences it
@pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")
def test_moge2_end_to_end_matches_official_inference(moge2_checkpoint: Path) -> None:
    import torch

    from st4r_cli.depth.moge import load_moge

    frames = _frames()
    cfg = DepthConfig(backend="moge", moge_weights=str(moge2_checkpoint), num_tokens=NUM_TOKENS,
                      batch_size=1)
    out = compute_depth(frames, cfg, "cpu")
    assert out["depth"].shape == (2, 28, 42) and out["depth"].dtype == np.float32
    assert out["valid"].shape == (2, 28, 42) and out["valid"].dtype == bool
    assert out["intrinsics"].shape == (3, 3) and out["intrinsics_per_frame"].shape == (2, 3, 3)
    assert bool(out["metric"]) is True
    assert out["valid"].any()                 # random weights: some frames may come out all invalid
    assert (out["depth"][out["valid"]] > 0).all() and (out["depth"][~out["valid"]] == 0).all()

    # the same frame through the official `infer`, by hand
    model, version = load_moge(moge2_checkpoint, "cpu")
    assert version == "v2"
    frame = int(out["valid"].sum(axis=(1, 2)).argmax())
    # a batch of one in the (B, H, W, 3) -> (B, 3, H, W) layout the backend feeds: MoGe's focal/shift
    # least squares turns float32 rounding differences of other memory layouts (or thread counts)
    # into depth differences of ~5e-5 relative
    image = torch.from_numpy(np.ascontiguousarray(frames[frame:frame + 1])).permute(0, 3, 1, 2).float() / 255.0
    reference = model.infer(image, num_tokens=NUM_TOKENS, use_fp16=False)
    ref_depth = reference["depth"][0].numpy()
    ref_valid = reference["mask"][0].numpy() & np.isfinite(ref_depth) & (ref_depth > 0)
    assert np.array_equal(out["valid"][frame], ref_valid)
    assert np.allclose(out["depth"][frame][ref_valid], ref_depth[ref_valid], rtol=1e-5)
    # normalised K (image corners at 0 and 1) -> pixels with centres at integers
    k_norm = reference["intrinsics"][0].numpy()
    k_pixels = np.array([[k_norm[0, 0] * 42, 0, k_norm[0, 2] * 42 - 0.5],
                         [0, k_norm[1, 1] * 28, k_norm[1, 2] * 28 - 0.5], [0, 0, 1]])
    assert np.allclose(out["intrinsics_per_frame"][frame], k_pixels, rtol=1e-5, atol=1e-5)
    assert np.allclose(out["intrinsics"][:2, 2], [20.5, 13.5])     # MoGe puts the centre at the middle
    assert ref_valid.any()


def test_moge1_checkpoint_runs(tmp_path: Path) -> None:
    path = _save_checkpoint(tmp_path / "moge1.pt", "v1", MOGE1_SMALL)
    cfg = DepthConfig(backend="moge", moge_weights=str(path), num_tokens=NUM_TOKENS)
    out = compute_depth(_frames()[:1], cfg, "cpu")
    assert out["depth"].shape == (1, 28, 42)
    assert bool(out["metric"]) is False
    assert np.isfinite(out["depth"]).all()
    assert (out["depth"][out["valid"]] > 0).all()


def test_missing_weights_say_where_to_get_them(tmp_path: Path) -> None:
    missing = tmp_path / "model.pt"
    with pytest.raises(St4rError) as info:
        check_backend_available(DepthConfig(backend="moge", moge_weights=str(missing)))
    message = str(info.value)
    assert str(missing) in message and "\n" not in message
    assert "https://huggingface.co/Ruicheng/moge-2-vitl-normal/resolve/main/model.pt" in message


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "moge.model.v2", None)
    with pytest.raises(St4rError, match=r"pip install --no-deps dlr-moge==2\.0\.0"):
        check_backend_available(DepthConfig(backend="moge"))


def test_not_a_moge_checkpoint(tmp_path: Path) -> None:
    import torch

    bad = tmp_path / "bad.pt"
    torch.save({"model": {}}, bad)
    with pytest.raises(St4rError, match="is not a MoGe checkpoint"):
        compute_depth(_frames(), DepthConfig(backend="moge", moge_weights=str(bad)), "cpu")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(St4rError, match="cannot read MoGe checkpoint"):
        compute_depth(_frames(), DepthConfig(backend="moge", moge_weights=str(broken)), "cpu")


def test_backend_none_and_bad_options() -> None:
    with pytest.raises(St4rError, match="backend is 'none'"):
        compute_depth(_frames(), DepthConfig(backend="none"), "cpu")
    with pytest.raises(St4rError, match="unknown depth backend"):
        compute_depth(_frames(), DepthConfig(backend="zoe"), "cpu")
    with pytest.raises(St4rError, match="resolution_level"):
        compute_depth(_frames(), DepthConfig(backend="moge", resolution_level=12), "cpu")


def test_cli_depth_on_a_run_reuses_decode(moge2_checkpoint: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    import cv2

    from st4r_cli.cli.app import run

    folder = tmp_path / "clip"
    folder.mkdir()
    for t, frame in enumerate(_frames()):
        cv2.imwrite(str(folder / f"{t:05d}.png"), frame[..., ::-1])
    run_dir = tmp_path / "run"
    args = ["--weights", str(moge2_checkpoint), "--set", f"depth.num_tokens={NUM_TOKENS}", "-q"]
    assert run(["depth", str(folder), "--out", str(run_dir), *args]) == 0
    from st4r_cli.runs import Run

    decoded_hw = Run.open(run_dir).artifact("decode")["frames"].shape[1:3]
    first = np.load(run_dir / "depth.npz")
    assert first["depth"].shape == (2, *decoded_hw)
    assert run(["depth", str(run_dir), *args]) == 0            # from the run dir: cached, same arrays
    second = np.load(run_dir / "depth.npz")
    assert np.array_equal(first["depth"], second["depth"])
    assert run(["depth", str(run_dir), "--weights", str(tmp_path / "none.pt"), "-q"]) != 0
    assert capsys.readouterr().err.strip().startswith("error: the moge depth backend needs")
