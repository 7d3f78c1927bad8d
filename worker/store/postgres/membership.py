"""The PostgreSQL store's share of a fleet: the partitions it owns (their epochs, the
fencing tokens) and the members alive (heartbeats by the database clock)."""

from __future__ import annotations

import psycopg

from worker.errors import StoreError, StoreFencedError
from worker.settings import MAX_MEMBER_LEASE
from worker.store.postgres.base import PostgresBase


class Membership(PostgresBase):
    """Ownership (acquire, release, owned) and membership (heartbeat, live members,
    leave), on the control connection."""

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
        return epoch

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
