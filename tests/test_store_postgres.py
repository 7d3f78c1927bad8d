"""The PostgreSQL state store: the SQLite store's contract (what is committed is what
loads, windows bounded on disk, a failed commit writes nothing), plus what several
workers need: partitions fenced by epochs (a takeover and a commit wait for each other,
an idle or hung worker stalls neither for long), membership by the database clock, and
a schema that workers opening together migrate once.

Each test gets a database of its own; PostgreSQL must be running (the tests fail, never
skip, without it): ``INBOX_RULES_TEST_POSTGRES`` names the admin URL, default
``postgresql://postgres@127.0.0.1:5432/postgres``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from contracts import parse_event_object
from tests.support.harness import fresh_database
from tests.test_store import BIG, events, fresh, snapshot
from worker.domain.account import AccountState
from worker.domain.categoriser import Categoriser
from worker.domain.state import Account
from worker.errors import StoreConflictError, StoreError, StoreFencedError
from worker.partitions import partition_of
from worker.rulebook import load_rules
from worker.rulebook.engine import default_rules_dir
from worker.store import StateStore
from worker.store.postgres import MIGRATIONS, PostgresStore

PARTITIONS = 4

postgres = pytest.mark.postgres


@pytest.fixture(scope="module")
def categoriser() -> Categoriser:
    return Categoriser(load_rules(None))


@pytest.fixture
def url() -> Iterator[str]:
    """A fresh database, dropped after the test (its sessions with it)."""
    with fresh_database() as database:
        yield database


Open = Callable[..., PostgresStore]


@pytest.fixture
def open_store(url: str) -> Iterator[Open]:
    """Opens stores on the test's database and closes them after it."""
    opened: list[PostgresStore] = []

    def open_(partitions: int = PARTITIONS, **kwargs: Any) -> PostgresStore:
        store = PostgresStore(url, partitions, **kwargs)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def owner(open_store: Open, **kwargs: Any) -> PostgresStore:
    """A store that owns every partition."""
    store = open_store(**kwargs)
    for partition in range(store.partitions):
        store.acquire(partition)
    return store


