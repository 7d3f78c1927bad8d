"""Views in random streams. The worker's replay agrees with the oracle's own reading of
views (tests/spec_oracle.py) event by event, across views defined, changed, removed and
re-sent stale; and the Python evaluator of views (CompiledViews) agrees with
durable-rules, given each view as a category of the rule set, on every fact vector."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import BadEvent, parse_event_object
from contracts.events import PRIORITIES
from tests.spec_oracle import CATEGORIES, SpecOracle, when
from tests.support.streams import (
    ATTRIBUTE_TEST_VALUES,
    PLANS,
    TIME,
    envelope,
    event_stream,
    event_streams,
    tiny_steps,
    tiny_view_steps,
    view_conditions,
    view_lists,
)
from tests.test_properties import RULES, check_against_the_oracle, check_snapshots, nonzero
from worker.domain.facts import FACT_NAMES, PRIORITY_RANK, FactVector
from worker.domain.inbox import Inbox
from worker.domain.state import Conversation
from worker.rulebook.compiler import Definitions, compile_ruleset
from worker.rulebook.engine import CompiledRules, default_rules_dir, load_rules
from worker.rulebook.syntax import AttributeDeclaration, Definition
from worker.rulebook.views import CompiledViews

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
# A views event about one step in four (tiny_steps draws a few more), in streams long
# enough for views to change conversations already there.
VIEWS_OFTEN = event_streams(min_size=12, steps=st.one_of(
    tiny_steps(), tiny_steps(), tiny_steps(), tiny_view_steps()))


@SETTINGS
@given(VIEWS_OFTEN)
def test_streams_with_views_match_the_oracle(stream: list[dict[str, Any]]) -> None:
    """Per event (views events included: their updates carry their id) and at the
    end: categories with views, unread flags, counts and unread counts of every
    category an agent has, snapshots."""
    inbox, oracle = check_against_the_oracle(stream)
    check_snapshots(inbox, oracle)


@pytest.mark.parametrize(("profile", "knobs"), [
    ("views", {"conversations": 60, "views": 0.03}),
    ("mixed", {"views": 0.03, "rich": True, "count": 600}),
    ("chaos", {"views": 0.03, "rich": True, "count": 600, "seed": 2}),
    ("heavy", {"views": 0.03, "rich": True, "agents": 6, "conversations": 30})])
def test_seeded_streams_with_views_match_the_oracle(profile: str,
                                                    knobs: dict[str, Any]) -> None:
    """Longer streams, realistic views (tests/support/streams.py, VIEW_CATALOGUE):
    shared and personal, stale ones in chaos, over rich conversations."""
    inbox, oracle = check_against_the_oracle(event_stream(profile=profile, **knobs))
    check_snapshots(inbox, oracle)


GOOD_VIEW = {"view_id": "v-1", "when": {"category": "new"}}
# Views bodies the default rules refuse, each with a good view beside its bad one.
BAD_VIEWS: list[tuple[str, dict[str, Any]]] = [
    ("account.views_updated", {"views": [GOOD_VIEW, {"view_id": "v-2", "when": {
        "category": "urgent"}}]}),
    ("account.views_updated", {"views": [GOOD_VIEW, {"view_id": "v-2", "when": {
        "fact": "conversation.colour", "equals": "red"}}]}),
    ("account.views_updated", {"views": [GOOD_VIEW, {"view_id": "v-2", "when": {
        "fact": "conversation.attributes.vip", "equals": True}}]}),
    ("account.views_updated", {"views": [GOOD_VIEW, {"view_id": "v-1", "when": {
        "category": "all"}}]}),
    ("account.views_updated", {"views": [GOOD_VIEW, {"view_id": "v.2", "when": {
        "category": "all"}}]}),
    ("account.views_updated", {"views": [{"view_id": f"v-{i}", "when": {"category": "all"}}
                                         for i in range(51)]}),
    ("account.views_updated", {"views": [GOOD_VIEW, {"view_id": "v-2", "when": {"any": [
        {"fact": "conversation.labels", "contains": f"l-{i}"} for i in range(64)]}}]}),
    ("agent.views_updated", {"agent_id": "ag-9", "views": [
        {"view_id": f"v-{i}", "when": {"category": "all"}} for i in range(21)]}),
    ("agent.views_updated", {"agent_id": "ag-9", "views": [GOOD_VIEW, {
        "view_id": "v-2", "when": {"category": "view:v-1"}}]}),
]


def replayed(inbox: Inbox, stream: list[dict[str, Any]], bad: str = "") -> list[bytes]:
    """Every update, as replay publishes them: the crossings due before each event,
    then the event's (the event ``bad`` must be refused as bad input)."""
    bodies = []
    for raw in stream:
        event = parse_event_object(raw)
        bodies += [u.body for u in inbox.cross_until(event.occurred_at)]
        if raw["event_id"] == bad:
            with pytest.raises(BadEvent, match=raw["type"]):
                inbox.handle(event)
        else:
            bodies += [u.body for u in inbox.handle(event)]
    return bodies


