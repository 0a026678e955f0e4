"""The README's configuration table and set-up commands stay in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

from coordinator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme__documents_every_setting_with_its_flag() -> None:
    for name in Settings.model_fields:
        row = re.search(rf"^\| `TCC_{name.upper()}` \| `--{name.replace('_', '-')}`", README, re.M)
        assert row, f"README's configuration table lacks TCC_{name.upper()}"


def test_readme__documents_no_setting_that_does_not_exist() -> None:
    documented = set(re.findall(r"^\| `TCC_([A-Z_]+)` \|", README, re.M))
    assert documented == {n.upper() for n in Settings.model_fields}


def test_ci__runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/pytest"
    assert test_command in README
    assert test_command in ci