def query(url: str, text: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows of the last statement of ``text`` (none for a statement without rows)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(text.encode(), params or None)
        return cursor.fetchall() if cursor.description is not None else []


def feed(store: StateStore, categoriser: Categoriser, states: list[AccountState],
         seed: int, count: int, batch: int) -> None:
    """Interleave the accounts' streams; commit every ``batch`` events."""
    streams = [events(s.account_id, seed + i, count) for i, s in enumerate(states)]
    for n in range(count):
        for state, stream in zip(states, streams, strict=True):
            categoriser.handle(state, parse_event_object(next(stream)))
        if (n + 1) % batch == 0 or n == count - 1:
            store.commit([s.take_write() for s in states if s.dirty])


def load(store: StateStore, account_id: str, window: int = BIG) -> AccountState:
    state = store.load_account(account_id, event_window=window, tombstone_window=window)
    assert state is not None
    return state


def handle(categoriser: Categoriser, state: AccountState, event_id: str,
           conversation_id: str = "c-new") -> None:
    categoriser.handle(state, parse_event_object({
        "event_id": event_id, "type": "conversation.created",
        "account_id": state.account_id, "occurred_at": "2026-11-25T10:00:00+02:00",
        "conversation_id": conversation_id, "data": {}}))


def in_partition(partition: int, partitions: int = PARTITIONS) -> str:
    """An account id of ``partition``."""
    return next(a for n in range(1000)
                if partition_of(a := f"acc-{n}", partitions) == partition)


def run(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """``target`` on a thread of its own; the list gets its result or exception."""
    outcome: list[object] = []

    def body() -> None:
        try:
            outcome.append(target())
        except Exception as exc:  # noqa: BLE001 - handed to the test, which asserts on it
            outcome.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


# -- the SQLite store's contract -----------------------------------------------------

@postgres
def test_a_committed_account_loads_as_it_was_in_memory(open_store: Open,
                                                       categoriser: Categoriser) -> None:
    store = owner(open_store)
    states = [fresh(f"acc-{i}", categoriser) for i in range(3)]
    feed(store, categoriser, states, seed=7, count=300, batch=23)
    assert all(s.tombstones and s.seqs and s.conversations for s in states), "a rich case"
    store.close()
    store = open_store()
    for state in states:
        loaded = load(store, state.account_id)
        assert snapshot(loaded) == snapshot(state)
        assert not loaded.dirty
        empty = loaded.take_write()
        assert not (empty.conversations or empty.deleted or empty.agents or empty.events
                    or empty.tombstones), "a fresh load has nothing to write"


@postgres
def test_a_loaded_account_carries_on_as_if_it_had_never_left(
        open_store: Open, categoriser: Categoriser) -> None:
    store = owner(open_store)
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


@postgres
def test_the_event_time_keeps_its_offset(open_store: Open, categoriser: Categoriser) -> None:
    # It becomes the occurred_at of a rules adoption's updates, which a retry repeats.
    store = owner(open_store)
    state = fresh("acc-1", categoriser)
    handle(categoriser, state, "e-1")
    store.commit([state.take_write()])
    loaded = load(store, "acc-1").last_occurred_at
    assert loaded is not None and loaded.isoformat() == "2026-11-25T10:00:00+02:00"


@postgres
def test_the_windows_are_pruned_on_disk_and_on_load(url: str, open_store: Open,
                                                    categoriser: Categoriser) -> None:
    store = owner(open_store)
    state = fresh("acc-1", categoriser, event_window=20, tombstone_window=3)
    other = fresh("acc-2", categoriser, event_window=20, tombstone_window=3)
    feed(store, categoriser, [state, other], seed=11, count=400, batch=7)
    assert len(state.recent) == 20 and len(state.tombstones) == 3
    for table, window in (("events", 20), ("tombstones", 3)):
        rows = query(url, f"SELECT account_id, COUNT(*) FROM inbox_rules.{table}"
                          " GROUP BY account_id ORDER BY account_id")
        assert rows == [("acc-1", window), ("acc-2", window)], table
    assert query(url, "SELECT events_kept, tombstones_kept FROM inbox_rules.accounts"
                      " WHERE account_id = 'acc-1'") == [(20, 3)]
    loaded = store.load_account("acc-1", event_window=20, tombstone_window=3)
    assert loaded is not None and snapshot(loaded) == snapshot(state)
    # A smaller window at the next start: the newest, oldest first, and the disk follows.
    smaller = store.load_account("acc-1", event_window=5, tombstone_window=2)
    assert smaller is not None
    assert list(smaller.recent.items()) == list(state.recent.items())[-5:]
    assert list(smaller.tombstones.items()) == list(state.tombstones.items())[-2:]
    handle(categoriser, smaller, "late")
    store.commit([smaller.take_write()])
    assert query(url, "SELECT (SELECT COUNT(*) FROM inbox_rules.events"
                      "         WHERE account_id = 'acc-1'),"
                      " (SELECT COUNT(*) FROM inbox_rules.tombstones"
                      "  WHERE account_id = 'acc-1')") == [(5, 2)]
    again = store.load_account("acc-1", event_window=5, tombstone_window=2)
    assert again is not None and snapshot(again) == snapshot(smaller)


@postgres
def test_a_deleted_conversation_leaves_the_table_and_leaves_a_tombstone(
        url: str, open_store: Open, categoriser: Categoriser) -> None:
    store = owner(open_store)
    state = fresh("acc-1", categoriser)
    for n, kind in enumerate(["conversation.created", "conversation.assigned",
                              "conversation.deleted", "conversation.reopened"]):
        data = {"agent_id": "ag-1"} if kind == "conversation.assigned" else {}
        categoriser.handle(state, parse_event_object({
            "event_id": f"e{n}", "type": kind, "account_id": "acc-1", "conversation_id": "c-1",
            "occurred_at": "2026-11-24T10:00:00Z", "sequence": n, "data": data}))
        store.commit([state.take_write()])
    assert query(url, "SELECT COUNT(*) FROM inbox_rules.conversations") == [(0,)]
    # The reopen after the delete is newer: the tombstone moves up (one row), so an
    # event older than the reopen stays stale.
    assert query(url, "SELECT number, conversation_id, last_sequence"
                      " FROM inbox_rules.tombstones") == [(5, "c-1", 3)]
    assert query(url, "SELECT tombstones_kept FROM inbox_rules.accounts") == [(1,)]
    loaded = load(store, "acc-1")
    assert loaded.is_deleted("c-1") and "c-1" not in loaded.conversations
    assert loaded.tombstones["c-1"] == (5, 3)
    assert loaded.counts["ag-1"]["all"] == 0 and loaded.event_counter == 6


@postgres
def test_several_writes_of_one_account_in_one_commit(url: str, open_store: Open,
                                                     categoriser: Categoriser) -> None:
    """A group commit may carry an account twice: the last change of each row wins,
    and the kept counters still count exactly."""
    store = owner(open_store)
    state = fresh("acc-1", categoriser, event_window=4, tombstone_window=2)
    writes = []
    for n, kind in enumerate(["conversation.created", "conversation.assigned",
                              "conversation.deleted", "conversation.reopened",
                              "conversation.created", "conversation.deleted",
                              "message.created"]):
        conversation = "c-1" if n < 4 else "c-2"
        data: dict[str, Any] = {"agent_id": "ag-1"} if kind == "conversation.assigned" else {}
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
    assert query(url, "SELECT events_kept, tombstones_kept FROM inbox_rules.accounts"
                 ) == [(4, 2)]
    assert query(url, "SELECT COUNT(*) FROM inbox_rules.events") == [(4,)]
    assert query(url, "SELECT conversation_id, last_sequence FROM inbox_rules.tombstones"
                      " ORDER BY number") == [("c-1", 3), ("c-2", 6)]


@postgres
def test_a_failed_commit_writes_nothing(open_store: Open, categoriser: Categoriser) -> None:
    store = owner(open_store)
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
    assert not isinstance(failed.value, StoreConflictError)
    assert store.load_account("acc-2", event_window=BIG, tombstone_window=BIG) is None
    assert snapshot(load(store, "acc-1")) == before
    store.commit([good])
    assert load(store, "acc-2").conversations == other.conversations


@postgres
def test_an_unknown_account_loads_as_none(open_store: Open) -> None:
    assert open_store().load_account("nobody", event_window=10, tombstone_window=10) is None


@postgres
def test_an_account_known_only_by_its_conversations_still_loads(url: str,
                                                                open_store: Open) -> None:
    store = open_store()
    query(url, "INSERT INTO inbox_rules.conversations VALUES ('acc-9', 'c-1', 'open', NULL,"
               " '[]', 3, '[[\"all\"], [], [], []]')")
    query(url, "INSERT INTO inbox_rules.events VALUES ('acc-9', 4, 'e-4')")
    loaded = store.load_account("acc-9", event_window=10, tombstone_window=10)
    assert loaded is not None and loaded.account == Account("acc-9")
    assert loaded.conversations["c-1"].categories[0] == frozenset({"all"})
    assert loaded.event_counter == 4, "new numbers never reuse a stored one"


@postgres
def test_accounts_behind_the_rules_come_in_pages(open_store: Open,
                                                 categoriser: Categoriser) -> None:
    store = owner(open_store)
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
    # Only the partitions a store owns: the others' accounts are theirs to sweep.
    store.release(1)
    assert store.accounts_behind(version, "", 100) == [
        a for a in expected if partition_of(a, PARTITIONS) != 1]
    assert open_store().accounts_behind(version, "", 100) == []


# -- fencing -------------------------------------------------------------------------

@postgres
def test_a_taken_over_partition_fences_the_old_owner(open_store: Open,
                                                     categoriser: Categoriser) -> None:
    account = in_partition(2)
    first, second = open_store(worker_id="w-1"), open_store(worker_id="w-2")
    assert first.acquire(2) == 1
    base = fresh(account, categoriser)
    handle(categoriser, base, "e-1")
    first.commit([base.take_write()])
    assert second.acquire(2) == 2
    assert (first.owned(), second.owned()) == ({2: 1}, {2: 2})
    mine = load(first, account)
    handle(categoriser, mine, "e-mine", "c-mine")
    other = fresh(in_partition(3), categoriser)  # a partition still first's own
    first.acquire(3)
    handle(categoriser, other, "e-other")
    with pytest.raises(StoreFencedError, match="partition 2 .*another worker took it over"
                                               r" \(epoch 2; this worker acquired epoch 1\)"):
        first.commit([other.take_write(), mine.take_write()])
    assert second.load_account(other.account_id, event_window=BIG,
                               tombstone_window=BIG) is None, "nothing was written"
    assert "c-mine" not in load(second, account).conversations
    theirs = load(second, account)
    handle(categoriser, theirs, "e-theirs", "c-theirs")
    second.commit([theirs.take_write()])
    assert snapshot(load(first, account)) == snapshot(theirs)


@postgres
def test_a_lost_partition_is_taken_again_only_after_a_release(
        open_store: Open, categoriser: Categoriser) -> None:
    """A worker that hung, lost a partition and got it back must not commit what it
    computed before: re-taking needs a release, which its driver does once nothing
    from before is in flight."""
    old, new = open_store(worker_id="old"), open_store(worker_id="new")
    assert old.acquire(0) == 1
    assert old.acquire(0) == 2, "still ours: taken again"
    state = fresh(in_partition(0), categoriser)
    handle(categoriser, state, "e-1")
    stale = [state.take_write()]  # computed under epoch 2
    assert new.acquire(0) == 3
    with pytest.raises(StoreFencedError, match="taken over since this worker acquired epoch"):
        old.acquire(0)
    assert old.owned() == {0: 2}
    with pytest.raises(StoreFencedError):
        old.commit(stale)
    old.release(0)
    assert old.acquire(0) == 4
    assert query_owner(old) == "old"


def query_owner(store: PostgresStore) -> str | None:
    rows = query(store.url, "SELECT owner FROM inbox_rules.partitions WHERE partition = 0")
    return str(rows[0][0]) if rows[0][0] is not None else None


@postgres
def test_a_partition_never_acquired_or_released_is_fenced(open_store: Open,
                                                         categoriser: Categoriser) -> None:
    store = open_store()
    state = fresh(in_partition(1), categoriser)
    handle(categoriser, state, "e-1")
    write = state.take_write()
    with pytest.raises(StoreFencedError, match=r"partition 1 .*has not acquired it"):
        store.commit([write])
    epoch = store.acquire(1)
    store.commit([write])
    store.release(1)
    assert store.owned() == {}
    handle(categoriser, state, "e-2", "c-2")
    with pytest.raises(StoreFencedError, match="has not acquired it"):
        store.commit([state.take_write()])
    assert open_store().acquire(1) == epoch + 1, "released, then taken by the next owner"


@postgres
def test_a_takeover_waits_for_a_commit_in_progress(open_store: Open,
                                                   categoriser: Categoriser,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = open_store(worker_id="old"), open_store(worker_id="new")
    old.acquire(0)
    state = fresh(in_partition(0), categoriser)
    handle(categoriser, state, "e-1")
    locked, finish = threading.Event(), threading.Event()
    write = old._write

    def slow_write(*args: Any) -> None:
        locked.set()  # the partition's row is locked, the epoch checked
        assert finish.wait(10)
        write(*args)

    monkeypatch.setattr(old, "_write", slow_write)
    committing, committed = run(lambda: old.commit([state.take_write()]))
    assert locked.wait(10)
    taking, taken = run(lambda: new.acquire(0))
    time.sleep(0.5)
    assert taking.is_alive(), "the takeover waits for the commit holding the row"
    finish.set()
    committing.join(10)
    taking.join(10)
    assert committed == [None] and taken == [2]
    assert load(new, state.account_id).conversations == state.conversations
    handle(categoriser, state, "e-2", "c-2")
    with pytest.raises(StoreFencedError):
        old.commit([state.take_write()])


@postgres
def test_a_commit_waits_for_a_takeover_in_progress(url: str, open_store: Open,
                                                   categoriser: Categoriser) -> None:
    store = open_store()
    store.acquire(0)
    state = fresh(in_partition(0), categoriser)
    handle(categoriser, state, "e-1")
    with psycopg.connect(url, autocommit=True) as other:
        with other.transaction():  # a takeover that has raised the epoch, not committed
            other.execute("UPDATE inbox_rules.partitions SET epoch = epoch + 1, owner = 'x'"
                          " WHERE partition = 0")
            committing, outcome = run(lambda: store.commit([state.take_write()]))
            time.sleep(0.5)
            assert committing.is_alive(), "the commit waits for the takeover's row"
        committing.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], StoreFencedError)
    assert store.load_account(state.account_id, event_window=BIG,
                              tombstone_window=BIG) is None


@postgres
def test_an_idle_store_does_not_stall_a_takeover(url: str, open_store: Open,
                                                 categoriser: Categoriser) -> None:
    old = owner(open_store, worker_id="old")
    state = fresh(in_partition(0), categoriser)
    handle(categoriser, state, "e-1")
    old.commit([state.take_write()])
    load(old, state.account_id)
    old.accounts_behind("v", "", 10)
    old.heartbeat("old", 5.0)
    # Its sessions are idle, none inside a transaction or holding a lock.
    assert query(url, "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name ="
                      " 'inbox-rules' AND state LIKE 'idle in transaction%'") == [(0,)]
    assert query(url, "SELECT COUNT(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                      " WHERE c.relname = 'partitions' AND l.pid <> pg_backend_pid()"
                 ) == [(0,)]
    started = time.monotonic()
    taking, taken = run(lambda: open_store(worker_id="new").acquire(0))
    taking.join(5)
    assert taken == [2] and time.monotonic() - started < 5


@postgres
def test_a_worker_hung_mid_commit_stalls_a_takeover_only_briefly(
        open_store: Open, categoriser: Categoriser, monkeypatch: pytest.MonkeyPatch) -> None:
    hung = open_store(worker_id="hung", idle_in_transaction_timeout=0.5)
    hung.acquire(0)
    state = fresh(in_partition(0), categoriser)
    handle(categoriser, state, "e-1")
    batch = [state.take_write()]
    locked, wake = threading.Event(), threading.Event()
    write = hung._write

    def hang(*args: Any) -> None:
        locked.set()
        wake.wait(10)  # SIGSTOPped, between the fence check and the writes
        write(*args)

    monkeypatch.setattr(hung, "_write", hang)
    committing, outcome = run(lambda: hung.commit(batch))
    assert locked.wait(10)
    started = time.monotonic()
    assert open_store(worker_id="new").acquire(0) == 2
    assert time.monotonic() - started < 5, "the server ended the hung session"
    wake.set()
    committing.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], StoreError)
    assert hung.load_account(state.account_id, event_window=BIG,
                             tombstone_window=BIG) is None
    monkeypatch.undo()
    with pytest.raises(StoreFencedError):  # a new connection, and the fence still holds
        hung.commit(batch)


