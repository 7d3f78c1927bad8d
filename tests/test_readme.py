"""The README stays a first screen, and CI runs exactly the test command it gives.
(Every setting with its default: tests/test_docs.py, on the settings reference page.)"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    first_screen = README.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in first_screen.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2, "one command that runs the product, one that tests it"
    test_command = commands[1]
    assert re.search(r"\bpytest\b", test_command)
    assert test_command in (REPO / ".ci" / "run").read_text()


def test_the_readme_stays_short() -> None:
    lines = len(README.splitlines())
    assert lines <= 250, f"README.md has {lines} lines: move the detail to a page of docs/"