@SETTINGS
@given(VIEWS_OFTEN, st.data())
def test_an_invalid_views_event_changes_nothing(stream: list[dict[str, Any]],
                                                data: st.DataObject) -> None:
    """Anywhere in a stream, with a sequence above every other: refused whole (its
    good view too), the views in force stay, its sequence does not count (later
    account events still apply), its agent is not learned; the updates are those of
    the stream without it."""
    position = data.draw(st.integers(0, len(stream)), label="position")
    kind, body = data.draw(st.sampled_from(BAD_VIEWS), label="bad views")
    account = data.draw(st.sampled_from(sorted({e["account_id"] for e in stream})))
    bad = envelope(kind, account, body, event_id="bad", sequence=10**6,
                   occurred_at=stream[position - 1]["occurred_at"] if position else TIME)
    with_bad = [*stream[:position], bad, *stream[position:]]
    assert replayed(Inbox(RULES), with_bad, bad="bad") == replayed(Inbox(RULES), stream)


RULE_SETS = {"default": default_rules_dir(),
             "helpdesk": default_rules_dir() / "examples" / "helpdesk",
             "sla": default_rules_dir() / "examples" / "sla"}
HELPDESK = load_rules(RULE_SETS["helpdesk"])


def modelled(categories: Iterable[str]) -> list[str]:
    """The categories the oracle knows: the default rules' and views."""
    return [c for c in categories if c in CATEGORIES or c.startswith("view:")]


def modelled_counts(counts: dict[str, int]) -> dict[str, int]:
    return {name: counts[name] for name in modelled(nonzero(counts))}


@SETTINGS
@given(VIEWS_OFTEN)
def test_views_under_rules_that_tell_unread_agents_apart_match_the_oracle(
        stream: list[dict[str, Any]]) -> None:
    """The helpdesk rules keep the default categories and add others, some testing
    agent.unread and agent.mentioned (so the worker keeps sixteen relations per
    conversation, not four): after every event, every agent's default categories and
    views are the oracle's all the same; at the end, their counts too."""
    inbox, oracle = Inbox(HELPDESK), SpecOracle()
    for event in stream:
        for instant, account_id in oracle.due(when(event["occurred_at"])):
            oracle.cross(account_id, instant)
        oracle.apply(event)
        inbox.handle(parse_event_object(event))
        state = inbox.accounts[event["account_id"]]
        for account_id, conv_id in oracle.convs:
            if account_id != event["account_id"]:
                continue
            for agent in state.account.agents:
                assert set(modelled(inbox.categories_of(account_id, conv_id, agent))) == (
                    oracle.categories(account_id, conv_id, agent)), (agent, conv_id, event)
    for account_id, state in inbox.accounts.items():
        assert state.account.agents == oracle.accounts[account_id].agents
        for agent in state.account.agents:
            names = inbox.categoriser.views.category_names(state.account.views, agent)
            assert modelled(names) == oracle.category_names(account_id, agent)
            assert modelled_counts(state.counts_of(agent)) == oracle.counts(account_id, agent)
            assert modelled_counts(state.unread_counts_of(agent)) == oracle.unread_counts(
                account_id, agent)


