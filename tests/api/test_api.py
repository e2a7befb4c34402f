"""The Python API: st4r_cli.adapt / load_run / Scene, the same runs as `st4r adapt`."""

import subprocess
import sys

import numpy as np
import pytest

import st4r_cli
from st4r_cli.cli.app import run as cli_run
from st4r_cli.errors import St4rError
from st4r_cli.formats.scene import read_scene


def test_import_is_light():
    code = ("import sys, st4r_cli; st4r_cli.Scene; "
            "print(any(m in sys.modules for m in ('torch', 'cv2', 'av', 'scipy', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_adapt_returns_the_scene_the_cli_writes(tmp_path, plane_clip_folder, micro_checkpoint, tiny_set):
    scene = st4r_cli.adapt(plane_clip_folder, out=tmp_path / "api", model=str(micro_checkpoint), device="cpu",
                           long_side=48, max_frames=6, set=tiny_set, quiet=True)
    assert isinstance(scene, st4r_cli.Scene)
    assert scene.cam_c2w.shape == (6, 4, 4) and scene.pointmaps.shape == (6, 32, 48, 3)
    assert scene.tracks3d.shape == (36, 6, 3) and scene.num_frames == 6 and scene.num_tracks == 36
    assert scene.colors.dtype == np.uint8 and scene.visible.dtype == bool
    assert "ba_accepted" in scene.extras and scene.run_dir == tmp_path / "api"
    # the CLI with the same options gives the same arrays (same code, deterministic on CPU)
    args = ["adapt", str(plane_clip_folder), "--out", str(tmp_path / "cli"), "--model", str(micro_checkpoint),
            "--device", "cpu", "--long-side", "48", "--max-frames", "6", "-q"]
    for key, value in tiny_set.items():
        args += ["--set", f"{key}={value}"]
    assert cli_run(args) == 0
    cli_scene = read_scene(tmp_path / "cli" / "scene.npz")
    for key, value in scene.arrays().items():
        np.testing.assert_array_equal(value, cli_scene[key], err_msg=key)
    # load_run and save round trip
    loaded = st4r_cli.load_run(tmp_path / "api")
    np.testing.assert_array_equal(loaded.tracks3d, scene.tracks3d)
    path = loaded.save(tmp_path / "copy.npz")
    again = st4r_cli.load_run(path)
    assert set(again.arrays()) == set(scene.arrays())
    np.testing.assert_array_equal(again.cam_c2w, scene.cam_c2w.astype(np.float32))
    # what a notebook wants beside the arrays: frame times, the moving pixels, per-frame depth
    assert scene.timestamps is not None and len(scene.timestamps) == 6 and scene.fps > 0
    assert scene.dynamic_mask is None or scene.dynamic_mask.shape == (6, 32, 48)
    w2c = np.linalg.inv(scene.cam_c2w[4].astype(np.float64))
    expected = scene.pointmaps[4].astype(np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
    np.testing.assert_allclose(scene.depth[4], expected[..., 2], rtol=1e-5, atol=1e-5)


def test_until_returns_none_and_load_run_refuses_an_incomplete_run(tmp_path, plane_clip_folder, micro_checkpoint,
                                                                   tiny_set):
    out = tmp_path / "run"
    assert st4r_cli.adapt(plane_clip_folder, out=out, model=str(micro_checkpoint), device="cpu", long_side=48,
                          max_frames=4, set=tiny_set, until="tracks", quiet=True) is None
    with pytest.raises(St4rError, match="not complete|no prediction"):
        st4r_cli.load_run(out)


@pytest.mark.parametrize("options, message", [
    ({"tracker": "nope"}, "--tracker: unknown value 'nope'"),
    ({"depth": "zoe"}, "--depth: unknown value"),
    ({"device": "tpu"}, "--device: unknown value"),
    ({"max_frames": "ten"}, "--max-frames: expected an integer"),
    ({"set": {"adapt.nope": 1}}, "'adapt' has no option 'nope'"),
    ({"set": {"adapt.iters": "many"}}, "adapt.iters"),
    ({"force": ["decodex"]}, "--force: unknown stage"),
    ({"until": "export"}, "--until: unknown stage"),
    ({"maxframes": 3}, "unknown option"),
])
def test_bad_options_fail_like_the_cli_before_anything_is_written(tmp_path, plane_clip_folder, options, message):
    with pytest.raises(St4rError, match=message):
        st4r_cli.adapt(plane_clip_folder, out=tmp_path / "run", quiet=True, **options)
    assert not (tmp_path / "run").exists()


def test_missing_input(tmp_path):
    with pytest.raises(St4rError, match="input not found"):
        st4r_cli.adapt(tmp_path / "nope.mp4", out=tmp_path / "run")
