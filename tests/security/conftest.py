"""Fixtures of the security / integrity tests (helpers: security_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from security_helpers import micro_model, texture_frames


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def micro_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from st4r_cli.model.io import save_model

    return save_model(micro_model(), tmp_path_factory.mktemp("model") / "micro.safetensors")


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("clip") / "frames"
    folder.mkdir()
    for t, frame in enumerate(texture_frames()):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    return folder
