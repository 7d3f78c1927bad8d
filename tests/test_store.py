"""The SQLite state store: what is committed is what loads, one account at a time; the
per-account windows stay bounded on disk; conflicts and failures write nothing; the
previous version's file migrates and a newer one is refused."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from contracts import parse_event_object
from worker.domain.account import AccountState
from worker.domain.categoriser import Categoriser
from worker.domain.state import Account, Conversation
from worker.errors import StoreConflictError, StoreError
from worker.rulebook import load_rules
from worker.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteStore

AGENTS = ("ag-1", "ag-2", "ag-3")
BIG = 1_000


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


def feed(store: SqliteStore, categoriser: Categoriser, states: list[AccountState],
         seed: int, count: int, batch: int) -> None:
    """Interleave the accounts' streams; commit every ``batch`` events."""
    streams = [events(s.account_id, seed + i, count) for i, s in enumerate(states)]
    for n in range(count):
        for state, stream in zip(states, streams, strict=True):
            categoriser.handle(state, parse_event_object(next(stream)))
        if (n + 1) % batch == 0 or n == count - 1:
            store.commit([s.take_write() for s in states if s.dirty])


def snapshot(state: AccountState) -> tuple[object, ...]:
    return (state.account, state.conversations, state.counts, state.seqs,
            list(state.recent.items()), list(state.tombstones.items()), state.event_counter,
            state.rules_version, state.rules_generation, state.last_occurred_at,
            state.event_window, state.tombstone_window)


def load(store: SqliteStore, account_id: str, window: int = BIG) -> AccountState:
    state = store.load_account(account_id, event_window=window, tombstone_window=window)
    assert state is not None
    return state


def test_a_committed_account_loads_as_it_was_in_memory(tmp_path: Path,
                                                       categoriser: Categoriser) -> None:
    store = SqliteStore(tmp_path / "state.sqlite3")
    states = [fresh(f"acc-{i}", categoriser) for i in range(3)]
    feed(store, categoriser, states, seed=7, count=300, batch=23)
    assert all(s.tombstones and s.seqs and s.conversations for s in states), "a rich case"
    store.close()
    store = SqliteStore(tmp_path / "state.sqlite3")
    for state in states:
        loaded = load(store, state.account_id)
        assert snapshot(loaded) == snapshot(state)
        assert not loaded.dirty
        empty = loaded.take_write()
        assert not (empty.conversations or empty.deleted or empty.agents or empty.events
                    or empty.tombstones), "a fresh load has nothing to write"


def test_a_loaded_account_carries_on_as_if_it_had_never_left(tmp_path: Path,
                                                             categoriser: Categoriser) -> None:
    store = SqliteStore(tmp_path / "state.sqlite3")
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


def test_the_windows_are_pruned_on_disk_and_on_load(tmp_path: Path,
                                                    categoriser: Categoriser) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path)
    state = fresh("acc-1", categoriser, event_window=20, tombstone_window=3)
    other = fresh("acc-2", categoriser, event_window=20, tombstone_window=3)
    feed(store, categoriser, [state, other], seed=11, count=400, batch=7)
    assert len(state.recent) == 20 and len(state.tombstones) == 3
    with sqlite3.connect(path) as db:
        for table, window in (("events", 20), ("tombstones", 3)):
            rows = db.execute(f"SELECT account_id, COUNT(*) FROM {table} GROUP BY account_id"
                              ).fetchall()
            assert rows == [("acc-1", window), ("acc-2", window)], table
        kept = db.execute("SELECT events_kept, tombstones_kept FROM accounts"
                          " WHERE account_id = 'acc-1'").fetchone()
        assert kept == (20, 3)
    loaded = store.load_account("acc-1", event_window=20, tombstone_window=3)
    assert loaded is not None and snapshot(loaded) == snapshot(state)
    # A smaller window at the next start: the newest, oldest first, and the disk follows.
    smaller = store.load_account("acc-1", event_window=5, tombstone_window=2)
    assert smaller is not None
    assert list(smaller.recent.items()) == list(state.recent.items())[-5:]
    assert list(smaller.tombstones.items()) == list(state.tombstones.items())[-2:]
    categoriser.handle(smaller, parse_event_object({
        "event_id": "late", "type": "conversation.created", "account_id": "acc-1",
        "occurred_at": "2026-11-25T10:00:00Z", "conversation_id": "c-new", "data": {}}))
    store.commit([smaller.take_write()])
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM events WHERE account_id = 'acc-1'"
                          ).fetchone() == (5,)
        assert db.execute("SELECT COUNT(*) FROM tombstones WHERE account_id = 'acc-1'"
                          ).fetchone() == (2,)
    again = store.load_account("acc-1", event_window=5, tombstone_window=2)
    assert again is not None and snapshot(again) == snapshot(smaller)


