"""The PostgreSQL store: one state shared by several workers, partitioned by account.

The same contract as the SQLite store (:class:`worker.store.StateStore`, the same rows
and the same window pruning), plus ownership. Accounts fall in ``partitions``
partitions (:func:`worker.cluster.partitions.partition_of`); a worker takes one with
:meth:`PostgresStore.acquire`, which raises the partition's epoch and remembers it.
Every commit locks the rows of the partitions it touches (``SELECT ... FOR UPDATE``)
and writes only if each epoch is still the one this store acquired: a worker that hung
and woke up after another took its partitions is fenced off
(:class:`worker.errors.StoreFencedError`) having written nothing. Advisory locks cannot
do this: they belong to a session, and a hung worker's session may still be alive.

Connections are autocommit, with explicit ``transaction()`` blocks: in psycopg's
default mode the first statement opens an implicit transaction that lasts until the
next commit, and a ``transaction()`` inside it is only a savepoint, so the row lock a
commit took would outlive the commit and stall every takeover. Each thread that uses
the store gets a connection of its own, opened on first use and again once it broke:
the reader (loads, on the ioloop), the writer (commits, on the commit thread) and the
control connection (acquire, release, membership, on the coordinator's thread). The
epochs are remembered per instance: acquire and release on the instance that commits.
A session that stays idle inside a transaction (a worker hung mid-commit, holding
partition rows) is ended by the server after ``idle_in_transaction_timeout`` seconds,
so a takeover waits at most that long.

The URL goes to libpq as it is: TLS is asked for there, for example
``postgresql://user:pw@db.example/inbox?sslmode=verify-full&sslrootcert=/etc/ca.pem``.
Errors name the URL with its password masked.

The schema lives in a PostgreSQL schema of its own (``inbox_rules`` by default), is
versioned by ``schema_migrations`` and migrated at open under a transaction-scoped
advisory lock, so workers starting together migrate once; a newer schema is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from worker.cluster.partitions import partition_of
from worker.domain.account import AccountState, AccountWrite
from worker.domain.state import Conversation
from worker.errors import StoreError, StoreFencedError
from worker.settings import MAX_MEMBER_LEASE, mask_url
from worker.store import (
    UNSET,
    RuleDeployment,
    Unset,
    decode_rule_files,
    encode_rule_files,
    from_micros,
    micros,
    new_control_token,
    no_such_version,
    not_expected,
    state_from_rows,
)

SCHEMA_VERSION = 4
DEFAULT_SCHEMA = "inbox_rules"

Connection = psycopg.Connection[tuple[Any, ...]]

# {s} is the schema, quoted. The composite primary keys cluster nothing in PostgreSQL,
# but they are the only indexes the reads need (one account is one key range), and
# fillfactor leaves room on each page for the updated rows of a commit (HOT updates:
# the indexes are not touched when no key changes).
_V1_TABLES = (
    "CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
    # One row per partition: the epoch is the fencing token, raised by each new owner.
    """CREATE TABLE {s}.partitions (
        partition integer PRIMARY KEY, epoch bigint NOT NULL DEFAULT 0, owner text,
        acquired_at timestamptz) WITH (fillfactor = 50)""",
    # Live workers: a heartbeat within the lease (by the database clock) is alive.
    """CREATE TABLE {s}.members (
        worker_id text PRIMARY KEY, heartbeat_at timestamptz NOT NULL,
        lease_seconds double precision NOT NULL,
        joined_at timestamptz NOT NULL DEFAULT now())""",
    # events_kept/tombstones_kept count the account's rows in events and tombstones:
    # pruning to the window then costs only the rows it removes, not a walk over the
    # window on every commit. last_occurred_at is text, not timestamptz: it becomes an
    # update's occurred_at, whose offset must survive exactly (a retried adoption must
    # repeat its updates byte for byte).
    """CREATE TABLE {s}.accounts (
        account_id text PRIMARY KEY, partition integer NOT NULL, plan text NOT NULL,
        agents text NOT NULL, groups_ text NOT NULL, last_sequence bigint,
        rules_version text, rules_generation bigint NOT NULL, last_occurred_at text,
        event_counter bigint NOT NULL, events_kept integer NOT NULL,
        tombstones_kept integer NOT NULL) WITH (fillfactor = 80)""",
    """CREATE TABLE {s}.conversations (
        account_id text NOT NULL, conversation_id text NOT NULL, status text NOT NULL,
        group_id text, joined text NOT NULL, last_sequence bigint, categories text NOT NULL,
        PRIMARY KEY (account_id, conversation_id)) WITH (fillfactor = 80)""",
    """CREATE TABLE {s}.agents (
        account_id text NOT NULL, agent_id text NOT NULL, counts text NOT NULL,
        seq bigint NOT NULL, PRIMARY KEY (account_id, agent_id)) WITH (fillfactor = 80)""",
    # Numbers grow per account and are shared by events and tombstones (one counter).
    """CREATE TABLE {s}.events (
        account_id text NOT NULL, number bigint NOT NULL, event_id text NOT NULL,
        PRIMARY KEY (account_id, number))""",
    # One row per deleted conversation: a commit that tombstones one again deletes its
    # row (not a UNIQUE constraint: the delete and the insert are one statement, whose
    # parts run in no promised order). last_sequence: a late event older than the
    # deleted conversation's newest is stale.
    """CREATE TABLE {s}.tombstones (
        account_id text NOT NULL, number bigint NOT NULL, conversation_id text NOT NULL,
        last_sequence bigint, PRIMARY KEY (account_id, number))""",
    "CREATE INDEX tombstones_by_conversation ON {s}.tombstones (account_id, conversation_id)",
)


def _migrate_to_1(conn: Connection, schema: sql.Identifier) -> None:
    for statement in _V1_TABLES:
        conn.execute(sql.SQL(statement).format(s=schema))


def _migrate_to_2(conn: Connection, schema: sql.Identifier) -> None:
    """Time facts: since when a conversation waits for an agent (ISO text, its offset
    kept exactly), who wrote last, and when its next time crossing is due (microseconds
    since the epoch, UTC), indexed so that due crossings are found without a scan (only
    waiting conversations under rules with time facts have one). Conversations stored
    before this are taken as not waiting until their next event."""
    for statement in (
            "ALTER TABLE {s}.conversations ADD COLUMN waiting_since text,"
            " ADD COLUMN last_message_by text NOT NULL DEFAULT 'none',"
            " ADD COLUMN due_at bigint",
            "CREATE INDEX conversations_by_due ON {s}.conversations (due_at, account_id)"
            " WHERE due_at IS NOT NULL"):
        conn.execute(sql.SQL(statement).format(s=schema))


def _migrate_to_3(conn: Connection, schema: sql.Identifier) -> None:
    """Rule versions for a fleet (``inbox-rules rules deploy``): each version's rule
    files as data (JSON text, name -> YAML text: kept byte for byte, as jsonb would
    not promise), and every deployment and rollback in order; the live version is the
    newest deployment's. Times by the database clock, like membership."""
    for statement in (
            """CREATE TABLE {s}.rule_versions (
                version text PRIMARY KEY, stored_at timestamptz NOT NULL DEFAULT now(),
                source text NOT NULL, files text NOT NULL)""",
            """CREATE TABLE {s}.rule_deployments (
                number bigint PRIMARY KEY, version text NOT NULL REFERENCES {s}.rule_versions,
                deployed_at timestamptz NOT NULL DEFAULT now(), action text NOT NULL,
                source text NOT NULL, summary text NOT NULL)"""):
        conn.execute(sql.SQL(statement).format(s=schema))


