"""Where the worker's state survives restarts: a small interface and its SQLite form.

The in-memory :class:`State` is the working copy; a store loads it whole at start and
writes exactly what changed (``State.take_changes``), once per batch, in one
transaction. A server store (PostgreSQL) for several workers fits the same protocol.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Protocol

from worker.domain.state import Account, Changes, Conversation, State
from worker.errors import StoreConflictError, StoreError

SCHEMA_VERSION = 1

_SCHEMA = """
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


class StateStore(Protocol):
    """Durable state: load it whole, commit each batch's changes atomically."""

    def load(self, dedup_window: int) -> State:
        """The state as of the last commit."""

    def commit(self, changes: Changes, state: State) -> None:
        """Write ``changes`` (values read from ``state``) in one transaction, or raise
        :class:`StoreError` having written nothing."""

    def changed_elsewhere(self) -> bool:
        """True if another worker committed since our last load or commit."""

    def close(self) -> None:
        """Release the store."""


class SqliteStore:
    """The embedded default: one SQLite file in WAL mode.

    A generation counter guards against a second writer (a standby worker sharing the
    file that became active): a commit based on a state older than the file's is
    refused with :class:`StoreConflictError`, and the worker reloads.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._generation = 0
        try:
            # One thread uses the store at a time, but not always the one that opened it.
            self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: an acknowledged event must survive a power cut, not only a crash.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._check_schema()
        except sqlite3.Error as exc:
            raise StoreError(f"state store {path}: {exc}") from exc

    def _check_schema(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"state store {self.path}: schema version {row[0]}, "
                             f"this worker reads {SCHEMA_VERSION}")

    def load(self, dedup_window: int) -> State:
        try:
            return self._load(dedup_window)
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self.path}: cannot load: {exc}") from exc

    def _load(self, dedup_window: int) -> State:
        db = self._db
        state = State(dedup_window=dedup_window)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self._generation = int(meta.get("generation", "0"))
        state.rules_version = meta.get("rules_version") or None
        for account_id, plan, agents, groups, last_sequence in db.execute(
                "SELECT account_id, plan, agents, groups_, last_sequence FROM accounts"):
            state.accounts[account_id] = Account(
                account_id, plan, frozenset(json.loads(agents)),
                {g: frozenset(m) for g, m in json.loads(groups).items()}, last_sequence)
        for (account_id, conversation_id, status, group_id, joined, last_sequence,
             categories) in db.execute(
                "SELECT account_id, conversation_id, status, group_id, joined, last_sequence,"
                " categories FROM conversations"):
            state.conversations.setdefault(account_id, {})[conversation_id] = Conversation(
                account_id, conversation_id, status, group_id, frozenset(json.loads(joined)),
                last_sequence, tuple(frozenset(c) for c in json.loads(categories)))
        for account_id, agent_id, counts in db.execute(
                "SELECT account_id, agent_id, counts FROM counts"):
            state.counts.setdefault(account_id, {})[agent_id] = json.loads(counts)
        for account_id, event_id in db.execute(
                "SELECT account_id, event_id FROM seen ORDER BY seq"):
            state.seen[(account_id, event_id)] = None
        # A smaller window than before: forget the oldest, and say so at the next commit.
        while len(state.seen) > dedup_window:
            evicted, _ = state.seen.popitem(last=False)
            state.changes.seen_evicted.append(evicted)
        return state

    def commit(self, changes: Changes, state: State) -> None:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._write(changes, state)
                db.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on some errors (a full disk): a second
                # rollback would fail and hide the real cause.
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self.path}: commit failed: {exc}") from exc
        self._generation += 1

    def _write(self, changes: Changes, state: State) -> None:
        db = self._db
        # Optimistic concurrency: exactly one generation step from the one we loaded.
        cursor = db.execute("UPDATE meta SET value = ? WHERE key = 'generation' AND value = ?",
                            (str(self._generation + 1), str(self._generation)))
        if cursor.rowcount != 1:
            raise StoreConflictError(f"state store {self.path} was written by another worker")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('rules_version', ?)",
                   (state.rules_version or "",))
        db.executemany(
            "INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?, ?)",
            [_account_row(state.accounts[a]) for a in sorted(changes.accounts)
             if a in state.accounts])
        rows, gone = [], []
        for account_id, conversation_id in sorted(changes.conversations):
            conversation = state.conversation(account_id, conversation_id)
            if conversation is None:
                gone.append((account_id, conversation_id))
            else:
                rows.append(_conversation_row(conversation))
        db.executemany("INSERT OR REPLACE INTO conversations VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany("DELETE FROM conversations WHERE account_id = ? AND conversation_id = ?",
                       gone)
        db.executemany(
            "INSERT OR REPLACE INTO counts VALUES (?, ?, ?)",
            [(a, g, json.dumps(state.counts[a][g], sort_keys=True))
             for a, g in sorted(changes.counts) if g in state.counts.get(a, {})])
        # The final membership is what State.seen holds; the lists say which rows to touch.
        db.executemany("DELETE FROM seen WHERE account_id = ? AND event_id = ?",
                       [k for k in changes.seen_evicted if k not in state.seen])
        db.executemany("INSERT OR REPLACE INTO seen (account_id, event_id) VALUES (?, ?)",
                       [k for k in changes.seen_added if k in state.seen])

    def changed_elsewhere(self) -> bool:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self.path}: {exc}") from exc
        return row is not None and int(row[0]) != self._generation

    def close(self) -> None:
        self._db.close()


def _account_row(account: Account) -> tuple[object, ...]:
    groups = {g: sorted(m) for g, m in sorted(account.groups.items())}
    return (account.account_id, account.plan, json.dumps(sorted(account.agents)),
            json.dumps(groups), account.last_sequence)


def _conversation_row(conversation: Conversation) -> tuple[object, ...]:
    return (conversation.account_id, conversation.conversation_id, conversation.status,
            conversation.group_id, json.dumps(sorted(conversation.joined)),
            conversation.last_sequence,
            json.dumps([sorted(c) for c in conversation.categories]))
