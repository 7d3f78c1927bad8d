"""Random event streams: the categoriser agrees with a naive reading of the contract."""

from typing import Any

from hypothesis import HealthCheck, given, settings

from contracts import parse_event_object
from tests.spec_oracle import SpecOracle
from tests.support.streams import event_streams
from worker.domain.inbox import Inbox
from worker.domain.updates import Update
from worker.rulebook import load_rules

RULES = load_rules()
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def replay(stream: list[dict[str, Any]]) -> tuple[Inbox, list[list[Update]]]:
    inbox = Inbox(RULES)
    return inbox, [inbox.handle(parse_event_object(event)) for event in stream]


@SETTINGS
@given(event_streams())
def test_updates_match_a_from_scratch_recomputation_of_the_spec(
        stream: list[dict[str, Any]]) -> None:
    inbox = Inbox(RULES)
    oracle = SpecOracle()
    for event in stream:
        before = oracle.snapshot()
        oracle.apply(event)
        after = oracle.snapshot()
        expected = {key: after.get(key, frozenset()) for key in before.keys() | after.keys()
                    if before.get(key, frozenset()) != after.get(key, frozenset())}
        updates = inbox.handle(parse_event_object(event))
        got = {(u.account_id, u.agent_id, u.conversation_id): frozenset(u.categories)
               for u in updates}
        assert len(got) == len(updates), "one update per (agent, conversation) per event"
        assert got == expected, event
        for update in updates:
            assert update.counts == {name: oracle.counts(update.account_id, update.agent_id)
                                     .get(name, 0) for name in RULES.categories}
            previous = before.get((update.account_id, update.agent_id, update.conversation_id),
                                  frozenset())
            assert set(update.added) == set(update.categories) - previous
            assert set(update.removed) == previous - set(update.categories)


@SETTINGS
@given(event_streams())
def test_incremental_counts_equal_a_full_recount(stream: list[dict[str, Any]]) -> None:
    inbox, _ = replay(stream)
    for account_id, state in inbox.accounts.items():
        for agent, counts in state.counts.items():
            recount: dict[str, int] = {}
            for conversation_id in state.conversations:
                cats = inbox.categories_of(account_id, conversation_id, agent)
                for category in cats:
                    recount[category] = recount.get(category, 0) + 1
            assert {k: v for k, v in counts.items() if v} == recount


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