def _migrate_to_4(conn: Connection, schema: sql.Identifier) -> None:
    """Each member's own lease (its row's ``lease_seconds``, written with every
    heartbeat) now decides for every worker whether that member is alive, so workers
    started with different leases read the same live set and deal alike. One row's
    lease thus enters every worker's membership query: it must be positive and one
    the database can take from a time (an infinite or NaN lease made that query fail
    for the whole fleet, "interval out of range"), at most a day. Rows that break
    this are dropped; their worker's next heartbeat is refused."""
    for statement in (
            "DELETE FROM {s}.members WHERE NOT (lease_seconds > 0"
            " AND lease_seconds <= 86400)",
            "ALTER TABLE {s}.members ADD CONSTRAINT members_lease_seconds"
            " CHECK (lease_seconds > 0 AND lease_seconds <= 86400)"):
        conn.execute(sql.SQL(statement).format(s=schema))


# (version, migration from the version before it); all run in the open's transaction.
MIGRATIONS: tuple[tuple[int, Callable[[Connection, sql.Identifier], None]], ...] = (
    (1, _migrate_to_1),
    (2, _migrate_to_2),
    (3, _migrate_to_3),
    (4, _migrate_to_4),
)

# The statements of the hot paths, formatted with the schema once per store.
_QUERIES = {
    "account": "SELECT plan, agents, groups_, last_sequence, rules_version, rules_generation,"
               " last_occurred_at, event_counter FROM {s}.accounts WHERE account_id = %s",
    "conversations": "SELECT conversation_id, status, group_id, joined, last_sequence,"
                     " categories, waiting_since, last_message_by, due_at"
                     " FROM {s}.conversations WHERE account_id = %s",
    "agents": "SELECT agent_id, counts, seq FROM {s}.agents WHERE account_id = %s",
    "events": "SELECT number, event_id FROM {s}.events WHERE account_id = %s"
              " ORDER BY number DESC LIMIT %s",
    "tombstones": "SELECT number, conversation_id, last_sequence FROM {s}.tombstones"
                  " WHERE account_id = %s ORDER BY number DESC LIMIT %s",
    "behind": "SELECT account_id FROM {s}.accounts WHERE account_id > %s"
              " AND rules_version IS DISTINCT FROM %s AND partition = ANY(%s)"
              " ORDER BY account_id LIMIT %s",
    "behind_in": "SELECT account_id FROM {s}.accounts WHERE account_id > %s"
                 " AND rules_version IS DISTINCT FROM %s AND partition = %s"
                 " ORDER BY account_id LIMIT %s",
    # Due crossings of the partitions owned: the index by due time, then each account's
    # partition (few rows: only what is due).
    "due": "SELECT c.account_id FROM {s}.conversations c JOIN {s}.accounts a"
           " USING (account_id) WHERE c.due_at <= %s AND a.partition = ANY(%s)"
           " GROUP BY c.account_id ORDER BY MIN(c.due_at), c.account_id LIMIT %s",
    "next_due": "SELECT MIN(c.due_at) FROM {s}.conversations c JOIN {s}.accounts a"
                " USING (account_id) WHERE c.due_at IS NOT NULL AND a.partition = ANY(%s)",
    "lock": "SELECT partition, epoch FROM {s}.partitions WHERE partition = ANY(%s)"
            " ORDER BY partition FOR UPDATE",
    # A commit writes in two statements after the fence, each over arrays (unnest): a
    # fixed number of round trips and plans however many rows the batch has. The arrays
    # go in binary (%b): the text format escapes every quote of the JSON columns, which
    # cost more than the writes. Data-modifying CTEs share one snapshot, so the
    # tombstones they delete are never the ones they insert.
    "write":
        "WITH put_conversations AS (INSERT INTO {s}.conversations SELECT * FROM unnest("
        "  %(c_account)b::text[], %(c_id)b::text[], %(c_status)b::text[],"
        "  %(c_group)b::text[], %(c_joined)b::text[], %(c_sequence)b::bigint[],"
        "  %(c_categories)b::text[], %(c_waiting)b::text[], %(c_last_by)b::text[],"
        "  %(c_due)b::bigint[])"
        " ON CONFLICT (account_id, conversation_id) DO UPDATE SET status = EXCLUDED.status,"
        "  group_id = EXCLUDED.group_id, joined = EXCLUDED.joined,"
        "  last_sequence = EXCLUDED.last_sequence, categories = EXCLUDED.categories,"
        "  waiting_since = EXCLUDED.waiting_since,"
        "  last_message_by = EXCLUDED.last_message_by, due_at = EXCLUDED.due_at),"
        " deleted AS (DELETE FROM {s}.conversations c"
        "  USING unnest(%(d_account)b::text[], %(d_id)b::text[])"
        "  AS d(account_id, conversation_id)"
        "  WHERE c.account_id = d.account_id AND c.conversation_id = d.conversation_id),"
        " put_agents AS (INSERT INTO {s}.agents SELECT * FROM unnest(%(g_account)b::text[],"
        "  %(g_id)b::text[], %(g_counts)b::text[], %(g_seq)b::bigint[])"
        "  ON CONFLICT (account_id, agent_id) DO UPDATE"
        "  SET counts = EXCLUDED.counts, seq = EXCLUDED.seq),"
        # Plain INSERT: a number is used once per account; a clash is a bug, not a retry.
        " put_events AS (INSERT INTO {s}.events SELECT * FROM unnest(%(e_account)b::text[],"
        "  %(e_number)b::bigint[], %(e_id)b::text[])),"
        # A conversation tombstoned again (a newer event for it) keeps one row.
        " superseded AS (DELETE FROM {s}.tombstones t"
        "  USING unnest(%(t_account)b::text[], %(t_id)b::text[])"
        "  AS d(account_id, conversation_id)"
        "  WHERE t.account_id = d.account_id AND t.conversation_id = d.conversation_id"
        "  RETURNING t.account_id),"
        " put_tombstones AS (INSERT INTO {s}.tombstones SELECT * FROM unnest("
        "  %(t_account)b::text[], %(t_number)b::bigint[], %(t_id)b::text[],"
        "  %(t_sequence)b::bigint[]))"
        # What the accounts kept before this commit, and the tombstones it replaced.
        " SELECT account_id, events_kept, tombstones_kept, 0 FROM {s}.accounts"
        "  WHERE account_id = ANY(%(accounts)b::text[])"
        " UNION ALL SELECT account_id, 0, 0, count(*) FROM superseded GROUP BY account_id",
    # The windows trimmed (the oldest `excess` rows of each account: a walk over what
    # goes, not over the window), then the accounts written with what they now keep.
    "finish":
        "WITH w AS (SELECT * FROM unnest(%(account)b::text[], %(partition)b::integer[],"
        "  %(plan)b::text[], %(agents)b::text[], %(groups)b::text[],"
        "  %(last_sequence)b::bigint[], %(rules_version)b::text[],"
        "  %(rules_generation)b::bigint[], %(last_occurred_at)b::text[],"
        "  %(event_counter)b::bigint[], %(events_kept)b::bigint[],"
        "  %(tombstones_kept)b::bigint[], %(event_window)b::bigint[],"
        "  %(tombstone_window)b::bigint[])"
        "  AS w(account_id, partition, plan, agents, groups_, last_sequence, rules_version,"
        "  rules_generation, last_occurred_at, event_counter, events_kept, tombstones_kept,"
        "  event_window, tombstone_window)),"
        " event_cut AS (SELECT w.account_id, (SELECT x.number FROM {s}.events x"
        "  WHERE x.account_id = w.account_id ORDER BY x.number"
        "  OFFSET w.events_kept - w.event_window - 1 LIMIT 1) AS upto"
        "  FROM w WHERE w.events_kept > w.event_window),"
        " events_gone AS (DELETE FROM {s}.events e USING event_cut c"
        "  WHERE e.account_id = c.account_id AND e.number <= c.upto RETURNING e.account_id),"
        " tombstone_cut AS (SELECT w.account_id, (SELECT x.number FROM {s}.tombstones x"
        "  WHERE x.account_id = w.account_id ORDER BY x.number"
        "  OFFSET w.tombstones_kept - w.tombstone_window - 1 LIMIT 1) AS upto"
        "  FROM w WHERE w.tombstones_kept > w.tombstone_window),"
        " tombstones_gone AS (DELETE FROM {s}.tombstones t USING tombstone_cut c"
        "  WHERE t.account_id = c.account_id AND t.number <= c.upto RETURNING t.account_id),"
        " events_trimmed AS (SELECT account_id, count(*) AS n FROM events_gone"
        "  GROUP BY account_id),"
        " tombstones_trimmed AS (SELECT account_id, count(*) AS n FROM tombstones_gone"
        "  GROUP BY account_id)"
        " INSERT INTO {s}.accounts SELECT w.account_id, w.partition, w.plan, w.agents,"
        "  w.groups_, w.last_sequence, w.rules_version, w.rules_generation,"
        "  w.last_occurred_at, w.event_counter, w.events_kept - COALESCE(e.n, 0),"
        "  w.tombstones_kept - COALESCE(t.n, 0)"
        "  FROM w LEFT JOIN events_trimmed e USING (account_id)"
        "  LEFT JOIN tombstones_trimmed t USING (account_id)"
        " ON CONFLICT (account_id) DO UPDATE SET plan = EXCLUDED.plan,"
        "  agents = EXCLUDED.agents, groups_ = EXCLUDED.groups_,"
        "  last_sequence = EXCLUDED.last_sequence, rules_version = EXCLUDED.rules_version,"
        "  rules_generation = EXCLUDED.rules_generation,"
        "  last_occurred_at = EXCLUDED.last_occurred_at,"
        "  event_counter = EXCLUDED.event_counter, events_kept = EXCLUDED.events_kept,"
        "  tombstones_kept = EXCLUDED.tombstones_kept",
    "acquire": "UPDATE {s}.partitions SET epoch = epoch + 1, owner = %s, acquired_at = now()"
               " WHERE partition = %s RETURNING epoch",
    "reacquire": "UPDATE {s}.partitions SET epoch = epoch + 1, owner = %s,"
                 " acquired_at = now() WHERE partition = %s AND epoch = %s RETURNING epoch",
    "release": "UPDATE {s}.partitions SET owner = NULL WHERE partition = %s AND epoch = %s",
    "heartbeat": "INSERT INTO {s}.members (worker_id, heartbeat_at, lease_seconds)"
                 " VALUES (%s, now(), %s) ON CONFLICT (worker_id) DO UPDATE"
                 " SET heartbeat_at = now(), lease_seconds = EXCLUDED.lease_seconds",
    # Each member by its own lease: every worker reads the same live set.
    "live": "SELECT worker_id FROM {s}.members"
            " WHERE heartbeat_at > now() - make_interval(secs => lease_seconds)"
            " ORDER BY worker_id",
    "leave": "DELETE FROM {s}.members WHERE worker_id = %s",
    "disown": "UPDATE {s}.partitions SET owner = NULL WHERE owner = %s",
    # Rule versions (RuleStore). Deployments take a lock that conflicts with itself
    # (not with readers): two deploys at once get consecutive numbers, each checked
    # against the live version the other left.
    "rules_lock": "LOCK TABLE {s}.rule_deployments IN SHARE ROW EXCLUSIVE MODE",
    "rules_live": "SELECT version FROM {s}.rule_deployments ORDER BY number DESC LIMIT 1",
    "rules_keep": "INSERT INTO {s}.rule_versions (version, source, files) VALUES (%s, %s, %s)"
                  " ON CONFLICT (version) DO NOTHING",
    "rules_known": "SELECT 1 FROM {s}.rule_versions WHERE version = %s",
    "rules_go_live": "INSERT INTO {s}.rule_deployments (number, version, action, source,"
                     " summary) SELECT COALESCE(MAX(number), 0) + 1, %s, %s, %s, %s"
                     " FROM {s}.rule_deployments RETURNING number, deployed_at",
    "rules_live_files": "SELECT v.version, v.files FROM {s}.rule_versions v WHERE v.version ="
                        " (SELECT version FROM {s}.rule_deployments"
                        "  ORDER BY number DESC LIMIT 1)",
    "rules_files": "SELECT files FROM {s}.rule_versions WHERE version = %s",
    # The rules each partition's queue adopted last (worker.control), in meta.
    "in_force": "SELECT value FROM {s}.meta WHERE key = %s",
    "in_force_default": "INSERT INTO {s}.meta VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
    "in_force_set": "INSERT INTO {s}.meta SELECT * FROM unnest(%s::text[], %s::text[])"
                    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    "rules_history": "SELECT number, version, deployed_at, action, source, summary"
                     " FROM {s}.rule_deployments ORDER BY number",
}


