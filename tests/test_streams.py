"""The event-stream generator (tests/support/streams.py): the existing profiles keep
their exact output (benchmarks and tests compare against them), the rich and views
variants are valid and have what they promise, and the hypothesis strategy draws every
event type."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings

from contracts import EVENT_TYPES, parse_event_object
from contracts.events import MAX_ATTRIBUTES, MAX_LABELS
from tests.support.streams import (
    PROFILES,
    RICH_TYPES,
    VIEWS_TYPES,
    event_stream,
    event_streams,
    soak_stream,
)
from worker.rulebook import load_rules

DEFAULT_RULES = load_rules()

# sha256 of json.dumps(stream) as the profiles made them before the rich variant:
# adding to the generator must not move one byte of these.
GOLDEN = {
    ("mixed", ()): "2d5b63186887eaa60708e0aeee6a8b964b9eeb6d6313fd7c905a4608a7941faf",
    ("chaos", (("count", 5000), ("seed", 3))):
        "fa3c8b1dd7735fc5e380eadd2ae230187b473b1784ab0836b5c4cf77403a899c",
    ("steady", ()): "151decad9d82e01e5f1641e8d19f9fd1340db006978761facf36c059da66c6ec",
    ("light", (("agents", 2), ("conversations", 300))):
        "da5b5accfa5b475a3b77de226c82cb0317b852f25a9f28e7e951b820cb78edf9",
    ("light", (("agents", 500), ("conversations", 7))):
        "4d690136c796163acc5056bcb94889f028db8abfdadfc609cc2a2d910ca0d1a4",
    ("heavy", (("agents", 50), ("conversations", 40))):
        "de87fd1e9fbd9fa335b2afbc80da42966dc8ac0d9a0349a8df7f871021558929",
    ("mixed", (("agents", 7), ("conversations", 3))):
        "d9c493ca71632f518a5fc7cd28653b6446c34db19d465a6f56285dfddae16f6a",
    ("light", (("conversations", 200), ("revisit", True))):
        "09133d99a48c6a4dbc461d0f77672a4c67823a04ac08950e0c2809cf784812fd",
}
SOAK_300 = "def3c4451ed86693450c9339420cde4950f1db8c75840c94fcc5e3be2d93ea99"


def digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


@pytest.mark.parametrize(("profile", "knobs"), list(GOLDEN))
def test_the_existing_profiles_are_unchanged(profile: str,
                                             knobs: tuple[tuple[str, Any], ...]) -> None:
    assert digest(event_stream(profile=profile, **dict(knobs))) == GOLDEN[profile, knobs]


def test_the_soak_stream_is_unchanged() -> None:
    assert digest(list(soak_stream(300))) == SOAK_300


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def check_valid(events: list[dict[str, Any]]) -> None:
    """Every event passes the contract, every views event holds views the default rules
    take, and no conversation ever holds more attributes or labels than it allows
    (attributes merged as conversation.updated says)."""
    attributes: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    seen: set[str] = set()
    for event in events:
        parse_event_object(event)
        if event["type"] in VIEWS_TYPES:
            personal = event["type"] == "agent.views_updated"
            assert DEFAULT_RULES.check_views(event["data"], personal)[1] == [], event
        if event["event_id"] in seen:
            continue  # a re-send: the worker drops it
        seen.add(event["event_id"])
        data = event["data"]
        key = (event["account_id"], event.get("conversation_id", ""))
        if event["type"] == "conversation.created":
            attributes[key] = dict(data.get("attributes", {}))
        elif event["type"] == "conversation.updated":
            for name, value in data.get("attributes", {}).items():
                if value is None:
                    attributes[key].pop(name, None)
                else:
                    attributes[key][name] = value
        assert len(attributes[key]) <= MAX_ATTRIBUTES, event
        assert len(data.get("labels", [])) <= MAX_LABELS, event


def test_the_rich_profile_is_light_with_details_reads_mentions_and_snoozes() -> None:
    assert PROFILES["rich"] == replace(PROFILES["light"], rich=True)
    events = event_stream(profile="rich", conversations=300)
    check_valid(events)
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_type[event["type"]].append(event)
    created = by_type["conversation.created"]
    assert sum(bool(e["data"].get("labels")) for e in created) > 0.6 * len(created)
    assert sum(bool(e["data"].get("attributes")) for e in created) > 0.6 * len(created)
    changes = [e["data"] for e in by_type["conversation.updated"]]
    assert {"priority", "labels", "attributes", "channel"} <= {f for d in changes for f in d}
    assert any(None in d.get("attributes", {}).values() for d in changes)
    assert any(len(e["data"].get("mentions", [])) for e in by_type["message.created"])
    assert by_type["conversation.unsnoozed"]
    # Agents' messages are often followed (in their conversation) by a read of theirs.
    following: dict[tuple[str, str], dict[str, Any]] = {}
    answered = read_after = 0
    for event in events:
        key = (event["account_id"], event.get("conversation_id", ""))
        last = following.get(key)
        if last is not None and last["data"].get("author") == "agent":
            answered += 1
            read_after += (event["type"] == "conversation.read"
                           and event["data"]["agent_id"] == last["data"]["agent_id"])
        following[key] = event
    assert read_after > 0.4 * answered


def test_rich_snoozes_mostly_wake_by_time_during_the_stream() -> None:
    events = event_stream(profile="rich", conversations=300)
    snoozes = [e for e in events if e["type"] == "conversation.snoozed"]
    short = [e for e in snoozes if "until" in e["data"]
             and timedelta(seconds=2) <= when(e["data"]["until"]) - when(e["occurred_at"])
             <= timedelta(seconds=8)]
    assert len(short) > len(snoozes) / 2
    # Most wake before anything else happens to their conversation (the time wakes
    # them); the others are woken by the visitor, unsnoozed, resolved...
    woken = 0
    for snooze in short:
        key = (snooze["account_id"], snooze["conversation_id"])
        after = [e for e in events if (e["account_id"], e.get("conversation_id")) == key
                 and when(e["occurred_at"]) > when(snooze["occurred_at"])]
        woken += bool(after) and when(after[0]["occurred_at"]) > when(snooze["data"]["until"])
    assert woken >= 0.6 * len(short)


@pytest.mark.parametrize("profile", ["mixed", "chaos", "steady", "heavy"])
def test_rich_adds_to_any_profile_and_stays_valid(profile: str) -> None:
    events = event_stream(profile=profile, rich=True, seed=5, count=3000,
                          **({"conversations": 100} if profile == "heavy" else {}))
    check_valid(events)
    assert {e["type"] for e in events} >= RICH_TYPES
    assert not RICH_TYPES & {e["type"] for e in event_stream(
        profile=profile, seed=5, count=3000,
        **({"conversations": 100} if profile == "heavy" else {}))}


def test_the_views_profile_is_rich_with_shared_and_personal_views() -> None:
    assert PROFILES["views"] == replace(PROFILES["rich"], views=PROFILES["views"].views)
    events = event_stream(profile="views", conversations=300, views=0.02)
    check_valid(events)
    views = [e for e in events if e["type"] in VIEWS_TYPES]
    assert {e["type"] for e in views} == VIEWS_TYPES
    # Every account starts with shared views, then edits come between chats.
    accounts = sorted({e["account_id"] for e in events})
    firsts = [next(e for e in events if e["account_id"] == a and e["type"] != "account.updated")
              for a in accounts]
    assert all(e["type"] == "account.views_updated" and e["data"]["views"] for e in firsts)
    chats = [i for i, e in enumerate(events) if "conversation_id" in e]
    assert sum(chats[0] < i < chats[-1] for i, e in enumerate(events)
               if e["type"] in VIEWS_TYPES) > 0.8 * (len(views) - len(accounts))
    # Views removed (an empty set), made up, and personal ones sharing a shared id.
    assert any(not e["data"]["views"] for e in views)
    assert any(v["view_id"].startswith("custom-") for e in views for v in e["data"]["views"])
    shared = {v["view_id"] for e in views if e["type"] == "account.views_updated"
              for v in e["data"]["views"]}
    assert any(v["view_id"] in shared for e in views if e["type"] == "agent.views_updated"
               for v in e["data"]["views"])


@pytest.mark.parametrize("profile", ["mixed", "chaos", "light"])
def test_views_are_only_added_to_a_stream(profile: str) -> None:
    """With views, the other events are those of the stream without them, in order
    (no re-sends: those pick events by position); chaos re-sends views stale."""
    knobs: dict[str, Any] = {"seed": 4, "count": 1500, "duplicates": 0.0, "stale": 0.0,
                             "rich": True}
    if profile == "light":
        knobs.update(count=None, conversations=100)

    def content(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(e["type"], e["account_id"], e.get("conversation_id"), e["data"].keys())
                for e in events if e["type"] not in VIEWS_TYPES]

    plain = event_stream(profile=profile, **knobs)
    viewed = event_stream(profile=profile, views=0.02, **knobs)
    check_valid(viewed)
    assert not VIEWS_TYPES & {e["type"] for e in plain}
    assert sum(e["type"] in VIEWS_TYPES for e in viewed) > 0.01 * len(viewed)
    kept = content(viewed)
    assert kept == content(plain)[:len(kept)]
    stale = event_stream(profile="chaos", views=0.05, seed=4, count=3000)
    assert any("-stale-" in e["event_id"] for e in stale if e["type"] in VIEWS_TYPES)


def test_rich_is_seeded() -> None:
    assert event_stream(profile="rich", conversations=50) == event_stream(
        profile="rich", conversations=50)
    assert event_stream(profile="rich", conversations=50, seed=1) != event_stream(
        profile="rich", conversations=50)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_streams())
def test_the_strategy_draws_valid_streams(stream: list[dict[str, Any]]) -> None:
    check_valid(stream)


# Searching, not shrinking: the first stream found will do.
SEARCH = settings(database=None, max_examples=2000, phases=[Phase.generate])


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_the_strategy_draws_every_event_type(kind: str) -> None:
    find(event_streams(), lambda s: any(e["type"] == kind for e in s), settings=SEARCH)


def test_the_strategy_draws_snoozes_that_wake_by_time_and_mentions() -> None:
    def wakes_before_next_event(stream: list[dict[str, Any]]) -> bool:
        times = [when(e["occurred_at"]) for e in stream]
        return any(e["type"] == "conversation.snoozed" and "until" in e["data"]
                   and when(e["data"]["until"]) < max(times)
                   and when(e["data"]["until"]) > times[i] for i, e in enumerate(stream))

    find(event_streams(), wakes_before_next_event, settings=SEARCH)
    find(event_streams(), lambda s: any(e["data"].get("mentions") for e in s),
         settings=SEARCH)
    find(event_streams(), lambda s: any(None in e["data"].get("attributes", {}).values()
                                        for e in s), settings=SEARCH)
