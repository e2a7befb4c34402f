"""The in-memory path (`runs.run.MemoryRun`, `pipeline.*_in_memory`) is the on-disk pipeline's `run_<stage>`
steps with a cache that keeps arrays instead of files: the same scene, array for array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from st4r_cli import pipeline
from st4r_cli.runs import Run, RunConfig, apply_overrides
from st4r_cli.runs.run import MemoryRun

SETTINGS = ["tracks.grid_size=6", "tracks.camera_grid_size=6", "adapt.iters=2", "adapt.frames_per_step=3",
            "adapt.pnp_stride=2", "predict.window=6", "predict.overlap=2", "adapt.tta_cameras=solved"]


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic clip (`st4r_cli.synthetic`: a moving camera, a moving object) as PNG frames."""
    from PIL import Image

    from st4r_cli.synthetic import render_clip

    clip = render_clip("easy", seed=1, num_frames=10, size_hw=(48, 64), antialias=1)
    folder = tmp_path_factory.mktemp("synthetic") / "frames"
    folder.mkdir()
    for t, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    return folder


def _config(folder: Path, checkpoint: Path) -> RunConfig:
    config = apply_overrides(RunConfig(input=str(folder), model=str(checkpoint), device="cpu"), SETTINGS)
    config.decode.long_side = 64
    return config


@pytest.fixture(scope="module")
def on_disk(synthetic_folder: Path, micro_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, dict[str, np.ndarray]]:
    """Every stage's arrays of the on-disk pipeline (`Run.create`, `run_pipeline`), as `st4r adapt` runs it."""
    with Run.create(tmp_path_factory.mktemp("run") / "run", _config(synthetic_folder, micro_checkpoint)) as run:
        artifacts = pipeline.run_pipeline(run, "cpu")
        return {name: artifact.load() for name, artifact in artifacts.items()}


def _assert_same(scene: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert set(scene) == set(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(scene[key], value, err_msg=key)


def test_the_pipeline_on_a_memory_run_gives_the_scene_on_disk(synthetic_folder, micro_checkpoint, on_disk):
    run = MemoryRun(_config(synthetic_folder, micro_checkpoint))
    artifacts = pipeline.run_pipeline(run, "cpu")
    _assert_same(run.outputs[pipeline.SCENE_FILE], on_disk["fuse"])
    assert set(artifacts) == set(on_disk) and run.status == "complete"
    assert set(run.recorded_stages) >= set(on_disk)


def test_the_in_memory_functions_give_the_scene_on_disk(synthetic_folder, micro_checkpoint, on_disk):
    """The benchmarks' functions on arrays: cameras and depth, adapt and predict, fuse."""
    from st4r_cli.model.io import load_model

    assert "depth" in on_disk and bool(on_disk["cameras"]["ba_accepted"])   # the gated multi-view depth ran
    config = _config(synthetic_folder, micro_checkpoint)
    frames, tracks = on_disk["decode"]["frames"], on_disk["tracks"]
    model = load_model(micro_checkpoint, "cpu")
    cameras, depth = pipeline.geometry_in_memory(model, frames, tracks, config, "cpu")
    _assert_same(cameras, on_disk["cameras"])
    _assert_same(depth, on_disk["depth"])
    adapted, predicted = pipeline.predict_in_memory(model, frames, tracks, depth, config, "cpu", cameras)
    _assert_same(adapted, on_disk["adapt"])
    _assert_same(predicted, on_disk["predict"])
    _assert_same(pipeline.scene_in_memory(frames, tracks, predicted, cameras, depth, config), on_disk["fuse"])