class _Link:
    """One connection, opened on first use and again after it broke. Its lock keeps a
    thread's transaction block whole: psycopg would let another thread's statement
    run inside it."""

    __slots__ = ("_conn", "_connect", "lock")

    def __init__(self, connect: Callable[[], Connection]) -> None:
        self._connect = connect
        self._conn: Connection | None = None
        self.lock = threading.Lock()

    def get(self) -> Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._conn = None
            if conn is not None:
                conn.close()
            conn = self._conn = self._connect()
        return conn

    def close(self) -> None:
        with self.lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()


class PostgresStore:
    """:class:`worker.store.StateStore` in PostgreSQL, with partition ownership and
    worker membership (see the module docstring)."""

    # Read-only opens (tools that only look) have none: they send no control messages.
    control_token = ""

    def __init__(self, url: str, partitions: int, *, schema: str | None = None,
                 worker_id: str | None = None,
                 idle_in_transaction_timeout: float = 10.0, read_only: bool = False) -> None:
        if partitions < 1:
            raise ValueError(f"the partition count must be at least 1, not {partitions}")
        self.url = url
        self.partitions = partitions
        self.schema = schema or DEFAULT_SCHEMA
        # Recorded as the owner of the partitions this store acquires (operators read
        # it; leave() releases by it): the coordinator's member id.
        self.worker_id = worker_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._where = _describe(url)
        self._timeout_ms = max(1, round(idle_in_transaction_timeout * 1000))
        # partition -> the epoch we acquired. Replaced, never mutated: the commit and
        # reader threads read it while the coordinator's thread acquires.
        self._epochs: dict[int, int] = {}
        # partition -> the rules version in force there, as read at acquire or written
        # since (replaced, never mutated, like _epochs).
        self._in_force: dict[int, str] = {}
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise self._error("cannot open", exc) from exc
        self._defaults: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self._defaults["connect_timeout"] = 10
        if "application_name" not in params:
            self._defaults["application_name"] = "inbox-rules"
        identifier = sql.Identifier(self.schema)
        self._q = {name: sql.SQL(text).format(s=identifier).as_bytes(None)
                   for name, text in _QUERIES.items()}
        # Read only: every session is, so nothing but SELECTs can run, whatever is asked.
        connect = self._connect_read_only if read_only else self._connect
        self._reader = _Link(self._connect_read_only if read_only else self._connect_reader)
        self._writer = _Link(connect)
        self._control = _Link(connect)
        try:
            if read_only:  # tools that only look: SELECTs on read-only sessions
                try:
                    self._check_readable(identifier)
                except BaseException:
                    self._reader.close()
                    raise
            else:
                with self._connect() as conn:
                    self._migrate(conn, identifier)
        except psycopg.Error as exc:
            raise self._error("cannot open", exc) from exc

    # -- schema ------------------------------------------------------------
    def _migrate(self, conn: Connection, schema: sql.Identifier) -> None:
        with conn.transaction():
            # Transaction-scoped: released at commit, whatever happens to the session.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(self.schema),))
            exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                                  (self.schema,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE SCHEMA {s}").format(s=schema))
            tables = {name for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (self.schema,))}
            if tables and "schema_migrations" not in tables:
                raise StoreError(
                    f"state store {self._where}: schema {self.schema!r} is not an inbox-rules "
                    f"state (tables: {', '.join(sorted(tables))}); name another schema")
            conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {s}.schema_migrations (version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())").format(s=schema))
            row = conn.execute(sql.SQL("SELECT COALESCE(MAX(version), 0) FROM"
                                       " {s}.schema_migrations").format(s=schema)).fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"state store {self._where}: schema version {version} was written by a "
                    f"newer inbox-rules (this one reads up to {SCHEMA_VERSION}); upgrade the "
                    "worker, or point it at another schema")
            for target, migration in MIGRATIONS:
                if target > version:
                    migration(conn, schema)
                    conn.execute(sql.SQL("INSERT INTO {s}.schema_migrations (version)"
                                         " VALUES (%s)").format(s=schema), (target,))
            self._check_partitions(conn, schema)
            conn.execute(sql.SQL("INSERT INTO {s}.meta VALUES ('control_token', %s)"
                                 " ON CONFLICT (key) DO NOTHING").format(s=schema),
                         (new_control_token(),))
            row = conn.execute(sql.SQL("SELECT value FROM {s}.meta WHERE key ="
                                       " 'control_token'").format(s=schema)).fetchone()
            self.control_token = str(row[0]) if row else ""

    def _check_partitions(self, conn: Connection, schema: sql.Identifier) -> None:
        row = conn.execute(sql.SQL("SELECT value FROM {s}.meta WHERE key = 'partitions'")
                           .format(s=schema)).fetchone()
        if row is None:
            conn.execute(sql.SQL("INSERT INTO {s}.meta VALUES ('partitions', %s)")
                         .format(s=schema), (str(self.partitions),))
        elif int(row[0]) != self.partitions:
            raise StoreError(
                f"state store {self._where}: it holds {row[0]} account partitions, this "
                f"worker was started with {self.partitions}; every worker must use "
                f"{row[0]}. Changing the count moves accounts between partitions, which "
                "needs a migration of every account: it cannot happen at start-up")
        conn.execute(sql.SQL("INSERT INTO {s}.partitions (partition)"
                             " SELECT generate_series(0, %s - 1) ON CONFLICT DO NOTHING")
                     .format(s=schema), (self.partitions,))

    # -- reads -------------------------------------------------------------
    def load_account(self, account_id: str, *, event_window: int,
                     tombstone_window: int) -> AccountState | None:
        q = self._q
        key = (account_id,)
        try:
            with self._reader.lock:
                conn = self._reader.get()
                # One repeatable-read transaction, one round trip: a commit by another
                # worker cannot tear the account.
                with _pipeline(conn), conn.transaction():
                    account = conn.execute(q["account"], key)
                    conversations = conn.execute(q["conversations"], key)
                    agents = conn.execute(q["agents"], key)
                    events = conn.execute(q["events"], (account_id, event_window))
                    tombstones = conn.execute(q["tombstones"], (account_id, tombstone_window))
                return state_from_rows(
                    account_id, account.fetchone(), conversations.fetchall(),
                    agents.fetchall(), events.fetchall(), tombstones.fetchall(),
                    event_window, tombstone_window)
        except (psycopg.Error, ValueError) as exc:
            raise self._error(f"cannot load account {account_id!r}", exc) from exc

    def iter_accounts(self, *, event_window: int = 0, tombstone_window: int = 0,
                      page: int = 500) -> Iterator[AccountState]:
        """Every stored account of every partition, in id order, each read in one
        repeatable-read transaction of its own. For tools that look at the whole state
        (``inbox-rules shadow --state``) on a store opened ``read_only``: its sessions
        are read-only, so nothing but SELECTs can run. The windows default to 0 (recent
        event ids and tombstones are left unread)."""
        query = sql.SQL("SELECT account_id FROM {s}.accounts WHERE account_id > %s"
                        " ORDER BY account_id LIMIT %s").format(s=sql.Identifier(self.schema))
        after = ""
        while True:
            try:
                with self._reader.lock:
                    ids = [account_id for (account_id,) in
                           self._reader.get().execute(query, (after, page)).fetchall()]
            except psycopg.Error as exc:
                raise self._error("cannot list accounts", exc) from exc
            for account_id in ids:
                state = self.load_account(account_id, event_window=event_window,
                                          tombstone_window=tombstone_window)
                if state is not None:
                    yield state
            if len(ids) < page:
                return
            after = ids[-1]

    def _check_readable(self, schema: sql.Identifier) -> None:
        """The schema holds state this version reads: only a worker may create or
        migrate it, a read-only open refuses anything else."""
        with self._reader.lock:
            conn = self._reader.get()
            found = conn.execute("SELECT 1 FROM pg_tables WHERE schemaname = %s"
                                 " AND tablename = 'schema_migrations'",
                                 (self.schema,)).fetchone()
            if found is None:
                raise StoreError(f"state store {self._where}: schema {self.schema!r} holds no "
                                 "inbox-rules state")
            row = conn.execute(sql.SQL("SELECT COALESCE(MAX(version), 0) FROM"
                                       " {s}.schema_migrations").format(s=schema)).fetchone()
        version = int(row[0]) if row else 0
        if version != SCHEMA_VERSION:
            newer = version > SCHEMA_VERSION
            raise StoreError(
                f"state store {self._where}: schema version {version} was written by "
                f"{'a newer' if newer else 'an older'} inbox-rules (this one reads "
                f"{SCHEMA_VERSION}); " + ("upgrade it" if newer else
                                          "a worker of this version migrates it when it "
                                          "starts, read-only tools cannot"))

    def accounts_behind(self, rules_version: str, after: str, limit: int,
                        partition: int | None = None) -> list[str]:
        """Only accounts of the partitions this store owns: another worker's accounts
        are its to re-categorise (and our commit of them would be fenced)."""
        if partition is None:
            return self._owned_accounts("behind", "cannot list accounts behind the rules",
                                        after, rules_version, limit=limit)
        if partition not in self._epochs:
            return []
        try:
            with self._reader.lock:
                rows = self._reader.get().execute(
                    self._q["behind_in"], (after, rules_version, partition, limit)).fetchall()
        except psycopg.Error as exc:
            raise self._error("cannot list accounts behind the rules", exc) from exc
        return [account_id for (account_id,) in rows]

    def rules_in_force(self, partition: int, default: str) -> str:
        """Read when the partition was acquired (nobody else can change it after that:
        the previous owner's commits are fenced off); recorded here only the first time
        any worker owns it."""
        known = self._in_force.get(partition)
        if known is not None:
            return known
        key = _in_force_key(partition)
        try:
            with self._writer.lock:
                conn = self._writer.get()
                with conn.transaction():
                    conn.execute(self._q["in_force_default"], (key, default))
                    row = conn.execute(self._q["in_force"], (key,)).fetchone()
        except psycopg.Error as exc:
            raise self._error("cannot read the rules in force", exc) from exc
        value = default if row is None else str(row[0])
        self._in_force = {**self._in_force, partition: value}
        return value

    def keep_rules(self, version: str, files: Mapping[str, bytes], source: str) -> None:
        try:
            with self._writer.lock:
                self._writer.get().execute(self._q["rules_keep"],
                                           (version, source, encode_rule_files(files)))
        except psycopg.Error as exc:
            raise self._error(f"cannot keep rules version {version}", exc) from exc

    def due_accounts(self, now: datetime, limit: int) -> list[str]:
        """Only accounts of the partitions this store owns (see :meth:`accounts_behind`)."""
        return self._owned_accounts("due", "cannot list accounts with crossings due",
                                    micros(now), limit=limit)

    def _owned_accounts(self, query: str, what: str, *params: object, limit: int) -> list[str]:
        """Account ids from ``query`` (its parameters: ``params``, then the partitions
        owned, then ``limit``); none while this store owns no partition."""
        owned = sorted(self._epochs)
        if not owned:
            return []
        try:
            with self._reader.lock:
                rows = self._reader.get().execute(
                    self._q[query], (*params, owned, limit)).fetchall()
        except psycopg.Error as exc:
            raise self._error(what, exc) from exc
        return [account_id for (account_id,) in rows]

    def next_due(self) -> datetime | None:
        owned = sorted(self._epochs)
        if not owned:
            return None
        try:
            with self._reader.lock:
                row = self._reader.get().execute(self._q["next_due"], (owned,)).fetchone()
        except psycopg.Error as exc:
            raise self._error("cannot read the next crossing", exc) from exc
        return None if row is None or row[0] is None else from_micros(row[0])

    def changed_elsewhere(self) -> bool:
        """Always False: fencing, not a store-wide generation, keeps workers apart; the
        worker drops a partition's cached accounts when it (re)acquires it."""
        return False

    def resync(self) -> None:
        """Nothing to take: see :meth:`changed_elsewhere`."""

    # -- writes ------------------------------------------------------------
    def commit(self, writes: Sequence[AccountWrite],
               rules_in_force: Mapping[int, str] | None = None) -> None:
        """Everything in one transaction, after the fence: the rows of the partitions
        the writes touch are locked and their epochs compared with ours first."""
        adopted = dict(rules_in_force or {})
        if not writes and not adopted:
            return
        batch = _Batch(writes, self.partitions)
        touched = sorted(set(batch.partition.values()) | set(adopted))
        try:
            with self._writer.lock:
                conn = self._writer.get()
                # No pipeline here: each statement ends with a Sync, so between them the
                # session is idle in a transaction, and a worker that hangs there is cut
                # off by idle_in_transaction_session_timeout (mid-pipeline it would not
                # be, and would stall the takeover of its partitions).
                with conn.transaction():
                    held: dict[int, int] = dict(
                        conn.execute(self._q["lock"], (touched,)).fetchall())
                    # Our epochs as of now, under the lock: an acquire that went before it
                    # counts.
                    self._check_fence(touched, held, self._epochs)
                    if writes:
                        self._write(conn, batch)
                    if adopted:
                        conn.execute(self._q["in_force_set"],
                                     ([_in_force_key(p) for p in adopted],
                                      list(adopted.values())))
        except psycopg.Error as exc:
            raise self._error("commit failed", exc) from exc
        if adopted:
            self._in_force = {**self._in_force, **adopted}

    def _check_fence(self, touched: list[int], held: dict[int, int],
                     epochs: dict[int, int]) -> None:
        for partition in touched:
            ours, now = epochs.get(partition), held.get(partition)
            if ours is None:
                why = "this worker has not acquired it"
            elif now != ours:
                why = (f"another worker took it over (epoch {now}; this worker acquired "
                       f"epoch {ours})")
            else:
                continue
            raise StoreFencedError(f"state store {self._where}: partition {partition} is "
                                   f"not this worker's: {why}; nothing was written")

    def _write(self, conn: Connection, batch: _Batch) -> None:
        """Two statements: the rows, then the windows trimmed and the accounts."""
        events_kept: dict[str, int] = {}
        tombstones_kept: dict[str, int] = {}
        for account_id, events, tombstones, superseded in conn.execute(
                self._q["write"], batch.rows()).fetchall():
            events_kept[account_id] = events_kept.get(account_id, 0) + events
            tombstones_kept[account_id] = (tombstones_kept.get(account_id, 0) + tombstones
                                           - superseded)
        conn.execute(self._q["finish"], batch.accounts(events_kept, tombstones_kept))

    # -- rule versions (worker.store.RuleStore) ------------------------------
    def deploy_rules(self, version: str, files: Mapping[str, bytes], source: str,
                     summary: str, *, expect_live: str | Unset | None = UNSET,
                     ) -> RuleDeployment:
        """On the control connection, in one transaction under the deployments' lock;
        no partition is touched (nothing is fenced, no account changes)."""
        return self._deploy(version, files, source, summary, "deploy", expect_live)

    def set_live(self, version: str, source: str, summary: str, *,
                 expect_live: str | Unset | None = UNSET) -> RuleDeployment:
        return self._deploy(version, None, source, summary, "rollback", expect_live)

    def _deploy(self, version: str, files: Mapping[str, bytes] | None, source: str,
                summary: str, action: str, expect_live: str | Unset | None,
                ) -> RuleDeployment:
        q = self._q
        try:
            with self._control.lock:
                conn = self._control.get()
                with conn.transaction():
                    conn.execute(q["rules_lock"])
                    row = conn.execute(q["rules_live"]).fetchone()
                    live = None if row is None else str(row[0])
                    if not isinstance(expect_live, Unset) and live != expect_live:
                        raise not_expected(self._where, expect_live, live)
                    if files is not None:
                        conn.execute(q["rules_keep"],
                                     (version, source, encode_rule_files(files)))
                    elif conn.execute(q["rules_known"], (version,)).fetchone() is None:
                        raise no_such_version(self._where, version)
                    done = conn.execute(q["rules_go_live"],
                                        (version, action, source, summary)).fetchone()
        except psycopg.Error as exc:
            raise self._error(f"cannot {action} rules version {version}", exc) from exc
        assert done is not None
        return RuleDeployment(int(done[0]), version, done[1], action, source, summary)

    def live_version(self) -> str | None:
        """One indexed row on the reader's connection (the worker polls it on its
        ioloop, like its account loads)."""
        try:
            with self._reader.lock:
                row = self._reader.get().execute(self._q["rules_live"]).fetchone()
        except psycopg.Error as exc:
            raise self._error("cannot read the live rules version", exc) from exc
        return None if row is None else str(row[0])

    def live_rules(self) -> tuple[str, dict[str, bytes]] | None:
        try:
            with self._reader.lock:
                row = self._reader.get().execute(self._q["rules_live_files"]).fetchone()
            return None if row is None else (str(row[0]), decode_rule_files(row[1]))
        except (psycopg.Error, ValueError) as exc:
            raise self._error("cannot read the live rules", exc) from exc

    def rule_files(self, version: str) -> dict[str, bytes] | None:
        try:
            with self._reader.lock:
                row = self._reader.get().execute(self._q["rules_files"],
                                                 (version,)).fetchone()
            return None if row is None else decode_rule_files(row[0])
        except (psycopg.Error, ValueError) as exc:
            raise self._error(f"cannot read rules version {version}", exc) from exc

    def rule_history(self) -> list[RuleDeployment]:
        try:
            with self._reader.lock:
                rows = self._reader.get().execute(self._q["rules_history"]).fetchall()
        except psycopg.Error as exc:
            raise self._error("cannot read the rules history", exc) from exc
        return [RuleDeployment(int(number), str(version), at, str(action), str(source),
                               str(summary))
                for number, version, at, action, source, summary in rows]

    # -- ownership ---------------------------------------------------------
    def acquire(self, partition: int) -> int:
        """Take ``partition``: raise its epoch (waiting for a commit that holds its row)
        and remember it; from then on the previous owner's commits are fenced off.

        A partition this store holds already is taken again only if nobody took it
        meanwhile. If somebody did, this raises :class:`StoreFencedError` and keeps the
        old epoch, so that batches computed from what we cached before still fail: the
        caller releases it once none of those can commit, then acquires it afresh (a
        silent re-take would make them valid again, over the other worker's commits)."""
        self._check_partition(partition)
        held = self._epochs.get(partition)
        try:
            with self._control.lock:
                conn = self._control.get()
                if held is None:
                    row = conn.execute(self._q["acquire"],
                                       (self.worker_id, partition)).fetchone()
                else:
                    row = conn.execute(self._q["reacquire"],
                                       (self.worker_id, partition, held)).fetchone()
        except psycopg.Error as exc:
            raise self._error(f"cannot acquire partition {partition}", exc) from exc
        if row is None and held is not None:
            raise StoreFencedError(
                f"state store {self._where}: partition {partition} was taken over since this "
                f"worker acquired epoch {held}: release it once nothing computed before can "
                "commit, then acquire it again")
        if row is None:
            raise StoreError(f"state store {self._where}: partition {partition} has no row")
        epoch = int(row[0])
        self._epochs = {**self._epochs, partition: epoch}
        self._learn_in_force(partition)
        return epoch

    def _learn_in_force(self, partition: int) -> None:
        """What the partition's last owner committed as its rules in force (none yet:
        learnt when first asked)."""
        try:
            with self._control.lock:
                row = self._control.get().execute(
                    self._q["in_force"], (_in_force_key(partition),)).fetchone()
        except psycopg.Error as exc:
            raise self._error(f"cannot read the rules in force of partition {partition}",
                              exc) from exc
        known = {p: v for p, v in self._in_force.items() if p != partition}
        if row is not None:
            known[partition] = str(row[0])
        self._in_force = known

    def release(self, partition: int) -> None:
        """Give ``partition`` up: our commits to it are refused from now on, and it shows
        no owner unless another worker took it meanwhile."""
        epoch = self._epochs.get(partition)
        if epoch is None:
            return
        self._epochs = {p: e for p, e in self._epochs.items() if p != partition}
        try:
            with self._control.lock:
                self._control.get().execute(self._q["release"], (partition, epoch))
        except psycopg.Error as exc:
            raise self._error(f"cannot release partition {partition}", exc) from exc

    def owned(self) -> dict[int, int]:
        """The partitions this store acquired and has not released, with their epochs."""
        return dict(self._epochs)

    def _check_partition(self, partition: int) -> None:
        if not 0 <= partition < self.partitions:
            raise ValueError(f"no partition {partition}: the store has {self.partitions} "
                             f"(0..{self.partitions - 1})")

    # -- membership --------------------------------------------------------
    def heartbeat(self, worker_id: str, lease_seconds: float) -> None:
        """``worker_id`` is alive now, by the database clock (workers' clocks may
        disagree; the database's is the one all of them read), and stays alive for
        every worker until ``lease_seconds`` have passed without another heartbeat."""
        if not 0 < lease_seconds <= MAX_MEMBER_LEASE:
            raise ValueError(f"a member lease must be above 0 and at most "
                             f"{MAX_MEMBER_LEASE:g} seconds, not {lease_seconds}")
        try:
            with self._control.lock:
                self._control.get().execute(self._q["heartbeat"], (worker_id, lease_seconds))
        except psycopg.Error as exc:
            raise self._error(f"cannot record the heartbeat of {worker_id!r}", exc) from exc

    def live_members(self) -> list[str]:
        """Workers whose last heartbeat is within their own lease, sorted: the same
        answer for every worker, whatever lease it was started with."""
        try:
            with self._control.lock:
                rows = self._control.get().execute(self._q["live"]).fetchall()
        except psycopg.Error as exc:
            raise self._error("cannot list live workers", exc) from exc
        return [worker_id for (worker_id,) in rows]

    def leave(self, worker_id: str) -> None:
        """``worker_id`` is gone: drop its membership and the owner of its partitions,
        at once (the others need not wait for its lease to lapse)."""
        try:
            with self._control.lock:
                conn = self._control.get()
                with conn.transaction():
                    conn.execute(self._q["leave"], (worker_id,))
                    conn.execute(self._q["disown"], (worker_id,))
        except psycopg.Error as exc:
            raise self._error(f"cannot remove worker {worker_id!r}", exc) from exc
        if worker_id == self.worker_id:
            self._epochs = {}

    # -- plumbing ----------------------------------------------------------
    def _connect(self) -> Connection:
        conn = psycopg.connect(self.url, autocommit=True, **self._defaults)
        try:
            conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                         (str(self._timeout_ms),))
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_reader(self) -> Connection:
        conn = self._connect()
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        return conn

    def _connect_read_only(self) -> Connection:
        """A reader whose every transaction is read-only, the implicit ones of autocommit
        statements too (psycopg's ``read_only`` covers only its own ``transaction()``
        blocks)."""
        conn = self._connect_reader()
        try:
            conn.execute("SELECT set_config('default_transaction_read_only', 'on', false)")
        except BaseException:
            conn.close()
            raise
        return conn

    def _error(self, what: str, exc: Exception) -> StoreError:
        return StoreError(f"state store {self._where}: {what}: {_masked(str(exc), self.url)}")

    def close(self) -> None:
        try:
            for link in (self._reader, self._writer, self._control):
                link.close()
        except psycopg.Error as exc:
            raise self._error("cannot close", exc) from exc


