"""The domain core against the contract's categories and category updates.

No broker: events go through the contract parser into :class:`worker.domain.Inbox`, and
the tests look at the :class:`Update` objects it returns. Expectations come from
the contract, not from the code; a test that fails here is a disagreement to report.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest
from click.testing import CliRunner

from contracts import Event
from tests.support.streams import Events, by_agent, categories
from worker.cli import main
from worker.domain import Inbox
from worker.domain.updates import Update
from worker.rulebook.engine import CompiledRules, default_rules_dir, load_rules
from worker.tools.rule_cases import case_files, load_cases

CATEGORY_NAMES = ("all", "mine", "new", "primary", "resolved")
NEW = ["all", "new", "primary"]  # multi-agent, waiting, routed to the agent
MINE = ["all", "mine", "primary"]  # multi-agent, the agent joined
ALL = ["all"]  # multi-agent, somebody else's
NEW_SINGLE = ["all", "new"]  # single-agent, waiting


@pytest.fixture(scope="module")
def rules() -> CompiledRules:
    return load_rules()


@pytest.fixture
def inbox(rules: CompiledRules) -> Inbox:
    return Inbox(rules)


@pytest.fixture
def ev() -> Events:
    return Events()


def feed(inbox: Inbox, events: Iterable[Event]) -> list[Update]:
    updates: list[Update] = []
    for event in events:
        updates.extend(inbox.handle(event))
    return updates


def counts(**non_zero: int) -> dict[str, int]:
    return {name: non_zero.get(name, 0) for name in CATEGORY_NAMES}


def recount(inbox: Inbox, account_id: str, agent_id: str) -> dict[str, int]:
    """A full recount of an agent's badges from the categories of every conversation."""
    total = dict.fromkeys(CATEGORY_NAMES, 0)
    for conversation in inbox.account(account_id).conversations.values():
        for name in inbox.categories_of(account_id, conversation.conversation_id,
                                  agent_id):
            total[name] += 1
    return total


# -- single-agent account ----------------------------------------------------------------


def test_single_agent_new_then_all_when_the_agent_joins(inbox: Inbox, ev: Events) -> None:
    """SPEC single-agent `new`: "Once the agent joins, it is in `all` only"."""
    assert inbox.handle(ev.account("free", ["ag-1"])) == []  # no conversations yet

    created = ev("conversation.created", "c-1")
    [update] = inbox.handle(created)
    assert (update.account_id, update.agent_id, update.conversation_id) == ("acc-1", "ag-1", "c-1")
    assert update.categories == ["all", "new"]
    assert (update.added, update.removed) == (["all", "new"], [])
    assert update.counts == counts(all=1, new=1)
    assert update.cause_event_id == created.event_id
    assert update.routing_key == "acc-1.ag-1"

    [joined] = inbox.handle(ev("conversation.assigned", "c-1", agent_id="ag-1"))
    assert joined.categories == ["all"]
    assert (joined.added, joined.removed) == ([], ["new"])
    assert joined.counts == counts(all=1)


def test_single_agent_reply_joins(inbox: Inbox, ev: Events) -> None:
    """SPEC: "An agent who replies to a conversation joins it."."""
    feed(inbox, [ev.account("standard", ["ag-1"]), ev("conversation.created", "c-1")])
    # the visitor's message changes no category, but makes it unread for the agent
    [unread] = inbox.handle(ev("message.created", "c-1", author="visitor"))
    assert (unread.categories, unread.added, unread.removed) == (NEW_SINGLE, [], [])
    assert unread.unread is True
    assert unread.unread_counts == counts(all=1, new=1)
    [update] = inbox.handle(ev("message.created", "c-1", author="agent", agent_id="ag-1"))
    assert update.categories == ["all"]
    assert update.removed == ["new"]
    assert update.unread is False  # writing into it reads it
    assert update.unread_counts == counts()
    # a second reply changes nothing: no update
    assert inbox.handle(ev("message.created", "c-1", author="agent", agent_id="ag-1")) == []


# -- multi-agent account -----------------------------------------------------------------


