"""One precedence rule everywhere: the --config file, then --set, then the explicit flags; `st4r adapt`,
`st4r tracks`, the API and `st4r batch` (which builds its runs' configs with the API) save the same config."""

from __future__ import annotations

import yaml

from st4r_cli.api import build_config, run_adapt
from st4r_cli.cli.app import run as cli_run

SET = ["decode.long_side=64", "decode.max_frames=6", "seed=5", "tracks.grid_size=4"]
FLAGS = {"long_side": 48, "max_frames": 4, "seed": 3}


def saved(run_dir) -> dict:
    data = yaml.safe_load((run_dir / "config.yaml").read_text())
    data.pop("input")
    return data


def test_the_same_options_give_the_same_saved_config_everywhere(tmp_path, plane_clip_folder, micro_checkpoint):
    config_file = tmp_path / "start.yaml"
    config_file.write_text("decode:\n  long_side: 80\n  stride: 1\nadapt:\n  iters: 7\n")
    sets = [item for s in SET for item in ("--set", s)]
    flags = ["--long-side", "48", "--max-frames", "4", "--seed", "3"]
    common = ["--config", str(config_file), *sets, *flags, "--model", str(micro_checkpoint), "--device", "cpu", "-q"]
    assert cli_run(["adapt", str(plane_clip_folder), "--out", str(tmp_path / "adapt"), "--until", "decode", *common]) == 0
    tracks_args = [a for a in common if a != "--model" and a != str(micro_checkpoint)]
    assert cli_run(["tracks", str(plane_clip_folder), "--out", str(tmp_path / "tracks"), *tracks_args]) == 0
    run_adapt(plane_clip_folder, tmp_path / "api", config=config_file, set=SET, model=str(micro_checkpoint),
              device="cpu", until="decode", **FLAGS)
    built = build_config(plane_clip_folder, config=config_file, set=SET, model=str(micro_checkpoint), device="cpu",
                         **FLAGS).to_dict()                                  # what batch hands each video
    built.pop("input")
    adapt, tracks, api = saved(tmp_path / "adapt"), saved(tmp_path / "tracks"), saved(tmp_path / "api")
    assert adapt["decode"]["long_side"] == 48 and adapt["decode"]["max_frames"] == 4 and adapt["seed"] == 3
    assert adapt["adapt"]["iters"] == 7 and adapt["tracks"]["grid_size"] == 4       # the file, then --set
    assert adapt == api == yaml.safe_load(yaml.safe_dump(_plain(built)))
    tracks.pop("model"), adapt.pop("model")                   # `st4r tracks` has no --model
    assert tracks == adapt


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
