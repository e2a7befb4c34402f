"""Integrity, round two: `st4r export` and `--out` never touch files that are not the run's.

Each test uses the real payload of the report (a symlinked export directory, someone else's directory
with a run.json listing their files, an empty --out, ...) and checks that the victims' files are
byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from security_helpers import adapt_args
from st4r_cli.cli.app import run as cli_run
from test_integrity import one_error_line

EXPORT_ALL = ["--tum", "--ply", "--glb", "--colmap", "--npz", "-q"]


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory, clip_folder, micro_checkpoint) -> Path:
    run_dir = tmp_path_factory.mktemp("done2") / "run"
    assert cli_run(adapt_args(clip_folder, run_dir, micro_checkpoint)) == 0
    return run_dir


def victim_dir(path: Path) -> dict[str, str]:
    """A user's directory with files named like st4r's; returns name -> sha256."""
    path.mkdir(parents=True)
    for name in ("scene.glb", "trajectory_tum.txt", "scene.npz", "notes.txt", "config.yaml", "run.json"):
        (path / name).write_text(f"the user's {name}")
    return snapshot(path)


def snapshot(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


# -- 1. export never writes outside the run ---------------------------------------------------------
def test_export_dir_symlinked_elsewhere_is_refused(tmp_path, capsys, complete_run):
    run_dir = Path(shutil.copytree(complete_run, tmp_path / "run"))
    before = victim_dir(tmp_path / "victim")
    shutil.rmtree(run_dir / "export", ignore_errors=True)
    (run_dir / "export").symlink_to(tmp_path / "victim")
    code = cli_run(["export", str(run_dir), *EXPORT_ALL])
    one_error_line(capsys, code, r"refusing to export into .*symbolic link")
    assert snapshot(tmp_path / "victim") == before


def test_link_inside_the_export_dir_is_refused(tmp_path, capsys, complete_run):
    run_dir = Path(shutil.copytree(complete_run, tmp_path / "run"))
    before = victim_dir(tmp_path / "victim")
    assert cli_run(["export", str(run_dir), "--tum", "-q"]) == 0
    (run_dir / "export" / "ply").symlink_to(tmp_path / "victim")
    code = cli_run(["export", str(run_dir), *EXPORT_ALL])
    one_error_line(capsys, code, r"ply is a symbolic link")
    assert snapshot(tmp_path / "victim") == before


def test_export_out_into_a_users_directory_is_refused(tmp_path, capsys, complete_run):
    before = victim_dir(tmp_path / "victim")
    code = cli_run(["export", str(complete_run), *EXPORT_ALL, "--out", str(tmp_path / "victim")])
    one_error_line(capsys, code, r"not a st4r export")
    assert snapshot(tmp_path / "victim") == before
    code = cli_run(["export", str(complete_run), "--tum", "-q", "--out", ""])
    one_error_line(capsys, code, r"--out is empty")


def test_export_out_new_or_earlier_export_works(tmp_path, complete_run):
    out = tmp_path / "exports"
    assert cli_run(["export", str(complete_run), "--tum", "-q", "--out", str(out)]) == 0
    assert cli_run(["export", str(complete_run), "--ply", "-q", "--out", str(out)]) == 0   # its own again
    manifest = json.loads((out / "st4r-export.json").read_text())
    assert "trajectory_tum.txt" in manifest["files"] and "ply/accumulated.ply" in manifest["files"]
    (tmp_path / "empty").mkdir()
    assert cli_run(["export", str(complete_run), "--tum", "-q", "--out", str(tmp_path / "empty")]) == 0


# -- 2. --out never takes over a directory st4r did not create -------------------------------------
def test_out_on_a_users_directory_is_refused(tmp_path, capsys, clip_folder, micro_checkpoint):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("notes")
    (users / "results.csv").write_text("a,b\n1,2\n")
    (users / "config.yaml").write_text("lr: 0.1\n")
    (users / "run.json").write_text(json.dumps({"status": "complete", "outputs": ["notes.txt", "results.csv"]}))
    before = snapshot(users)
    for extra in ([], ["--until", "decode"]):
        code = cli_run(adapt_args(clip_folder, users, micro_checkpoint, *extra))
        one_error_line(capsys, code, r"refusing to write into .*not a st4r run")
        assert snapshot(users) == before
    code = cli_run(["tracks", str(clip_folder), "--out", str(users), "-q", "--device", "cpu"])
    one_error_line(capsys, code, r"refusing to write into .*not a st4r run")
    assert snapshot(users) == before


def test_empty_out_is_refused(tmp_path, capsys, monkeypatch, clip_folder, micro_checkpoint):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("mine: true\n")
    code = cli_run(adapt_args(clip_folder, "", micro_checkpoint, "--until", "decode"))
    one_error_line(capsys, code, r"--out is empty")
    code = cli_run(["tracks", str(clip_folder), "--out", "", "-q"])
    one_error_line(capsys, code, r"--out is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    assert (tmp_path / "config.yaml").read_text() == "mine: true\n"


def test_default_run_name_never_the_runs_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli_run(["adapt", "/", "-q", "--until", "decode"])
    one_error_line(capsys, code, r"cannot name a run directory after '/'")
    assert not (tmp_path / "runs").exists()


def test_empty_directory_is_fine_and_a_run_resumes(tmp_path, clip_folder, micro_checkpoint):
    out = tmp_path / "empty"
    out.mkdir()
    assert cli_run(adapt_args(clip_folder, out, micro_checkpoint, "--until", "decode")) == 0
    assert cli_run(adapt_args(clip_folder, out, micro_checkpoint)) == 0     # its own run: reused
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_rerun_deletes_only_what_it_can_prove_it_wrote(tmp_path, capsys, clip_folder, micro_checkpoint,
                                                       complete_run):
    run_dir = Path(shutil.copytree(complete_run, tmp_path / "run"))
    (run_dir / "notes.txt").write_text("the user's notes")
    status = json.loads((run_dir / "run.json").read_text())
    assert {"scene.npz", "summary.png"} <= set(status["outputs"])
    # a crafted run.json lists the user's file, even with its true sha256: never deleted (not a st4r name)
    status["outputs"] = [*status["outputs"], "notes.txt"]
    status["output_sha256"]["notes.txt"] = hashlib.sha256(b"the user's notes").hexdigest()
    (run_dir / "run.json").write_text(json.dumps(status))
    assert cli_run(adapt_args(clip_folder, run_dir, micro_checkpoint, "--until", "decode")) == 0
    assert (run_dir / "notes.txt").read_text() == "the user's notes"
    # st4r's own stale outputs (bytes as recorded) are removed
    assert not (run_dir / "scene.npz").exists() and not (run_dir / "summary.png").exists()


def test_changed_output_is_left_in_place_and_never_used(tmp_path, capsys, clip_folder, micro_checkpoint,
                                                        complete_run):
    run_dir = Path(shutil.copytree(complete_run, tmp_path / "run"))
    (run_dir / "summary.png").write_bytes(b"edited by the user")
    assert cli_run(adapt_args(clip_folder, run_dir, micro_checkpoint, "--until", "decode")) == 0
    assert (run_dir / "summary.png").read_bytes() == b"edited by the user"
    assert not (run_dir / "scene.npz").exists()
    code = cli_run(["export", str(run_dir), "--tum", "-q"])
    one_error_line(capsys, code, r"is not complete|has no scene.npz")
