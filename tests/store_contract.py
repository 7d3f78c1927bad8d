"""The contract every state store keeps, written once: what is committed is what loads,
one account at a time; the per-account windows stay bounded on disk; a failed commit
writes nothing; a newer schema is refused.

:class:`StoreContract` holds the tests. Each store's test module runs them by a subclass
named ``Test...`` with a ``stores`` fixture (a :class:`Stores` for that kind of store),
so ``tests/test_store.py`` still needs no PostgreSQL and ``tests/test_store_postgres.py``
keeps failing without one. The helpers below serve the store-specific tests as well.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Protocol

import pytest

from contracts import parse_event_object
from tests.support.streams import event_stream
from worker.domain.account import AccountState
from worker.domain.categoriser import Categoriser
from worker.domain.state import NO_ATTRIBUTES, Account, Conversation
from worker.errors import StoreConflictError, StoreError
from worker.rulebook import load_rules
from worker.store import StateStore

AGENTS = ("ag-1", "ag-2", "ag-3")
BIG = 1_000


class Stores(Protocol):
    """Where one kind of store keeps a test's state (a file, a database), and the two
    ways in that the contract needs."""

    def open(self) -> StateStore:
        """A store on that place that may write every account; closed after the test."""

    def query(self, text: str) -> list[tuple[Any, ...]]:
        """The rows of ``text`` (none for a statement without rows), run past the store
        on its tables, named unqualified: to see what is on disk, or to plant rows."""

    def previous_schema(self) -> None:
        """Lay the tables out as the schema version before this one left them (no store
        is open yet): the next open migrates them."""


@pytest.fixture(scope="module")
def categoriser() -> Categoriser:
    return Categoriser(load_rules(None))


def events(account_id: str, seed: int, count: int) -> Iterator[dict[str, Any]]:
    """A random but plausible stream for one account: snapshots, conversations that
    are created, joined, answered, resolved, deleted; some events sent twice."""
    rng = random.Random(seed)
    sent: list[dict[str, Any]] = []
    for n in range(count):
        if sent and rng.random() < 0.05:
            yield rng.choice(sent)  # a redelivery: must change nothing
            continue
        # A sliding set of ids: new conversations keep coming as old ones are deleted.
        conversation = f"c-{n // 8 + rng.randrange(10)}"
        kind = rng.choice(["account.updated", "conversation.created", "conversation.assigned",
                           "message.created", "conversation.unassigned",
                           "conversation.resolved", "conversation.reopened",
                           "conversation.deleted", "conversation.created"])
        data: dict[str, Any] = {}
        if kind == "account.updated":
            agents = rng.sample(AGENTS, rng.randint(1, 3))
            data = {"plan": rng.choice(["free", "pro"]), "agents": agents,
                    "groups": {"g-1": agents[:1]}}
        elif kind == "conversation.created":
            data = {"group_id": rng.choice([None, "g-1"])}
        elif kind in ("conversation.assigned", "conversation.unassigned"):
            data = {"agent_id": rng.choice(AGENTS)}
        elif kind == "message.created":
            data = rng.choice([{"author": "visitor"},
                               {"author": "agent", "agent_id": rng.choice(AGENTS)}])
        event: dict[str, Any] = {
            "event_id": f"{account_id}-e{n}", "type": kind, "account_id": account_id,
            "occurred_at": f"2026-11-24T10:{n // 60 % 60:02d}:{n % 60:02d}Z",
            "sequence": n, "data": data}
        if kind != "account.updated":
            event["conversation_id"] = conversation
        sent.append(event)
        yield event


def fresh(account_id: str, categoriser: Categoriser, *, event_window: int = BIG,
          tombstone_window: int = BIG) -> AccountState:
    return AccountState(Account(account_id), rules_version=categoriser.rules.version,
                        event_window=event_window, tombstone_window=tombstone_window)


def feed(store: StateStore, categoriser: Categoriser, states: list[AccountState],
         seed: int, count: int, batch: int) -> None:
    """Interleave the accounts' streams; commit every ``batch`` events."""
    streams = [events(s.account_id, seed + i, count) for i, s in enumerate(states)]
    for n in range(count):
        for state, stream in zip(states, streams, strict=True):
            categoriser.handle(state, parse_event_object(next(stream)))
        if (n + 1) % batch == 0 or n == count - 1:
            store.commit([s.take_write() for s in states if s.dirty])