# -- membership ----------------------------------------------------------------------

@postgres
def test_membership_by_heartbeats_within_the_lease(url: str, open_store: Open) -> None:
    coordinator = open_store()
    assert coordinator.live_members(1.0) == []
    coordinator.heartbeat("w-2", 1.0)
    coordinator.heartbeat("w-1", 1.0)
    assert coordinator.live_members(1.0) == ["w-1", "w-2"]
    time.sleep(0.6)
    coordinator.heartbeat("w-2", 1.0)
    time.sleep(0.6)
    assert coordinator.live_members(1.0) == ["w-2"], "w-1's lease lapsed"
    assert coordinator.live_members(5.0) == ["w-1", "w-2"]
    coordinator.heartbeat("w-1", 1.0)
    assert coordinator.live_members(1.0) == ["w-1", "w-2"], "back"


@postgres
def test_leaving_drops_the_member_and_its_partitions(url: str, open_store: Open) -> None:
    leaving, staying = open_store(worker_id="w-1"), open_store(worker_id="w-2")
    for worker in ("w-1", "w-2"):
        leaving.heartbeat(worker, 5.0)
    leaving.acquire(0)
    leaving.acquire(1)
    staying.acquire(2)
    leaving.leave("w-1")
    assert leaving.owned() == {}
    assert staying.live_members(5.0) == ["w-2"]
    assert query(url, "SELECT partition, epoch, owner FROM inbox_rules.partitions"
                      " ORDER BY partition") == [(0, 1, None), (1, 1, None), (2, 1, "w-2"),
                                                 (3, 0, None)]
    staying.leave("w-gone")  # unknown: nothing to do
    assert staying.owned() == {2: 1}


