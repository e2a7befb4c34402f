"""`st4r adapt` end to end (decode -> tracks -> adapt -> predict -> cameras -> fuse -> scene.npz) with a micro checkpoint, then
`st4r export`; a rerun reuses every stage."""

import json

import numpy as np
from PIL import Image

from st4r_cli.cli.app import run as cli_run
from st4r_cli.formats.scene import read_scene
from st4r_cli.model.io import save_model


def test_adapt_then_export(tmp_path, make_clip, make_prefit_model, capsys):
    frames, _ = make_clip(num_frames=8)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    model_path = save_model(make_prefit_model(), tmp_path / "micro.safetensors")
    run_dir = tmp_path / "run"
    args = ["adapt", str(folder), "--out", str(run_dir), "--model", str(model_path), "--device", "cpu",
            "--long-side", "48", "-q",
            "--set", "tracks.grid_size=6", "--set", "adapt.iters=2", "--set", "adapt.frames_per_step=3",
            "--set", "adapt.pnp_stride=2", "--set", "predict.window=5", "--set", "predict.overlap=2"]
    assert cli_run(args) == 0, capsys.readouterr().err
    scene = read_scene(run_dir / "scene.npz")
    assert scene["tracks3d"].shape == (36, 8, 3) and np.isfinite(scene["tracks3d"]).all()
    assert scene["pointmaps"].shape == (8, 32, 48, 3) and scene["cam_c2w"].shape == (8, 4, 4)
    assert np.allclose(scene["cam_c2w"][0], np.eye(4), atol=1e-4)
    assert scene["window_start"].tolist() == [0, 3]
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "complete"
    # a rerun reuses every stage
    assert cli_run(args) == 0
    status = json.loads((run_dir / "run.json").read_text())
    assert all(stage["reused"] for stage in status["stages"].values())
    assert cli_run(["export", str(run_dir), "--ply", "--tum", "-q"]) == 0
    assert (run_dir / "export" / "ply" / "accumulated.ply").is_file()
    lines = (run_dir / "export" / "trajectory_tum.txt").read_text().splitlines()
    assert len([line for line in lines if not line.startswith("#")]) == 8
