"""Views in force: published as ``view:<id>`` categories, re-categorised by views events,
kept by both stores, previewed by ``views.check``. Expectations are worked by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from contracts import BadEvent, parse_event_object
from contracts.requests import ViewsCheckRequest
from worker.accounts import AccountCache
from worker.answers import views_check
from worker.domain.categoriser import Categoriser
from worker.domain.inbox import Inbox
from worker.domain.snapshot import snapshot
from worker.domain.updates import Update
from worker.domain.views import NO_VIEWS
from worker.rulebook import load_rules
from worker.rulebook.explain import explain_pair
from worker.store.memory import MemoryStore
from worker.store.sqlite import SqliteStore

RULES = load_rules()
T = "2026-11-24T10:{:02d}:00Z"
HOT = {"view_id": "hot", "name": "Hot",
       "when": {"all": [{"category": "new"},
                        {"fact": "conversation.priority", "at_least": "high"}]}}
UNREAD_MINE = {"view_id": "unread-mine",
               "when": {"all": [{"category": "mine"}, {"fact": "agent.unread", "equals": True}]}}
LONG_WAIT = {"view_id": "long-wait",
             "when": {"fact": "conversation.waiting_seconds", "at_least": 300}}


def event(number: int, kind: str, minute: int = 0, conversation: str | None = "c-1",
          sequence: int | None = None, **data: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"event_id": f"e-{number}", "type": kind, "account_id": "acc-1",
                           "occurred_at": T.format(minute), "data": data}
    if conversation is not None:
        raw["conversation_id"] = conversation
    if sequence is not None:
        raw["sequence"] = sequence
    return raw


def shared(number: int, *views: dict[str, Any], minute: int = 0,
           sequence: int | None = None) -> dict[str, Any]:
    return event(number, "account.views_updated", minute, None, sequence, views=list(views))


def personal(number: int, agent: str, *views: dict[str, Any], minute: int = 0,
             ) -> dict[str, Any]:
    return event(number, "agent.views_updated", minute, None, agent_id=agent,
                 views=list(views))


TEAM = event(0, "account.updated", conversation=None, sequence=1, plan="free",
             agents=["ag-1", "ag-2"])


def run(inbox: Inbox, *events: dict[str, Any]) -> list[Update]:
    return [u for e in events for u in inbox.handle(parse_event_object(e))]


def moves(updates: list[Update]) -> list[tuple[str, str, list[str], list[str]]]:
    return [(u.agent_id, u.conversation_id, u.added, u.removed) for u in updates]


def test_a_shared_view_is_every_agent_s_and_its_event_re_categorises_with_its_id() -> None:
    inbox = Inbox(RULES)
    run(inbox, TEAM, event(1, "conversation.created", priority="urgent"),
        event(2, "conversation.created", conversation="c-2"))
    updates = run(inbox, shared(3, HOT))
    assert moves(updates) == [("ag-1", "c-1", ["view:hot"], []),
                              ("ag-2", "c-1", ["view:hot"], [])]
    assert {u.cause_event_id for u in updates} == {"e-3"}
    assert updates[0].categories == ["all", "new", "primary", "view:hot"]
    assert updates[0].counts == {"all": 2, "new": 2, "mine": 0, "primary": 2, "resolved": 0,
                                 "view:hot": 1}
    # Assigned: no longer new for anyone, so no longer hot.
    updates = run(inbox, event(4, "conversation.assigned", agent_id="ag-1"))
    assert [(a, c, r) for a, c, _, r in moves(updates)] == [
        ("ag-1", "c-1", ["new", "view:hot"]), ("ag-2", "c-1", ["new", "primary", "view:hot"])]
    assert updates[0].counts["view:hot"] == 0
    # The set replaced by none: the category leaves the counts.
    run(inbox, event(5, "conversation.updated", conversation="c-2", priority="high"))
    updates = run(inbox, shared(6))
    assert moves(updates) == [("ag-1", "c-2", [], ["view:hot"]),
                              ("ag-2", "c-2", [], ["view:hot"])]
    assert "view:hot" not in updates[0].counts


def test_a_personal_view_is_its_agent_s_only_and_counts_its_unread() -> None:
    inbox = Inbox(RULES)
    run(inbox, TEAM, event(1, "conversation.created"),
        event(2, "conversation.assigned", agent_id="ag-1"))
    assert run(inbox, personal(4, "ag-1", UNREAD_MINE)) == []  # nothing unread yet
    updates = run(inbox, event(5, "message.created", author="visitor"))
    mine = [u for u in updates if u.agent_id == "ag-1"]
    assert [(u.added, u.unread) for u in mine] == [(["view:unread-mine"], True)]
    assert mine[0].unread_counts["view:unread-mine"] == 1
    assert all("view:unread-mine" not in u.categories for u in updates if u.agent_id == "ag-2")
    assert "view:unread-mine" not in next(u for u in updates if u.agent_id == "ag-2").counts
    updates = run(inbox, event(6, "conversation.read", agent_id="ag-1"))
    assert moves(updates) == [("ag-1", "c-1", [], ["view:unread-mine"])]


def test_views_hold_for_unresolved_conversations_only() -> None:
    inbox = Inbox(RULES)
    everything = {"view_id": "everything", "when": {"category": "all"}}
    closed = {"view_id": "closed", "when": {"category": "resolved"}}
    run(inbox, TEAM, event(1, "conversation.created"), shared(2, everything, closed))
    assert inbox.categories_of("acc-1", "c-1", "ag-1") == {"all", "new", "primary",
                                                           "view:everything"}
    updates = run(inbox, event(3, "conversation.resolved"))
    assert updates[0].categories == ["resolved"]
    updates = run(inbox, event(4, "conversation.snoozed"))  # reopened by a snooze: unresolved
    assert "view:everything" in updates[0].categories


def test_an_invalid_views_event_is_bad_input_with_paths_and_changes_nothing() -> None:
    inbox = Inbox(RULES)
    run(inbox, TEAM, event(1, "conversation.created", priority="high"), shared(2, HOT))
    bad = shared(3, HOT, {"view_id": "x", "when": {"all": [
        {"category": "new"}, {"fact": "conversation.colour", "equals": "red"}]}})
    with pytest.raises(BadEvent) as caught:
        run(inbox, bad)
    assert caught.value.reason.startswith(
        "account.views_updated: views[1].when.all[1].fact: unknown fact "
        "'conversation.colour': expected one of conversation.status, ")
    state = inbox.accounts["acc-1"]
    assert state.account.views.shared and "x" not in state.account.views.shared
    assert inbox.categories_of("acc-1", "c-1", "ag-1") == {"all", "new", "primary", "view:hot"}


def test_a_stale_views_event_changes_nothing() -> None:
    inbox = Inbox(RULES)
    run(inbox, TEAM, event(1, "conversation.created", priority="high"),
        shared(2, HOT, sequence=5))
    assert run(inbox, shared(3, sequence=4)) == []
    assert run(inbox, event(4, "account.updated", conversation=None, sequence=3,
                            plan="pro", agents=["ag-1"])) == []
    assert "view:hot" in inbox.categories_of("acc-1", "c-1", "ag-1")


def test_a_view_on_waiting_time_crosses_in_time_though_the_rules_test_none() -> None:
    inbox = Inbox(RULES)
    run(inbox, TEAM, shared(1, LONG_WAIT), event(2, "conversation.created", minute=0))
    updates = run(inbox, event(3, "conversation.created", minute=6, conversation="c-2"))
    crossed = [u for u in updates if u.conversation_id == "c-1"]
    assert [(u.added, u.cause_event_id, u.occurred_at.isoformat()) for u in crossed] == [
        (["view:long-wait"], "time:2026-11-24T10:05:00Z", "2026-11-24T10:05:00+00:00")] * 2


def test_snapshots_list_views_in_the_counts_and_the_conversations() -> None:
    inbox = Inbox(RULES)
    run(inbox, TEAM, event(1, "conversation.created", priority="high"), shared(2, HOT),
        personal(3, "ag-2", {"view_id": "all-open", "when": {"category": "all"}}))
    state = inbox.accounts["acc-1"]
    names = inbox.categoriser.views.category_names(state.account.views, "ag-2")
    assert names == (*RULES.categories, "view:hot", "view:all-open")
    reply = snapshot(state, "ag-2", names, RULES.version, limit=10)
    assert reply["conversations"] == {"c-1": ["all", "new", "primary", "view:all-open",
                                              "view:hot"]}
    assert reply["counts"]["view:hot"] == reply["counts"]["view:all-open"] == 1
    assert inbox.categoriser.views.category_names(state.account.views, "ag-1") == (
        *RULES.categories, "view:hot")


@pytest.mark.parametrize("store_kind", ["sqlite", "memory"])
def test_views_in_force_survive_the_store(store_kind: str, tmp_path: Path) -> None:
    store = (SqliteStore(tmp_path / "state.sqlite3") if store_kind == "sqlite"
             else MemoryStore())
    categoriser = Categoriser(RULES)
    cache = AccountCache(store, 10, 100, 100)
    state = cache.get("acc-1", RULES.version)
    for raw in (TEAM, event(1, "conversation.created", priority="high"), shared(2, HOT),
                personal(3, "ag-2", UNREAD_MINE)):
        categoriser.handle(state, parse_event_object(raw))
    store.commit([state.take_write()])
    loaded = store.load_account("acc-1", event_window=100, tombstone_window=100)
    assert loaded is not None
    assert loaded.account.views == state.account.views != NO_VIEWS
    assert loaded.conversations == state.conversations
    # Both go on alike: the loaded state was evaluated under the same views.
    again = categoriser.handle(loaded, parse_event_object(event(4, "message.created",
                                                                author="visitor")))
    assert again == categoriser.handle(state, parse_event_object(
        event(4, "message.created", author="visitor")))


def test_views_check_lists_problems_and_previews_valid_views(tmp_path: Path) -> None:
    categoriser = Categoriser(RULES)
    cache = AccountCache(MemoryStore(), 10, 100, 100)
    state = cache.get("acc-1", RULES.version)
    for raw in (TEAM, event(1, "conversation.created", priority="high"),
                event(2, "conversation.created", conversation="c-2", priority="urgent"),
                event(3, "conversation.created", conversation="c-3"),
                event(4, "conversation.assigned", conversation="c-2", agent_id="ag-1")):
        categoriser.handle(state, parse_event_object(raw))
    bad = ViewsCheckRequest(views=[HOT, {"view_id": "hot", "when": {"category": "nope"}}],
                            account_id="acc-1")
    assert views_check(bad, categoriser, cache).problems == [
        "views[1].when.category: unknown category 'nope' (the rules' categories: all, new, "
        "mine, primary, resolved)"]
    high = {"view_id": "high", "when": {"fact": "conversation.priority", "at_least": "high"}}
    reply = views_check(ViewsCheckRequest(views=[HOT, high], account_id="acc-1"),
                        categoriser, cache)
    assert reply.problems == []
    assert reply.preview is not None
    assert {v: {a: (p.count, p.conversations) for a, p in agents.items()}
            for v, agents in reply.preview.items()} == {
        "hot": {"ag-1": (1, ["c-1"]), "ag-2": (1, ["c-1"])},
        "high": {"ag-1": (2, ["c-1", "c-2"]), "ag-2": (2, ["c-1", "c-2"])}}
    mine = ViewsCheckRequest(views=[UNREAD_MINE, {"view_id": "mine", "when": {
        "category": "mine"}}], account_id="acc-1", agent_id="ag-1")
    reply = views_check(mine, categoriser, cache)
    assert reply.preview is not None
    assert {v: {a: p.count for a, p in agents.items()} for v, agents in reply.preview.items()
            } == {"unread-mine": {"ag-1": 0}, "mine": {"ag-1": 1}}
    assert views_check(ViewsCheckRequest(views=[HOT]), categoriser, cache).preview is None
    assert not state.dirty or state.account.views is NO_VIEWS  # nothing was changed


def test_compiled_view_sets_are_bounded_by_the_setting() -> None:
    categoriser = Categoriser(RULES, view_sets=8)
    inbox = Inbox(RULES)
    inbox.categoriser = categoriser
    run(inbox, TEAM, event(1, "conversation.created"))
    for number in range(2, 60):
        run(inbox, shared(number, {"view_id": f"v{number}", "when": {"category": "new"}}))
    assert len(categoriser.views._view_sets) <= 8
    assert len(categoriser.views._in_force) <= 8
    assert inbox.categories_of("acc-1", "c-1", "ag-1") == {"all", "new", "primary", "view:v59"}


def test_explain_says_why_each_view_of_the_agent_holds_or_not() -> None:
    inbox = Inbox(RULES)
    run(inbox, TEAM, event(1, "conversation.created", priority="high"), shared(2, HOT),
        personal(3, "ag-1", UNREAD_MINE))
    state = inbox.accounts["acc-1"]
    reply = explain_pair(RULES, state, "acc-1", "ag-1", "c-1")
    assert reply.categories == sorted(inbox.categories_of("acc-1", "c-1", "ag-1"))
    assert "view:hot" in reply.categories
    by_name = {e.name: e for e in reply.explanations}
    assert by_name["view:hot"].holds and not by_name["view:unread-mine"].holds
    assert [(c.condition, c.holds, c.depth) for c in by_name["view:unread-mine"].conditions
            ][:2] == [("all of 2", False, 0), ("category mine", False, 1)]
    assert "view:unread-mine" not in {e.name for e in explain_pair(
        RULES, state, "acc-1", "ag-2", "c-1").explanations}
    run(inbox, event(4, "conversation.resolved"))
    resolved = explain_pair(RULES, state, "acc-1", "ag-1", "c-1")
    assert resolved.categories == ["resolved"]
    assert [c.condition for c in {e.name: e for e in resolved.explanations}[
        "view:hot"].conditions] == ["conversation.status in [open, snoozed] (views hold for "
                                    "unresolved conversations only)"]