# -- schema --------------------------------------------------------------------------

@postgres
def test_workers_opening_together_migrate_once(url: str, open_store: Open) -> None:
    barrier = threading.Barrier(8)

    def open_() -> PostgresStore:
        barrier.wait(10)
        return open_store()

    threads = [run(open_) for _ in range(8)]
    for thread, _ in threads:
        thread.join(30)
    assert all(isinstance(outcome[0], PostgresStore) for _, outcome in threads)
    assert query(url, "SELECT version FROM inbox_rules.schema_migrations ORDER BY 1") == [
        (target,) for target, _ in MIGRATIONS]
    assert query(url, "SELECT partition, epoch FROM inbox_rules.partitions"
                      " ORDER BY partition") == [(p, 0) for p in range(PARTITIONS)]
    assert query(url, "SELECT value FROM inbox_rules.meta WHERE key = 'partitions'"
                 ) == [(str(PARTITIONS),)]


@postgres
def test_a_different_partition_count_is_refused(open_store: Open) -> None:
    open_store(PARTITIONS)
    with pytest.raises(StoreError, match=f"holds {PARTITIONS} account partitions, this "
                                         r"worker was started with 8.*migration of every "
                                         "account"):
        open_store(8)


@postgres
def test_a_newer_schema_is_refused(url: str, open_store: Open) -> None:
    open_store()
    query(url, "INSERT INTO inbox_rules.schema_migrations (version) VALUES (99)")
    with pytest.raises(StoreError, match="schema version 99 was written by a newer"):
        open_store()