class _Batch:
    """One commit's rows, as the column arrays its statements take. The last change of
    each conversation, agent, tombstone and account wins, in write order: two writes of
    one account in a batch may delete a conversation and bring it back, and one
    statement may not touch a row twice."""

    def __init__(self, writes: Sequence[AccountWrite], partitions: int) -> None:
        self.final: dict[tuple[str, str], Conversation | None] = {}
        self.agents: dict[tuple[str, str], tuple[str, int]] = {}
        self.tombstones: dict[tuple[str, str], tuple[int, int | None]] = {}
        self.last: dict[str, AccountWrite] = {}
        self.new_events: Counter[str] = Counter()
        self.events: tuple[list[str], list[int], list[str]] = ([], [], [])
        for write in writes:
            account_id = write.account_id
            self.last[account_id] = write
            for conversation in write.conversations:
                self.final[(account_id, conversation.conversation_id)] = conversation
            for conversation_id in write.deleted:
                self.final[(account_id, conversation_id)] = None
            for agent_id, (counts, seq) in write.agents.items():
                self.agents[(account_id, agent_id)] = (
                    _json(counts, orjson.OPT_SORT_KEYS), seq)
            accounts, numbers, ids = self.events
            for number, event_id in write.events:
                accounts.append(account_id)
                numbers.append(number)
                ids.append(event_id)
            self.new_events[account_id] += len(write.events)
            for number, conversation_id, last_sequence in write.tombstones:
                self.tombstones[(account_id, conversation_id)] = (number, last_sequence)
        self.partition = {a: partition_of(a, partitions) for a in self.last}

    def rows(self) -> dict[str, list[Any]]:
        """The parameters of the ``write`` statement."""
        put = [c for c in self.final.values() if c is not None]
        deleted = [key for key, c in self.final.items() if c is None]
        return {
            "c_account": [c.account_id for c in put],
            "c_id": [c.conversation_id for c in put],
            "c_status": [c.status for c in put],
            "c_group": [c.group_id for c in put],
            "c_joined": [_joined_json(c.joined) for c in put],
            "c_sequence": [c.last_sequence for c in put],
            "c_categories": [_categories_json(c.categories) for c in put],
            "c_waiting": [None if c.waiting_since is None else c.waiting_since.isoformat()
                          for c in put],
            "c_last_by": [c.last_message_by for c in put],
            "c_due": [None if c.due_at is None else micros(c.due_at) for c in put],
            "d_account": [a for a, _ in deleted],
            "d_id": [c for _, c in deleted],
            "g_account": [a for a, _ in self.agents],
            "g_id": [g for _, g in self.agents],
            "g_counts": [counts for counts, _ in self.agents.values()],
            "g_seq": [seq for _, seq in self.agents.values()],
            "e_account": self.events[0],
            "e_number": self.events[1],
            "e_id": self.events[2],
            "t_account": [a for a, _ in self.tombstones],
            "t_id": [c for _, c in self.tombstones],
            "t_number": [n for n, _ in self.tombstones.values()],
            "t_sequence": [s for _, s in self.tombstones.values()],
            "accounts": list(self.last),
        }

    def accounts(self, events_kept: dict[str, int], tombstones_kept: dict[str, int],
                 ) -> dict[str, list[Any]]:
        """The parameters of the ``finish`` statement: each account's row, with the
        rows it keeps before the trim (what was stored, less the tombstones superseded,
        plus this batch's)."""
        new_tombstones = Counter(a for a, _ in self.tombstones)
        rows = [(*_account_row(w, self.partition[a]),
                 events_kept.get(a, 0) + self.new_events[a],
                 tombstones_kept.get(a, 0) + new_tombstones[a],
                 w.event_window, w.tombstone_window) for a, w in self.last.items()]
        names = ("account", "partition", "plan", "agents", "groups", "last_sequence",
                 "rules_version", "rules_generation", "last_occurred_at", "event_counter",
                 "events_kept", "tombstones_kept", "event_window", "tombstone_window")
        return dict(zip(names, _columns(rows, len(names)), strict=True))


