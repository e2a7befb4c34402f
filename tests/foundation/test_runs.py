"""Run directories and the stage cache: reuse, recompute on change, force, torn files, config I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from st4r_cli.errors import St4rError
from st4r_cli.runs import Run, RunConfig, apply_overrides, digest_arrays, load_config, stage_key
from st4r_cli.runs.atomic import atomic_save_npz, remove_stale_temps


@dataclass
class ToyConfig:
    scale: float = 2.0
    offset: int = 0


class Counter:
    """Counts calls of each toy stage."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def __call__(self, name: str, fn):
        def wrapped():
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn()
        return wrapped


def run_toy_pipeline(run: Run, counter: Counter, source: np.ndarray, a_cfg: ToyConfig,
                     b_cfg: ToyConfig) -> dict:
    """source -> a (scale) -> b (offset, depends on a) ; c depends only on source."""
    src = run.stage("src", 1, {}, [digest_arrays({"x": source})], counter("src", lambda: {"x": source}))
    a = run.stage("a", 1, a_cfg, [src.digest], counter("a", lambda: {"y": src["x"] * a_cfg.scale}))
    b = run.stage("b", 1, b_cfg, [a.digest], counter("b", lambda: {"z": a["y"] + b_cfg.offset}))
    c = run.stage("c", 1, {}, [src.digest], counter("c", lambda: {"w": src["x"].sum(keepdims=True)}))
    return {"a": a, "b": b, "c": c}


def test_second_run_reuses_every_stage(tmp_path):
    source = np.arange(12.0).reshape(3, 4)
    counter = Counter()
    with Run.create(tmp_path / "run", RunConfig()) as run:
        first = run_toy_pipeline(run, counter, source, ToyConfig(), ToyConfig(offset=1))
    with Run.create(tmp_path / "run", RunConfig()) as run:
        second = run_toy_pipeline(run, counter, source, ToyConfig(), ToyConfig(offset=1))
    assert counter.calls == {"src": 1, "a": 1, "b": 1, "c": 1}
    assert all(second[k].reused for k in second) and not any(first[k].reused for k in first)
    np.testing.assert_array_equal(second["b"]["z"], source * 2 + 1)


def test_config_change_recomputes_only_dependents(tmp_path):
    source = np.arange(12.0).reshape(3, 4)
    counter = Counter()
    with Run.create(tmp_path / "run", RunConfig()) as run:
        run_toy_pipeline(run, counter, source, ToyConfig(scale=2), ToyConfig(offset=1))
        out = run_toy_pipeline(run, counter, source, ToyConfig(scale=3), ToyConfig(offset=1))
    assert counter.calls == {"src": 1, "a": 2, "b": 2, "c": 1}   # c does not depend on a
    np.testing.assert_array_equal(out["b"]["z"], source * 3 + 1)
    with Run.create(tmp_path / "run", RunConfig()) as run:           # b's config only
        out = run_toy_pipeline(run, counter, source, ToyConfig(scale=3), ToyConfig(offset=5))
    assert counter.calls == {"src": 1, "a": 2, "b": 3, "c": 1}
    np.testing.assert_array_equal(out["b"]["z"], source * 3 + 5)
    with Run.create(tmp_path / "run", RunConfig()) as run:           # back to the first config
        run_toy_pipeline(run, counter, source, ToyConfig(scale=2), ToyConfig(offset=1))
    assert counter.calls == {"src": 1, "a": 2, "b": 3, "c": 1}     # everything still cached


def test_new_input_content_recomputes(tmp_path):
    counter = Counter()
    with Run.create(tmp_path / "run", RunConfig()) as run:
        run_toy_pipeline(run, counter, np.zeros(3), ToyConfig(), ToyConfig())
        out = run_toy_pipeline(run, counter, np.ones(3), ToyConfig(), ToyConfig())
    assert counter.calls == {"src": 2, "a": 2, "b": 2, "c": 2}
    np.testing.assert_array_equal(out["b"]["z"], [2.0, 2.0, 2.0])


def test_identical_upstream_output_keeps_downstream(tmp_path):
    """Keys use content digests: an upstream config change with the same output reuses downstream."""
    counter = Counter()
    source = np.zeros(4)                                 # 0 * any scale = 0: same output of a
    with Run.create(tmp_path / "run", RunConfig()) as run:
        run_toy_pipeline(run, counter, source, ToyConfig(scale=2), ToyConfig())
        run_toy_pipeline(run, counter, source, ToyConfig(scale=5), ToyConfig())
    assert counter.calls == {"src": 1, "a": 2, "b": 1, "c": 1}