@postgres
def test_a_schema_of_something_else_is_refused(url: str, open_store: Open) -> None:
    query(url, "CREATE SCHEMA shop; CREATE TABLE shop.orders (id integer)")
    with pytest.raises(StoreError, match="'shop' is not an inbox-rules state"):
        open_store(schema="shop")


@postgres
def test_schemas_keep_states_apart(url: str, open_store: Open,
                                   categoriser: Categoriser) -> None:
    blue = owner(open_store, schema="blue")
    state = fresh("acc-1", categoriser)
    handle(categoriser, state, "e-1")
    blue.commit([state.take_write()])
    green = open_store(schema="green")
    assert green.load_account("acc-1", event_window=BIG, tombstone_window=BIG) is None
    assert load(blue, "acc-1").conversations == state.conversations
    assert green.acquire(0) == 1 and blue.acquire(0) == 2


# -- failures ------------------------------------------------------------------------

def test_an_unreachable_database_is_a_store_error_without_the_password() -> None:
    with pytest.raises(StoreError, match="cannot open") as refused:
        PostgresStore("postgresql://inbox:s3cret-pw@127.0.0.1:1/inbox?connect_timeout=2", 4)
    assert "s3cret-pw" not in str(refused.value)
    assert "postgresql://inbox:***@127.0.0.1:1/inbox" in str(refused.value)


