"""The embedded default store: one SQLite file in WAL mode, state kept per account.

Opening reads nothing but the schema (start-up does not grow with the stored state);
an account is read when an event for it arrives (:meth:`SqliteStore.load_account`),
and each batch writes exactly what it changed (:class:`AccountWrite`) in one
transaction. The per-account memories (recent event ids, tombstones of deleted
conversations) are pruned to their windows as they are written, so the file is
bounded by the settings too, not by how many events ever passed.

The schema is versioned by ``schema_migrations``; migrations run at open, each in its
own transaction, and a file written by a newer schema is refused rather than misread.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import orjson

from worker.domain.account import AccountState, AccountWrite
from worker.domain.state import Conversation
from worker.errors import StoreConflictError, StoreError
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
# Host parameters per statement: SQLite's limit before 3.32 (32766 after).
MAX_QUERY_VARIABLES = 999

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


# (version, migration from the version before it); each runs in its own transaction.
MIGRATIONS: tuple[tuple[int, Callable[[sqlite3.Connection, int], None]], ...] = (
    (2, _migrate_to_2),
    (3, _migrate_to_3),
    (4, _migrate_to_4),
)


def _in_force_key(partition: int) -> str:
    """The meta row naming the rules a partition's queue adopted last (worker.control)."""
    return f"rules_in_force:{partition}"


