"""The plain-Python baseline does the same work as ``inbox-rules replay``.

``benchmarks.replay`` compares the product's replay speed with ``benchmarks.baseline``;
that is only a fair yardstick if both produce the same updates. The product is driven
through its CLI entry point (the contract), not its internal API, which is changing.
"""

from __future__ import annotations

import copy
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks.baseline import baseline_replay
from tests.support.oracle import final_view
from tests.support.streams import START, as_lines, envelope, event_stream, iso
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


# -- snoozes, reads, mentions and details --------------------------------------------
# The generated streams above hold none of these: a hand-made stream uses each of them,
# and seeded streams get them sprinkled in.

def _at(seconds: float) -> str:
    return iso(START + timedelta(seconds=seconds))


class HandMade:
    """Events with fresh ids, at the moment given (seconds after START)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, kind: str, account: str, seconds: float,
                 conversation: str | None = None, *, sequence: int | None = None,
                 **data: Any) -> dict[str, Any]:
        event = envelope(kind, account, data, event_id=f"hm-{len(self.events)}",
                         occurred_at=_at(seconds), conversation_id=conversation,
                         sequence=sequence)
        self.events.append(event)
        return event


def hand_made_stream() -> list[dict[str, Any]]:
    """Every new event type and every way a snooze ends, over a PRO team with a group,
    a single-agent account and an account known only from its events."""
    ev = HandMade()
    ev("account.updated", "acc-a", 0, plan="pro", agents=["ag-1", "ag-2"],
       groups={"g-1": ["ag-1"]})
    ev("account.updated", "acc-s", 0, plan="free", agents=["ag-9"])
    ev("conversation.created", "acc-a", 1, "c-1", group_id="g-1", channel="web",
       priority="high", labels=["vip"], attributes={"order": "A-1", "items": 2})
    ev("message.created", "acc-a", 2, "c-1", author="visitor")
    # An internal note: ag-3 is learned from the mention (the account is re-categorised).
    ev("message.created", "acc-a", 3, "c-1", author="agent", agent_id="ag-1",
       mentions=["ag-2", "ag-3", "ag-1"])
    ev("conversation.read", "acc-a", 4, "c-1", agent_id="ag-2")
    ev("conversation.updated", "acc-a", 5, "c-1", priority="urgent", labels=[],
       attributes={"order": None, "ratio": 0.5, "vip": True})
    ev("conversation.updated", "acc-a", 5, "c-1", channel=None)
    # Two snoozes of one account and one of another wake at one instant: one cause per
    # account, accounts by id, conversations by id.
    ev("conversation.snoozed", "acc-a", 6, "c-1", until=_at(30))
    ev("conversation.created", "acc-a", 7, "c-2")
    ev("conversation.snoozed", "acc-a", 8, "c-2", until=_at(30))
    ev("conversation.created", "acc-s", 9, "c-1")
    ev("message.created", "acc-s", 10, "c-1", author="visitor")
    # The same instant with another offset (and milliseconds elsewhere).
    ev("conversation.snoozed", "acc-s", 11, "c-1",
       until=(START + timedelta(seconds=30)).astimezone(
           timezone(timedelta(hours=2))).isoformat())
    ev("conversation.created", "acc-a", 12, "c-3", group_id="g-1")
    ev("conversation.snoozed", "acc-a", 13, "c-3", until=_at(25.5))
    ev("conversation.read", "acc-s", 14, "c-1", agent_id="ag-9")
    # Snoozed without until (only an event wakes it), woken by each kind of event.
    ev("conversation.created", "acc-s", 15, "c-2")
    ev("conversation.snoozed", "acc-s", 16, "c-2")
    ev("conversation.unsnoozed", "acc-s", 17, "c-2")
    ev("conversation.snoozed", "acc-s", 18, "c-2", until=None)
    ev("message.created", "acc-s", 19, "c-2", author="visitor")
    ev("conversation.snoozed", "acc-s", 20, "c-2", until=_at(90))
    ev("conversation.reopened", "acc-s", 21, "c-2")
    ev("conversation.snoozed", "acc-s", 22, "c-2", until=_at(95))
    ev("conversation.resolved", "acc-s", 23, "c-2")  # clears the snooze: no wake at 95
    # A snooze until a moment already past leaves it open (here: reopens it).
    ev("conversation.snoozed", "acc-s", 24, "c-2", until=_at(24))
    # This event comes after the 25.5 and 30 wakes are due: they go out first.
    ev("message.created", "acc-a", 40, "c-2", author="agent", agent_id="ag-2")
    dup = ev("conversation.snoozed", "acc-a", 41, "c-2", until=_at(60))
    ev("conversation.assigned", "acc-a", 42, "c-1", agent_id="ag-2")
    # Snoozed from resolved; then deleted while snoozed: no wake.
    ev("conversation.resolved", "acc-a", 43, "c-3")
    ev("conversation.snoozed", "acc-a", 44, "c-3", until=_at(70))
    ev("conversation.created", "acc-a", 45, "c-4")
    ev("conversation.snoozed", "acc-a", 46, "c-4", until=_at(65))
    ev("conversation.deleted", "acc-a", 47, "c-4")
    # Snoozed again later than before: only the last until counts.
    ev("conversation.snoozed", "acc-a", 48, "c-1", until=_at(50))
    ev("conversation.snoozed", "acc-a", 49, "c-1", until=_at(80))
    # A reader and a mentioned agent the account did not know.
    ev("conversation.read", "acc-a", 50, "c-2", agent_id="ag-4")
    ev("message.created", "acc-a", 51, "c-2", author="agent", agent_id="ag-4",
       mentions=["ag-5"])
    # An account known only from its events, with a snooze that wakes.
    ev("conversation.created", "acc-e", 52, "c-1")
    ev("message.created", "acc-e", 53, "c-1", author="visitor")
    ev("conversation.snoozed", "acc-e", 54, "c-1", until=_at(58))
    ev("message.created", "acc-e", 55, "c-1", author="agent", agent_id="ag-7",
       mentions=["ag-8"])
    # Sequenced: a stale snooze changes nothing; a re-sent one neither.
    ev("conversation.created", "acc-e", 56, "c-2", sequence=1)
    ev("conversation.snoozed", "acc-e", 57, "c-2", sequence=3, until=_at(59))
    ev("conversation.unsnoozed", "acc-e", 58, "c-2", sequence=2)
    ev.events.append(dict(dup, occurred_at=_at(85)))  # a duplicate: wakes all the same
    ev("conversation.updated", "acc-a", 100, "c-3", priority="low")  # after every wake
    ev("message.created", "acc-a", 101, "c-1", author="visitor")
    ev("conversation.read", "acc-a", 102, "c-1", agent_id="ag-1")
    return ev.events


def test_every_new_event_type_against_the_product(tmp_path: Path) -> None:
    events = hand_made_stream()
    assert {str(e["type"]) for e in events} >= {
        "conversation.updated", "conversation.snoozed", "conversation.unsnoozed",
        "conversation.read"}
    product = assert_same_work(as_lines(events), tmp_path)
    wakes = [u for u in product if u["cause_event_id"].startswith("time:")]
    causes = list(dict.fromkeys((u["cause_event_id"], u["account_id"]) for u in wakes))
    assert causes[:3] == [("time:2026-11-24T10:00:25.500000Z", "acc-a"),
                          ("time:2026-11-24T10:00:30Z", "acc-a"),
                          ("time:2026-11-24T10:00:30Z", "acc-s")]
    assert all(u["occurred_at"] == u["cause_event_id"].removeprefix("time:") for u in wakes)
    assert any(u["unread"] for u in product) and any(
        u["unread_counts"]["all"] for u in product)
    assert {u["agent_id"] for u in product} >= {"ag-3", "ag-4", "ag-5", "ag-8"}


def with_new_events(events: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """``events`` with snoozes (until past, now, soon, later or never), unsnoozes,
    reads, mentions and detail changes sprinkled in, some of them re-sent later."""
    rng = random.Random(seed)
    agents: list[str] = ["ag-new-1"]
    out: list[dict[str, Any]] = []
    extra = 0

    def add(base: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
        nonlocal extra
        extra += 1
        event = envelope(kind, base["account_id"], data, event_id=f"x{seed}-{extra}",
                         occurred_at=base["occurred_at"],
                         conversation_id=base["conversation_id"])
        out.append(event)

    for event in events:
        event = copy.deepcopy(event)
        data = event.get("data") or {}
        if event["type"] == "account.updated":
            agents.extend(a for a in data["agents"] if a not in agents)
        elif (event["type"] == "message.created" and data.get("author") == "agent"
              and rng.random() < 0.3):
            data["mentions"] = rng.sample(agents, min(len(agents), rng.randint(1, 3)))
        out.append(event)
        if "conversation_id" not in event:
            continue
        roll = rng.random()
        if roll < 0.08:
            now = datetime.fromisoformat(event["occurred_at"])
            until = rng.choice((None, -3, 0, 0.5, 2, 7, 40, 500))
            add(event, "conversation.snoozed", {} if until is None else {
                "until": iso(now + timedelta(seconds=until))})
        elif roll < 0.11:
            add(event, "conversation.unsnoozed", {})
        elif roll < 0.18:
            add(event, "conversation.read", {"agent_id": rng.choice(agents)})
        elif roll < 0.20:
            add(event, "conversation.updated",
                {"priority": rng.choice(("low", "urgent")), "labels": ["l-1"],
                 "attributes": {"k": rng.choice((1, None, "v"))}})
        if rng.random() < 0.02 and len(out) > 10:
            out.append(copy.deepcopy(out[rng.randrange(len(out) - 10, len(out))]))
    return out


@pytest.mark.parametrize(("profile", "seed"), [("mixed", 11), ("mixed", 12), ("chaos", 13),
                                               ("light", 14), ("heavy", 15)])
def test_streams_with_new_event_types(profile: str, seed: int, tmp_path: Path) -> None:
    if profile in ("light", "heavy"):
        events = event_stream(seed, profile=profile, agents=7, conversations=80)
    else:
        events = event_stream(seed, 1200, profile=profile)
    mixed = with_new_events(events, seed)
    kinds = {str(e["type"]) for e in mixed}
    assert {"conversation.snoozed", "conversation.read", "conversation.updated"} <= kinds
    product = assert_same_work(as_lines(mixed), tmp_path)
    assert any(u["cause_event_id"].startswith("time:") for u in product)


def test_bad_new_events_are_skipped_by_both(tmp_path: Path) -> None:
    good = as_lines(with_new_events(event_stream(9, 200), 9))
    note = {"author": "agent", "agent_id": "ag-1"}
    bad_events: list[tuple[str, dict[str, Any]]] = [
        ("conversation.snoozed", {"until": "2026-11-24T12:00:00"}),  # no timezone
        ("conversation.snoozed", {"until": "tomorrow"}),
        ("message.created", {**note, "mentions": [f"ag-{i}" for i in range(51)]}),
        ("message.created", {**note, "mentions": ["ag 2"]}),
        ("conversation.read", {}),
        ("conversation.updated", {"priority": "HIGH"}),
        ("conversation.updated", {"labels": "vip"}),
        ("conversation.created", {"attributes": {"a": "x" * 257}}),
        ("conversation.created", {"attributes": {"a": {"b": 1}}}),
        ("conversation.created", {"channel": "web.site"}),
        ("conversation.updated", {"attributes": {f"k-{i}": None for i in range(33)}}),
    ]
    bad_lines = [json.dumps(envelope(kind, "acc-9-0", data, event_id=f"bad-{n}",
                                     conversation_id="c-0")).encode()
                 for n, (kind, data) in enumerate(bad_events)]
    lines = good[:50] + bad_lines + good[50:]
    product, stderr = product_updates(lines, tmp_path)
    bad: list[tuple[int, str]] = []
    baseline = baseline_updates(lines, product[0]["rules_version"], bad)
    numbers = list(range(51, 51 + len(bad_lines)))
    assert [number for number, _ in bad] == numbers
    assert all(f"line {number}:" in stderr for number in numbers)
    assert baseline == product