@postgres
def test_a_lost_connection_is_opened_again(url: str, open_store: Open,
                                           categoriser: Categoriser) -> None:
    store = owner(open_store)
    state = fresh("acc-1", categoriser)
    handle(categoriser, state, "e-1")
    store.commit([state.take_write()])
    load(store, "acc-1")
    query(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
               " WHERE application_name = 'inbox-rules' AND datname = current_database()")
    for attempt in range(2):  # the first use may learn that the session is gone
        try:
            loaded = load(store, "acc-1")
            break
        except StoreError as exc:
            assert attempt == 0 and "cannot load account 'acc-1'" in str(exc)
    assert loaded.conversations == state.conversations
    handle(categoriser, loaded, "e-2", "c-2")
    batch = [loaded.take_write()]
    for attempt in range(2):
        try:
            store.commit(batch)
            break
        except StoreError as exc:
            assert attempt == 0 and not isinstance(exc, StoreConflictError)
    assert "c-2" in load(store, "acc-1").conversations


@postgres
def test_a_store_is_a_state_store(open_store: Open) -> None:
    store: StateStore = open_store()  # mypy checks the protocol
    assert not store.changed_elsewhere()
    store.resync()


# -- partitions ----------------------------------------------------------------------

def test_an_account_has_the_same_partition_everywhere() -> None:
    # Pinned: blake2b, first 8 bytes big-endian, modulo the count. A change here moves
    # every stored account to another partition.
    assert [partition_of(f"acc-{n}", 16) for n in range(8)] == [0, 0, 11, 4, 2, 8, 8, 9]
    for account in ("acc-0", "ünïcode:ä", "x" * 128):
        digest = hashlib.blake2b(account.encode("utf-8")).digest()
        assert partition_of(account, 1000) == int.from_bytes(digest[:8], "big") % 1000
    assert partition_of("acc-1", 1) == 0