# -- the Python evaluator of views against durable-rules ----------------------------------
LABELS = ("vip", "billing", "invoice", "refunded", "escalated", "l-1")
CHANNELS = ("web", "email")
ATTRIBUTE_KEYS = ("vip", "mrr", "tier", "seats", "other")
WAITING = (60, 300, 301)
ANY_ATTRIBUTE_VALUE = st.sampled_from(sorted(
    {v for values in ATTRIBUTE_TEST_VALUES.values() for v in values}, key=repr))


def as_categories(rules: CompiledRules, views: CompiledViews) -> CompiledRules:
    """The rule set with each view one more category (``view:<id>``), compiled for
    durable-rules as rule files are: the categories a view names are expanded into
    their conditions by the compiler."""
    definitions = rules.definitions
    extended = Definitions(
        [*definitions.categories.values(), *definitions.predicates.values(),
         *(Definition("category", view.category, view.name, view.when, "views", 0)
           for view in views.views)],
        [AttributeDeclaration(key, kind, "rules", 0)
         for key, kind in definitions.attributes.items()])
    return CompiledRules(extended, "views", "views", compile_ruleset(extended))


# One (agent, conversation) as the categoriser sees it: the scalar facts by name, and
# the details the detail tests read (attributes of any type: another type is absent).
WORLDS = st.fixed_dictionaries({
    "conversation.status": st.sampled_from(("open", "snoozed", "resolved", "deleted")),
    "conversation.has_group": st.booleans(),
    "conversation.joined_count": st.integers(0, 3),
    "agent.joined": st.booleans(),
    "agent.in_group": st.booleans(),
    "account.plan": st.sampled_from(PLANS),
    "account.agent_count": st.integers(0, 3),
    "account.group_count": st.integers(0, 2),
    "conversation.waiting_seconds": st.sampled_from((0, 59, *WAITING, 302, 3600)),
    "conversation.last_message_by": st.sampled_from(("visitor", "agent", "none")),
    "conversation.priority": st.sampled_from(PRIORITIES),
    "agent.unread": st.booleans(),
    "agent.mentioned": st.booleans(),
    "channel": st.none() | st.sampled_from(CHANNELS),
    "labels": st.frozensets(st.sampled_from(LABELS)),
    "attributes": st.dictionaries(st.sampled_from(ATTRIBUTE_KEYS), ANY_ATTRIBUTE_VALUE),
})


def vector(world: dict[str, Any], details: tuple[bool, ...]) -> FactVector:
    return (*(PRIORITY_RANK[world[name]] if name == "conversation.priority" else world[name]
              for name in FACT_NAMES), *details)


@pytest.mark.parametrize("name", list(RULE_SETS))
def test_views_in_python_agree_with_durable_rules(name: str) -> None:
    rules = load_rules(RULE_SETS[name])
    conditions = view_conditions(
        categories=rules.categories, predicates=tuple(rules.definitions.predicates),
        labels=LABELS, channels=CHANNELS, attributes=rules.attributes, waiting=WAITING)

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(views=view_lists(conditions, ids=("v-1", "v-2", "v-3", "v-4"), min_size=1),
           worlds=st.lists(WORLDS, min_size=1, max_size=25))
    def agree(views: list[dict[str, Any]], worlds: list[dict[str, Any]]) -> None:
        text, problems = rules.check_views({"views": views}, False)
        assert problems == []
        compiled = rules.compile_views(text)
        durable = as_categories(rules, compiled)
        published = frozenset(compiled.categories)
        for world in worlds:
            conversation = Conversation(
                "acc-1", "c-1", channel=world["channel"], priority=world["conversation.priority"],
                labels=world["labels"], attributes=world["attributes"])
            own = rules.evaluate(vector(world, rules.detail_results(conversation)))
            held = compiled.evaluate(vector(world, compiled.detail_results(conversation)), own)
            both = durable.evaluate(vector(world, durable.detail_results(conversation)))
            assert both - published == own, "the rules' categories are the rules'"
            assert held == both & published, (world, views)

    agree()
