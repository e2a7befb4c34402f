"""Who may import whom: the import contracts of pyproject.toml ([tool.importlinter]) hold.

The layers contract keeps imports one-way (cli > pipeline > runs | stages > libraries > configs and
other leaves), so no import circle can come back; the independence contract keeps the stages from
importing each other (only st4r_cli/pipeline.py wires them). See docs/architecture.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                             "sys.exit(lint_imports_command())"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "2 kept, 0 broken" in report, report


def test_config_module_is_a_leaf():
    """st4r_cli.configs imports nothing of st4r_cli (so runs/ and every stage can import it)."""
    code = ("import sys, st4r_cli.configs; "
            "print(sorted(m for m in sys.modules if m.startswith('st4r_cli.') and m != 'st4r_cli.configs'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_section_repeats_a_field_of_the_visibility_section():
    """The visibility section is shared by the TTA loss and fusion: no other section defines its fields."""
    import dataclasses

    from st4r_cli.configs import SECTIONS

    fields = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()}
    shared = fields["visibility"]
    for name, names in fields.items():
        assert name == "visibility" or not (names & shared), f"{name} repeats {names & shared}"
