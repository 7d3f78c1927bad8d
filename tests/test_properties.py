"""Random event streams: the categoriser agrees with a naive reading of the contract."""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from contracts import parse_event_object
from tests.spec_oracle import NOTHING, Key, Shown, SpecOracle, when
from tests.support.streams import event_stream, event_streams
from worker.domain.inbox import Inbox
from worker.domain.reading import is_unread
from worker.domain.snapshot import snapshot
from worker.domain.updates import Update
from worker.rulebook import load_rules

RULES = load_rules()
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def replay(stream: list[dict[str, Any]]) -> tuple[Inbox, list[list[Update]]]:
    inbox = Inbox(RULES)
    return inbox, [inbox.handle(parse_event_object(event)) for event in stream]


Cause = tuple[str, str | datetime]  # (account, event id or the instant of a crossing)


@dataclass
class Step:
    """What one event or one crossing of one account changes, by the oracle: what each
    changed (agent, conversation) shows before and after, and every agent's counts (and
    the categories they are given for, in order)."""

    changed: dict[Key, tuple[Shown, Shown]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    unread_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)


def step(oracle: SpecOracle, account_id: str, change: Callable[[], None]) -> Step:
    before = oracle.snapshot(account_id)
    change()
    after = oracle.snapshot(account_id)
    result = Step()
    for key in before.keys() | after.keys():
        old, new = before.get(key, NOTHING), after.get(key, NOTHING)
        if old != new:
            result.changed[key] = (old, new)
    for agent in {agent for (_, agent, _) in result.changed}:
        result.counts[agent] = oracle.counts(account_id, agent)
        result.unread_counts[agent] = oracle.unread_counts(account_id, agent)
        result.names[agent] = oracle.category_names(account_id, agent)
    return result


def expected_steps(oracle: SpecOracle, event: dict[str, Any]) -> dict[Cause, Step]:
    """The oracle's steps for one event, in order: the wakes due by its time, then it."""
    steps: dict[Cause, Step] = {}
    for instant, account_id in oracle.due(when(event["occurred_at"])):
        steps[(account_id, instant)] = step(
            oracle, account_id, partial(oracle.cross, account_id, instant))
    steps[(event["account_id"], event["event_id"])] = step(
        oracle, event["account_id"], partial(oracle.apply, event))
    return steps


def cause_of(update: Update) -> Cause:
    cause = update.cause_event_id
    if cause.startswith("time:"):
        return update.account_id, when(cause.removeprefix("time:"))
    return update.account_id, cause


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {name: n for name, n in counts.items() if n}


@SETTINGS
@given(event_streams())
def test_updates_match_a_from_scratch_recomputation_of_the_spec(
        stream: list[dict[str, Any]]) -> None:
    check_against_the_oracle(stream)


@pytest.mark.parametrize(("profile", "knobs"), [
    ("rich", {"conversations": 60}), ("mixed", {"rich": True, "count": 600}),
    ("chaos", {"rich": True, "count": 600, "seed": 2}),
    ("heavy", {"rich": True, "agents": 6, "conversations": 30})])
def test_rich_seeded_streams_match_the_oracle(profile: str, knobs: dict[str, Any]) -> None:
    """Longer streams than hypothesis draws: many chats snoozed and woken at once,
    reads and mentions among several agents."""
    check_against_the_oracle(event_stream(profile=profile, **knobs))