def handle(categoriser: Categoriser, state: AccountState, event_id: str,
           conversation_id: str = "c-new") -> None:
    """One conversation created, at a time with an offset (which must survive)."""
    categoriser.handle(state, parse_event_object({
        "event_id": event_id, "type": "conversation.created",
        "account_id": state.account_id, "occurred_at": "2026-11-25T10:00:00+02:00",
        "conversation_id": conversation_id, "data": {}}))


def snapshot(state: AccountState) -> tuple[object, ...]:
    # Unread counts: an agent with none and one with {} read alike (unread_counts_of),
    # and a store keeps them alike.
    return (state.account, state.conversations, state.counts,
            {agent: counts for agent, counts in state.unread_counts.items() if counts},
            state.seqs, list(state.recent.items()), list(state.tombstones.items()),
            state.event_counter, state.rules_version, state.rules_generation,
            state.last_occurred_at, state.event_window, state.tombstone_window)


def load(store: StateStore, account_id: str, window: int = BIG) -> AccountState:
    state = store.load_account(account_id, event_window=window, tombstone_window=window)
    assert state is not None
    return state


def rows_per_account(stores: Stores, table: str) -> list[tuple[Any, ...]]:
    """(account, rows it has in ``table``) on disk, in account order."""
    return stores.query(f"SELECT account_id, COUNT(*) FROM {table}"
                        " GROUP BY account_id ORDER BY account_id")


def commit_accounts_under_mixed_rules(store: StateStore, categoriser: Categoriser,
                                      ) -> list[str]:
    """25 accounts: every fifth under no rules, the other odd ones under rules "old",
    the rest under the categoriser's. Returns those behind the categoriser's rules."""
    version = categoriser.rules.version
    writes = []
    for i in range(25):
        state = fresh(f"acc-{i:02d}", categoriser)
        state.rules_version = None if i % 5 == 0 else "old" if i % 2 else version
        writes.append(state.take_write())
    store.commit(writes)
    return [f"acc-{i:02d}" for i in range(25) if i % 5 == 0 or i % 2]


# -- conversation details (worker/store/details.py) ----------------------------------

# Categories per relation under rules that test agent.unread or agent.mentioned: 16.
SIXTEEN: tuple[frozenset[str], ...] = tuple(
    frozenset({"all", f"r{i}"}) if i % 3 else frozenset() for i in range(16))
# Every JSON type an attribute can have, and the values that JSON could confuse.
ATTRIBUTES: Mapping[str, Any] = MappingProxyType({
    "plan": "gold", "note": 'ünï "quoted"', "seats": 3, "zero": 0, "score": 1.0,
    "ratio": -0.25, "vip": True, "trial": False})
SNOOZED_UNTIL = datetime(2026, 11, 26, 14, 30, 0, 250_000,
                         tzinfo=timezone(timedelta(hours=5, minutes=30)))
# What the store keeps of the conversation with every detail: the format is pinned
# (sorted sets and keys, JSON types kept, the offset kept).
FULL_DETAILS = (
    '{"channel":"e-mail","priority":"urgent","labels":["billing","vip"],'
    '"attributes":{"note":"ünï \\"quoted\\"","plan":"gold","ratio":-0.25,'
    '"score":1.0,"seats":3,"trial":false,"vip":true,"zero":0},'
    '"snoozed_until":"2026-11-26T14:30:00.250000+05:30","visitor_wrote":true,'
    '"readers":["ag-1","ag-2"],"mentioned":["ag-3"]}')


