"""The offline replay end to end through the CLI entry point."""

import json
from pathlib import Path

from click.testing import CliRunner

from worker.cli import main

EVENTS = [
    {"event_id": "e1", "type": "account.updated", "account_id": "acc-1",
     "occurred_at": "2026-11-24T10:00:00Z", "sequence": 1,
     "data": {"plan": "pro", "agents": ["ag-1", "ag-2"], "groups": {"g-sales": ["ag-1"]}}},
    {"event_id": "e2", "type": "conversation.created", "account_id": "acc-1",
     "occurred_at": "2026-11-24T10:00:01Z", "conversation_id": "c-1",
     "data": {"group_id": "g-sales"}},
]


def test_replay_writes_updates_and_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(EVENTS[0]), "{not json", json.dumps(EVENTS[1])]
    path.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["replay", str(path)])
    assert result.exit_code == 2  # bad lines: trouble, the rest replayed
    assert "line 2: invalid JSON" in result.stderr
    updates = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(u["agent_id"], u["categories"]) for u in updates] == [
        ("ag-1", ["all", "new", "primary"]),
        ("ag-2", ["all"]),
    ]
