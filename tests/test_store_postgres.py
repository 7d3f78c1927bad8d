"""The PostgreSQL state store: the contract every store keeps (tests/store_contract.py),
on a database; plus what several workers need: partitions fenced by epochs (a takeover
and a commit wait for each other, an idle or hung worker stalls neither for long), the
rules sweep of owned partitions only, membership by the database clock, and a schema
that workers opening together migrate once.

Each test gets a database of its own; PostgreSQL must be running (the tests fail, never
skip, without it): ``INBOX_RULES_TEST_POSTGRES`` names the admin URL, default
``postgresql://postgres@127.0.0.1:5432/postgres``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from contracts import parse_event_object
from tests.store_contract import (
    BIG,
    StoreContract,
    Stores,
    commit_accounts_under_mixed_rules,
    fresh,
    handle,
    load,
    snapshot,
)
from tests.store_contract import categoriser as categoriser
from tests.support.harness import fresh_database
from worker.cluster.membership import Coordinator, deal
from worker.cluster.partitions import partition_of
from worker.domain.account import AccountState
from worker.domain.categoriser import Categoriser
from worker.domain.state import Account
from worker.errors import StoreConflictError, StoreError, StoreFencedError
from worker.rulebook import load_rules
from worker.rulebook.engine import default_rules_dir
from worker.store import StateStore
from worker.store.postgres import DEFAULT_SCHEMA, MIGRATIONS, PostgresStore

PARTITIONS = 4

postgres = pytest.mark.postgres


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


def query(url: str, text: str, *params: object,
          schema: str | None = None) -> list[tuple[Any, ...]]:
    """Rows of the last statement of ``text`` (none for a statement without rows); with
    ``schema``, unqualified table names are that schema's."""
    options = "" if schema is None else f"-c search_path={schema}"
    with psycopg.connect(url, autocommit=True, options=options) as conn:
        cursor = conn.execute(text.encode(), params or None)
        return cursor.fetchall() if cursor.description is not None else []


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


# -- the contract every store keeps, and the rules sweep of owned partitions ---------

class PostgresStores:
    """The contract's way into the test's database: stores that own every partition
    (closed by ``open_store``), and connections past them on the default schema."""

    def __init__(self, url: str, open_store: Open) -> None:
        self.url = url
        self._open_store = open_store

    def open(self) -> StateStore:
        return owner(self._open_store)

    def query(self, text: str) -> list[tuple[Any, ...]]:
        return query(self.url, text, schema=DEFAULT_SCHEMA)

    def previous_schema(self) -> None:
        lay_out(self.url, len(MIGRATIONS) - 1)


def lay_out(url: str, version: int) -> None:
    """The default schema as the first ``version`` migrations left it, no store open."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        schema = sql.Identifier(DEFAULT_SCHEMA)
        conn.execute(sql.SQL("CREATE SCHEMA {s}").format(s=schema))
        conn.execute(sql.SQL("CREATE TABLE {s}.schema_migrations (version integer PRIMARY"
                             " KEY, applied_at timestamptz NOT NULL DEFAULT now())")
                     .format(s=schema))
        for target, migration in MIGRATIONS[:version]:
            migration(conn, schema)
            conn.execute(sql.SQL("INSERT INTO {s}.schema_migrations (version) VALUES (%s)")
                         .format(s=schema), (target,))


@postgres
class TestContractOnPostgres(StoreContract):
    """The contract every state store keeps, on a database of the test's own."""

    @pytest.fixture
    def stores(self, url: str, open_store: Open) -> Stores:
        return PostgresStores(url, open_store)


@postgres
def test_accounts_behind_the_rules_are_only_those_of_owned_partitions(
        open_store: Open, categoriser: Categoriser) -> None:
    """Only the partitions a store owns: the others' accounts are theirs to sweep."""
    store = owner(open_store)
    version = categoriser.rules.version
    behind = commit_accounts_under_mixed_rules(store, categoriser)
    assert store.accounts_behind(version, "", 100) == behind
    store.release(1)
    assert store.accounts_behind(version, "", 100) == [
        a for a in behind if partition_of(a, PARTITIONS) != 1]
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
def test_membership_by_heartbeats_within_each_members_lease(url: str,
                                                            open_store: Open) -> None:
    coordinator = open_store()
    assert coordinator.live_members() == []
    coordinator.heartbeat("w-2", 1.0)
    coordinator.heartbeat("w-1", 1.0)
    coordinator.heartbeat("w-3", 5.0)
    assert coordinator.live_members() == ["w-1", "w-2", "w-3"]
    time.sleep(0.6)
    coordinator.heartbeat("w-2", 1.0)
    time.sleep(0.6)
    assert coordinator.live_members() == ["w-2", "w-3"], "w-1's lease lapsed, not w-3's"
    coordinator.heartbeat("w-1", 1.0)
    assert coordinator.live_members() == ["w-1", "w-2", "w-3"], "back"


