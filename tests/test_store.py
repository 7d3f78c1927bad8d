"""The SQLite state store: the contract every store keeps (tests/store_contract.py), on
a file; and what is the SQLite store's own: a second writer is refused and writes nothing,
the previous version's file migrates, something else's file is refused, a full disk
writes nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from contracts import parse_event_object
from tests.store_contract import (
    BIG,
    StoreContract,
    Stores,
    detailed,
    events,
    feed,
    fresh,
    load,
    snapshot,
    typed,
)
from tests.store_contract import categoriser as categoriser
from worker.domain.categoriser import Categoriser
from worker.domain.state import Account, Conversation
from worker.errors import StoreConflictError, StoreError
from worker.store import StateStore
from worker.store.memory import MemoryStore
from worker.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteStore


class SqliteStores:
    """The contract's way into one state file: the stores it opens there (closed by
    :meth:`close`) and plain SQLite connections past them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._opened: list[SqliteStore] = []

    def open(self) -> StateStore:
        store = SqliteStore(self.path)
        self._opened.append(store)
        return store

    def query(self, text: str) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.path)) as db, db:
            return db.execute(text).fetchall()

    def previous_schema(self) -> None:
        """The file the schema version before this one left: every migration but the
        last, as each ran."""
        with closing(sqlite3.connect(self.path)) as db, db:
            current = 0
            for target, migration in MIGRATIONS[:-1]:
                migration(db, current)
                current = target
                db.execute("INSERT INTO schema_migrations VALUES (?, 'then')", (target,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                       (str(MIGRATIONS[-2][0]),))

    def close(self) -> None:
        for store in self._opened:
            store.close()


class TestContractOnSqlite(StoreContract):
    """The contract every state store keeps, on a file of the test's own."""

    @pytest.fixture
    def stores(self, tmp_path: Path) -> Iterator[Stores]:
        stores = SqliteStores(tmp_path / "state.sqlite3")
        yield stores
        stores.close()


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


def test_an_unwritable_place_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="state store"):
        SqliteStore(tmp_path / "missing-dir" / "state.sqlite3")


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


def test_the_memory_store_keeps_every_detail() -> None:
    """The same account as the contract's (tests/store_contract.py, ``detailed``)."""
    store = MemoryStore()
    state = detailed("acc-1", "v1")
    store.commit([state.take_write()])
    loaded = load(store, "acc-1")
    assert snapshot(loaded) == snapshot(state)
    assert typed(loaded.conversations) == typed(state.conversations)
    assert loaded.unread_counts == {"ag-1": {"all": 1, "r1": 1}, "ag-3": {"r2": 0}}
