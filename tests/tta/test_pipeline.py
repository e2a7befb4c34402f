"""`st4r adapt` end to end (decode -> tracks -> adapt -> predict -> cameras -> fuse -> scene.npz) with a micro checkpoint, then
`st4r export`; a rerun reuses every stage."""

import json

import numpy as np
from PIL import Image

from st4r_cli.cli.app import run as cli_run
from st4r_cli.formats.scene import read_scene
from st4r_cli.model.io import save_model
from st4r_cli.runs import Run


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


def _write_frames(tmp_path, frames):
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    return folder


def _recomputed(run_dir) -> list[str]:
    """Stages of the last run that were computed, not reused (from run.json)."""
    stages = json.loads((run_dir / "run.json").read_text())["stages"]
    return [name for name, stage in stages.items() if not stage["reused"]]


def test_a_setting_recomputes_only_its_stage_and_later_ones(tmp_path, make_clip, make_prefit_model, capsys):
    """The cache keys follow the stage boundaries and artifact contents: a camera-solver knob that leaves the
    cameras as they were re-runs cameras only (depth, adapt, predict and fuse see the same cameras), the
    camera solver's extra tracks change the cameras and so everything after them (the multi-view depth
    and the TTA that uses it), a fusion knob only fuse, the threads knob nothing, `--force adapt` only
    adapt (same deltas, same digest), and `--force cameras/predict/fuse` those stages (the cameras come out
    the same, so depth and adapt are reused)."""
    frames, _ = make_clip(num_frames=8)
    folder = _write_frames(tmp_path, frames)
    model_path = save_model(make_prefit_model(), tmp_path / "micro.safetensors")
    run_dir = tmp_path / "run"
    base = ["adapt", str(folder), "--out", str(run_dir), "--model", str(model_path), "--device", "cpu",
            "--long-side", "48", "-q", "--set", "tracks.grid_size=6", "--set", "adapt.iters=1",
            "--set", "adapt.frames_per_step=3", "--set", "predict.window=5", "--set", "predict.overlap=2"]
    assert cli_run(base) == 0, capsys.readouterr().err
    assert _recomputed(run_dir) == ["decode", "tracks", "cameras", "depth", "adapt", "predict", "fuse"]
    verdict = json.loads((run_dir / "run.json").read_text())["cameras"]     # the camera solver's, in run.json
    assert verdict["status"] == "solved" and verdict["breaks"] == [] and verdict["median_reprojection_px"] < 4
    first = read_scene(run_dir / "scene.npz")

    assert cli_run(base + ["--set", "cameras.ba_accept_px=3.5"]) == 0
    assert _recomputed(run_dir) == ["cameras"]     # same cameras: depth, adapt, predict, fuse reused
    assert cli_run(base + ["--set", "tracks.camera_every_k=3"]) == 0        # the camera solver's tracks only
    # other cameras -> other multi-view depth -> the TTA that uses it, and everything after
    assert _recomputed(run_dir) == ["tracks", "cameras", "depth", "adapt", "predict", "fuse"]
    assert cli_run(base + ["--set", "fuse.sigma_fill_px=8.0"]) == 0
    assert _recomputed(run_dir) == ["fuse"]
    assert cli_run(base + ["--set", "predict.cpu_threads=2"]) == 0
    assert _recomputed(run_dir) == []
    np.testing.assert_array_equal(read_scene(run_dir / "scene.npz")["tracks3d"], first["tracks3d"])
    # adapt's artifact holds only its arrays (no timings): recomputed with the same result, its digest is
    # unchanged and nothing after it reruns
    assert cli_run(base + ["--force", "adapt"]) == 0
    assert _recomputed(run_dir) == ["adapt"]
    assert cli_run(base + ["--force", "cameras", "--force", "predict", "--force", "fuse"]) == 0
    assert _recomputed(run_dir) == ["cameras", "predict", "fuse"]
    np.testing.assert_array_equal(read_scene(run_dir / "scene.npz")["tracks3d"], first["tracks3d"])
    # the solved cameras in the TTA: adapt reads the cameras (and is keyed on their content), changes none
    solved = base + ["--set", "adapt.tta_cameras=solved"]
    assert cli_run(solved) == 0
    assert _recomputed(run_dir) == ["adapt", "predict", "fuse"]
    adapted = Run.open(run_dir).artifact("adapt")
    assert int(adapted["solved_camera_steps"]) + int(adapted["pnp_camera_steps"]) == 2   # 1 step + the check
    assert cli_run(solved + ["--set", "cameras.ba_accept_px=3.7"]) == 0
    assert _recomputed(run_dir) == ["cameras"]


def _base_args(folder, run_dir, model_path) -> list[str]:
    return ["adapt", str(folder), "--out", str(run_dir), "--model", str(model_path), "--device", "cpu",
            "--long-side", "48", "-q", "--set", "tracks.grid_size=6", "--set", "adapt.iters=2",
            "--set", "adapt.frames_per_step=3", "--set", "predict.window=5", "--set", "predict.overlap=2"]


def _stages(run_dir) -> list[str]:
    return list(json.loads((run_dir / "run.json").read_text())["stages"])