@postgres
def test_workers_with_different_leases_see_the_same_members_and_deal_alike(
        open_store: Open) -> None:
    """Each member lives by its own lease, not by the lease of the worker looking: a
    worker with a short lease and one with a long one read the same live set from the
    same table, so between them every partition has exactly one owner."""
    told: dict[str, list[frozenset[int]]] = {}

    def member(worker_id: str, lease: float) -> Coordinator:
        told[worker_id] = []
        return Coordinator(open_store(worker_id=worker_id), worker_id, PARTITIONS, lease,
                           told[worker_id].append, lambda call: call(), lambda: True)

    short, long_ = member("w-short", 0.8), member("w-long", 30.0)
    long_.tick()  # both joined before either deals with the other in view
    open_store().heartbeat("w-third", 2.0)  # then silent: alive for 2 s, for everyone
    beat = time.monotonic()

    def agree_at(moment: float, live: list[str]) -> None:
        time.sleep(max(0.0, beat + moment - time.monotonic()))
        short.tick()
        long_.tick()
        shares = (told["w-short"][-1], told["w-long"][-1])
        assert shares == (deal(live, "w-short", PARTITIONS), deal(live, "w-long", PARTITIONS))
        assert not shares[0] & shares[1]

    agree_at(0.0, ["w-long", "w-short", "w-third"])
    agree_at(1.2, ["w-long", "w-short", "w-third"])  # past w-short's lease, not w-third's
    agree_at(2.6, ["w-long", "w-short"])  # past w-third's own lease, far from w-long's


@postgres
def test_a_lease_the_database_cannot_take_from_a_time_is_refused(url: str,
                                                                 open_store: Open) -> None:
    """Every worker's membership query reads each member's lease: one infinite lease
    made it fail for all ("interval out of range")."""
    store = open_store()
    store.heartbeat("w-1", 5.0)
    for lease in (float("inf"), float("nan"), 0.0, -1.0, 86_401.0):
        with pytest.raises(ValueError, match="member lease"):
            store.heartbeat("w-bad", lease)
    with pytest.raises(psycopg.errors.CheckViolation):
        query(url, "INSERT INTO inbox_rules.members (worker_id, heartbeat_at, lease_seconds)"
                   " VALUES ('w-bad', now(), 'Infinity')")
    assert store.live_members() == ["w-1"]


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
    assert staying.live_members() == ["w-2"]
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
def test_a_version_3_schema_gains_the_lease_check_and_keeps_its_members(
        url: str, open_store: Open) -> None:
    """Members stay, each judged by its own lease from then on; a row whose lease no
    worker could use (written by an older worker) goes, its worker beats again."""
    lay_out(url, 3)
    query(url, "INSERT INTO inbox_rules.members (worker_id, heartbeat_at, lease_seconds)"
               " VALUES ('w-long', now() - interval '3 seconds', 10),"
               " ('w-short', now() - interval '3 seconds', 1),"
               " ('w-forever', now(), 'Infinity')")
    store = open_store()
    assert query(url, "SELECT version FROM inbox_rules.schema_migrations ORDER BY 1") == [
        (target,) for target, _ in MIGRATIONS]
    assert query(url, "SELECT worker_id, lease_seconds FROM inbox_rules.members"
                      " ORDER BY 1") == [("w-long", 10.0), ("w-short", 1.0)]
    assert store.live_members() == ["w-long"]
    store.heartbeat("w-short", 1.0)
    assert store.live_members() == ["w-long", "w-short"]


@postgres
def test_a_version_1_schema_gains_the_time_columns(url: str, open_store: Open) -> None:
    from worker.store.postgres import schema as module

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