class SqliteStore:
    """:class:`worker.store.StateStore` in one SQLite file.

    A generation counter guards against a second writer (a standby worker sharing the
    file that became active): a commit based on a store older than the file is refused
    with :class:`StoreConflictError`, and the worker drops its cached accounts.
    """

    # Read-only opens (tools that only look) have none: they send no control messages.
    control_token = ""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self._generation = 0
        if read_only:
            self._open_read_only()
            return
        try:
            # One thread uses the store at a time, but not always the one that opened it.
            self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: an acknowledged event must survive a power cut, not only a crash.
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
            # Reads get a connection of their own: the worker commits on another thread
            # (its fsync must not stall the ioloop), and one connection cannot hold a
            # write transaction there and a read transaction here at once. In WAL mode
            # the reader sees the last commit and never blocks the writer.
            self._reader = sqlite3.connect(path, isolation_level=None, timeout=10.0,
                                           check_same_thread=False)
            self._generation = self._read_generation()
            self.control_token = self._read_token()
        except (sqlite3.Error, ValueError) as exc:
            self._db.close()
            raise self._error("cannot open", exc) from exc
        except StoreError:
            self._db.close()
            raise

    # -- schema ------------------------------------------------------------
    def _migrate(self) -> None:
        version = self._schema_version()
        if version > SCHEMA_VERSION:
            raise self._newer(version)
        for target, migration in MIGRATIONS:
            if target <= version:
                continue
            with self._transaction():
                # Re-read under the write lock: another worker may have just migrated.
                current = self._schema_version()
                if current > SCHEMA_VERSION:
                    raise self._newer(current)
                if current < target:
                    migration(self._db, current)
                    self._db.execute("INSERT INTO schema_migrations VALUES (?, ?)",
                                     (target, datetime.now(UTC).isoformat()))

    def _schema_version(self) -> int:
        """0 for an empty file, 1 for the previous version's file, else the newest
        migration applied."""
        tables = {name for (name,) in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite_%'")}
        if "schema_migrations" in tables:
            row = self._db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            return int(row[0] or 0)
        if "meta" in tables:
            row = self._db.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None and str(row[0]).isdigit():
                return int(row[0])
            if row is None and tables <= _V1_TABLES:
                return 1  # v1 created its tables, then stopped before stamping them
        if tables:
            raise StoreError(f"state store {self.path}: not an inbox-rules state file "
                             f"(tables: {', '.join(sorted(tables))})")
        return 0

    def _newer(self, version: int) -> StoreError:
        return StoreError(f"state store {self.path}: schema version {version} was written by "
                          f"a newer inbox-rules (this one reads up to {SCHEMA_VERSION}); "
                          "upgrade the worker, or point it at another state file")

    # -- reads -------------------------------------------------------------
    def load_account(self, account_id: str, *, event_window: int,
                     tombstone_window: int) -> AccountState | None:
        try:
            # One read transaction: a commit by another process cannot tear the account.
            with self._transaction("BEGIN", self._reader):
                return self._load(account_id, event_window, tombstone_window)
        except (sqlite3.Error, ValueError) as exc:
            raise self._error(f"cannot load account {account_id!r}", exc) from exc

    def iter_accounts(self, *, event_window: int = 0, tombstone_window: int = 0,
                      page: int = 500) -> Iterator[AccountState]:
        """Every stored account, in id order, each read in a transaction of its own (a
        worker committing meanwhile cannot tear one). Tools that look at the whole state
        (``inbox-rules shadow --state``) use it on a store opened ``read_only``; the
        windows default to 0: recent event ids and tombstones are left unread."""
        after = ""
        while True:
            try:
                ids = [account_id for (account_id,) in self._reader.execute(
                    "SELECT account_id FROM accounts WHERE account_id > ?"
                    " ORDER BY account_id LIMIT ?", (after, page))]
            except sqlite3.Error as exc:
                raise self._error("cannot list accounts", exc) from exc
            for account_id in ids:
                state = self.load_account(account_id, event_window=event_window,
                                          tombstone_window=tombstone_window)
                if state is not None:
                    yield state
            if len(ids) < page:
                return
            after = ids[-1]

    def _open_read_only(self) -> None:
        """Open for reading only (``mode=ro``): nothing is created, migrated or written,
        not even the WAL setting, so a tool can look at a live worker's file safely. A
        file of another schema version is refused: only a worker may migrate it."""
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error("cannot open read-only", exc) from exc
        self._reader = self._db
        try:
            version = self._schema_version()
        except (sqlite3.Error, StoreError) as exc:
            self._db.close()
            if isinstance(exc, StoreError):
                raise
            raise self._error("cannot open read-only", exc) from exc
        if version == 0:
            self._db.close()
            raise StoreError(f"state store {self.path}: holds no inbox-rules state")
        if version != SCHEMA_VERSION:
            self._db.close()
            raise (self._newer(version) if version > SCHEMA_VERSION else StoreError(
                f"state store {self.path}: schema version {version} was written by an older "
                f"inbox-rules (this one reads {SCHEMA_VERSION}); a worker of this version "
                "migrates it when it starts, read-only tools cannot"))

    def _load(self, account_id: str, event_window: int,
              tombstone_window: int) -> AccountState | None:
        db = self._reader
        key = (account_id,)
        row = db.execute(
            "SELECT plan, agents, groups_, last_sequence, rules_version, rules_generation,"
            " last_occurred_at, event_counter FROM accounts WHERE account_id = ?",
            key).fetchone()
        conversations = db.execute(
            "SELECT conversation_id, status, group_id, joined, last_sequence, categories,"
            " waiting_since, last_message_by, due_at"
            " FROM conversations WHERE account_id = ?", key).fetchall()
        agents = db.execute("SELECT agent_id, counts, seq FROM agents WHERE account_id = ?",
                            key).fetchall()
        events = db.execute("SELECT number, event_id FROM events WHERE account_id = ?"
                            " ORDER BY number DESC LIMIT ?", (account_id, event_window)).fetchall()
        tombstones = db.execute(
            "SELECT number, conversation_id, last_sequence FROM tombstones"
            " WHERE account_id = ? ORDER BY number DESC LIMIT ?",
            (account_id, tombstone_window)).fetchall()
        return state_from_rows(account_id, row, conversations, agents, events, tombstones,
                               event_window, tombstone_window)

    def accounts_behind(self, rules_version: str, after: str, limit: int,
                        partition: int | None = None) -> list[str]:
        """One partition holds every account here: ``partition`` changes nothing."""
        try:
            rows = self._reader.execute(
                "SELECT account_id FROM accounts WHERE account_id > ?"
                " AND rules_version IS NOT ? ORDER BY account_id LIMIT ?",
                (after, rules_version, limit)).fetchall()
        except sqlite3.Error as exc:
            raise self._error("cannot list accounts behind the rules", exc) from exc
        return [account_id for (account_id,) in rows]

    def due_accounts(self, now: datetime, limit: int) -> list[str]:
        try:
            rows = self._reader.execute(
                # INDEXED BY: the primary key's order suits GROUP BY, and the planner
                # may walk every conversation for it; only the due ones may be read.
                "SELECT account_id FROM conversations INDEXED BY conversations_by_due"
                " WHERE due_at <= ? GROUP BY account_id ORDER BY MIN(due_at), account_id"
                " LIMIT ?",
                (micros(now), limit)).fetchall()
        except sqlite3.Error as exc:
            raise self._error("cannot list accounts with crossings due", exc) from exc
        return [account_id for (account_id,) in rows]

    def next_due(self) -> datetime | None:
        try:
            row = self._reader.execute(
                "SELECT MIN(due_at) FROM conversations WHERE due_at IS NOT NULL").fetchone()
        except sqlite3.Error as exc:
            raise self._error("cannot read the next crossing", exc) from exc
        return None if row is None or row[0] is None else from_micros(row[0])

    def changed_elsewhere(self) -> bool:
        try:
            return self._read_generation() != self._generation
        except sqlite3.Error as exc:
            raise self._error("cannot read the generation", exc) from exc

    def resync(self) -> None:
        try:
            self._generation = self._read_generation()
        except sqlite3.Error as exc:
            raise self._error("cannot read the generation", exc) from exc

    def _read_token(self) -> str:
        """The fleet's token (worker.control), made by the first worker to open the file."""
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('control_token', ?)",
                         (new_control_token(),))
        row = self._db.execute("SELECT value FROM meta WHERE key = 'control_token'").fetchone()
        return str(row[0])

    def _read_generation(self) -> int:
        row = self._reader.execute(
            "SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return 0 if row is None else int(row[0])

    # -- rule versions (worker.store.RuleStore) ------------------------------
    def deploy_rules(self, version: str, files: Mapping[str, bytes], source: str,
                     summary: str, *, expect_live: str | Unset | None = UNSET,
                     ) -> RuleDeployment:
        """Written on the writer connection, in a write transaction of its own: a
        worker's commit and a deploy from the command line serialise on the file's
        lock, and the generation is left alone (no account changed)."""
        return self._deploy(version, files, source, summary, "deploy", expect_live)

    def set_live(self, version: str, source: str, summary: str, *,
                 expect_live: str | Unset | None = UNSET) -> RuleDeployment:
        return self._deploy(version, None, source, summary, "rollback", expect_live)

    def _deploy(self, version: str, files: Mapping[str, bytes] | None, source: str,
                summary: str, action: str, expect_live: str | Unset | None,
                ) -> RuleDeployment:
        now = datetime.now(UTC)
        try:
            with self._transaction():
                db = self._db
                live = _live(db)
                if not isinstance(expect_live, Unset) and live != expect_live:
                    raise not_expected(str(self.path), expect_live, live)
                if files is not None:
                    db.execute("INSERT OR IGNORE INTO rule_versions VALUES (?, ?, ?, ?)",
                               (version, now.isoformat(), source, encode_rule_files(files)))
                elif db.execute("SELECT 1 FROM rule_versions WHERE version = ?",
                                (version,)).fetchone() is None:
                    raise no_such_version(str(self.path), version)
                cursor = db.execute(
                    "INSERT INTO rule_deployments (version, deployed_at, action, source,"
                    " summary) VALUES (?, ?, ?, ?, ?)",
                    (version, now.isoformat(), action, source, summary))
                number = int(cursor.lastrowid or 0)
        except sqlite3.Error as exc:
            raise self._error(f"cannot {action} rules version {version}", exc) from exc
        return RuleDeployment(number, version, now, action, source, summary)

    def live_version(self) -> str | None:
        try:
            return _live(self._reader)
        except sqlite3.Error as exc:
            raise self._error("cannot read the live rules version", exc) from exc

    def live_rules(self) -> tuple[str, dict[str, bytes]] | None:
        try:
            row = self._reader.execute(
                "SELECT v.version, v.files FROM rule_versions v WHERE v.version ="
                " (SELECT version FROM rule_deployments ORDER BY number DESC LIMIT 1)"
            ).fetchone()
            return None if row is None else (row[0], decode_rule_files(row[1]))
        except (sqlite3.Error, ValueError) as exc:
            raise self._error("cannot read the live rules", exc) from exc

    def rule_files(self, version: str) -> dict[str, bytes] | None:
        try:
            row = self._reader.execute("SELECT files FROM rule_versions WHERE version = ?",
                                       (version,)).fetchone()
            return None if row is None else decode_rule_files(row[0])
        except (sqlite3.Error, ValueError) as exc:
            raise self._error(f"cannot read rules version {version}", exc) from exc

    def rule_history(self) -> list[RuleDeployment]:
        try:
            rows = self._reader.execute(
                "SELECT number, version, deployed_at, action, source, summary"
                " FROM rule_deployments ORDER BY number").fetchall()
        except sqlite3.Error as exc:
            raise self._error("cannot read the rules history", exc) from exc
        return [RuleDeployment(number, version, datetime.fromisoformat(at), action, source,
                               summary)
                for number, version, at, action, source, summary in rows]

    # -- writes ------------------------------------------------------------
    def commit(self, writes: Sequence[AccountWrite],
               rules_in_force: Mapping[int, str] | None = None) -> None:
        try:
            with self._transaction():
                self._write(writes)
                self._db.executemany(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [(_in_force_key(p), v) for p, v in (rules_in_force or {}).items()])
        except sqlite3.Error as exc:
            raise self._error("commit failed", exc) from exc
        self._generation += 1

    def rules_in_force(self, partition: int, default: str) -> str:
        key = _in_force_key(partition)
        try:
            with closing(self._side_connection()) as db, self._transaction(db=db):
                db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, default))
                row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise self._error("cannot read the rules in force", exc) from exc
        return str(row[0]) if row else default

    def keep_rules(self, version: str, files: Mapping[str, bytes], source: str) -> None:
        try:
            with closing(self._side_connection()) as db, self._transaction(db=db):
                db.execute("INSERT OR IGNORE INTO rule_versions VALUES (?, ?, ?, ?)",
                           (version, datetime.now(UTC).isoformat(), source,
                            encode_rule_files(files)))
        except sqlite3.Error as exc:
            raise self._error(f"cannot keep rules version {version}", exc) from exc

    def _side_connection(self) -> sqlite3.Connection:
        """For the rare writes made outside a batch: the commit thread may be using the
        writer's connection at that moment, and a connection is not for two threads."""
        return sqlite3.connect(self.path, isolation_level=None, timeout=10.0)

    def _write(self, writes: Sequence[AccountWrite]) -> None:
        db = self._db
        # Optimistic concurrency: exactly one generation step from our base.
        cursor = db.execute("UPDATE meta SET value = ? WHERE key = 'generation' AND value = ?",
                            (str(self._generation + 1), str(self._generation)))
        if cursor.rowcount != 1:
            raise StoreConflictError(f"state store {self.path} was written by another worker")
        # The last change of each conversation wins, in write order: two writes of one
        # account in a batch may delete a conversation and bring it back.
        final: dict[tuple[str, str], Conversation | None] = {}
        for write in writes:
            for conversation in write.conversations:
                final[(write.account_id, conversation.conversation_id)] = conversation
            for conversation_id in write.deleted:
                final[(write.account_id, conversation_id)] = None
        self._insert("INSERT OR REPLACE", "conversations",
                     [_conversation_row(c) for c in final.values() if c is not None])
        db.executemany("DELETE FROM conversations WHERE account_id = ? AND conversation_id = ?",
                       [key for key, c in final.items() if c is None])
        self._insert("INSERT OR REPLACE", "agents",
                     [(w.account_id, agent_id, _json(counts, orjson.OPT_SORT_KEYS), seq)
                      for w in writes for agent_id, (counts, seq) in w.agents.items()])
        # Plain INSERT: a number is used once per account; a clash is a bug, not a retry.
        self._insert("INSERT", "events",
                     [(w.account_id, n, e) for w in writes for n, e in w.events])
        # Always written: rules, clock and counter change with every write. Rows kept per
        # account are counted in memory from one read, write by write, so two writes of
        # one account in a batch still count exactly; every SQLite call here is a
        # round trip for the GIL, which the worker's main thread holds most of the time.
        kept = self._kept({w.account_id for w in writes})
        accounts = []
        for write in writes:
            superseded = self._tombstone(write)
            kept[write.account_id] = counts = self._prune(
                write, kept.get(write.account_id, (0, 0)), superseded)
            accounts.append((*_account_row(write), *counts))
        self._insert("INSERT OR REPLACE", "accounts", accounts)

    def _insert(self, verb: str, table: str, rows: Sequence[tuple[object, ...]]) -> None:
        """Rows in as few statements as the parameter limit allows, in order (a later
        row replaces an earlier one with its key, as row by row would).

        Not ``executemany``: it steps once per row, and every step gives the GIL up and
        must win it back from the ioloop thread, which holds it nearly all the time under
        load (``python -m benchmarks.commit_gil``: 600 rows beside a busy thread took
        2.9 s row by row, 75 ms in chunks)."""
        if not rows:
            return
        width = len(rows[0])
        per = max(1, MAX_QUERY_VARIABLES // width)
        row_marks = "(" + ", ".join("?" * width) + ")"
        start = 0
        while start < len(rows):
            # Full chunks, then the rest in powers of two: a handful of distinct
            # statements per table for the connection's statement cache, not one per size.
            left = len(rows) - start
            size = per if left >= per else 1 << (left.bit_length() - 1)
            chunk = rows[start:start + size]
            self._db.execute(
                f"{verb} INTO {table} VALUES " + ", ".join([row_marks] * size),
                [value for row in chunk for value in row])
            start += size

    def _kept(self, account_ids: set[str]) -> dict[str, tuple[int, int]]:
        """(event ids, tombstones) each account keeps now, from as few queries as fit."""
        kept: dict[str, tuple[int, int]] = {}
        ordered = sorted(account_ids)
        for start in range(0, len(ordered), MAX_QUERY_VARIABLES):
            chunk = ordered[start:start + MAX_QUERY_VARIABLES]
            marks = ", ".join("?" * len(chunk))
            for account_id, events, tombstones in self._db.execute(
                    "SELECT account_id, events_kept, tombstones_kept FROM accounts "  # noqa: S608
                    f"WHERE account_id IN ({marks})", chunk):
                kept[account_id] = (events, tombstones)
        return kept

    def _tombstone(self, write: AccountWrite) -> int:
        """Insert the write's tombstones; a conversation tombstoned again (a newer event
        for a deleted conversation) keeps one row. Returns the rows superseded."""
        superseded = 0
        for number, conversation_id, last_sequence in write.tombstones:
            superseded += self._db.execute(
                "DELETE FROM tombstones WHERE account_id = ? AND conversation_id = ?",
                (write.account_id, conversation_id)).rowcount
            self._db.execute("INSERT INTO tombstones VALUES (?, ?, ?, ?)",
                             (write.account_id, number, conversation_id, last_sequence))
        return superseded

    def _prune(self, write: AccountWrite, kept: tuple[int, int],
               superseded: int) -> tuple[int, int]:
        """Keep only the newest windows of the account's event ids and tombstones (it
        kept ``kept`` before this write); return how many of each it now has."""
        events, tombstones = kept
        return (self._trim("events", write.account_id,
                           events + len(write.events), write.event_window),
                self._trim("tombstones", write.account_id,
                           tombstones + len(write.tombstones) - superseded,
                           write.tombstone_window))

    def _trim(self, table: str, account_id: str, kept: int, window: int) -> int:
        excess = kept - window
        if excess <= 0:
            return kept
        # The oldest `excess` rows: a walk over what goes, not over the whole window.
        cursor = self._db.execute(
            f"DELETE FROM {table} WHERE account_id = ? AND number <= "  # noqa: S608 - fixed names
            f"(SELECT number FROM {table} WHERE account_id = ? ORDER BY number"
            " LIMIT 1 OFFSET ?)", (account_id, account_id, excess - 1))
        return kept - cursor.rowcount

    # -- plumbing ----------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE",
                     db: sqlite3.Connection | None = None) -> Iterator[None]:
        db = db or self._db
        db.execute(begin)
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself on some errors (a full disk): a second
            # rollback would fail and hide the real cause.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def _error(self, what: str, exc: Exception) -> StoreError:
        return StoreError(f"state store {self.path}: {what}: {exc}")

    def close(self) -> None:
        try:
            self._reader.close()
            self._db.close()
        except sqlite3.Error as exc:
            raise self._error("cannot close", exc) from exc