def test_multi_agent_new_conversation_is_new_for_everyone(inbox: Inbox, ev: Events) -> None:
    """SPEC multi-agent `all`, `new` (no group) and `primary` rows."""
    inbox.handle(ev.account("free", ["ag-1", "ag-2", "ag-3"]))
    updates = by_agent(inbox.handle(ev("conversation.created", "c-1")))
    assert sorted(updates) == ["ag-1", "ag-2", "ag-3"]
    for update in updates.values():
        assert update.categories == NEW
        assert update.added == NEW
        assert update.counts == counts(all=1, new=1, primary=1)


def test_joining_updates_only_the_agents_whose_set_changed(inbox: Inbox, ev: Events) -> None:
    """SPEC: "One update per (agent, conversation) whose category set changed; none when
    nothing changed for that agent."; `mine`: "A is among the agents who joined it"."""
    feed(inbox, [ev.account("free", ["ag-1", "ag-2", "ag-3"]), ev("conversation.created", "c-1")])

    first = by_agent(inbox.handle(ev("conversation.assigned", "c-1", agent_id="ag-1")))
    assert sorted(first) == ["ag-1", "ag-2", "ag-3"]
    assert first["ag-1"].categories == MINE
    assert (first["ag-1"].added, first["ag-1"].removed) == (["mine"], ["new"])
    assert first["ag-2"].categories == ALL
    assert (first["ag-2"].added, first["ag-2"].removed) == ([], ["new", "primary"])
    assert first["ag-2"].counts == counts(all=1)

    # ag-2 joins too: only ag-2's set changes (ag-1 stays mine, ag-3 stays all)
    second = by_agent(inbox.handle(ev("conversation.assigned", "c-1", agent_id="ag-2")))
    assert sorted(second) == ["ag-2"]
    assert second["ag-2"].categories == MINE
    assert (second["ag-2"].added, second["ag-2"].removed) == (["mine", "primary"], [])

    # ag-1 leaves while ag-2 stays: only ag-1
    third = by_agent(inbox.handle(ev("conversation.unassigned", "c-1", agent_id="ag-1")))
    assert sorted(third) == ["ag-1"]
    assert third["ag-1"].categories == ALL

    # a visitor message changes nobody's set, only makes it unread for everybody: the
    # first one (nobody had read anything yet) for every agent ...
    first_message = by_agent(inbox.handle(ev("message.created", "c-1", author="visitor")))
    assert sorted(first_message) == ["ag-1", "ag-2", "ag-3"]
    assert all(u.unread and not u.added and not u.removed for u in first_message.values())
    # ... and later ones only for those who had read it since: nobody here
    assert inbox.handle(ev("message.created", "c-1", author="visitor")) == []


def test_last_agent_leaves_conversation_is_new_again(inbox: Inbox, ev: Events) -> None:
    """SPEC: "When the last joined agent leaves an open conversation, it is waiting again"."""
    feed(inbox, [ev.account("free", ["ag-1", "ag-2"]), ev("conversation.created", "c-1"),
                 ev("conversation.assigned", "c-1", agent_id="ag-1")])
    updates = by_agent(inbox.handle(ev("conversation.unassigned", "c-1", agent_id="ag-1")))
    assert updates["ag-1"].categories == NEW
    assert (updates["ag-1"].added, updates["ag-1"].removed) == (["new"], ["mine"])
    assert updates["ag-2"].categories == NEW
    assert updates["ag-2"].added == ["new", "primary"]


def test_unassigning_an_agent_who_had_not_joined_changes_nothing(inbox: Inbox,
                                                                 ev: Events) -> None:
    feed(inbox, [ev.account("free", ["ag-1", "ag-2"]), ev("conversation.created", "c-1"),
                 ev("conversation.assigned", "c-1", agent_id="ag-1")])
    assert inbox.handle(ev("conversation.unassigned", "c-1", agent_id="ag-2")) == []


# -- groups ------------------------------------------------------------------------------