def test_two_writes_of_one_account_in_one_commit_count_rows_exactly(
        tmp_path: Path, categoriser: Categoriser) -> None:
    """A group commit carries several batches' writes of one account: the rows each
    keeps are counted write by write, so the windows hold exactly on disk."""
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path)
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
    with sqlite3.connect(path) as db:
        for table, window in (("events", 20), ("tombstones", 3)):
            rows = db.execute(f"SELECT account_id, COUNT(*) FROM {table} GROUP BY account_id"
                              ).fetchall()
            assert rows == [("acc-1", window), ("acc-2", window)], table
        assert db.execute("SELECT events_kept, tombstones_kept FROM accounts ORDER BY"
                          " account_id").fetchall() == [(20, 3), (20, 3)]
    loaded = store.load_account("acc-1", event_window=20, tombstone_window=3)
    assert loaded is not None and snapshot(loaded) == snapshot(state)


def test_a_deleted_conversation_leaves_the_table_and_leaves_a_tombstone(
        tmp_path: Path, categoriser: Categoriser) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path)
    state = fresh("acc-1", categoriser)
    for n, kind in enumerate(["conversation.created", "conversation.assigned",
                              "conversation.deleted", "conversation.reopened"]):
        data = {"agent_id": "ag-1"} if kind == "conversation.assigned" else {}
        categoriser.handle(state, parse_event_object({
            "event_id": f"e{n}", "type": kind, "account_id": "acc-1", "conversation_id": "c-1",
            "occurred_at": "2026-11-24T10:00:00Z", "sequence": n, "data": data}))
        store.commit([state.take_write()])
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM conversations").fetchone() == (0,)
        # The reopen after the delete is newer: the tombstone moves up (one row), so an
        # event older than the reopen stays stale.
        assert db.execute("SELECT number, conversation_id, last_sequence FROM tombstones"
                          ).fetchall() == [(5, "c-1", 3)]
    loaded = load(store, "acc-1")
    assert loaded.is_deleted("c-1") and "c-1" not in loaded.conversations
    assert loaded.tombstones["c-1"] == (5, 3)
    assert loaded.counts["ag-1"]["all"] == 0 and loaded.event_counter == 6


def test_a_second_writer_is_refused_and_writes_nothing(tmp_path: Path,
                                                       categoriser: Categoriser) -> None:
    path = tmp_path / "state.sqlite3"
    first, second = SqliteStore(path), SqliteStore(path)
    mine, theirs = fresh("acc-1", categoriser), fresh("acc-1", categoriser)
    stream = list(events("acc-1", seed=5, count=40))
    for event in stream[:20]:
        categoriser.handle(mine, parse_event_object(event))
    first.commit([mine.take_write()])
    assert second.changed_elsewhere() and not first.changed_elsewhere()
    for event in stream[20:]:
        categoriser.handle(theirs, parse_event_object(event))
    with pytest.raises(StoreConflictError):
        second.commit([theirs.take_write()])
    assert snapshot(load(second, "acc-1")) == snapshot(mine)
    second.resync()  # the standby dropped its accounts and takes the file as it is
    assert not second.changed_elsewhere()
    reloaded = load(second, "acc-1")
    categoriser.handle(reloaded, parse_event_object(stream[-1] | {"event_id": "after"}))
    second.commit([reloaded.take_write()])
    assert first.changed_elsewhere()


def test_a_failed_commit_writes_nothing(tmp_path: Path, categoriser: Categoriser) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path)
    state = fresh("acc-1", categoriser)
    feed(store, categoriser, [state], seed=9, count=60, batch=60)
    before = snapshot(load(store, "acc-1"))
    other = fresh("acc-2", categoriser)
    feed_events = [parse_event_object(e) for e in events("acc-2", seed=1, count=30)]
    for event in feed_events:
        categoriser.handle(other, event)
    good = other.take_write()
    # A number already used by an event: the commit fails after its first write.
    used = next(reversed(state.recent.values()))
    clash = replace(good, account_id="acc-1", events=((used, "clash"),))
    with pytest.raises(StoreError, match="commit failed"):
        store.commit([good, clash])
    assert store.load_account("acc-2", event_window=BIG, tombstone_window=BIG) is None
    assert snapshot(load(store, "acc-1")) == before
    assert not store.changed_elsewhere(), "the generation did not move either"
    store.commit([good])
    assert load(store, "acc-2").conversations == other.conversations


