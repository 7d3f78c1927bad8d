"""What every part of the SQLite store shares: its connections and the open (the
file migrated, or checked by a read-only open)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from worker.errors import StoreError
from worker.store import new_control_token
from worker.store.sqlite.connection import transaction
from worker.store.sqlite.schema import migrate, schema_version, unreadable


class SqliteBase:
    """The writer and reader connections, the generation the store is based on, and
    the open; see :mod:`worker.store.sqlite`."""

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
            migrate(self._db, self.path)
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
            version = schema_version(self._db, self.path)
        except (sqlite3.Error, StoreError) as exc:
            self._db.close()
            if isinstance(exc, StoreError):
                raise
            raise self._error("cannot open read-only", exc) from exc
        problem = unreadable(self.path, version)
        if problem is not None:
            self._db.close()
            raise problem

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

    def _side_connection(self) -> sqlite3.Connection:
        """For the rare writes made outside a batch: the commit thread may be using the
        writer's connection at that moment, and a connection is not for two threads."""
        return sqlite3.connect(self.path, isolation_level=None, timeout=10.0)

    def _transaction(self, begin: str = "BEGIN IMMEDIATE", db: sqlite3.Connection | None = None,
                     ) -> contextlib.AbstractContextManager[None]:
        return transaction(db or self._db, begin)

    def _error(self, what: str, exc: Exception) -> StoreError:
        return StoreError(f"state store {self.path}: {what}: {exc}")

    def close(self) -> None:
        try:
            self._reader.close()
            self._db.close()
        except sqlite3.Error as exc:
            raise self._error("cannot close", exc) from exc