def test_pro_routes_unassigned_group_chat_to_members_only(inbox: Inbox, ev: Events) -> None:
    """SPEC: "Under `pro`, a new unassigned chat routed to group G is `new` only for G's
    members ...; everyone still sees it in `all`."."""
    inbox.handle(ev.account("pro", ["ag-1", "ag-2", "ag-3"], {"g-sales": ["ag-1", "ag-2"]}))
    created = by_agent(inbox.handle(ev("conversation.created", "c-1", group_id="g-sales")))
    assert {a: u.categories for a, u in created.items()} == {
        "ag-1": NEW, "ag-2": NEW, "ag-3": ALL}
    assert created["ag-3"].counts == counts(all=1)

    # ag-1 joins: ag-2 loses new; ag-3 (not a member, not joined) had `all` and keeps it
    joined = by_agent(inbox.handle(ev("conversation.assigned", "c-1", agent_id="ag-1")))
    assert sorted(joined) == ["ag-1", "ag-2"]
    assert joined["ag-1"].categories == MINE
    assert joined["ag-2"].categories == ALL


@pytest.mark.parametrize("plan", ["free", "standard"])
def test_group_is_ignored_below_pro(inbox: Inbox, ev: Events, plan: str) -> None:
    """SPEC: "On `free`/`standard`, a conversation's group is ignored"."""
    inbox.handle(ev.account(plan, ["ag-1", "ag-2", "ag-3"], {"g-sales": ["ag-1"]}))
    updates = by_agent(inbox.handle(ev("conversation.created", "c-1", group_id="g-sales")))
    assert {a: u.categories for a, u in updates.items()} == {
        "ag-1": NEW, "ag-2": NEW, "ag-3": NEW}


def test_plan_change_pro_to_standard_and_back(inbox: Inbox, ev: Events) -> None:
    """SPEC: "When the account's plan ... change[s], every open conversation of the account
    is re-categorised for every agent it affects." (and only those: no other updates)."""
    groups = {"g-sales": ["ag-1"]}
    feed(inbox, [
        ev.account("pro", ["ag-1", "ag-2"], groups, sequence=1),
        ev("conversation.created", "c-1", group_id="g-sales"),  # waiting, group chat
        ev("conversation.created", "c-2"),  # waiting, no group
        ev("conversation.created", "c-3", group_id="g-sales"),
        ev("conversation.assigned", "c-3", agent_id="ag-2"),  # in progress
    ])

    down = inbox.handle(ev.account("standard", ["ag-1", "ag-2"], groups, sequence=2))
    # only ag-2 / c-1 changes: c-1 becomes new for the non-member
    assert categories(down) == {("ag-2", "c-1"): NEW}
    assert down[0].added == ["new", "primary"]
    assert down[0].counts == counts(all=3, new=2, mine=1, primary=3)

    up = inbox.handle(ev.account("pro", ["ag-1", "ag-2"], groups, sequence=3))
    assert categories(up) == {("ag-2", "c-1"): ALL}
    assert up[0].removed == ["new", "primary"]
    assert up[0].counts == counts(all=3, new=1, mine=1, primary=2)


def test_same_snapshot_again_with_a_new_id_emits_nothing(inbox: Inbox, ev: Events) -> None:
    """SPEC: none when nothing changed for that agent."""
    feed(inbox, [ev.account("pro", ["ag-1", "ag-2"], {"g-sales": ["ag-1"]}),
                 ev("conversation.created", "c-1", group_id="g-sales")])
    assert inbox.handle(ev.account("pro", ["ag-1", "ag-2"], {"g-sales": ["ag-1"]})) == []


def test_group_membership_change_moves_new(inbox: Inbox, ev: Events) -> None:
    """SPEC: "When the account's ... groups change, every open conversation ... is
    re-categorised for every agent it affects."."""
    feed(inbox, [ev.account("pro", ["ag-1", "ag-2", "ag-3"], {"g-sales": ["ag-1"]}),
                 ev("conversation.created", "c-1", group_id="g-sales")])
    updates = inbox.handle(ev.account("pro", ["ag-1", "ag-2", "ag-3"], {"g-sales": ["ag-2"]}))
    assert categories(updates) == {("ag-1", "c-1"): ALL, ("ag-2", "c-1"): NEW}