def test_an_unknown_account_loads_as_none(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.sqlite3")
    assert store.load_account("nobody", event_window=10, tombstone_window=10) is None


def test_an_account_known_only_by_its_conversations_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO conversations (account_id, conversation_id, status, group_id,"
                   " joined, last_sequence, categories) VALUES ('acc-9', 'c-1', 'open', NULL,"
                   " '[]', 3, '[[\"all\"], [], [], []]')")
        db.execute("INSERT INTO events VALUES ('acc-9', 4, 'e-4')")
    loaded = SqliteStore(path).load_account("acc-9", event_window=10, tombstone_window=10)
    assert loaded is not None and loaded.account == Account("acc-9")
    assert loaded.conversations["c-1"].categories[0] == frozenset({"all"})
    assert loaded.event_counter == 4, "new numbers never reuse a stored one"


def test_accounts_behind_the_rules_come_in_pages(tmp_path: Path,
                                                 categoriser: Categoriser) -> None:
    store = SqliteStore(tmp_path / "state.sqlite3")
    version = categoriser.rules.version
    writes = []
    for i in range(25):
        state = fresh(f"acc-{i:02d}", categoriser)
        state.rules_version = None if i % 5 == 0 else "old" if i % 2 else version
        writes.append(state.take_write())
    store.commit(writes)
    pages, after = [], ""
    while page := store.accounts_behind(version, after, 4):
        pages.append(page)
        after = page[-1]
    expected = [f"acc-{i:02d}" for i in range(25) if i % 5 == 0 or i % 2]
    assert [a for page in pages for a in page] == expected
    assert all(len(page) == 4 for page in pages[:-1])
    assert store.accounts_behind("old", "", 100) == [
        f"acc-{i:02d}" for i in range(25) if not i % 2 or i % 5 == 0]


def test_an_unwritable_place_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="state store"):
        SqliteStore(tmp_path / "missing-dir" / "state.sqlite3")


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations VALUES (99, '2030-01-01')")
    with pytest.raises(StoreError, match="schema version 99 was written by a newer"):
        SqliteStore(path)


def test_a_file_of_something_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER)")
    with pytest.raises(StoreError, match="not an inbox-rules state file"):
        SqliteStore(path)


def test_opening_twice_migrates_once(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = SqliteStore(path)
    second = SqliteStore(path)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_migrations").fetchall() == [
            (target,) for target, _ in MIGRATIONS]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    first.close()
    second.close()


# The schema the previous version (one global state, loaded whole) wrote, verbatim.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    account_id TEXT PRIMARY KEY, plan TEXT NOT NULL, agents TEXT NOT NULL,
    groups_ TEXT NOT NULL, last_sequence INTEGER);
CREATE TABLE IF NOT EXISTS conversations (
    account_id TEXT NOT NULL, conversation_id TEXT NOT NULL, status TEXT NOT NULL,
    group_id TEXT, joined TEXT NOT NULL, last_sequence INTEGER, categories TEXT NOT NULL,
    PRIMARY KEY (account_id, conversation_id));
CREATE TABLE IF NOT EXISTS counts (
    account_id TEXT NOT NULL, agent_id TEXT NOT NULL, counts TEXT NOT NULL,
    PRIMARY KEY (account_id, agent_id));
-- seq keeps the order the ids were seen in, so the oldest are forgotten first.
CREATE TABLE IF NOT EXISTS seen (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, account_id TEXT NOT NULL, event_id TEXT NOT NULL,
    UNIQUE (account_id, event_id));
"""

V1_ROWS = """
INSERT INTO meta VALUES ('schema_version', '1'), ('generation', '41'),
                        ('rules_version', 'rules-v1');
INSERT INTO accounts VALUES
    ('acc-1', 'pro', '["ag-1","ag-2"]', '{"g-1":["ag-1"]}', 7);
