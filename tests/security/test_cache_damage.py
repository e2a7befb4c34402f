"""Same-size damage to every stage's cached artifact is detected by its content digest and recomputed
(with a one-line warning); the rerun's scene.npz is bit-identical to the undamaged run's."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from security_helpers import adapt_args
from st4r_cli.cli.app import run as cli_run
from st4r_cli.runs import Run, RunConfig
from st4r_cli.runs.cache import load_npz

STAGES = ("decode", "tracks", "cameras", "adapt", "predict", "fuse")  # depth: its own test (MoGe)


def flip_bytes(path: Path) -> None:
    """Same size, corrupt archive: bytes in the middle of the largest member's data are inverted."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(255 - b for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


def resave_with_one_value_changed(path: Path) -> None:
    """Same size, still a valid .npz: one value of the largest numeric array changed, the archive rewritten."""
    arrays = load_npz(path)
    name = max((k for k in arrays if arrays[k].dtype.kind in "biuf"), key=lambda k: arrays[k].nbytes)
    changed = arrays[name].copy()
    flat = changed.reshape(-1)
    flat[len(flat) // 2] = flat[len(flat) // 2] + (1 if changed.dtype != bool else True)
    if changed.dtype == bool:
        flat[len(flat) // 2] = ~flat[len(flat) // 2]
    arrays[name] = changed
    size = path.stat().st_size
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    assert len(buffer.getvalue()) == size
    path.write_bytes(buffer.getvalue())
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None          # a perfectly valid archive with wrong content


def same_arrays(path: Path, reference: bytes) -> bool:
    """Equal arrays, bit for bit, except wall-clock timings (`seconds*`, e.g. adapt's seconds_tta)."""
    ours = load_npz(path)
    with np.load(io.BytesIO(reference), allow_pickle=False) as data:
        theirs = {k: data[k] for k in data.files}
    keys = {k for k in ours if not k.startswith("seconds")}
    return keys == {k for k in theirs if not k.startswith("seconds")} and all(
        ours[k].dtype == theirs[k].dtype and np.array_equal(ours[k], theirs[k], equal_nan=ours[k].dtype.kind == "f")
        for k in keys)


def stage_files(run_dir: Path) -> dict[str, Path]:
    status = json.loads((run_dir / "run.json").read_text())
    return {name: run_dir / record["file"] for name, record in status["stages"].items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, clip_folder, micro_checkpoint) -> dict:
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    assert cli_run(adapt_args(clip_folder, run_dir, micro_checkpoint)) == 0
    return {"scene": (run_dir / "scene.npz").read_bytes(),
            "files": {k: p.read_bytes() for k, p in stage_files(run_dir).items()}, "dir": run_dir}


@pytest.mark.parametrize("damage", [flip_bytes, resave_with_one_value_changed], ids=["torn", "valid-npz"])
@pytest.mark.parametrize("stage", STAGES)
def test_damaged_artifact_is_recomputed(tmp_path, capsys, clip_folder, micro_checkpoint, reference, stage, damage):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference["dir"], run_dir)
    target = stage_files(run_dir)[stage]
    size = target.stat().st_size
    damage(target)
    assert target.stat().st_size == size and target.read_bytes() != reference["files"][stage]
    capsys.readouterr()
    code = cli_run(adapt_args(clip_folder, run_dir, micro_checkpoint))
    err = capsys.readouterr()
    assert code == 0, err.err
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "complete"
    assert not status["stages"][stage]["reused"]                      # recomputed ...
    assert same_arrays(target, reference["files"][stage])             # ... to the same arrays
    others = [s for s in STAGES if s != stage and STAGES.index(s) < STAGES.index(stage)]
    assert all(status["stages"][s]["reused"] for s in others)         # upstream untouched
    assert (run_dir / "scene.npz").read_bytes() == reference["scene"]


def test_damage_warning_is_one_line(tmp_path, capsys, clip_folder, micro_checkpoint, reference):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference["dir"], run_dir)
    resave_with_one_value_changed(stage_files(run_dir)["tracks"])
    args = [a for a in adapt_args(clip_folder, run_dir, micro_checkpoint) if a != "-q"]
    capsys.readouterr()
    assert cli_run(args) == 0
    out = capsys.readouterr()
    warnings = [line for line in (out.out + out.err).splitlines() if "damaged" in line]
    assert len(warnings) == 1 and "tracks" in warnings[0] and "recomputing" in warnings[0], out