# -- single -> multi, agents added and removed ---------------------------------------------


def test_second_agent_in_an_event_turns_single_into_multi(inbox: Inbox, ev: Events) -> None:
    """SPEC: an account known only from its conversations knows "just the agents that
    appear in events, plan `free`"; "more than one agent" makes it multi-agent."""
    feed(inbox, [ev("conversation.created", "c-1"),
                 ev("conversation.assigned", "c-1", agent_id="ag-1")])
    [waiting] = inbox.handle(ev("conversation.created", "c-2"))
    assert (waiting.agent_id, waiting.categories) == ("ag-1", ["all", "new"])
    assert waiting.counts == counts(all=2, new=1)

    updates = inbox.handle(ev("message.created", "c-3", author="agent", agent_id="ag-2"))
    assert categories(updates) == {
        ("ag-1", "c-1"): MINE, ("ag-1", "c-2"): NEW, ("ag-1", "c-3"): ALL,
        ("ag-2", "c-1"): ALL, ("ag-2", "c-2"): NEW, ("ag-2", "c-3"): MINE,
    }
    last = {u.agent_id: u for u in updates}  # the last update of each agent
    assert last["ag-1"].counts == counts(all=3, new=1, mine=1, primary=2)
    assert last["ag-2"].counts == counts(all=3, new=1, mine=1, primary=2)
    c1 = {u.agent_id: u for u in updates if u.conversation_id == "c-1"}
    assert (c1["ag-1"].added, c1["ag-1"].removed) == (["mine", "primary"], [])


def test_newly_added_agent_gets_the_conversations(inbox: Inbox, ev: Events) -> None:
    """SPEC: agents change -> re-categorised for every agent it affects: the new agent only
    (2 -> 3 agents changes nobody else's sets)."""
    feed(inbox, [ev.account("free", ["ag-1", "ag-2"], sequence=1),
                 ev("conversation.created", "c-1"), ev("conversation.created", "c-2"),
                 ev("conversation.assigned", "c-2", agent_id="ag-1"),
                 ev("conversation.created", "c-3"), ev("conversation.resolved", "c-3"),
                 ev("conversation.created", "c-4"), ev("conversation.deleted", "c-4")])
    updates = inbox.handle(ev.account("free", ["ag-1", "ag-2", "ag-3"], sequence=2))
    assert categories(updates) == {("ag-3", "c-1"): NEW, ("ag-3", "c-2"): ALL,
                                   ("ag-3", "c-3"): ["resolved"]}
    assert updates[-1].counts == counts(all=2, new=1, primary=1, resolved=1)


def test_removed_agent_loses_the_conversations(inbox: Inbox, ev: Events) -> None:
    """SPEC: agents change -> re-categorised: a removed agent is in no category any more."""
    feed(inbox, [ev.account("free", ["ag-1", "ag-2", "ag-3"], sequence=1),
                 ev("conversation.created", "c-1"), ev("conversation.created", "c-2"),
                 ev("conversation.resolved", "c-2")])
    updates = inbox.handle(ev.account("free", ["ag-1", "ag-2"], sequence=2))
    assert categories(updates) == {("ag-3", "c-1"): [], ("ag-3", "c-2"): []}
    by_conv = {u.conversation_id: u for u in updates}
    assert by_conv["c-1"].removed == NEW
    assert by_conv["c-2"].removed == ["resolved"]
    assert updates[-1].counts == counts()


def test_removing_the_second_agent_makes_it_single_agent(inbox: Inbox, ev: Events) -> None:
    feed(inbox, [ev.account("free", ["ag-1", "ag-2"], sequence=1),
                 ev("conversation.created", "c-1"), ev("conversation.created", "c-2"),
                 ev("conversation.assigned", "c-2", agent_id="ag-1")])
    updates = inbox.handle(ev.account("free", ["ag-1"], sequence=2))
    assert categories(updates) == {("ag-1", "c-1"): ["all", "new"], ("ag-1", "c-2"): ["all"],
                                   ("ag-2", "c-1"): [], ("ag-2", "c-2"): []}


