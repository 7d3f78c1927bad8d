"""The README stays true of the build: every setting documented with its default, and
CI runs exactly the test command the README's first screen gives."""

from __future__ import annotations

import re
from pathlib import Path

from worker.settings import describe_settings

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    for name, default, _ in describe_settings():
        assert f"| `{name}` | `{default}` |" in README, f"{name} missing or its default stale"


def test_ci_runs_the_readme_test_command() -> None:
    first_screen = README.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in first_screen.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2, "one command that runs the product, one that tests it"
    test_command = commands[1]
    assert re.search(r"\bpytest\b", test_command)
    assert test_command in (REPO / ".ci" / "run").read_text()