def check_against_the_oracle(stream: list[dict[str, Any]]) -> tuple[Inbox, SpecOracle]:
    """Per event: the wakes due by its time, each its own cause, then the event; one
    update per (agent, conversation) whose categories or unread flag changed, with the
    oracle's categories, flag, counts and unread counts. Returns both, after it."""
    inbox = Inbox(RULES)
    oracle = SpecOracle()
    for event in stream:
        steps = expected_steps(oracle, event)
        updates = inbox.handle(parse_event_object(event))
        got: dict[Cause, dict[Key, dict[str, Any]]] = {}
        for update in updates:
            keyed = got.setdefault(cause_of(update), {})
            key = (update.account_id, update.agent_id, update.conversation_id)
            assert key not in keyed, "one update per (agent, conversation) per cause"
            keyed[key] = json.loads(update.body)
        assert list(got) == [cause for cause, s in steps.items() if s.changed], (
            "causes in time order, the event last", event)
        for cause, expected in steps.items():
            bodies = got.get(cause, {})
            assert {key: Shown(frozenset(body["categories"]), body["unread"])
                    for key, body in bodies.items()} == {
                key: new for key, (_old, new) in expected.changed.items()}, (cause, event)
            for (_, agent, _), body in bodies.items():
                old, new = expected.changed[(cause[0], agent, body["conversation_id"])]
                names = expected.names[agent]
                assert list(body["counts"]) == names == list(body["unread_counts"])
                assert body["counts"] == {name: expected.counts[agent].get(name, 0)
                                          for name in names}
                assert nonzero(body["unread_counts"]) == expected.unread_counts[agent]
                assert set(body["added"]) == new.categories - old.categories
                assert set(body["removed"]) == old.categories - new.categories
    for account_id, state in inbox.accounts.items():
        for agent in state.account.agents:
            assert nonzero(state.counts_of(agent)) == oracle.counts(account_id, agent)
            assert nonzero(state.unread_counts_of(agent)) == oracle.unread_counts(
                account_id, agent)
    return inbox, oracle


@SETTINGS
@given(event_streams())
def test_snapshots_match_the_oracle(stream: list[dict[str, Any]]) -> None:
    """After the stream, each agent's snapshot: its conversations and categories, which
    of them are unread, the counts and unread counts."""
    inbox, _ = replay(stream)
    oracle = SpecOracle()
    for event in stream:
        for instant, account_id in oracle.due(when(event["occurred_at"])):
            oracle.cross(account_id, instant)
        oracle.apply(event)
    check_snapshots(inbox, oracle)


def check_snapshots(inbox: Inbox, oracle: SpecOracle) -> None:
    """Every agent's snapshot against the oracle's: conversations and categories, the
    unread ones, and the counts and unread counts of every category the agent has."""
    shown = oracle.snapshot()
    for account_id, state in inbox.accounts.items():
        for agent in state.account.agents:
            names = inbox.categoriser.views.category_names(state.account.views, agent)
            assert list(names) == oracle.category_names(account_id, agent)
            reply = snapshot(state, agent, names, RULES.version, limit=1000)
            assert reply["conversations"] == {
                conv: sorted(s.categories) for (acc, ag, conv), s in sorted(shown.items())
                if (acc, ag) == (account_id, agent)}
            assert reply["unread"] == oracle.unread_ids(account_id, agent)
            assert nonzero(reply["counts"]) == oracle.counts(account_id, agent)
            assert nonzero(reply["unread_counts"]) == oracle.unread_counts(account_id, agent)


@SETTINGS
@given(event_streams())
def test_incremental_counts_equal_a_full_recount(stream: list[dict[str, Any]]) -> None:
    """Badge counts and unread counts, kept up to date per change, against a recount
    of every conversation."""
    inbox, _ = replay(stream)
    for account_id, state in inbox.accounts.items():
        for agent in state.counts.keys() | state.unread_counts.keys():
            recount: dict[str, int] = {}
            unread: dict[str, int] = {}
            for conversation_id in state.conversations:
                cats = inbox.categories_of(account_id, conversation_id, agent)
                for category in cats:
                    recount[category] = recount.get(category, 0) + 1
                    if is_unread(state, conversation_id, agent):
                        unread[category] = unread.get(category, 0) + 1
            assert nonzero(state.counts_of(agent)) == recount
            assert nonzero(state.unread_counts_of(agent)) == unread


@SETTINGS
@given(event_streams())
def test_replaying_twice_gives_identical_updates(stream: list[dict[str, Any]]) -> None:
    _, first = replay(stream)
    _, second = replay(stream)
    assert [[u.body for u in batch] for batch in first] == [
        [u.body for u in batch] for batch in second]
    ids = [u.update_id for batch in first for u in batch]
    assert len(ids) == len(set(ids)), "update ids are unique per (event, agent, conversation)"


@SETTINGS
@given(event_streams())
def test_redelivering_every_event_changes_nothing(stream: list[dict[str, Any]]) -> None:
    inbox, _ = replay(stream)
    for event in stream:
        assert inbox.handle(parse_event_object(event)) == []
