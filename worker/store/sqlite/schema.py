"""The SQLite store's schema: its tables, their migrations, and the checks at open.

The schema is versioned by ``schema_migrations``; migrations run at open, each in its
own transaction, and a file written by a newer schema is refused rather than misread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from worker.errors import StoreError
from worker.store.sqlite.connection import transaction

SCHEMA_VERSION = 6


# A composite primary key is the only index these tables need, and WITHOUT ROWID
# clusters each account's rows together: one account is one contiguous range to read.
_V2_TABLES = (
    """CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY, applied_at TEXT)""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # events_kept/tombstones_kept count the rows this account has in `events` and
    # `tombstones`: pruning to the window then costs only the rows it removes, instead
    # of a walk over the whole window on every commit.
    """CREATE TABLE accounts (
        account_id TEXT PRIMARY KEY, plan TEXT NOT NULL, agents TEXT NOT NULL,
        groups_ TEXT NOT NULL, last_sequence INTEGER, rules_version TEXT,
        rules_generation INTEGER NOT NULL, last_occurred_at TEXT,
        event_counter INTEGER NOT NULL, events_kept INTEGER NOT NULL,
        tombstones_kept INTEGER NOT NULL) WITHOUT ROWID""",
    """CREATE TABLE conversations (
        account_id TEXT NOT NULL, conversation_id TEXT NOT NULL, status TEXT NOT NULL,
        group_id TEXT, joined TEXT NOT NULL, last_sequence INTEGER, categories TEXT NOT NULL,
        PRIMARY KEY (account_id, conversation_id)) WITHOUT ROWID""",
    """CREATE TABLE agents (
        account_id TEXT NOT NULL, agent_id TEXT NOT NULL, counts TEXT NOT NULL,
        seq INTEGER NOT NULL, PRIMARY KEY (account_id, agent_id)) WITHOUT ROWID""",
    # Numbers grow per account and are shared by events and tombstones (one counter).
    """CREATE TABLE events (
        account_id TEXT NOT NULL, number INTEGER NOT NULL, event_id TEXT NOT NULL,
        PRIMARY KEY (account_id, number)) WITHOUT ROWID""",
    # last_sequence: a late event older than the deleted conversation's newest is stale.
    """CREATE TABLE tombstones (
        account_id TEXT NOT NULL, number INTEGER NOT NULL, conversation_id TEXT NOT NULL,
        last_sequence INTEGER, PRIMARY KEY (account_id, number)) WITHOUT ROWID""",
    "CREATE INDEX tombstones_by_conversation ON tombstones (account_id, conversation_id)",
)

# From the file the previous version wrote (meta.schema_version = '1': one global
# state with global rules_version, counts and a global `seen` list). Runs after
# the v1 tables that clash with v2 names were renamed to v1_*.
_FROM_V1 = (
    # Event ids are numbered per account in the order they were seen.
    """INSERT INTO events (account_id, number, event_id)
       SELECT account_id, ROW_NUMBER() OVER (PARTITION BY account_id ORDER BY seq), event_id
       FROM seen""",
    # Deleted conversations leave the state: each becomes a tombstone numbered after
    # the account's events (v1 kept no deletion order: conversation id order).
    """INSERT INTO tombstones (account_id, number, conversation_id, last_sequence)
       SELECT c.account_id,
              COALESCE((SELECT MAX(e.number) FROM events e WHERE e.account_id = c.account_id),
                       0)
              + ROW_NUMBER() OVER (PARTITION BY c.account_id ORDER BY c.conversation_id),
              c.conversation_id, c.last_sequence
       FROM v1_conversations c WHERE c.status = 'deleted'""",
    """INSERT INTO conversations
       SELECT account_id, conversation_id, status, group_id, joined, last_sequence, categories
       FROM v1_conversations WHERE status != 'deleted'""",
    # v1 published no per-agent numbering: every agent starts from 0.
    "INSERT INTO agents SELECT account_id, agent_id, counts, 0 FROM counts",
    # Every account was categorised under the one global rules version.
    """INSERT INTO accounts
       SELECT account_id, plan, agents, groups_, last_sequence,
              (SELECT NULLIF(value, '') FROM meta WHERE key = 'rules_version'),
              0, NULL, 0, 0, 0
       FROM v1_accounts""",
    # An account known only by its conversations, counts or events still gets a row:
    # it carries the event counter, so new numbers never collide with migrated ones.
    """INSERT OR IGNORE INTO accounts
       SELECT account_id, 'free', '[]', '{}', NULL,
              (SELECT NULLIF(value, '') FROM meta WHERE key = 'rules_version'),
              0, NULL, 0, 0, 0
       FROM (SELECT account_id FROM conversations UNION SELECT account_id FROM agents
             UNION SELECT account_id FROM events UNION SELECT account_id FROM tombstones)""",
    """UPDATE accounts SET
         event_counter = MAX(
           COALESCE((SELECT MAX(number) FROM events e
                     WHERE e.account_id = accounts.account_id), 0),
           COALESCE((SELECT MAX(number) FROM tombstones t
                     WHERE t.account_id = accounts.account_id), 0)),
         events_kept = (SELECT COUNT(*) FROM events e WHERE e.account_id = accounts.account_id),
         tombstones_kept = (SELECT COUNT(*) FROM tombstones t
                            WHERE t.account_id = accounts.account_id)""",
    "DROP TABLE v1_accounts",
    "DROP TABLE v1_conversations",
    "DROP TABLE counts",
    "DROP TABLE seen",
    "DELETE FROM meta WHERE key = 'rules_version'",
)


_V1_TABLES = frozenset({"meta", "accounts", "conversations", "counts", "seen"})


