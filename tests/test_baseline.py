"""The plain-Python baseline does the same work as ``inbox-rules replay``.

``benchmarks.replay`` compares the product's replay speed with ``benchmarks.baseline``;
that is only a fair yardstick if both produce the same updates. The product is driven
through its CLI entry point (the contract), not its internal API, which is changing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks.baseline import baseline_replay
from tests.support.oracle import final_view
from tests.support.streams import as_lines, event_stream
from worker.cli import main

Update = dict[str, Any]


def product_updates(lines: list[bytes], tmp_path: Path) -> tuple[list[Update], str]:
    """The updates ``inbox-rules replay`` writes, and what it says on stderr."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(main, ["replay", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return [json.loads(line) for line in result.stdout.splitlines()], result.stderr


def baseline_updates(lines: list[bytes], rules_version: str,
                     bad: list[tuple[int, str]] | None = None) -> list[Update]:
    return [json.loads(line) for line in baseline_replay(lines, rules_version=rules_version,
                                                         bad=bad)]


def assert_same_work(lines: list[bytes], tmp_path: Path) -> list[Update]:
    product, _ = product_updates(lines, tmp_path)
    assert product, "the stream should produce updates"
    version = product[0]["rules_version"]
    baseline = baseline_updates(lines, version)
    assert len(baseline) == len(product)
    assert final_view(baseline) == final_view(product)
    # Stronger: the same updates in the same publish order, field for field (``seq``
    # included; a field the product may add later and the baseline lacks is skipped).
    for number, (ours, theirs) in enumerate(zip(baseline, product, strict=True)):
        assert ours == {key: theirs[key] for key in ours}, f"update {number}"
    return product


def perturbed(events: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Harder input than the generators give: accounts known only from their events
    (first snapshots dropped), and stale events (some neighbours swapped)."""
    rng = random.Random(seed)
    first_snapshot: set[str] = set()
    kept = []
    for event in events:
        if event["type"] == "account.updated" and event["account_id"] not in first_snapshot:
            first_snapshot.add(event["account_id"])
            continue
        kept.append(event)
    for index in range(len(kept) - 1):
        if rng.random() < 0.05:
            kept[index], kept[index + 1] = kept[index + 1], kept[index]
    return kept


@pytest.mark.parametrize(("agents", "fanout"), [(2, "light"), (2, "heavy"), (7, "light"),
                                                (50, "light"), (50, "heavy")])
def test_benchmark_streams(agents: int, fanout: str, tmp_path: Path) -> None:
    events = event_stream(profile=fanout, agents=agents, conversations=120)
    assert_same_work(as_lines(events), tmp_path)


@pytest.mark.parametrize(("profile", "seed"), [("mixed", 1), ("mixed", 2), ("mixed", 3),
                                               ("chaos", 4), ("chaos", 5), ("chaos", 6)])
def test_broker_and_reliability_streams(profile: str, seed: int, tmp_path: Path) -> None:
    """``mixed``: the broker tests' stream; ``chaos`` adds stale re-sends and events
    without a sequence."""
    assert_same_work(as_lines(event_stream(seed, 1500, profile=profile)), tmp_path)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_accounts_known_from_events_and_stale_events(seed: int, tmp_path: Path) -> None:
    assert_same_work(as_lines(perturbed(event_stream(seed, 1500), seed)), tmp_path)


def test_bad_lines_are_skipped_by_both(tmp_path: Path) -> None:
    good = as_lines(event_stream(8, 200))
    bad_lines = [b"{not json", b'"a string"', b'{"type": "chat.exploded"}',
                 json.dumps({"event_id": "x", "type": "conversation.assigned",
                             "account_id": "acc-8-0", "occurred_at": "2026-11-24T10:00:00Z",
                             "conversation_id": "c-0", "data": {}}).encode(),
                 b"\xff\xfe",
                 # The contract: a '.' in an id would break topic routing.
                 json.dumps({"event_id": "y", "type": "conversation.created",
                             "account_id": "acc-8-0", "occurred_at": "2026-11-24T10:00:00Z",
                             "conversation_id": "c.0"}).encode()]
    lines = good[:50] + bad_lines + good[50:]
    product, stderr = product_updates(lines, tmp_path)
    bad: list[tuple[int, str]] = []
    baseline = baseline_updates(lines, product[0]["rules_version"], bad)
    assert [number for number, _ in bad] == [51, 52, 53, 54, 55, 56]
    assert all(f"line {number}:" in stderr for number, _ in bad)
    assert final_view(baseline) == final_view(product)
    assert len(baseline) == len(product)
