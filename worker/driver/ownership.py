"""Partitions owned (several workers): taken, handed over, taken afresh on a new
connection; and a standby's takeover of the one SQLite queue."""

from __future__ import annotations

import logging
from collections.abc import Callable

from worker.cluster.partitions import partition_of
from worker.driver.adoption import Adoptions
from worker.driver.host import DriverHost
from worker.driver.sweeps import Sweeps
from worker.errors import StoreError

log = logging.getLogger("worker.driver")


class Ownership:
    """The partitions this worker owns (the coordinator says), and what to release
    before the next connection consumes the new set."""

    def __init__(self, host: DriverHost, adoptions: Adoptions, sweeps: Sweeps) -> None:
        self.host = host
        self.adoptions = adoptions
        self.sweeps = sweeps
        self.owned: frozenset[int] = frozenset()
        self.assigned: frozenset[int] = frozenset()
        self.on_released: Callable[[frozenset[int]], None] | None = None

    def assign(self, partitions: frozenset[int]) -> tuple[frozenset[int], frozenset[int]]:
        """The partitions to own now; the ones added and removed against those owned."""
        # Assigned while offline or handing over, never taken, and withdrawn now: nothing
        # of them is cached or in flight, so the coordinator may give them up at once
        # (no later release would name them).
        untaken = self.assigned - self.owned - partitions
        self.assigned = partitions
        if untaken and self.on_released is not None:
            self.on_released(untaken)
        return partitions - self.owned, self.owned - partitions

    def take(self, added: frozenset[int]) -> None:
        # Another worker may have changed these accounts since we last held them, and
        # their rules in force: read both again. The rules sweep covers them too.
        host = self.host
        host.cache.forget_where(lambda a: partition_of(a, host.topology.partitions) in added)
        self.owned = self.owned | added
        if host.topology.partitions:
            self.adoptions.unread |= added
            self.adoptions.read_in_force()
            self.adoptions.send()

    def connected(self) -> None:
        """A new connection: every partition assigned is taken afresh."""
        host = self.host
        if host.topology.partitions:
            # Without a connection this worker was nobody's consumer: another worker may
            # have owned any of its partitions meanwhile and committed over what it
            # cached, its rules in force included (a hang, a cut). Computing from that
            # would publish stale updates under true ids; only the commit would be
            # fenced off, too late. Every partition is taken afresh.
            host.cache.clear()
            host.in_force.drop(self.owned)
            self.owned = frozenset()
        else:
            self.adoptions.unread.add(0)  # the one partition; another worker may have moved it
            self.adoptions.read_in_force()
        self.owned &= self.assigned
        if self.assigned - self.owned:
            self.take(self.assigned - self.owned)

    def release(self) -> None:
        """Every batch out is committed and acked: partitions no longer assigned are
        forgotten, and the coordinator told it may give them up."""
        host = self.host
        released = self.owned - self.assigned
        self.owned &= self.assigned
        if not released:
            return
        host.cache.forget_where(lambda a: partition_of(a, host.topology.partitions)
                                in released)
        host.in_force.drop(released)
        for partition in released:
            self.sweeps.drop(partition)
        self.adoptions.drop(released)
        if self.on_released is not None:
            self.on_released(released)

    def takeover(self) -> bool:
        """A standby that became the active consumer must not use accounts it cached
        before another worker moved on. False if the store cannot be read."""
        host = self.host
        try:
            if host.store.changed_elsewhere():
                log.info("the state store was written by another worker: dropping the cache")
                host.cache.clear()
                host.store.resync()
                self.adoptions.unread.add(0)  # its queue may have adopted other rules meanwhile
                if not self.adoptions.read_in_force():
                    return False
        except StoreError as exc:
            host.back_off(str(exc))
            return False
        return True