def test_force_recomputes_named_stage(tmp_path):
    counter = Counter()
    source = np.arange(3.0)
    with Run.create(tmp_path / "run", RunConfig()) as run:
        run_toy_pipeline(run, counter, source, ToyConfig(), ToyConfig())
    with Run.create(tmp_path / "run", RunConfig(), force=["a"]) as run:
        run_toy_pipeline(run, counter, source, ToyConfig(), ToyConfig())
    # a recomputed with identical output: b keeps its key and is reused
    assert counter.calls == {"src": 1, "a": 2, "b": 1, "c": 1}
    with Run.create(tmp_path / "run", RunConfig(), force=["all"]) as run:
        run_toy_pipeline(run, counter, source, ToyConfig(), ToyConfig())
    assert counter.calls == {"src": 2, "a": 3, "b": 2, "c": 2}


def test_torn_or_unfinished_artifacts_are_recomputed(tmp_path):
    counter = Counter()
    source = np.arange(1000.0)
    with Run.create(tmp_path / "run", RunConfig()) as run:
        arts = run_toy_pipeline(run, counter, source, ToyConfig(), ToyConfig())
    arts["a"].path.write_bytes(arts["a"].path.read_bytes()[:100])            # torn arrays
    arts["b"].path.with_suffix(".json").unlink()                               # metadata never written
    with Run.create(tmp_path / "run", RunConfig()) as run:
        out = run_toy_pipeline(run, counter, source, ToyConfig(), ToyConfig())
    assert counter.calls == {"src": 1, "a": 2, "b": 2, "c": 1}
    np.testing.assert_array_equal(out["b"]["z"], source * 2)


def test_stage_key_depends_on_everything():
    base = stage_key("s", 1, ToyConfig(), ["d1"])
    assert base == stage_key("s", 1, {"scale": 2.0, "offset": 0}, ["d1"])   # dataclass == dict
    assert base != stage_key("s", 2, ToyConfig(), ["d1"])
    assert base != stage_key("s", 1, ToyConfig(offset=1), ["d1"])
    assert base != stage_key("s", 1, ToyConfig(), ["d2"])
    assert base != stage_key("t", 1, ToyConfig(), ["d1"])


def test_digest_arrays_is_content_based():
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.array(1)}
    assert digest_arrays(a) == digest_arrays({"y": np.array(1), "x": np.arange(6, dtype=np.float32).reshape(2, 3)})
    assert digest_arrays(a) != digest_arrays({**a, "x": a["x"].reshape(3, 2)})      # shape
    assert digest_arrays(a) != digest_arrays({**a, "x": a["x"].astype(np.float64)})  # dtype
    assert digest_arrays(a) != digest_arrays({**a, "y": np.array(2)})                # values


def test_config_written_first_and_round_trips(tmp_path):
    config = RunConfig(input="/data/v.mp4", seed=7)
    config.decode.long_side = 384
    config.tracks.grid_size = 8
    with Run.create(tmp_path / "run", config) as run:
        assert (tmp_path / "run" / "config.yaml").is_file()
        assert run.status == "running"
    loaded = load_config(tmp_path / "run" / "config.yaml")
    assert loaded == config
    assert Run.open(tmp_path / "run").config == config


def test_overrides_are_typed_and_checked():
    config = apply_overrides(RunConfig(), ["tracks.grid_size=16", "decode.long_side=384",
                                           "adapt.lr=1e-4", "seed=3", "decode.end=20"])
    assert (config.tracks.grid_size, config.decode.long_side, config.seed) == (16, 384, 3)
    assert config.adapt.lr == pytest.approx(1e-4) and config.decode.end == 20
    for bad, message in [("tracks.grid_size=lots", "expected an integer"),
                         ("tracks.nope=1", "has no option 'nope'"),
                         ("nosection.x=1", "unknown section"),
                         ("decode.upscale=3", "expected true or false"),
                         ("seed", "SECTION.FIELD=VALUE")]:
        with pytest.raises(St4rError, match=message):
            apply_overrides(RunConfig(), [bad])


def test_loading_config_with_unknown_keys_fails(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("decode:\n  long_side: 128\n  bogus: 1\n")
    with pytest.raises(St4rError, match="unknown decode option"):
        load_config(path)
    path.write_text("decode:\n  long_side: 128\n")
    assert load_config(path).decode.long_side == 128


def test_status_lifecycle_and_require_complete(tmp_path):
    with Run.create(tmp_path / "run", RunConfig()) as run:
        run.publish("scene.npz", {"a": np.zeros(2)})
        run.mark_complete()
    opened = Run.open(tmp_path / "run")
    opened.require_complete()
    assert (tmp_path / "run" / "scene.npz").is_file()
    with Run.create(tmp_path / "run", RunConfig()) as run:                 # a new run starts
        assert not (tmp_path / "run" / "scene.npz").exists()               # stale output removed
        run.mark_failed("boom happened")
    with pytest.raises(St4rError, match="not complete .*boom happened"):
        Run.open(tmp_path / "run").require_complete()
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "failed"


def test_one_process_per_run_directory(tmp_path):
    with Run.create(tmp_path / "run", RunConfig()):
        with pytest.raises(St4rError, match="in use"):
            Run.create(tmp_path / "run", RunConfig())
    Run.create(tmp_path / "run", RunConfig()).close()                      # free again


def test_open_errors(tmp_path):
    with pytest.raises(St4rError, match="not found"):
        Run.open(tmp_path / "missing")
    with pytest.raises(St4rError, match="not a st4r run directory"):
        Run.open(tmp_path)
    with Run.create(tmp_path / "run", RunConfig()) as run:
        with pytest.raises(St4rError, match="no finished 'tracks' stage"):
            run.artifact("tracks")


def test_stale_temp_files_are_removed(tmp_path):
    dead = tmp_path / ".x.npz.tmp-999999999-abcd.npz"
    dead.write_bytes(b"partial")
    atomic_save_npz(tmp_path / "x.npz", {"a": np.ones(3)})
    assert remove_stale_temps(tmp_path) == 1 and not dead.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]