def detailed(account_id: str, rules_version: str | None) -> AccountState:
    """An account whose conversations and agents use every field the stores keep:
    ``c-full`` every detail (and 16 relations), ``c-read`` only the unread facts that
    every message changes, ``c-big`` an integer past 64 bits (the contract bounds none)
    beside a whole float, ``c-plain`` none (4 relations); agents with unread counts,
    with none, and with only zeros."""
    state = AccountState(
        Account(account_id, "pro", frozenset(AGENTS), {"g-1": frozenset({"ag-1"})}, 9),
        rules_version=rules_version, event_window=BIG, tombstone_window=BIG)
    due = datetime(2026, 11, 26, 9, 0, 0, 123_456, tzinfo=UTC)
    for conversation in (
            Conversation(account_id, "c-full", "snoozed", "g-1", frozenset({"ag-1"}), 7,
                         SIXTEEN, None, "agent", due, "e-mail", "urgent",
                         frozenset({"vip", "billing"}), ATTRIBUTES, SNOOZED_UNTIL, True,
                         frozenset({"ag-2", "ag-1"}), frozenset({"ag-3"})),
            Conversation(account_id, "c-read", "open", None, frozenset({"ag-2"}), 3,
                         SIXTEEN, datetime.fromisoformat("2026-11-25T10:00:00-03:00"),
                         "visitor", None, visitor_wrote=True, readers=frozenset({"ag-2"})),
            Conversation(account_id, "c-big", "open", None, frozenset(), None,
                         (frozenset({"all"}),) * 4,
                         attributes=MappingProxyType({"big": 10**30, "whole": 2.0,
                                                      "minus": -(2**70)})),
            Conversation(account_id, "c-plain", "resolved", "g-1", frozenset(), 2,
                         (frozenset({"resolved"}), frozenset(), frozenset(), frozenset()),
                         None, "agent")):
        state.put_conversation(conversation)
    state.add_counts("ag-1", ["all", "r1", "all"], [])
    state.add_unread_counts("ag-1", ["all", "r1"], [])
    state.add_counts("ag-2", ["all"], [])
    state.add_counts("ag-3", ["all", "r2"], [])
    state.add_unread_counts("ag-3", ["r2"], ["r2"])  # read since: a zero, kept
    for agent in AGENTS:
        state.next_seq(agent)
    return state


def typed(conversations: Mapping[str, Conversation]) -> dict[str, object]:
    """What equality of conversations misses: 1 == 1.0 == True, and equal instants
    in other offsets."""
    return {conversation_id: (
        {key: (type(value), value) for key, value in c.attributes.items()},
        type(c.attributes), type(c.labels), type(c.readers), type(c.mentioned),
        type(c.visitor_wrote),
        None if c.snoozed_until is None else c.snoozed_until.isoformat(),
        None if c.waiting_since is None else c.waiting_since.isoformat())
        for conversation_id, c in conversations.items()}


