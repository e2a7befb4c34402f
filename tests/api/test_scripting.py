"""Scripting: `--json` on `st4r eval` and `st4r doctor` (stdout is exactly one JSON document), shell
completion."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from st4r_cli.cli.app import run as cli_run

ROOT = Path(__file__).resolve().parents[2]


def _st4r(*args, env=None):
    """Run `st4r` in a child process (stdout and stderr kept apart)."""
    env = dict(os.environ, **(env or {}), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "st4r_cli.cli.app", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT)


def test_eval_json_is_the_only_stdout(tmp_path):
    from st4r_cli.formats import load_ground_truth
    from st4r_cli.formats.scene import write_scene

    clip_dir = tmp_path / "clip"
    assert cli_run(["synth", str(clip_dir), "--preset", "mixed", "--seed", "4", "--frames", "6", "--size", "64x48",
                    "--tracks", "50", "-q"]) == 0
    c2w = load_ground_truth(clip_dir).gt["cam_c2w"].astype(np.float64)
    poses = np.linalg.inv(c2w[0])[None] @ c2w
    poses[3, :3, 3] += 0.05 * np.abs(poses[1:, :3, 3]).max()   # one camera moved: ATE > 0
    (tmp_path / "run").mkdir()
    write_scene(tmp_path / "run" / "scene.npz", {"cam_c2w": poses})
    out = _st4r("eval", str(tmp_path / "run"), "--gt", str(clip_dir), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)  # the whole of stdout is one JSON document
    metrics = report["clips"]["clip"]["metrics"]
    assert 0 < metrics["camera/ate"] < 0.05 * np.abs(poses[1:, :3, 3]).max()
    assert report == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "metrics written" in out.stderr
    table = _st4r("eval", str(tmp_path / "run"), "--gt", str(clip_dir))
    assert "camera" in table.stdout and not table.stdout.lstrip().startswith("{")


def test_doctor_json(tmp_path):
    out = _st4r("doctor", "--json", "--device", "cpu", "--weights", str(tmp_path))
    report = json.loads(out.stdout)
    assert set(report) == {"ok", "problems", "checks"}
    names = {check["name"] for check in report["checks"]}
    assert {"st4r", "torch", "numpy", "cpu threads"} <= names
    assert report["ok"] == (out.returncode == 0) == (not report["problems"])
    assert all(set(check) == {"section", "name", "ok", "detail"} for check in report["checks"])


def test_shell_completion_completes_commands():
    out = _st4r(env={"_ST4R_COMPLETE": "complete_bash", "COMP_WORDS": "st4r ba", "COMP_CWORD": "1"})
    assert out.stdout.split() == ["batch"]
    help_text = _st4r("--help").stdout
    assert "--install-completion" in help_text
