"""The PostgreSQL store's schema: its tables, their migrations, and the checks at open.

The schema lives in a PostgreSQL schema of its own (``inbox_rules`` by default), is
versioned by ``schema_migrations`` and migrated at open under a transaction-scoped
advisory lock, so workers starting together migrate once; a newer schema is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from psycopg import sql

from worker.errors import StoreError
from worker.store import new_control_token
from worker.store.postgres.connection import Connection

SCHEMA_VERSION = 6
DEFAULT_SCHEMA = "inbox_rules"

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


def _migrate_to_5(conn: Connection, schema: sql.Identifier) -> None:
    """The details inboxes sort by and the unread facts: a conversation's ``details``
    (compact JSON text of the fields not at their default, NULL when none is: see
    :mod:`worker.store.details`) and each agent's ``unread_counts`` (JSON text,
    category -> unread conversations). Both defaults are constants: the tables are not
    rewritten. Rows stored before this load with every detail at its default and
    nothing unread."""
    for statement in (
            "ALTER TABLE {s}.conversations ADD COLUMN details text",
            "ALTER TABLE {s}.agents ADD COLUMN unread_counts text NOT NULL DEFAULT '{{}}'"):
        conn.execute(sql.SQL(statement).format(s=schema))


def _migrate_to_6(conn: Connection, schema: sql.Identifier) -> None:
    """Views that accounts and agents define: the views in force, one nullable column
    of the account's row (:mod:`worker.store.views`); accounts stored before this have
    none."""
    conn.execute(sql.SQL("ALTER TABLE {s}.accounts ADD COLUMN views text").format(s=schema))


# (version, migration from the version before it); all run in the open's transaction.
MIGRATIONS: tuple[tuple[int, Callable[[Connection, sql.Identifier], None]], ...] = (
    (1, _migrate_to_1),
    (2, _migrate_to_2),
    (3, _migrate_to_3),
    (4, _migrate_to_4),
    (5, _migrate_to_5),
    (6, _migrate_to_6),
)


def migrate(conn: Connection, name: str, partitions: int, where: str) -> str:
    """Create or migrate schema ``name`` (``where``: the store, for messages) for
    ``partitions`` partitions; returns the fleet's control token."""
    schema = sql.Identifier(name)
    with conn.transaction():
        # Transaction-scoped: released at commit, whatever happens to the session.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(name),))
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                              (name,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE SCHEMA {s}").format(s=schema))
        tables = {table for (table,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (name,))}
        if tables and "schema_migrations" not in tables:
            raise StoreError(
                f"state store {where}: schema {name!r} is not an inbox-rules "
                f"state (tables: {', '.join(sorted(tables))}); name another schema")
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {s}.schema_migrations (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())").format(s=schema))
        row = conn.execute(sql.SQL("SELECT COALESCE(MAX(version), 0) FROM"
                                   " {s}.schema_migrations").format(s=schema)).fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state store {where}: schema version {version} was written by a "
                f"newer inbox-rules (this one reads up to {SCHEMA_VERSION}); upgrade the "
                "worker, or point it at another schema")
        for target, migration in MIGRATIONS:
            if target > version:
                migration(conn, schema)
                conn.execute(sql.SQL("INSERT INTO {s}.schema_migrations (version)"
                                     " VALUES (%s)").format(s=schema), (target,))
        _check_partitions(conn, schema, partitions, where)
        conn.execute(sql.SQL("INSERT INTO {s}.meta VALUES ('control_token', %s)"
                             " ON CONFLICT (key) DO NOTHING").format(s=schema),
                     (new_control_token(),))
        row = conn.execute(sql.SQL("SELECT value FROM {s}.meta WHERE key ="
                                   " 'control_token'").format(s=schema)).fetchone()
    return str(row[0]) if row else ""


def _check_partitions(conn: Connection, schema: sql.Identifier, partitions: int,
                      where: str) -> None:
    row = conn.execute(sql.SQL("SELECT value FROM {s}.meta WHERE key = 'partitions'")
                       .format(s=schema)).fetchone()
    if row is None:
        conn.execute(sql.SQL("INSERT INTO {s}.meta VALUES ('partitions', %s)")
                     .format(s=schema), (str(partitions),))
    elif int(row[0]) != partitions:
        raise StoreError(
            f"state store {where}: it holds {row[0]} account partitions, this "
            f"worker was started with {partitions}; every worker must use "
            f"{row[0]}. Changing the count moves accounts between partitions, which "
            "needs a migration of every account: it cannot happen at start-up")
    conn.execute(sql.SQL("INSERT INTO {s}.partitions (partition)"
                         " SELECT generate_series(0, %s - 1) ON CONFLICT DO NOTHING")
                 .format(s=schema), (partitions,))


def check_readable(conn: Connection, name: str, where: str) -> None:
    """Schema ``name`` holds state this version reads: only a worker may create or
    migrate it, a read-only open refuses anything else."""
    found = conn.execute("SELECT 1 FROM pg_tables WHERE schemaname = %s"
                         " AND tablename = 'schema_migrations'", (name,)).fetchone()
    if found is None:
        raise StoreError(f"state store {where}: schema {name!r} holds no inbox-rules state")
    row = conn.execute(sql.SQL("SELECT COALESCE(MAX(version), 0) FROM {s}.schema_migrations")
                       .format(s=sql.Identifier(name))).fetchone()
    version = int(row[0]) if row else 0
    if version != SCHEMA_VERSION:
        newer = version > SCHEMA_VERSION
        raise StoreError(
            f"state store {where}: schema version {version} was written by "
            f"{'a newer' if newer else 'an older'} inbox-rules (this one reads "
            f"{SCHEMA_VERSION}); " + ("upgrade it" if newer else
                                      "a worker of this version migrates it when it "
                                      "starts, read-only tools cannot"))


def _lock_key(schema: str) -> int:
    """The advisory lock of one schema's migrations (a signed 64-bit key)."""
    digest = hashlib.blake2b(f"inbox-rules migrate {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
