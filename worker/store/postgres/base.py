"""What every part of the PostgreSQL store shares: its connections, the partitions it
holds, and the open (the schema migrated, or checked by a read-only open)."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from worker.errors import StoreError
from worker.store.postgres.connection import Connection, Link, describe, masked
from worker.store.postgres.queries import QUERIES
from worker.store.postgres.schema import DEFAULT_SCHEMA, check_readable, migrate


class PostgresBase:
    """The connections (reader, writer, control) and the state the parts share; see
    :mod:`worker.store.postgres`."""

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
        self._where = describe(url)
        self._timeout_ms = max(1, round(idle_in_transaction_timeout * 1000))
        # partition -> the epoch we acquired. Replaced, never mutated: the commit and
        # reader threads read it while the coordinator's thread acquires.
        self._epochs: dict[int, int] = {}
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
                   for name, text in QUERIES.items()}
        # Read only: every session is, so nothing but SELECTs can run, whatever is asked.
        connect = self._connect_read_only if read_only else self._connect
        self._reader = Link(self._connect_read_only if read_only else self._connect_reader)
        self._writer = Link(connect)
        self._control = Link(connect)
        try:
            if read_only:  # tools that only look: SELECTs on read-only sessions
                try:
                    with self._reader.lock:
                        check_readable(self._reader.get(), self.schema, self._where)
                except BaseException:
                    self._reader.close()
                    raise
            else:
                with self._connect() as conn:
                    self.control_token = migrate(conn, self.schema, self.partitions,
                                                 self._where)
        except psycopg.Error as exc:
            raise self._error("cannot open", exc) from exc

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
        return StoreError(f"state store {self._where}: {what}: {masked(str(exc), self.url)}")

    def close(self) -> None:
        try:
            for link in (self._reader, self._writer, self._control):
                link.close()
        except psycopg.Error as exc:
            raise self._error("cannot close", exc) from exc
