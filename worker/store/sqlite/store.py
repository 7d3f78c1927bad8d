"""The SQLite state store: loads, commits guarded by the generation, due crossings,
accounts behind the rules and the rules in force (see :mod:`worker.store.sqlite`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from datetime import datetime

import orjson

from worker.domain.account import AccountState, AccountWrite
from worker.domain.state import Conversation
from worker.errors import StoreConflictError
from worker.store import from_micros, micros, rules_in_force_key, state_from_rows
from worker.store.sqlite.rows import account_row, conversation_row, json_text
from worker.store.sqlite.rules import SqliteRules
from worker.store.views import views_json

# Host parameters per statement: SQLite's limit before 3.32 (32766 after).
MAX_QUERY_VARIABLES = 999


class SqliteStore(SqliteRules):
    """:class:`worker.store.StateStore` in one SQLite file.

    A generation counter guards against a second writer (a standby worker sharing the
    file that became active): a commit based on a store older than the file is refused
    with :class:`StoreConflictError`, and the worker drops its cached accounts.
    """

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
        (``inbox-rules shadow --store``) use it on a store opened ``read_only``; the
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

    def _load(self, account_id: str, event_window: int,
              tombstone_window: int) -> AccountState | None:
        db = self._reader
        key = (account_id,)
        row = db.execute(
            "SELECT plan, agents, groups_, last_sequence, rules_version, rules_generation,"
            " last_occurred_at, event_counter, views FROM accounts WHERE account_id = ?",
            key).fetchone()
        conversations = db.execute(
            "SELECT conversation_id, status, group_id, joined, last_sequence, categories,"
            " waiting_since, last_message_by, due_at, details"
            " FROM conversations WHERE account_id = ?", key).fetchall()
        agents = db.execute("SELECT agent_id, counts, unread_counts, seq FROM agents"
                            " WHERE account_id = ?", key).fetchall()
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

    # -- writes ------------------------------------------------------------
    def commit(self, writes: Sequence[AccountWrite],
               rules_in_force: Mapping[int, str] | None = None) -> None:
        try:
            with self._transaction():
                self._write(writes)
                self._db.executemany(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [(rules_in_force_key(p), v) for p, v in (rules_in_force or {}).items()])
        except sqlite3.Error as exc:
            raise self._error("commit failed", exc) from exc
        self._generation += 1

    def rules_in_force(self, partition: int, default: str) -> str:
        key = rules_in_force_key(partition)
        try:
            with closing(self._side_connection()) as db, self._transaction(db=db):
                db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, default))
                row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise self._error("cannot read the rules in force", exc) from exc
        return str(row[0]) if row else default

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
                     [conversation_row(c) for c in final.values() if c is not None])
        db.executemany("DELETE FROM conversations WHERE account_id = ? AND conversation_id = ?",
                       [key for key, c in final.items() if c is None])
        # Columns in table order: unread_counts came last (schema 5).
        self._insert("INSERT OR REPLACE", "agents",
                     [(w.account_id, agent_id, json_text(counts, orjson.OPT_SORT_KEYS), seq,
                       json_text(unread, orjson.OPT_SORT_KEYS))
                      for w in writes for agent_id, (counts, unread, seq) in w.agents.items()])
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
            accounts.append((*account_row(write), *counts, views_json(write.account.views)))
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
