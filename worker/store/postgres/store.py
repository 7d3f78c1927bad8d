"""The PostgreSQL state store: loads, fenced commits, due crossings, accounts behind
the rules and the rules in force per partition (see :mod:`worker.store.postgres`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime

import psycopg
from psycopg import sql

from worker.domain.account import AccountState, AccountWrite
from worker.errors import StoreFencedError
from worker.store import from_micros, micros, rules_in_force_key, state_from_rows
from worker.store.postgres.batch import Batch
from worker.store.postgres.connection import Connection, pipeline
from worker.store.postgres.membership import Membership
from worker.store.postgres.rules import RuleVersions


class PostgresStore(Membership, RuleVersions):
    """:class:`worker.store.StateStore` in PostgreSQL, with partition ownership and
    worker membership (see :mod:`worker.store.postgres`)."""

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
                with pipeline(conn), conn.transaction():
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
        (``inbox-rules shadow --store``) on a store opened ``read_only``: its sessions
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
        """Read afresh each time (a worker asks when it takes a partition or reconnects:
        another may have owned it meanwhile); recorded here only the first time any
        worker owns it."""
        key = rules_in_force_key(partition)
        try:
            with self._writer.lock:
                conn = self._writer.get()
                with conn.transaction():
                    conn.execute(self._q["in_force_default"], (key, default))
                    row = conn.execute(self._q["in_force"], (key,)).fetchone()
        except psycopg.Error as exc:
            raise self._error("cannot read the rules in force", exc) from exc
        return default if row is None else str(row[0])

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
        batch = Batch(writes, self.partitions)
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
                                     ([rules_in_force_key(p) for p in adopted],
                                      list(adopted.values())))
        except psycopg.Error as exc:
            raise self._error("commit failed", exc) from exc

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

    def _write(self, conn: Connection, batch: Batch) -> None:
        """Two statements: the rows, then the windows trimmed and the accounts."""
        events_kept: dict[str, int] = {}
        tombstones_kept: dict[str, int] = {}
        for account_id, events, tombstones, superseded in conn.execute(
                self._q["write"], batch.rows()).fetchall():
            events_kept[account_id] = events_kept.get(account_id, 0) + events
            tombstones_kept[account_id] = (tombstones_kept.get(account_id, 0) + tombstones
                                           - superseded)
        conn.execute(self._q["finish"], batch.accounts(events_kept, tombstones_kept))