def _live(db: sqlite3.Connection) -> str | None:
    """The live rules version: the newest deployment's (the primary key's last row)."""
    row = db.execute(
        "SELECT version FROM rule_deployments ORDER BY number DESC LIMIT 1").fetchone()
    return None if row is None else str(row[0])


def _json(value: object, option: int = 0) -> str:
    # orjson: the same JSON as the json module's compact form, several times faster
    # (the rows of every batch are encoded on the worker's only thread).
    return orjson.dumps(value, option=option).decode()


def _account_row(write: AccountWrite) -> tuple[object, ...]:
    account = write.account
    groups = {g: sorted(m) for g, m in sorted(account.groups.items())}
    last = None if write.last_occurred_at is None else write.last_occurred_at.isoformat()
    return (write.account_id, account.plan, _json(sorted(account.agents)),
            _json(groups), account.last_sequence, write.rules_version,
            write.rules_generation, last, write.event_counter)


@lru_cache(maxsize=4096)
def _categories_json(categories: tuple[frozenset[str], ...]) -> str:
    """Few distinct values (one per combination of category sets): encoded once each."""
    return _json([sorted(c) for c in categories])


@lru_cache(maxsize=4096)
def _joined_json(joined: frozenset[str]) -> str:
    """Who joined: a handful of distinct sets per account (nobody, one agent ...)."""
    return _json(sorted(joined))


def _conversation_row(conversation: Conversation) -> tuple[object, ...]:
    waiting, due = conversation.waiting_since, conversation.due_at
    return (conversation.account_id, conversation.conversation_id, conversation.status,
            conversation.group_id, _joined_json(conversation.joined),
            conversation.last_sequence, _categories_json(conversation.categories),
            None if waiting is None else waiting.isoformat(), conversation.last_message_by,
            None if due is None else micros(due))