# -- transfers ---------------------------------------------------------------------------


def test_transfer_to_agent_replaces_who_joined(inbox: Inbox, ev: Events) -> None:
    """SPEC `conversation.transferred` {"to_agent_id"}: "replaces who has joined"."""
    feed(inbox, [ev.account("free", ["ag-1", "ag-2", "ag-3"]), ev("conversation.created", "c-1"),
                 ev("conversation.assigned", "c-1", agent_id="ag-1")])
    updates = inbox.handle(ev("conversation.transferred", "c-1", to_agent_id="ag-2"))
    assert categories(updates) == {("ag-1", "c-1"): ALL, ("ag-2", "c-1"): MINE}


def test_transfer_to_group_leaves_it_unassigned_in_that_group(inbox: Inbox,
                                                              ev: Events) -> None:
    """SPEC: "a group transfer leaves it unassigned in that group" (pro: new for members)."""
    feed(inbox, [
        ev.account("pro", ["ag-1", "ag-2", "ag-3"], {"g-sales": ["ag-1"], "g-support": ["ag-2"]}),
        ev("conversation.created", "c-1", group_id="g-sales"),
        ev("conversation.assigned", "c-1", agent_id="ag-1"),
    ])
    updates = inbox.handle(ev("conversation.transferred", "c-1", to_group_id="g-support"))
    # ag-1 leaves mine and is not in g-support: all; ag-2 gets new; ag-3 keeps all (no update)
    assert categories(updates) == {("ag-1", "c-1"): ALL, ("ag-2", "c-1"): NEW}


# -- resolve, reopen, delete -------------------------------------------------------------


def test_resolved_is_the_only_category_for_every_agent(inbox: Inbox, ev: Events) -> None:
    """SPEC: "A resolved conversation is in `resolved` only, for every agent of the account."."""
    feed(inbox, [ev.account("pro", ["ag-1", "ag-2", "ag-3"], {"g-sales": ["ag-2"]}),
                 ev("conversation.created", "c-1", group_id="g-sales"),
                 ev("conversation.assigned", "c-1", agent_id="ag-1")])
    updates = by_agent(inbox.handle(ev("conversation.resolved", "c-1")))
    assert sorted(updates) == ["ag-1", "ag-2", "ag-3"]
    assert updates["ag-1"].removed == MINE
    for update in updates.values():
        assert update.categories == ["resolved"]
        assert update.counts == counts(resolved=1)


def test_visitor_message_reopens_a_resolved_conversation(inbox: Inbox, ev: Events) -> None:
    """SPEC: "A visitor who writes into a resolved conversation reopens it."."""
    feed(inbox, [ev.account("free", ["ag-1", "ag-2"]), ev("conversation.created", "c-1"),
                 ev("conversation.resolved", "c-1")])
    updates = by_agent(inbox.handle(ev("message.created", "c-1", author="visitor")))
    for update in updates.values():
        assert update.categories == NEW
        assert (update.added, update.removed) == (NEW, ["resolved"])
        assert update.counts == counts(all=1, new=1, primary=1)


def test_reopen_event_keeps_who_had_joined(inbox: Inbox, ev: Events) -> None:
    """SPEC `conversation.reopened`: "{} (keeps who had joined)"."""
    feed(inbox, [ev.account("free", ["ag-1", "ag-2"]), ev("conversation.created", "c-1"),
                 ev("conversation.assigned", "c-1", agent_id="ag-2"),
                 ev("conversation.resolved", "c-1")])
    updates = inbox.handle(ev("conversation.reopened", "c-1"))
    assert categories(updates) == {("ag-1", "c-1"): ALL, ("ag-2", "c-1"): MINE}
    # reopening an open conversation changes nothing
    assert inbox.handle(ev("conversation.reopened", "c-1")) == []


