"""The benchmarks' streams, without a broker: which variants ``benchmarks.compare
--rich`` runs and how it sets their ratios beside the default stream's, the account
histories ``benchmarks.startup --rich`` builds its state files from, and the views
``benchmarks.views`` adds to the generator's streams."""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter

from benchmarks.compare import FULL, Result, Row, Variant, chosen, rich_against_default
from benchmarks.startup import account_id, conversations_of, plan
from benchmarks.views import (
    PERSONAL,
    SHARED,
    cost_streams,
    latency_changes,
    latency_setup,
    memory_blocks,
    personal_views,
    shared_catalogue,
    shared_views,
)
from contracts import parse_event_object
from worker.domain.inbox import Inbox
from worker.rulebook import load_rules


def test_rich_follows_each_chosen_variant_with_its_rich_counterpart() -> None:
    assert [v.name for v in chosen(FULL, "light/2,heavy/50", rich=True)] == [
        "light/2", "light/2+rich", "heavy/50", "heavy/50+rich"]
    assert [v.name for v in chosen(FULL, "light/2+rich", rich=True)] == [
        "light/2", "light/2+rich"]
    assert [v.name for v in chosen(FULL, "light/2", rich=False)] == ["light/2"]
    rich = chosen(FULL, "light/500", rich=True)[1]
    assert (rich.fanout, rich.agents, rich.conversations, rich.rich) == (
        "light", 500, 70, True)


def result(events_per_second: float, cpu_us: float, rss_kb: int) -> Result:
    return Result(events=1000, updates=900, seconds=1000 / events_per_second,
                  cpu_seconds=cpu_us * 1000 / 1e6, rss_end_kb=rss_kb)


def test_the_rich_rows_ratios_stand_beside_the_default_streams() -> None:
    plain = Row(Variant("light", 2, 10), 0.9, relay=result(1000, 40, 20_000),
                worker=result(900, 60, 50_000), relay_latency=Result(),
                worker_latency=Result())
    rich = Row(Variant("light", 2, 10, rich=True), 0.9, relay=result(1000, 40, 20_000),
               worker=result(800, 80, 60_000), relay_latency=Result(),
               worker_latency=Result())
    [line] = rich_against_default([plain, rich])
    assert line == ("light/2+rich: worker/relay events/s 0.80 (0.90), CPU us/ev 2.00 (1.50), "
                    "RSS 3.00 (2.50); worker rich/default events/s 0.89, CPU us/ev 1.33, "
                    "RSS 1.20")
    assert rich_against_default([plain]) == []


def test_startup_builds_rich_and_default_state_from_the_streams() -> None:
    args = argparse.Namespace(rich=True, large=400, small=10, accounts=20)
    default, rich = plan(args)
    assert (default.name, default.conversations, rich.name, rich.conversations) == (
        "default", 400, "rich", 400)
    conversations = conversations_of(3, 400, 20)
    events = {name: list(state.history(3, conversations))
              for name, state in (("default", default), ("rich", rich))}
    for stream in events.values():
        for event in stream:
            parse_event_object(event)
        assert {e["account_id"] for e in stream} == {account_id(3)}
        assert len({e.get("conversation_id") for e in stream} - {None}) == len(conversations)
        assert len({e["event_id"] for e in stream}) > 0.9 * len(stream)
    kinds = Counter(e["type"] for e in events["rich"])
    assert kinds["conversation.updated"] and kinds["conversation.snoozed"]
    assert not {"conversation.updated", "conversation.snoozed"} & {
        e["type"] for e in events["default"]}
    assert [state.name for state in plan(argparse.Namespace(
        rich=False, large=400, small=10, accounts=20))] == ["small", "large"]


def test_views_come_first_in_each_account_then_the_same_conversation_events() -> None:
    plain, viewed = cost_streams(conversations=40, accounts=2)
    assert [e for e in viewed if "views" not in e["type"]] == plain
    for snapshot in (e for e in plain if e["type"] == "account.updated"):
        at = viewed.index(snapshot)
        agents = snapshot["data"]["agents"]
        views = viewed[at + 1: at + 2 + len(agents)]
        assert [e["type"] for e in views] == (["account.views_updated"]
                                              + ["agent.views_updated"] * len(agents))
        assert [e["sequence"] for e in views] == list(range(2, 3 + len(agents)))
        assert len(views[0]["data"]["views"]) == SHARED
        assert [e["data"]["agent_id"] for e in views[1:]] == agents
        assert all(len(e["data"]["views"]) == PERSONAL for e in views[1:])
    assert len({e["event_id"] for e in viewed}) == len({e["event_id"] for e in plain}) + sum(
        1 for e in viewed if "views" in e["type"])
    for event in viewed:
        parse_event_object(event)


def test_the_views_check_under_the_rules_and_are_each_account_s_own() -> None:
    rules = load_rules()
    texts = set()
    for account in ("acc-1", "acc-2", "acc-3"):
        text, problems = rules.check_views({"views": shared_views(account)}, False)
        assert problems == []
        texts.add(text)
        for agent in ("ag-1", "ag-2"):
            body = {"agent_id": agent, "views": personal_views(account, agent)}
            assert rules.check_views(body, True)[1] == []
    assert len(texts) == 3
    # What the catalogue tests: the rules' categories, details, unread, time, logic.
    words = json.dumps(shared_catalogue(random.Random(1)))
    for needed in ('"category"', "conversation.priority", "conversation.labels",
                   "conversation.channel", "agent.unread", "agent.mentioned",
                   "conversation.waiting_seconds", '"any"', '"all"', '"not"'):
        assert needed in words


def test_conversations_move_in_and_out_of_shared_and_personal_views() -> None:
    _, viewed = cost_streams(conversations=40, accounts=2)
    inbox = Inbox(load_rules())
    added: Counter[str] = Counter()
    removed: Counter[str] = Counter()
    for event in viewed:
        for update in inbox.handle(parse_event_object(event)):
            added.update(c for c in update.added if c.startswith("view:"))
            removed.update(c for c in update.removed if c.startswith("view:"))
    moved = set(added) & set(removed)
    assert len(moved) >= 15
    assert {"view:unread-mine", "view:hot"} <= moved  # shared
    assert moved & {"view:my-label", "view:unread-hot", "view:group-new"}  # personal


def test_memory_and_latency_streams() -> None:
    blocks = memory_blocks(120, block=50)
    assert [sum(e["type"] == "account.views_updated" for e in b) for b in blocks] == [50, 50, 20]
    texts = [json.dumps(e["data"]["views"]) for b in blocks for e in b
             if e["type"] == "account.views_updated"]
    assert len(set(texts)) == 120
    setup = latency_setup(conversations=30, agents=20)
    assert "conversation.resolved" not in {e["type"] for e in setup}
    changes = latency_changes(setup, rounds=2)
    assert [label for label, _ in changes[:3]] == ["set 20 views", "edit 1 view", "remove all"]
    assert [e["sequence"] for _, e in changes] == list(range(2, 8))
    for _, event in changes:
        parse_event_object(event)