def test_not_keyed_fields_do_not_change_the_key():
    from typing import ClassVar

    @dataclass
    class ThreadedConfig:
        NOT_KEYED: ClassVar[tuple[str, ...]] = ("threads",)
        scale: float = 1.0
        threads: int = 1

    base = stage_key("s", 1, ThreadedConfig(), [])
    assert base == stage_key("s", 1, ThreadedConfig(threads=8), [])
    assert base != stage_key("s", 1, ThreadedConfig(scale=2.0), [])


def test_run_json_says_how_much_of_the_video_moves(tmp_path):
    import json

    import numpy as np

    from st4r_cli.pipeline import _note_motion
    from st4r_cli.runs import Run, RunConfig

    mask = np.zeros((4, 8, 8), bool)
    mask[:, :4, :2] = True                                   # 1/8 of the pixels
    with Run.create(tmp_path / "still", RunConfig()) as run:
        _note_motion(run, {"dynamic_mask": mask, "track_static": np.array([True] * 9 + [False])})
    status = json.loads((tmp_path / "still" / "run.json").read_text())
    assert status["motion"] == {"moving_pixels": 0.125, "moving_tracks": 0.1}
    assert not status.get("warnings")
    with Run.create(tmp_path / "unsolved", RunConfig()) as run:   # rejected cameras: no track is static
        _note_motion(run, {"track_static": np.zeros(10, bool), "ba_accepted": np.array(False)})
    status = json.loads((tmp_path / "unsolved" / "run.json").read_text())
    assert status["motion"] == {"moving_tracks": 1.0} and not status.get("warnings")
    with Run.create(tmp_path / "moving", RunConfig()) as run:
        _note_motion(run, {"dynamic_mask": mask, "track_static": np.array([True] * 3 + [False] * 7),
                           "ba_accepted": np.array(True)})
    status = json.loads((tmp_path / "moving" / "run.json").read_text())
    assert status["motion"]["moving_tracks"] == 0.7
    assert status["warnings"] == ["motion: 70% of the tracks move; the cameras rest on the few static ones "
                                  "and may follow the movers"]


def test_run_json_records_each_stages_peak_memory(tmp_path):
    import json

    import numpy as np

    from st4r_cli.runs import Run, RunConfig
    from st4r_cli.runs.memory import current_rss_bytes

    def big() -> dict:
        block = np.ones(300 * 2**20 // 8)            # 300 MiB, touched
        return {"sum": np.asarray(block.sum())}

    before = current_rss_bytes() / 2**20
    with Run.create(tmp_path / "run", RunConfig()) as run:
        run.stage("big", 1, {}, [], big)
        run.stage("small", 1, {}, [], lambda: {"x": np.zeros(3)})
    stages = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    assert stages["big"]["peak_rss_mb"] >= before + 250
    assert stages["small"]["peak_rss_mb"] < stages["big"]["peak_rss_mb"] - 200
    assert "cuda_max_allocated_mb" not in stages["big"]          # no GPU here


def test_a_config_saved_before_the_cameras_fields_moved_still_loads_with_the_same_meaning(tmp_path):
    import yaml

    from st4r_cli.runs.config import CONFIG_HEADER, load_config, save_config

    path = tmp_path / "config.yaml"
    save_config(RunConfig(), path)
    data = yaml.safe_load(path.read_text())
    # as st4r wrote it before: ba_dynamic_rel among the cameras settings, one ba_accept_px for both uses
    del data["fuse"]["dynamic_rel"], data["cameras"]["ba_link_px"]
    data["cameras"].update(ba_dynamic_rel=0.07, ba_accept_px=3.0)
    path.write_text(f"{CONFIG_HEADER}\n" + yaml.safe_dump(data, sort_keys=False))
    config = load_config(path)
    assert config.fuse.dynamic_rel == 0.07
    assert config.cameras.ba_accept_px == 3.0 and config.cameras.ba_link_px == 3.0
    data["cameras"]["ba_dynamic_rell"] = 1.0                     # still no unknown option passes
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(St4rError, match="ba_dynamic_rell"):
        load_config(path)