def test_deleted_conversation_leaves_every_category(inbox: Inbox, ev: Events) -> None:
    """SPEC: "A deleted conversation is in no category." - an update with empty categories
    for each agent who had some, and the counts drop."""
    feed(inbox, [ev.account("free", ["ag-1", "ag-2"]), ev("conversation.created", "c-1"),
                 ev("conversation.created", "c-2"),
                 ev("conversation.assigned", "c-1", agent_id="ag-1")])
    updates = by_agent(inbox.handle(ev("conversation.deleted", "c-1")))
    assert sorted(updates) == ["ag-1", "ag-2"]
    assert updates["ag-1"].categories == []
    assert updates["ag-1"].removed == MINE
    assert updates["ag-1"].added == []
    assert updates["ag-2"].removed == ALL
    assert updates["ag-1"].counts == counts(all=1, new=1, primary=1)  # c-2 is left
    # deleting again, or events for the deleted conversation, change nothing
    assert inbox.handle(ev("conversation.deleted", "c-1")) == []
    assert inbox.handle(ev("message.created", "c-1", author="visitor")) == []
    assert inbox.handle(ev("conversation.reopened", "c-1")) == []


def test_deleting_a_resolved_conversation(inbox: Inbox, ev: Events) -> None:
    feed(inbox, [ev.account("free", ["ag-1"]), ev("conversation.created", "c-1"),
                 ev("conversation.resolved", "c-1")])
    [update] = inbox.handle(ev("conversation.deleted", "c-1"))
    assert (update.categories, update.removed) == ([], ["resolved"])
    assert update.counts == counts()


# -- duplicates, stale sequences, unknown accounts and conversations ---------------------


def test_duplicate_event_id_changes_nothing(inbox: Inbox, ev: Events) -> None:
    """SPEC `event_id`: "a redelivered or re-sent event with the same id must change nothing
    and must not produce a different update"."""
    inbox.handle(ev.account("free", ["ag-1", "ag-2"]))
    created = ev("conversation.created", "c-1")
    assert inbox.handle(created) != []
    assert inbox.handle(created) == []

    join = ev("conversation.assigned", "c-1", event_id="e-join", agent_id="ag-1")
    leave = ev("conversation.unassigned", "c-1", event_id="e-leave", agent_id="ag-1")
    feed(inbox, [join, leave])
    counts_before = {a: dict(inbox.account("acc-1").counts_of(a)) for a in ("ag-1", "ag-2")}
    assert inbox.handle(join) == []  # re-sent after the leave: still not joined
    assert sorted(inbox.categories_of("acc-1", "c-1", "ag-1")) == NEW
    assert {a: dict(inbox.account("acc-1").counts_of(a)) for a in ("ag-1", "ag-2")} == counts_before


def test_duplicate_account_snapshot_changes_nothing(inbox: Inbox, ev: Events) -> None:
    first = ev.account("free", ["ag-1", "ag-2"])
    feed(inbox, [first, ev.account("free", ["ag-1"]), ev("conversation.created", "c-1")])
    assert inbox.handle(first) == []
    assert sorted(inbox.categories_of("acc-1", "c-1", "ag-1")) == ["all", "new"]


def test_stale_conversation_sequence_changes_nothing(inbox: Inbox, ev: Events) -> None:
    """SPEC `sequence`: "An event older than one already applied for the same conversation
    is stale: it changes nothing."."""
    feed(inbox, [ev.account("free", ["ag-1", "ag-2"]),
                 ev("conversation.created", "c-1", sequence=1),
                 ev("conversation.assigned", "c-1", sequence=5, agent_id="ag-1")])
    assert inbox.handle(ev("conversation.unassigned", "c-1", sequence=3, agent_id="ag-1")) == []
    assert inbox.handle(ev("conversation.resolved", "c-1", sequence=4)) == []
    assert inbox.handle(ev("conversation.deleted", "c-1", sequence=2)) == []
    assert sorted(inbox.categories_of("acc-1", "c-1", "ag-1")) == MINE
    # a newer one still applies
    assert categories(inbox.handle(ev("conversation.resolved", "c-1", sequence=6))) == {
        ("ag-1", "c-1"): ["resolved"], ("ag-2", "c-1"): ["resolved"]}


