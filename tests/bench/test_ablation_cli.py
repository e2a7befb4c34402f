"""benchmarks/ablation.py: --set overrides reach every variant's RunConfig, typed and checked;
--merge joins result files of one setting and recomputes the summary."""

from __future__ import annotations

import argparse
import json

import pytest

from st4r_cli.errors import St4rError


def _args(sets: list[str], **flags) -> argparse.Namespace:
    base = {"iters": None, "lr": None, "params": None, "prior_weight": None, "refine": False, "threads": 1}
    return argparse.Namespace(set=sets, **{**base, **flags})


def test_adapt_overrides_then_flags(ablation):
    args = _args(["adapt.prior_kind=anchor", "adapt.lr=1e-4", "adapt.iters=60", "predict.window=12"], iters=7)
    cfg = ablation.shared_adapt_config(args)
    assert cfg.prior_kind == "anchor"
    assert cfg.lr == pytest.approx(1e-4) and isinstance(cfg.lr, float)   # YAML reads 1e-4 as a string
    assert cfg.iters == 7                                                 # the dedicated flag wins
    assert cfg.use_mask is True                                           # untouched fields keep defaults


def test_variant_config_takes_the_overrides_then_the_flags_then_the_variant(ablation):
    args = _args(["adapt.iters=3", "adapt.loss=baseline", "predict.window=12", "fuse.fuse_tracks=true"], lr=1e-3)
    config = ablation.variant_config(args, {"loss": "none"}, "grid", seed=2)
    assert config.predict.window == 12 and config.predict.cpu_threads == 1 and config.seed == 2
    assert config.fuse.fuse_tracks is True and config.fuse.queries == "grid"       # --set beats the TTA-comparison default
    assert config.cameras.refine == "none" and config.fuse.visibility == "mask"    # the TTA-comparison defaults
    assert config.adapt.iters == 3 and config.adapt.lr == pytest.approx(1e-3) and config.adapt.loss == "none"
    full = ablation.variant_config(_args([], refine=True), {}, "tracks", seed=0)
    assert full.cameras.refine == "ba" and full.fuse.fuse_tracks is True and full.fuse.visibility == "tracker"


@pytest.mark.parametrize("item", ["adapt.nope=1", "adapt.iters=ten", "predict.window=x", "chain.window=12"])
def test_bad_override_is_a_st4r_error(ablation, item):
    with pytest.raises(St4rError, match="--set"):
        ablation.variant_config(_args([item]), {}, "tracks", seed=0)


def _part(tmp_path, name: str, rows: dict, iters: int = 60):
    path = tmp_path / name
    path.write_text(json.dumps({"adapt": {"iters": iters}, "seeds": [int(k.split("/")[1]) for k in rows],
                                "synthetic": rows}))
    return str(path)


def test_merge_recomputes_the_summary_over_all_clips(ablation, tmp_path):
    def row(epe: float) -> dict:
        return {"worldtrack/global/epe": epe}

    a = _part(tmp_path, "a.json", {"easy/0": {"no_tta": row(1.0), "robust": row(0.5)}})
    b = _part(tmp_path, "b.json", {"easy/1": {"no_tta": row(3.0), "robust": row(1.5)}})
    out = tmp_path / "merged.json"
    ablation.merge_results([a, b], str(out))
    merged = json.loads(out.read_text())
    assert sorted(merged["synthetic"]) == ["easy/0", "easy/1"] and merged["seeds"] == [0, 1]
    assert "davis" not in merged["summary"] and "sevenscenes" not in merged["summary"]  # no empty groups
    easy = merged["summary"]["synthetic/easy"]
    assert easy["no_tta"]["worldtrack/global/epe"] == pytest.approx(2.0)
    assert easy["robust"]["worldtrack/global/epe"] == pytest.approx(1.0)
    assert easy["compare"]["robust_vs_no_tta"]["gain_of_mean"] == pytest.approx(0.5)


def test_merge_refuses_parts_run_with_other_settings(ablation, tmp_path):
    a = _part(tmp_path, "a.json", {"easy/0": {"no_tta": {"worldtrack/global/epe": 1.0}}})
    b = _part(tmp_path, "b.json", {"easy/1": {"no_tta": {"worldtrack/global/epe": 1.0}}}, iters=20)
    with pytest.raises(SystemExit, match="other settings"):
        ablation.merge_results([a, b], str(tmp_path / "merged.json"))
    assert not (tmp_path / "merged.json").exists()