def _migrate_to_2(db: sqlite3.Connection, current: int) -> None:
    """Create the per-account schema; from a v1 file, carry its state over."""
    if current == 1:
        db.execute("ALTER TABLE accounts RENAME TO v1_accounts")
        db.execute("ALTER TABLE conversations RENAME TO v1_conversations")
    for statement in _V2_TABLES:
        db.execute(statement)
    if current == 1:
        for statement in _FROM_V1:
            db.execute(statement)
    db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
    # A v1 worker reads only meta.schema_version: this makes it refuse the file
    # ("schema version 2") instead of writing its old tables into it.
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
               (str(SCHEMA_VERSION),))


def _migrate_to_3(db: sqlite3.Connection, current: int) -> None:
    """Time facts: since when a conversation waits for an agent (ISO text, its offset
    kept), who wrote last, and when its next time crossing is due (microseconds since
    the epoch, UTC), indexed so that due crossings are found without a scan (only
    waiting conversations under rules with time facts have one). Conversations stored
    before this are taken as not waiting until their next event."""
    db.execute("ALTER TABLE conversations ADD COLUMN waiting_since TEXT")
    db.execute("ALTER TABLE conversations ADD COLUMN last_message_by TEXT NOT NULL"
               " DEFAULT 'none'")
    db.execute("ALTER TABLE conversations ADD COLUMN due_at INTEGER")
    db.execute("CREATE INDEX conversations_by_due ON conversations (due_at, account_id)"
               " WHERE due_at IS NOT NULL")
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
               (str(SCHEMA_VERSION),))


def _migrate_to_4(db: sqlite3.Connection, current: int) -> None:
    """Rule versions for a fleet (``inbox-rules rules deploy``): each version's rule
    files as data (JSON, name -> YAML text), and every deployment and rollback in
    order; the live version is the newest deployment's."""
    db.execute("""CREATE TABLE rule_versions (
        version TEXT PRIMARY KEY, stored_at TEXT NOT NULL, source TEXT NOT NULL,
        files TEXT NOT NULL) WITHOUT ROWID""")
    db.execute("""CREATE TABLE rule_deployments (
        number INTEGER PRIMARY KEY, version TEXT NOT NULL REFERENCES rule_versions,
        deployed_at TEXT NOT NULL, action TEXT NOT NULL, source TEXT NOT NULL,
        summary TEXT NOT NULL)""")
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
               (str(SCHEMA_VERSION),))


def _migrate_to_5(db: sqlite3.Connection, current: int) -> None:
    """The details inboxes sort by and the unread facts: a conversation's ``details``
    (compact JSON of the fields not at their default, NULL when none is: see
    :mod:`worker.store.details`) and each agent's ``unread_counts`` (JSON, category ->
    unread conversations). Rows stored before this load with every detail at its
    default and nothing unread."""
    db.execute("ALTER TABLE conversations ADD COLUMN details TEXT")
    db.execute("ALTER TABLE agents ADD COLUMN unread_counts TEXT NOT NULL DEFAULT '{}'")
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
               (str(SCHEMA_VERSION),))


def _migrate_to_6(db: sqlite3.Connection, current: int) -> None:
    """Views that accounts and agents define: the views in force, one nullable column
    of the account's row (:mod:`worker.store.views`); accounts stored before this have
    none."""
    db.execute("ALTER TABLE accounts ADD COLUMN views TEXT")
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
               (str(SCHEMA_VERSION),))


# (version, migration from the version before it); each runs in its own transaction.
MIGRATIONS: tuple[tuple[int, Callable[[sqlite3.Connection, int], None]], ...] = (
    (2, _migrate_to_2),
    (3, _migrate_to_3),
    (4, _migrate_to_4),
    (5, _migrate_to_5),
    (6, _migrate_to_6),
)


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the file at ``path`` (open as ``db``) to :data:`SCHEMA_VERSION`."""
    version = schema_version(db, path)
    if version > SCHEMA_VERSION:
        raise newer(path, version)
    for target, migration in MIGRATIONS:
        if target <= version:
            continue
        with transaction(db):
            # Re-read under the write lock: another worker may have just migrated.
            current = schema_version(db, path)
            if current > SCHEMA_VERSION:
                raise newer(path, current)
            if current < target:
                migration(db, current)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?)",
                           (target, datetime.now(UTC).isoformat()))


def schema_version(db: sqlite3.Connection, path: Path) -> int:
    """0 for an empty file, 1 for the previous version's file, else the newest
    migration applied."""
    tables = {name for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        " AND name NOT LIKE 'sqlite_%'")}
    if "schema_migrations" in tables:
        row = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)
    if "meta" in tables:
        row = db.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and str(row[0]).isdigit():
            return int(row[0])
        if row is None and tables <= _V1_TABLES:
            return 1  # v1 created its tables, then stopped before stamping them
    if tables:
        raise StoreError(f"state store {path}: not an inbox-rules state file "
                         f"(tables: {', '.join(sorted(tables))})")
    return 0


def newer(path: Path, version: int) -> StoreError:
    return StoreError(f"state store {path}: schema version {version} was written by "
                      f"a newer inbox-rules (this one reads up to {SCHEMA_VERSION}); "
                      "upgrade the worker, or point it at another state file")


def unreadable(path: Path, version: int) -> StoreError | None:
    """Why a read-only open cannot read a file of ``version`` (None: it can); only a
    worker may create or migrate one."""
    if version == 0:
        return StoreError(f"state store {path}: holds no inbox-rules state")
    if version != SCHEMA_VERSION:
        return newer(path, version) if version > SCHEMA_VERSION else StoreError(
            f"state store {path}: schema version {version} was written by an older "
            f"inbox-rules (this one reads {SCHEMA_VERSION}); a worker of this version "
            "migrates it when it starts, read-only tools cannot")
    return None