@contextlib.contextmanager
def _pipeline(conn: Connection) -> Iterator[None]:
    """Pipeline mode where libpq has it (14+): statements go out without waiting for
    the ones before, and their results come back when one is fetched (one round trip
    for all of them)."""
    if not psycopg.Pipeline.is_supported():
        yield
        return
    with conn.pipeline():
        yield


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to the column arrays unnest() takes."""
    columns: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


def _json(value: object, option: int = 0) -> str:
    return orjson.dumps(value, option=option).decode()


@lru_cache(maxsize=4096)
def _categories_json(categories: tuple[frozenset[str], ...]) -> str:
    """Few distinct values (one per combination of category sets): encoded once each."""
    return _json([sorted(c) for c in categories])


@lru_cache(maxsize=4096)
def _joined_json(joined: frozenset[str]) -> str:
    return _json(sorted(joined))


def _account_row(write: AccountWrite, partition: int) -> tuple[object, ...]:
    account = write.account
    groups = {g: sorted(m) for g, m in sorted(account.groups.items())}
    last = None if write.last_occurred_at is None else write.last_occurred_at.isoformat()
    return (write.account_id, partition, account.plan, _json(sorted(account.agents)),
            _json(groups), account.last_sequence, write.rules_version,
            write.rules_generation, last, write.event_counter)


def _in_force_key(partition: int) -> str:
    return f"rules_in_force:{partition}"


def _lock_key(schema: str) -> int:
    """The advisory lock of one schema's migrations (a signed 64-bit key)."""
    digest = hashlib.blake2b(f"inbox-rules migrate {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _describe(url: str) -> str:
    """The URL for messages: password masked, in URL or key=value form."""
    return _masked(mask_url(url), url)


_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def _masked(text: str, url: str) -> str:
    """``text`` without the password of ``url`` (a parameter, or quoted by a message)."""
    text = _PASSWORD.sub(r"\1***", text)
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.Error:
        return text
    # A very short one would mask random letters of the message, not a quotation.
    if password and len(str(password)) >= 4:
        text = text.replace(str(password), "***")
    return text
