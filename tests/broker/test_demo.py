"""``inbox-rules demo`` against a running worker, and without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.harness import ThreadWorker, settings_for
from worker.errors import DemoError
from worker.tools.demo import run_demo

pytestmark = pytest.mark.broker


def test_demo_prints_each_agents_inbox(vhost: str, tmp_path: Path) -> None:
    settings = settings_for(vhost, tmp_path / "state.sqlite3")
    with ThreadWorker(settings):
        table = run_demo(settings, timeout=20)
    lines = table.splitlines()
    assert lines[2].split() == ["agent", "all", "new", "mine", "primary", "resolved"]
    # Alice is in the PRO group: c-3 is New for her; Bob took c-1 by transfer.
    assert lines[3].split() == ["ag-alice", "2", "1", "0", "1", "1"]
    assert lines[4].split() == ["ag-bob", "2", "0", "1", "1", "1"]
    assert "mine: c-1" in lines[7]


def test_demo_says_so_when_no_worker_answers(vhost: str, tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="is a worker"):
        run_demo(settings_for(vhost, tmp_path / "unused"), timeout=1)
