"""benchmarks/ablation.py --set: overrides reach every variant's AdaptConfig / ChainConfig, typed and checked."""

from __future__ import annotations

import argparse

import pytest

from st4r_cli.errors import St4rError


def _args(sets: list[str], **flags) -> argparse.Namespace:
    base = {"iters": None, "lr": None, "params": None, "prior_weight": None}
    return argparse.Namespace(set=sets, **{**base, **flags})


def test_adapt_overrides_then_flags(ablation):
    args = _args(["adapt.prior_kind=anchor", "adapt.lr=1e-4", "adapt.iters=60", "chain.window=12"], iters=7)
    cfg = ablation.shared_adapt_config(args)
    assert cfg.prior_kind == "anchor"
    assert cfg.lr == pytest.approx(1e-4) and isinstance(cfg.lr, float)   # YAML reads 1e-4 as a string
    assert cfg.iters == 7                                                 # the dedicated flag wins
    assert cfg.use_mask is True                                           # untouched fields keep defaults


def test_chain_overrides_only_the_named_fields(ablation):
    out = ablation.chain_overrides(["adapt.iters=3", "chain.window=12", "chain.fuse_tracks=false"])
    assert out == {"window": 12, "fuse_tracks": False}
    chain = ablation.replace(ablation.tta_chain_config(queries="tracks"), **out)
    assert chain.window == 12 and chain.fuse_tracks is False and chain.refine == "none"


@pytest.mark.parametrize("item", ["adapt.nope=1", "adapt.iters=ten", "chain.window=x"])
def test_bad_override_is_a_st4r_error(ablation, item):
    with pytest.raises(St4rError, match="--set"):
        ablation.shared_adapt_config(_args([item])) if item.startswith("adapt.") else ablation.chain_overrides([item])