def test_stale_account_sequence_changes_nothing(inbox: Inbox, ev: Events) -> None:
    """SPEC `sequence`: "(per account for account events)"."""
    feed(inbox, [ev.account("pro", ["ag-1", "ag-2"], {"g-sales": ["ag-1"]}, sequence=2),
                 ev("conversation.created", "c-1", group_id="g-sales")])
    assert inbox.handle(ev.account("free", ["ag-1", "ag-2", "ag-3"], sequence=1)) == []
    assert sorted(inbox.categories_of("acc-1", "c-1", "ag-2")) == ALL
    assert inbox.categories_of("acc-1", "c-1", "ag-3") == frozenset()


def test_event_for_an_unknown_conversation(inbox: Inbox, ev: Events) -> None:
    """SPEC: "An event for a conversation ... never seen before is valid"."""
    inbox.handle(ev.account("free", ["ag-1", "ag-2"]))
    updates = inbox.handle(ev("conversation.assigned", "c-7", agent_id="ag-2"))
    assert categories(updates) == {("ag-1", "c-7"): ALL, ("ag-2", "c-7"): MINE}
    assert inbox.handle(ev("conversation.deleted", "c-8")) == []  # never had a category
    resolved = inbox.handle(ev("conversation.resolved", "c-9"))
    assert categories(resolved) == {("ag-1", "c-9"): ["resolved"], ("ag-2", "c-9"): ["resolved"]}


def test_event_for_an_unknown_account(inbox: Inbox, ev: Events) -> None:
    """SPEC: an unknown account is valid; "it knows just the agents that appear in events,
    plan `free`" - no agents yet, so no updates; the first agent gets a single-agent inbox."""
    assert inbox.handle(ev("conversation.created", "c-1", account_id="acc-9",
                           group_id="g-sales")) == []
    assert inbox.handle(ev("message.created", "c-1", account_id="acc-9", author="visitor")) == []
    assert inbox.handle(ev("conversation.created", "c-2", account_id="acc-9")) == []
    updates = inbox.handle(ev("message.created", "c-1", account_id="acc-9", author="agent",
                              agent_id="ag-1"))
    # plan free, one agent: single-agent tabs, the group of c-1 is ignored
    assert categories(updates) == {("ag-1", "c-1"): ["all"], ("ag-1", "c-2"): ["all", "new"]}
    assert updates[0].account_id == "acc-9"
    assert updates[0].routing_key == "acc-9.ag-1"


def test_agent_seen_in_an_event_for_a_deleted_conversation_is_known(inbox: Inbox,
                                                                    ev: Events) -> None:
    """SPEC: an account known only from its conversations "knows just the agents that appear
    in events" - an agent who appears in an event (here for a deleted conversation) is one
    of the account's agents, so the account becomes multi-agent."""
    feed(inbox, [ev("conversation.assigned", "c-1", agent_id="ag-1"),
                 ev("conversation.created", "c-2"),
                 ev("conversation.deleted", "c-3")])
    updates = inbox.handle(ev("conversation.assigned", "c-3", agent_id="ag-7"))
    assert categories(updates) == {
        ("ag-1", "c-1"): MINE, ("ag-1", "c-2"): NEW,
        ("ag-7", "c-1"): ALL, ("ag-7", "c-2"): NEW,
    }


# -- the update contract -----------------------------------------------------------------


def _stream(ev: Events) -> list[Event]:
    return [
        ev.account("pro", ["ag-1", "ag-2", "ag-3"], {"g-sales": ["ag-1", "ag-2"]}, sequence=1),
        ev("conversation.created", "c-1", group_id="g-sales"),
        ev("conversation.created", "c-2"),
        ev("message.created", "c-1", author="agent", agent_id="ag-1"),
        ev("conversation.transferred", "c-2", to_agent_id="ag-3"),
        ev("conversation.resolved", "c-1"),
        ev("message.created", "c-1", author="visitor"),
        ev.account("standard", ["ag-1", "ag-2", "ag-4"], {"g-sales": ["ag-1"]}, sequence=2),
        ev("conversation.transferred", "c-2", to_group_id="g-sales"),
        ev("conversation.deleted", "c-1"),
    ]