INSERT INTO conversations VALUES
    ('acc-1', 'c-1', 'open', 'g-1', '["ag-2"]', 3,
     '[["all"],["all","new","primary"],["all","mine","primary"],["all","mine","primary"]]'),
    ('acc-1', 'c-2', 'deleted', NULL, '[]', 9, '[[],[],[],[]]'),
    ('acc-1', 'c-0', 'deleted', NULL, '[]', 2, '[[],[],[],[]]'),
    ('acc-2', 'c-5', 'resolved', NULL, '["ag-7"]', NULL,
     '[["resolved"],["resolved"],["resolved"],["resolved"]]');
INSERT INTO counts VALUES ('acc-1', 'ag-1', '{"all": 1, "new": 0}'),
                          ('acc-1', 'ag-2', '{"all": 1, "mine": 1}'),
                          ('acc-2', 'ag-7', '{"resolved": 1}');
INSERT INTO seen (account_id, event_id) VALUES
    ('acc-1', 'e-1'), ('acc-2', 'x-1'), ('acc-1', 'e-2'), ('acc-1', 'e-3'), ('acc-2', 'x-2');
"""


def test_a_v1_file_opens_with_its_state(tmp_path: Path, categoriser: Categoriser) -> None:
    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA + V1_ROWS)
    store = SqliteStore(path)
    acc1 = load(store, "acc-1")
    assert acc1.account == Account("acc-1", "pro", frozenset({"ag-1", "ag-2"}),
                                   {"g-1": frozenset({"ag-1"})}, 7)
    assert acc1.conversations == {"c-1": Conversation(
        "acc-1", "c-1", "open", "g-1", frozenset({"ag-2"}), 3,
        (frozenset({"all"}), frozenset({"all", "new", "primary"}),
         frozenset({"all", "mine", "primary"}), frozenset({"all", "mine", "primary"})))}
    assert list(acc1.recent.items()) == [("e-1", 1), ("e-2", 2), ("e-3", 3)]
    assert list(acc1.tombstones.items()) == [("c-0", (4, 2)), ("c-2", (5, 9))]
    assert acc1.event_counter == 5
    assert acc1.counts == {"ag-1": {"all": 1, "new": 0}, "ag-2": {"all": 1, "mine": 1}}
    assert acc1.seqs == {}, "v1 numbered no updates: every agent starts from 0"
    assert (acc1.rules_version, acc1.rules_generation, acc1.last_occurred_at) == (
        "rules-v1", 0, None)
    # An account v1 knew only from a conversation gets a row of its own.
    acc2 = load(store, "acc-2")
    assert acc2.account == Account("acc-2")
    assert list(acc2.recent.items()) == [("x-1", 1), ("x-2", 2)] and acc2.event_counter == 2
    assert store.accounts_behind("rules-v1", "", 10) == []
    assert store.accounts_behind(categoriser.rules.version, "", 10) == ["acc-1", "acc-2"]
    assert not store.changed_elsewhere(), "the generation carried over"
    # The migrated account keeps working: new numbers follow the migrated ones.
    categoriser.handle(acc1, parse_event_object({
        "event_id": "e-4", "type": "conversation.assigned", "account_id": "acc-1",
        "occurred_at": "2026-11-24T10:00:00Z", "conversation_id": "c-1", "sequence": 4,
        "data": {"agent_id": "ag-1"}}))
    store.commit([acc1.take_write()])
    assert snapshot(load(store, "acc-1")) == snapshot(acc1)
    store.close()
    with sqlite3.connect(path) as db:
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert not tables & {"counts", "seen", "v1_accounts", "v1_conversations"}
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                          ).fetchone() == (str(SCHEMA_VERSION),), "a v1 worker would refuse it"
        assert db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone() == ("42",)


def test_a_full_disk_names_its_cause_and_writes_nothing(tmp_path: Path,
                                                        categoriser: Categoriser) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path)
    state = fresh("acc-1", categoriser)
    feed(store, categoriser, [state], seed=2, count=20, batch=20)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages + 1}")  # a disk about to fill up
    big = fresh("acc-2", categoriser)
    for n in range(400):
        categoriser.handle(big, parse_event_object({
            "event_id": f"e-{n}-{'x' * 100}", "type": "conversation.created",
            "account_id": "acc-2", "occurred_at": "2026-11-24T10:00:00Z",
            "conversation_id": f"c-{n}", "data": {}}))
    with pytest.raises(StoreError, match="commit failed: database or disk is full"):
        store.commit([big.take_write()])
    assert store.load_account("acc-2", event_window=BIG, tombstone_window=BIG) is None
    assert not store.changed_elsewhere()