def test_cache_level_damage_and_legacy_metadata(tmp_path):
    """StageCache: the file digest is recorded; metadata without it (older runs) is checked by the
    arrays' digest; either way damaged content is recomputed."""
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(100, dtype=np.float32)}

    with Run.create(tmp_path / "run", RunConfig()) as run:
        first = run.stage("toy", 1, {}, ["in"], compute)
        meta_path = first.path.with_suffix(".json")
        meta = json.loads(meta_path.read_text())
        assert len(meta["sha256"]) == 64
        resave_with_one_value_changed(first.path)
        again = run.stage("toy", 1, {}, ["in"], compute)
        assert len(calls) == 2 and not again.reused
        np.testing.assert_array_equal(again["x"], np.arange(100, dtype=np.float32))
        meta = json.loads(meta_path.read_text())
        del meta["sha256"]                                   # as written by an older st4r
        meta_path.write_text(json.dumps(meta))
        assert run.stage("toy", 1, {}, ["in"], compute).reused and len(calls) == 2
        resave_with_one_value_changed(first.path)
        assert not run.stage("toy", 1, {}, ["in"], compute).reused and len(calls) == 3


def test_damaged_scene_after_completion_is_refused(tmp_path, capsys, reference):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference["dir"], run_dir)
    resave_with_one_value_changed(run_dir / "scene.npz")
    code = cli_run(["export", str(run_dir), "--tum", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "modified or damaged" in err and "Traceback" not in err
    assert not (run_dir / "export").exists()


# -- depth (MoGe backend, random small weights; the default pipeline runs without depth) -------------
MOGE_DIMS = [64, 32, 32, 32, 32]


def _moge_stack(dim_in: list, dim_out: list | None) -> dict:
    return {"dim_in": dim_in, "dim_out": dim_out, "dim_res_blocks": MOGE_DIMS, "num_res_blocks": [0, 1, 1, 1, 0],
            "res_block_in_norm": "none", "res_block_hidden_norm": "none",
            "resamplers": ["conv_transpose"] * 3 + ["bilinear"]}


@pytest.mark.parametrize("damage", [flip_bytes, resave_with_one_value_changed], ids=["torn", "valid-npz"])
def test_damaged_depth_artifact_is_recomputed(tmp_path, capsys, clip_folder, damage):
    pytest.importorskip("moge")
    import torch
    from moge.model.v2 import MoGeModel

    config = {"encoder": {"backbone": "dinov2_vits14", "intermediate_layers": [2, 5, 8, 11], "dim_out": 64},
              "neck": _moge_stack([66, 2, 2, 2, 2], None),
              "points_head": _moge_stack(MOGE_DIMS, [None, None, None, None, 3]),
              "mask_head": _moge_stack(MOGE_DIMS, [None, None, None, None, 1]),
              "scale_head": {"dims": [384, 64, 1]}, "remap_output": "exp", "num_tokens_range": [1200, 3600]}
    torch.manual_seed(0)
    weights = tmp_path / "model.pt"
    torch.save({"model_config": config, "model": MoGeModel(**config).state_dict()}, weights)
    run_dir = tmp_path / "run"
    args = ["--weights", str(weights), "--set", "depth.num_tokens=24", "--set", "depth.batch_size=4",
            "--device", "cpu", "-q"]
    assert cli_run(["depth", str(clip_folder), "--out", str(run_dir), "--max-frames", "3", *args]) == 0
    (target,) = (run_dir / "cache").glob("depth-*.npz")
    reference_bytes, published = target.read_bytes(), (run_dir / "depth.npz").read_bytes()
    damage(target)
    assert len(target.read_bytes()) == len(reference_bytes) and target.read_bytes() != reference_bytes
    code = cli_run(["depth", str(run_dir), *args])
    assert code == 0, capsys.readouterr().err
    assert same_arrays(target, reference_bytes)
    assert (run_dir / "depth.npz").read_bytes() == published