def test_tracks_at_the_input_resolution_and_the_cache(tmp_path, make_clip, make_prefit_model, capsys):
    """A 96x64 input decoded at 48x32: the tracker runs on the input decoded again at 96x64 (stage
    `decode_tracks`), its tracks come back in the 48x32 frames' pixels; `tracks.long_side` re-runs the
    tracks and what follows, never the decode stage; at the decoded size the decoded frames are tracked."""
    frames, _ = make_clip(num_frames=8)                 # the plane slides 2 px left per frame (48x32 px)
    big = np.kron(frames, np.ones((1, 2, 2, 1), np.uint8))   # 96x64: decodes back to exactly `frames`
    folder = _write_frames(tmp_path, big)
    model_path = save_model(make_prefit_model(), tmp_path / "micro.safetensors")
    run_dir = tmp_path / "run"
    base = _base_args(folder, run_dir, model_path)
    assert cli_run(base) == 0, capsys.readouterr().err
    assert _recomputed(run_dir) == ["decode", "decode_tracks", "tracks", "cameras", "depth", "adapt", "predict",
                                    "fuse"]
    run = Run.open(run_dir)
    assert run.artifact("decode")["frames"].shape == (8, 32, 48, 3)
    assert run.artifact("decode_tracks")["frames"].shape == (8, 64, 96, 3)
    tracks = run.artifact("tracks").load()
    assert tracks["tracks_xy"].shape == (36, 8, 2) and tracks["tracks_xy"].dtype == np.float32
    # in decoded pixels: x(t) = x(0) - 2 t where the point is seen
    truth = tracks["queries"][:, None, 1:] - np.stack([2.0 * np.arange(8), np.zeros(8)], -1)[None]
    seen = tracks["visible"] & (truth[..., 0] > 3)
    assert seen.sum() > 150
    assert np.median(np.linalg.norm(tracks["tracks_xy"] - truth, axis=-1)[seen]) < 0.3
    assert read_scene(run_dir / "scene.npz")["tracks2d"].shape == (36, 8, 2)

    assert cli_run(base + ["--set", "tracks.long_side=64"]) == 0
    recomputed = _recomputed(run_dir)
    assert recomputed[:2] == ["decode_tracks", "tracks"] and "decode" not in recomputed
    assert set(recomputed) <= {"decode_tracks", "tracks", "cameras", "depth", "adapt", "predict", "fuse"}
    assert Run.open(run_dir).artifact("decode_tracks")["frames"].shape == (8, 43, 64, 3)
    # at (or below) the decoded size: the decoded frames themselves, no second decode
    assert cli_run(base + ["--set", "tracks.long_side=48"]) == 0
    assert "decode_tracks" not in _stages(run_dir) and _recomputed(run_dir)[0] == "tracks"
    # the default again: every stage from the cache
    assert cli_run(base) == 0
    assert _recomputed(run_dir) == []


def test_a_few_user_queries_still_adapt_and_a_skipped_tta_is_never_silent(tmp_path, make_clip, make_prefit_model,
                                                                          capsys):
    """`--queries` with 3 points: the output has 3 tracks, the TTA adapts on the tracker's own grid. When
    the TTA cannot run (a 2x2 grid: 4 tracks), the adapt artifact, run.json and the end of `st4r adapt` (even
    with -q) say so."""
    frames, _ = make_clip(num_frames=8)
    folder = _write_frames(tmp_path, frames)
    model_path = save_model(make_prefit_model(), tmp_path / "micro.safetensors")
    queries = tmp_path / "queries.txt"
    queries.write_text("0,10,10\n0,30.5,12\n2,20,20\n")
    run_dir = tmp_path / "run"
    base = _base_args(folder, run_dir, model_path) + ["--queries", str(queries)]
    assert cli_run(base) == 0, capsys.readouterr().err
    assert "warning" not in capsys.readouterr().err
    run = Run.open(run_dir)
    adapted = run.artifact("adapt").load()
    assert adapted["loss_history"].size == 2 and np.isfinite(adapted["loss_history"]).any()
    assert "skipped_reason" not in adapted and run.warnings == []
    assert run.artifact("tracks")["grid_tracks_xy"].shape == (36, 8, 2)
    assert read_scene(run_dir / "scene.npz")["tracks3d"].shape == (3, 8, 3)

    assert cli_run(base + ["--set", "tracks.grid_size=2"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "too few visible tracks" in err
    run = Run.open(run_dir)
    adapted = run.artifact("adapt").load()
    assert adapted["loss_history"].size == 0
    assert "too few visible tracks" in str(adapted["skipped_reason"])
    # 7 tracks (4 grid + 3 queries) cannot fix the cameras either: that is the other warning
    assert len(run.warnings) == 2 and "test-time adaptation skipped" in run.warnings[1]
    assert "no tracks link frame(s) 0-1" in run.warnings[0]
    # reused from the cache, the skip is reported again
    assert cli_run(base + ["--set", "tracks.grid_size=2"]) == 0
    assert "too few visible tracks" in capsys.readouterr().err
    assert len(Run.open(run_dir).warnings) == 2