def test_accounts_spread_over_the_partitions() -> None:
    counts = [0] * 16
    for n in range(16_000):
        counts[partition_of(f"acc-{n}", 16)] += 1
    assert all(800 < c < 1200 for c in counts), counts


def test_a_partition_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        partition_of("acc-1", 0)


# -- time (docs/time.md) -------------------------------------------------------------

@postgres
def test_time_columns_round_trip_and_due_accounts_are_those_of_owned_partitions(
        open_store: Open) -> None:
    sla = Categoriser(load_rules(default_rules_dir() / "examples" / "sla"))
    store = owner(open_store)
    accounts = [in_partition(p) for p in range(PARTITIONS)]
    states = []
    for account in accounts:
        state = AccountState(Account(account), rules_version=sla.rules.version)
        sla.handle(state, parse_event_object({
            "event_id": "snap", "type": "account.updated", "account_id": account,
            "occurred_at": "2026-11-25T10:00:00+02:00",
            "data": {"plan": "free", "agents": ["ag-1"], "groups": {}}}))
        handle(sla, state, "e-1")  # created at 10:00+02:00: overdue at 08:05Z
        states.append(state)
    store.commit([s.take_write() for s in states])
    due = datetime(2026, 11, 25, 8, 5, tzinfo=UTC)
    loaded = load(store, accounts[0])
    assert loaded.conversations == states[0].conversations
    waiting = loaded.conversations["c-new"].waiting_since
    assert waiting is not None and waiting.isoformat() == "2026-11-25T10:00:00+02:00"
    assert loaded.next_due() == due
    assert store.next_due() == due
    assert store.due_accounts(due - timedelta(microseconds=1), 10) == []
    assert store.due_accounts(due, 10) == sorted(accounts)
    assert len(store.due_accounts(due, 2)) == 2
    store.release(1)
    assert store.due_accounts(due, 10) == sorted(a for a in accounts if a != accounts[1])
    assert open_store().due_accounts(due, 10) == [] and open_store().next_due() is None


@postgres
def test_a_version_1_schema_gains_the_time_columns(url: str, open_store: Open) -> None:
    from worker.store import postgres as module

    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        schema = sql.Identifier(module.DEFAULT_SCHEMA)
        conn.execute(sql.SQL("CREATE SCHEMA {s}").format(s=schema))
        conn.execute(sql.SQL("CREATE TABLE {s}.schema_migrations (version integer PRIMARY"
                             " KEY, applied_at timestamptz NOT NULL DEFAULT now())")
                     .format(s=schema))
        module._migrate_to_1(conn, schema)
        conn.execute(sql.SQL("INSERT INTO {s}.schema_migrations (version) VALUES (1)")
                     .format(s=schema))
        conn.execute(sql.SQL("INSERT INTO {s}.conversations VALUES ('acc-1', 'c-1', 'open',"
                             " NULL, '[]', 3, '[[\"all\"], [], [], []]')").format(s=schema))
    store = open_store()
    conversation = load(store, "acc-1").conversations["c-1"]
    assert (conversation.waiting_since, conversation.last_message_by,
            conversation.due_at) == (None, "none", None)
    assert query(url, "SELECT version FROM inbox_rules.schema_migrations ORDER BY 1") == [
        (target,) for target, _ in MIGRATIONS]