class StoreContract:
    """The tests every state store passes; a subclass supplies the ``stores`` fixture."""

    def test_a_store_is_a_state_store(self, stores: Stores) -> None:
        store: StateStore = stores.open()  # mypy checks the protocol in each Stores.open
        assert not store.changed_elsewhere()
        store.resync()

    def test_a_committed_account_loads_as_it_was_in_memory(
            self, stores: Stores, categoriser: Categoriser) -> None:
        store = stores.open()
        states = [fresh(f"acc-{i}", categoriser) for i in range(3)]
        feed(store, categoriser, states, seed=7, count=300, batch=23)
        assert all(s.tombstones and s.seqs and s.conversations for s in states), "a rich case"
        store.close()
        store = stores.open()
        for state in states:
            loaded = load(store, state.account_id)
            assert snapshot(loaded) == snapshot(state)
            assert not loaded.dirty
            empty = loaded.take_write()
            assert not (empty.conversations or empty.deleted or empty.agents or empty.events
                        or empty.tombstones), "a fresh load has nothing to write"

    def test_a_loaded_account_carries_on_as_if_it_had_never_left(
            self, stores: Stores, categoriser: Categoriser) -> None:
        store = stores.open()
        kept, evicted = fresh("acc-1", categoriser), fresh("acc-1", categoriser)
        stream = list(events("acc-1", seed=3, count=200))
        for event in stream[:100]:
            categoriser.handle(kept, parse_event_object(event))
            categoriser.handle(evicted, parse_event_object(event))
        store.commit([evicted.take_write()])
        evicted = load(store, "acc-1")
        for event in stream[100:]:
            assert (categoriser.handle(kept, parse_event_object(event))
                    == categoriser.handle(evicted, parse_event_object(event)))
        store.commit([evicted.take_write()])
        assert snapshot(load(store, "acc-1")) == snapshot(kept)

    def test_views_in_force_load_as_they_were_and_carry_on(
            self, stores: Stores, categoriser: Categoriser) -> None:
        """Shared and personal views (and the personal views that hold per conversation)
        are part of an account's state: committed part-way through a stream with views,
        loaded, the account goes on as if it had never left."""
        stream = event_stream(seed=8, count=600, accounts=2, views=0.05, rich=True)
        store = stores.open()
        kept = {a: fresh(a, categoriser) for a in sorted({e["account_id"] for e in stream})}
        evicted = {a: fresh(a, categoriser) for a in kept}
        for event in stream[:400]:
            categoriser.handle(kept[event["account_id"]], parse_event_object(event))
            categoriser.handle(evicted[event["account_id"]], parse_event_object(event))
        assert any(s.account.views.shared for s in kept.values())
        assert any(s.account.views.personal for s in kept.values())
        store.commit([s.take_write() for s in evicted.values()])
        store.close()
        store = stores.open()
        evicted = {a: load(store, a) for a in kept}
        assert {a: snapshot(s) for a, s in evicted.items()} == {
            a: snapshot(s) for a, s in kept.items()}
        for event in stream[400:]:
            account = event["account_id"]
            assert (categoriser.handle(kept[account], parse_event_object(event))
                    == categoriser.handle(evicted[account], parse_event_object(event)))
        store.commit([s.take_write() for s in evicted.values()])
        assert all(snapshot(load(store, a)) == snapshot(kept[a]) for a in kept)

    def test_the_event_time_keeps_its_offset(self, stores: Stores,
                                             categoriser: Categoriser) -> None:
        """It becomes the occurred_at of a rules adoption's updates, which a retry
        repeats."""
        store = stores.open()
        state = fresh("acc-1", categoriser)
        handle(categoriser, state, "e-1")
        store.commit([state.take_write()])
        loaded = load(store, "acc-1").last_occurred_at
        assert loaded is not None and loaded.isoformat() == "2026-11-25T10:00:00+02:00"

    def test_the_windows_are_pruned_on_disk_and_on_load(
            self, stores: Stores, categoriser: Categoriser) -> None:
        store = stores.open()
        state = fresh("acc-1", categoriser, event_window=20, tombstone_window=3)
        other = fresh("acc-2", categoriser, event_window=20, tombstone_window=3)
        feed(store, categoriser, [state, other], seed=11, count=400, batch=7)
        assert len(state.recent) == 20 and len(state.tombstones) == 3
        for table, window in (("events", 20), ("tombstones", 3)):
            assert rows_per_account(stores, table) == [
                ("acc-1", window), ("acc-2", window)], table
        assert stores.query("SELECT events_kept, tombstones_kept FROM accounts"
                            " WHERE account_id = 'acc-1'") == [(20, 3)]
        loaded = store.load_account("acc-1", event_window=20, tombstone_window=3)
        assert loaded is not None and snapshot(loaded) == snapshot(state)
        # A smaller window at the next start: the newest, oldest first, and the disk
        # follows (for that account only).
        smaller = store.load_account("acc-1", event_window=5, tombstone_window=2)
        assert smaller is not None
        assert list(smaller.recent.items()) == list(state.recent.items())[-5:]
        assert list(smaller.tombstones.items()) == list(state.tombstones.items())[-2:]
        handle(categoriser, smaller, "late")
        store.commit([smaller.take_write()])
        assert rows_per_account(stores, "events") == [("acc-1", 5), ("acc-2", 20)]
        assert rows_per_account(stores, "tombstones") == [("acc-1", 2), ("acc-2", 3)]
        again = store.load_account("acc-1", event_window=5, tombstone_window=2)
        assert again is not None and snapshot(again) == snapshot(smaller)

    def test_two_writes_of_one_account_in_one_commit_count_rows_exactly(
            self, stores: Stores, categoriser: Categoriser) -> None:
        """A group commit carries several batches' writes of one account: the rows each
        keeps are counted write by write, so the windows hold exactly on disk."""
        store = stores.open()
        state = fresh("acc-1", categoriser, event_window=20, tombstone_window=3)
        other = fresh("acc-2", categoriser, event_window=20, tombstone_window=3)
        streams = [events("acc-1", 5, 120), events("acc-2", 6, 120)]
        for _ in range(4):  # each commit: two writes of each account, 15 events apart
            writes = []
            for _ in range(2):
                for _ in range(15):
                    for target, stream in zip((state, other), streams, strict=True):
                        categoriser.handle(target, parse_event_object(next(stream)))
                writes += [state.take_write(), other.take_write()]
            store.commit(writes)
        for table, window in (("events", 20), ("tombstones", 3)):
            assert rows_per_account(stores, table) == [
                ("acc-1", window), ("acc-2", window)], table
        assert stores.query("SELECT events_kept, tombstones_kept FROM accounts"
                            " ORDER BY account_id") == [(20, 3), (20, 3)]
        loaded = store.load_account("acc-1", event_window=20, tombstone_window=3)
        assert loaded is not None and snapshot(loaded) == snapshot(state)

    def test_several_writes_of_one_account_in_one_commit(
            self, stores: Stores, categoriser: Categoriser) -> None:
        """A group commit may carry an account twice: the last change of each row wins,
        and the kept counters still count exactly."""
        store = stores.open()
        state = fresh("acc-1", categoriser, event_window=4, tombstone_window=2)
        writes = []
        for n, kind in enumerate(["conversation.created", "conversation.assigned",
                                  "conversation.deleted", "conversation.reopened",
                                  "conversation.created", "conversation.deleted",
                                  "message.created"]):
            conversation = "c-1" if n < 4 else "c-2"
            data: dict[str, Any] = (
                {"agent_id": "ag-1"} if kind == "conversation.assigned" else {})
            if kind == "message.created":
                data = {"author": "agent", "agent_id": "ag-1"}
            categoriser.handle(state, parse_event_object({
                "event_id": f"e{n}", "type": kind, "account_id": "acc-1",
                "conversation_id": conversation, "occurred_at": "2026-11-24T10:00:00Z",
                "sequence": n, "data": data}))
            writes.append(state.take_write())
        store.commit(writes)
        loaded = store.load_account("acc-1", event_window=4, tombstone_window=2)
        assert loaded is not None and snapshot(loaded) == snapshot(state)
        assert stores.query("SELECT events_kept, tombstones_kept FROM accounts") == [(4, 2)]
        assert stores.query("SELECT COUNT(*) FROM events") == [(4,)]
        assert stores.query("SELECT conversation_id, last_sequence FROM tombstones"
                            " ORDER BY number") == [("c-1", 3), ("c-2", 6)]

    def test_a_deleted_conversation_leaves_the_table_and_leaves_a_tombstone(
            self, stores: Stores, categoriser: Categoriser) -> None:
        store = stores.open()
        state = fresh("acc-1", categoriser)
        for n, kind in enumerate(["conversation.created", "conversation.assigned",
                                  "conversation.deleted", "conversation.reopened"]):
            data = {"agent_id": "ag-1"} if kind == "conversation.assigned" else {}
            categoriser.handle(state, parse_event_object({
                "event_id": f"e{n}", "type": kind, "account_id": "acc-1",
                "conversation_id": "c-1", "occurred_at": "2026-11-24T10:00:00Z",
                "sequence": n, "data": data}))
            store.commit([state.take_write()])
        assert stores.query("SELECT COUNT(*) FROM conversations") == [(0,)]
        # The reopen after the delete is newer: the tombstone moves up (one row), so an
        # event older than the reopen stays stale.
        assert stores.query("SELECT number, conversation_id, last_sequence FROM tombstones"
                            ) == [(5, "c-1", 3)]
        assert stores.query("SELECT tombstones_kept FROM accounts") == [(1,)]
        loaded = load(store, "acc-1")
        assert loaded.is_deleted("c-1") and "c-1" not in loaded.conversations
        assert loaded.tombstones["c-1"] == (5, 3)
        assert loaded.counts["ag-1"]["all"] == 0 and loaded.event_counter == 6

    def test_a_failed_commit_writes_nothing(self, stores: Stores,
                                            categoriser: Categoriser) -> None:
        store = stores.open()
        state = fresh("acc-1", categoriser)
        feed(store, categoriser, [state], seed=9, count=60, batch=60)
        before = snapshot(load(store, "acc-1"))
        other = fresh("acc-2", categoriser)
        for event in events("acc-2", seed=1, count=30):
            categoriser.handle(other, parse_event_object(event))
        good = other.take_write()
        # A number already used by an event: the commit fails after its first writes.
        used = next(reversed(state.recent.values()))
        clash = replace(good, account_id="acc-1", events=((used, "clash"),))
        with pytest.raises(StoreError, match="commit failed") as failed:
            store.commit([good, clash])
        assert not isinstance(failed.value, StoreConflictError), "a failure, not a conflict"
        assert store.load_account("acc-2", event_window=BIG, tombstone_window=BIG) is None
        assert snapshot(load(store, "acc-1")) == before
        assert not store.changed_elsewhere(), "the generation did not move either"
        store.commit([good])
        assert load(store, "acc-2").conversations == other.conversations

    def test_an_unknown_account_loads_as_none(self, stores: Stores) -> None:
        store = stores.open()
        assert store.load_account("nobody", event_window=10, tombstone_window=10) is None

    def test_an_account_known_only_by_its_conversations_still_loads(
            self, stores: Stores) -> None:
        store = stores.open()
        stores.query("INSERT INTO conversations (account_id, conversation_id, status,"
                     " group_id, joined, last_sequence, categories) VALUES ('acc-9', 'c-1',"
                     " 'open', NULL, '[]', 3, '[[\"all\"], [], [], []]')")
        stores.query("INSERT INTO events VALUES ('acc-9', 4, 'e-4')")
        loaded = store.load_account("acc-9", event_window=10, tombstone_window=10)
        assert loaded is not None and loaded.account == Account("acc-9")
        assert loaded.conversations["c-1"].categories[0] == frozenset({"all"})
        assert loaded.event_counter == 4, "new numbers never reuse a stored one"

    def test_accounts_behind_the_rules_come_in_pages(self, stores: Stores,
                                                     categoriser: Categoriser) -> None:
        store = stores.open()
        behind = commit_accounts_under_mixed_rules(store, categoriser)
        pages, after = [], ""
        while page := store.accounts_behind(categoriser.rules.version, after, 4):
            pages.append(page)
            after = page[-1]
        assert [a for page in pages for a in page] == behind
        assert all(len(page) == 4 for page in pages[:-1])
        assert store.accounts_behind("old", "", 100) == [
            f"acc-{i:02d}" for i in range(25) if not i % 2 or i % 5 == 0]

    def test_the_rules_in_force_are_recorded_once_and_read_as_committed(
            self, stores: Stores) -> None:
        """A partition's rules in force (worker.rules_in_force): the first worker to ask
        records its default; from then on a commit changes it, and every read sees
        the last commit, whichever store made it."""
        store = stores.open()
        assert store.rules_in_force(0, "v1") == "v1"
        assert store.rules_in_force(0, "v2") == "v1", "recorded the first time only"
        store.commit([], {0: "v3"})
        assert store.rules_in_force(0, "v4") == "v3"
        other = stores.open()
        assert other.rules_in_force(0, "v5") == "v3"
        other.commit([], {0: "v6"})
        assert store.rules_in_force(0, "v7") == "v6", "read again, not remembered"

    def test_every_detail_of_a_conversation_and_the_unread_counts_round_trip(
            self, stores: Stores) -> None:
        """Channel, priority, labels, attributes of every type, the snooze, who read and
        who is mentioned, 16 relations; unread counts beside the badge counts. Details
        at their defaults cost the row nothing (NULL), and a commit that puts them back
        to their defaults clears them."""
        store = stores.open()
        state = detailed("acc-1", "v1")
        store.commit([state.take_write()])
        loaded = load(store, "acc-1")
        assert snapshot(loaded) == snapshot(state)
        assert typed(loaded.conversations) == typed(state.conversations)
        assert loaded.conversations["c-full"].categories == SIXTEEN
        assert loaded.unread_counts == {"ag-1": {"all": 1, "r1": 1}, "ag-3": {"r2": 0}}
        assert stores.query("SELECT conversation_id, details FROM conversations"
                            " ORDER BY conversation_id") == [
            ("c-big", '{"attributes":{"big":1000000000000000000000000000000,'
                      '"minus":-1180591620717411303424,"whole":2.0}}'),
            ("c-full", FULL_DETAILS),
            ("c-plain", None),
            ("c-read", '{"visitor_wrote":true,"readers":["ag-2"]}')]
        assert stores.query("SELECT agent_id, unread_counts FROM agents ORDER BY agent_id"
                            ) == [("ag-1", '{"all":1,"r1":1}'), ("ag-2", "{}"),
                                  ("ag-3", '{"r2":0}')]
        # Back to the defaults (an update replaces every column of the row).
        full = loaded.conversations["c-full"]
        loaded.put_conversation(full._replace(
            status="open", channel=None, priority="none", labels=frozenset(),
            attributes=NO_ATTRIBUTES, snoozed_until=None, visitor_wrote=False,
            readers=frozenset(), mentioned=frozenset()))
        loaded.put_conversation(loaded.conversations["c-plain"]._replace(
            channel="chat", attributes=MappingProxyType({"score": 1})))
        loaded.add_unread_counts("ag-1", [], ["all", "r1"])
        loaded.add_unread_counts("ag-2", ["all"], [])
        store.commit([loaded.take_write()])
        again = load(store, "acc-1")
        assert snapshot(again) == snapshot(loaded)
        assert typed(again.conversations) == typed(loaded.conversations)
        assert again.conversations["c-full"].attributes is NO_ATTRIBUTES
        assert stores.query("SELECT conversation_id, details FROM conversations"
                            " WHERE conversation_id IN ('c-full', 'c-plain')"
                            " ORDER BY conversation_id") == [
            ("c-full", None), ("c-plain", '{"channel":"chat","attributes":{"score":1}}')]
        assert again.unread_counts == {"ag-1": {"all": 0, "r1": 0}, "ag-2": {"all": 1},
                                       "ag-3": {"r2": 0}}

    def test_rows_of_the_previous_schema_load_with_every_new_field_at_its_default(
            self, stores: Stores) -> None:
        """The migration adds the new columns with defaults: what an older worker
        stored loads as it was, with no details and nothing unread, and takes details
        from then on."""
        stores.previous_schema()
        stores.query("INSERT INTO conversations (account_id, conversation_id, status,"
                     " group_id, joined, last_sequence, categories, waiting_since,"
                     " last_message_by, due_at) VALUES ('acc-1', 'c-1', 'open', 'g-1',"
                     " '[\"ag-1\"]', 3, '[[\"all\"], [], [\"all\", \"mine\"], []]',"
                     " '2026-11-25T10:00:00+02:00', 'visitor', NULL)")
        stores.query("INSERT INTO agents (account_id, agent_id, counts, seq) VALUES"
                     " ('acc-1', 'ag-1', '{\"all\": 1, \"mine\": 1}', 4)")
        store = stores.open()
        loaded = load(store, "acc-1")
        assert loaded.conversations == {"c-1": Conversation(
            "acc-1", "c-1", "open", "g-1", frozenset({"ag-1"}), 3,
            (frozenset({"all"}), frozenset(), frozenset({"all", "mine"}), frozenset()),
            datetime.fromisoformat("2026-11-25T10:00:00+02:00"), "visitor")}
        assert loaded.conversations["c-1"].attributes is NO_ATTRIBUTES
        assert (loaded.counts, loaded.unread_counts, loaded.seqs) == (
            {"ag-1": {"all": 1, "mine": 1}}, {}, {"ag-1": 4})
        assert stores.query("SELECT details FROM conversations") == [(None,)]
        assert stores.query("SELECT unread_counts FROM agents") == [("{}",)]
        # The migrated rows take every detail from now on.
        state = detailed("acc-1", None)
        for conversation in state.conversations.values():
            loaded.put_conversation(conversation)
        loaded.add_unread_counts("ag-1", ["all"], [])
        store.commit([loaded.take_write()])
        again = load(store, "acc-1")
        assert snapshot(again) == snapshot(loaded)
        assert typed(again.conversations) == typed(loaded.conversations)
        assert again.unread_counts == {"ag-1": {"all": 1}}

    def test_a_newer_schema_is_refused(self, stores: Stores) -> None:
        stores.open()
        stores.query("INSERT INTO schema_migrations (version) VALUES (99)")
        with pytest.raises(StoreError, match="schema version 99 was written by a newer"):
            stores.open()