def test_update_ids_are_deterministic_and_unique(rules: CompiledRules) -> None:
    """SPEC: "`update_id` is deterministic for (cause event, agent, conversation)"."""
    first = feed(Inbox(rules), _stream(Events()))
    second = feed(Inbox(rules), _stream(Events()))
    assert [u.update_id for u in first] == [u.update_id for u in second]
    assert [u.body for u in first] == [u.body for u in second]
    keys = {(u.cause_event_id, u.agent_id, u.conversation_id) for u in first}
    assert len({u.update_id for u in first}) == len(first) == len(keys)


def test_update_id_depends_on_event_agent_and_conversation(rules: CompiledRules) -> None:
    ev = Events()
    inbox = Inbox(rules)
    feed(inbox, [ev.account("free", ["ag-1", "ag-2"]), ev("conversation.created", "c-1"),
                 ev("conversation.created", "c-2")])
    updates = inbox.handle(ev.account("free", ["ag-1", "ag-2", "ag-3"]))
    # one event, one agent, two conversations: two different ids
    assert [u.agent_id for u in updates] == ["ag-3", "ag-3"]
    assert updates[0].update_id != updates[1].update_id


def test_every_update_carries_the_contract_fields(rules: CompiledRules) -> None:
    """SPEC output: `categories` "the full set after the event, sorted"; `rules_version`
    "identifies the rule files"; `counts` per category."""
    inbox = Inbox(rules)
    for event in _stream(Events()):
        for update in inbox.handle(event):
            assert update.rules_version == rules.version
            assert update.rules_version
            assert update.cause_event_id == event.event_id
            assert update.account_id == "acc-1"
            assert update.categories == sorted(update.categories)
            assert update.added == sorted(update.added)
            assert update.removed == sorted(update.removed)
            assert set(update.added) <= set(update.categories)
            assert not set(update.removed) & set(update.categories)
            assert update.added or update.removed  # only changed sets are published
            assert set(update.counts) == set(CATEGORY_NAMES)
            assert update.counts == recount(inbox, "acc-1", update.agent_id)


def test_counts_equal_a_recount_after_a_mixed_stream(rules: CompiledRules) -> None:
    inbox = Inbox(rules)
    last: dict[str, dict[str, int]] = {}
    for update in feed(inbox, _stream(Events())):
        last[update.agent_id] = update.counts
    for agent, seen in last.items():
        assert seen == recount(inbox, "acc-1", agent), agent


# -- the shipped rule test cases ---------------------------------------------------------

# Every row of the contract's category tables and every rule sentence of "The categories" has
# at least one case, tagged "[tag]" in its name.
SPEC_TAGS = {
    "single:all", "single:new",
    "multi:all", "multi:new", "multi:mine", "multi:primary",
    "resolved", "deleted", "pro-routing", "groups-ignored", "groups-in-effect",
    "reply-joins", "leave", "last-leaves", "transfer-agent", "transfer-group",
    "reopen-visitor", "reopen-event", "plan-change", "single-to-multi", "account-change",
    "new-agent", "removed-agent", "duplicate", "stale", "unknown-conversation",
    "unknown-account", "counts", "snooze", "unread", "mentions",
}


def test_shipped_rule_cases_pass() -> None:
    result = CliRunner().invoke(main, ["rules", "test"])
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output
    assert "FAIL" not in result.output


def test_shipped_rule_cases_cover_every_spec_row() -> None:
    names = [str(case["name"]) for path in case_files(default_rules_dir())
             for case in load_cases(path)]
    tags = {tag for name in names for tag in re.findall(r"\[([a-z:-]+)\]", name)}
    assert SPEC_TAGS - tags == set()
    assert tags - SPEC_TAGS == set(), "a tag not in SPEC_TAGS: add it there or fix the name"
