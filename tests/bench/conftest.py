"""Fixtures for the benchmark scripts' tests: benchmarks/ is not a package, so its modules load by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(filename: str, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module           # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def colmap() -> ModuleType:
    """benchmarks/_colmap.py"""
    return _load("_colmap.py", "st4r_bench_colmap")


@pytest.fixture(scope="module")
def ablation() -> ModuleType:
    """benchmarks/ablation.py"""
    return _load("ablation.py", "st4r_bench_ablation")
