"""Shared by the end-to-end tests (tests/api, tests/batch): a tiny clip (image folder of a panning textured
plane) and a micro checkpoint. Folders with their own fixtures of the same name (tests/security) keep theirs."""

import numpy as np
import pytest

# settings that keep a whole `st4r adapt` run to a few seconds on one CPU
TINY_SET = {"tracks.grid_size": 6, "adapt.iters": 2, "adapt.frames_per_step": 3, "adapt.pnp_stride": 2,
            "predict.window": 5, "predict.overlap": 2}


def write_plane_clip(folder, num_frames=8, hw=(32, 48), shift_px=2, seed=0):
    """PNG frames of a random texture sliding left by shift_px per frame."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = hw
    coarse = rng.integers(0, 255, size=(h // 4 + 1, (w + shift_px * num_frames) // 4 + 2, 3)).astype(np.uint8)
    texture = np.kron(coarse, np.ones((4, 4, 1), np.uint8))
    folder.mkdir(parents=True)
    for t in range(num_frames):
        Image.fromarray(texture[:h, t * shift_px:t * shift_px + w]).save(folder / f"{t:05d}.png")
    return folder


@pytest.fixture(scope="session")
def micro_checkpoint(tmp_path_factory):
    """A randomly initialised micro St4R network saved as a checkpoint (loads like any model)."""
    import torch

    from st4r_cli.model.config import ModelConfig
    from st4r_cli.model.io import save_model
    from st4r_cli.model.net import St4rNet

    config = ModelConfig(name="micro", img_size_hw=(32, 48), enc_embed_dim=32, enc_depth=1, enc_num_heads=2,
                         dec_embed_dim=32, dec_depth=2, dec_num_heads=2, dpt_feature_dim=16, dpt_last_dim=8,
                         dpt_layer_dims=(8, 16, 16, 16))
    torch.manual_seed(0)
    return save_model(St4rNet(config), tmp_path_factory.mktemp("model") / "micro.safetensors")


@pytest.fixture
def plane_clip_folder(tmp_path):
    return write_plane_clip(tmp_path / "clip")


@pytest.fixture
def make_plane_clip():
    """Factory: write_plane_clip(folder, num_frames, hw, shift_px, seed)."""
    return write_plane_clip


@pytest.fixture
def tiny_set():
    """--set values for a run of a few seconds."""
    return dict(TINY_SET)
