"""Several workers: who is alive, and which account partitions each one owns.

No coordinator process to install: every worker runs this on a thread of its own, over
the PostgreSQL store. Each beats its heartbeat with its own lease, and a member is alive
while its last heartbeat is within that lease by the database clock, whatever lease the
worker looking has. The live members, sorted, deal the partitions round-robin
(partition p goes to member p mod n: even within one, and every worker computes the
same answer from the same table, workers started with different leases included). A
worker takes a partition by raising its epoch in the store - every commit checks the
epochs under a row lock, so a worker that hung and woke up cannot commit over the new
owner - and consumes its queue; RabbitMQ's single-active-consumer keeps one consumer at
a time on each queue.

A worker whose ioloop stopped turning stops beating: its lease lapses and the others
take its partitions, as they do when it crashes or is SIGSTOPped. One long event (an
``account.updated`` re-categorising a very large account) also keeps the loop from
turning, but it keeps working: :class:`Liveness` tells the two apart.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from worker.errors import StoreError

log = logging.getLogger("worker.coordinator")  # the name log filters know


class Membership(Protocol):
    """What the coordinator needs of the store (the PostgreSQL one)."""

    def heartbeat(self, worker_id: str, lease_seconds: float) -> None: ...

    def live_members(self) -> list[str]: ...

    def leave(self, worker_id: str) -> None: ...

    def acquire(self, partition: int) -> int: ...

    def release(self, partition: int) -> None: ...


class Liveness:
    """Whether the worker should keep its heartbeat: its loop turned within ``window``,
    or one event holds the loop but its work (the categoriser's ``progress`` counter)
    advanced within ``window`` and the loop has been held less than ``limit``.

    A stuck loop stops the heartbeat within ``window`` as before: nothing advances.
    A long event keeps the partitions, so the next owner does not meet the same event
    and stall the same way. What bounds one event is ``limit``, the AMQP heartbeat
    timeout (``INBOX_RULES_HEARTBEAT``, 30 s by default): a held loop sends pika no
    heartbeat, the broker closes a connection silent that long and requeues the
    event, and the worker meets it again on reconnecting. Past ``limit`` the event
    cannot be acknowledged, so the heartbeat stops and the others take over. One event
    costs the loop some 4-13 us per update it makes (an ``account.updated`` giving the
    20 agents of 50,000 open conversations new categories, a million updates: 4-13 s
    on two cores, most of the spread garbage collection), so 30 s is a few million.

    Not counted as progress: loading the account before, turning the updates into
    messages after (the batch step), and a collection's pause; on 30,000 conversations
    and 360,000 updates 0.8 s, 2.3 s and up to 0.9 s. The window must outlast them (the
    default lease's 3 s does). Sampled by the coordinator's thread: each call notes
    whether the counter moved, so "advanced within ``window``" is exact to one
    coordinator interval.
    """

    def __init__(self, turned_at: Callable[[], float], progress: Callable[[], int],
                 window: float, limit: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.turned_at = turned_at
        self.progress = progress
        self.window = window
        self.limit = limit
        self.clock = clock
        self._seen = progress()
        self._advanced_at = -math.inf

    def __call__(self) -> bool:
        now = self.clock()
        seen = self.progress()
        if seen != self._seen:
            self._seen, self._advanced_at = seen, now
        held = now - self.turned_at()
        if held < self.window:
            return True
        return held < self.limit and now - self._advanced_at < self.window


def deal(members: Sequence[str], worker_id: str, partitions: int) -> frozenset[int]:
    """The partitions ``worker_id`` owns among ``members``: round-robin over the sorted
    members, so shares differ by one at most."""
    ordered = sorted(members)
    if worker_id not in ordered:
        return frozenset()
    return frozenset(p for p in range(partitions)
                     if ordered[p % len(ordered)] == worker_id)


class Coordinator:
    """Runs the membership loop; tells the driver (through ``post``, on its thread)
    which partitions it owns now."""

    def __init__(self, store: Membership, worker_id: str, partitions: int, lease: float,
                 assign: Callable[[frozenset[int]], None],
                 post: Callable[[Callable[[], None]], None],
                 loop_alive: Callable[[], bool]) -> None:
        self.store = store
        self.worker_id = worker_id
        self.partitions = partitions
        self.lease = lease
        self.assign = assign
        self.post = post
        self.loop_alive = loop_alive
        self.held: set[int] = set()
        self._posted: frozenset[int] | None = None
        self._released: queue.SimpleQueue[frozenset[int]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._refresh = False
        self._thread = threading.Thread(target=self._run, name="inbox-rules-members",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def released(self, partitions: frozenset[int]) -> None:
        """The driver finished with these (any thread): give them up in the store."""
        self._released.put(partitions)

    def fenced(self) -> None:
        """A commit was fenced off (another worker took a partition while this one
        still thought it owned it): take every wanted partition anew, new epochs."""
        self._refresh = True

    def stop(self) -> None:
        """Leave the group: the others take our partitions at once, not after a lease."""
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self.store.leave(self.worker_id)
        except StoreError as exc:
            log.warning("could not leave the group (the lease will lapse): %s", exc)

    def _run(self) -> None:
        interval = self.lease / 4
        while not self._stop.is_set():
            try:
                self.tick()
            except StoreError as exc:
                log.warning("membership: %s", exc)
            self._stop.wait(interval)

    def tick(self) -> None:
        released: set[int] = set()
        while not self._released.empty():
            released |= self._released.get()
        # The driver dropped these, and their cached accounts with them. One that the
        # last assignment names again stays ours (releasing it would leave the driver
        # consuming a partition with no epoch): the driver takes it afresh when that
        # assignment reaches it.
        for partition in sorted(released - (self._posted or frozenset())):
            if partition in self.held:
                self.store.release(partition)
                self.held.discard(partition)
        if not self.loop_alive():
            log.warning("the worker's loop is stuck: no heartbeat, so that the others can "
                        "take its partitions")
            return
        self.store.heartbeat(self.worker_id, self.lease)
        members = self.store.live_members()
        wanted = deal(members, self.worker_id, self.partitions)
        if self._refresh:
            # A commit was fenced off. Before telling us, the driver discarded every
            # batch in flight, and it drops its partitions with their cached accounts
            # before it runs anything else: nothing computed before can commit, and it
            # takes afresh whatever it is assigned next. So give up everything held
            # (an epoch another worker took cannot be taken back in place; one we hold
            # but the driver never took would otherwise stay held for ever) and take
            # what we are to own anew.
            for partition in sorted(self.held):
                self.store.release(partition)
                self.held.discard(partition)
            self._refresh = False
            self._posted = None
        # New to us, or back to us (another worker may have held it meanwhile).
        for partition in sorted(wanted - (self._posted or frozenset())):
            # Waits for a commit of the previous owner that holds the row; from then on
            # its commits are fenced off.
            self.store.acquire(partition)
            self.held.add(partition)
        if wanted != self._posted:
            self._posted = wanted
            log.info("%d live worker(s); this one owns partition(s) %s", len(members),
                     ", ".join(map(str, sorted(wanted))) or "none")
            self.post(lambda: self.assign(wanted))
