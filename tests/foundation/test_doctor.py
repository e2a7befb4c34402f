"""`st4r doctor`: reports versions and device, and loads every checkpoint in a weights folder."""

from __future__ import annotations

import torch

from st4r_cli.cli.app import run as cli_run


def test_doctor_loads_each_weights_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")                      # one table row per line
    from cotracker.models.build_cotracker import build_cotracker

    from st4r_cli.model.config import preset
    from st4r_cli.model.io import save_model
    from st4r_cli.model.net import St4rNet

    weights = tmp_path / "weights"
    torch.manual_seed(0)
    save_model(St4rNet(preset("st4r-tiny")), weights / "st4r-tiny" / "model.safetensors")
    torch.save(build_cotracker(None, offline=True, window_len=60).state_dict(),
               weights / "scaled_offline.pth")                # official layout: a plain state dict
    (weights / "broken.pth").write_bytes(b"not a checkpoint at all")
    (weights / "st4r-tiny" / "MODEL_CARD.md").write_text("# card\n")

    code = cli_run(["doctor", "--weights", str(weights), "--device", "cpu"])
    out, err = capsys.readouterr()
    rows = {line.split("│")[2].strip(): line for line in out.splitlines() if line.count("│") >= 4}
    assert "loads as St4R model: st4r-tiny" in rows["st4r-tiny/model.safetensors"]
    assert "loads as CoTracker3: offline" in rows["scaled_offline.pth"]
    assert "FAIL" in rows["broken.pth"] and "does not load" in rows["broken.pth"]
    assert "not a checkpoint" in rows["st4r-tiny/MODEL_CARD.md"]
    assert "would use cpu" in rows["--device cpu"]
    assert rows["torch"].count(torch.__version__) == 1
    assert code == 1
    assert err.strip().splitlines() == ["error: 1 problem(s) found: broken.pth"]


def test_doctor_ok_exit_and_missing_folder(tmp_path, capsys):
    code = cli_run(["doctor", "--weights", str(tmp_path / "none"), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert "folder not found" in out and "cotracker" in out and "moge" in out
