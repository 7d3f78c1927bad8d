"""The driver: carries out batch plans over a :class:`Link`, in order, at least once.

Acknowledgement policy, stated: an input message is acknowledged only after

1. its state change is committed to the store, and
2. every update it caused (or its dead letter) is confirmed by the broker.

Batches overlap: while batch *n* waits for its confirms and commit, batch *n+1* is
evaluated (on top of *n*'s uncommitted state) and published. Commits and acks stay in
batch order. If anything of an unfinished batch fails (a refused or unroutable dead
letter, a failed commit), every unfinished batch is discarded: the accounts they touched
are dropped from the cache, so memory equals the last commit again, and their
deliveries are evaluated again after a backoff. Evaluation is deterministic, so the
updates published the second time are the same (same ``update_id``, same body).

A lost link drops the same way; the broker redelivers what was not acked.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

from worker.accounts import AccountCache
from worker.amqp.topology import Topology
from worker.backoff import backoff_delay
from worker.committer import Committer, InlineCommitter
from worker.control import is_control
from worker.domain.categoriser import Categoriser
from worker.domain.rules import Rules
from worker.driver.adoption import Adoptions
from worker.driver.batches import InFlight, unroutable
from worker.driver.confirms import Confirm, ConfirmWindow
from worker.driver.ownership import Ownership
from worker.driver.state import WORKING, Batch, Phase, Report, Stats
from worker.driver.sweeps import Sweeps
from worker.driver.time import TimeCrossings
from worker.errors import StoreConflictError, StoreError, StoreFencedError
from worker.link import Delivery, Link, Outgoing, Returned
from worker.pipeline import Plan, Router, Step
from worker.rule_versions import load_version
from worker.rules_in_force import RulesInForce
from worker.settings import Settings
from worker.store import StateStore

log = logging.getLogger("worker.driver")

# Seconds of rule evaluation per batch, at most (plus one event): the ioloop must come
# back often to answer heartbeats and take confirms.
EVALUATE_BUDGET = 0.25


class Driver:
    """Owns the live rules, the account cache and the batches in flight."""

    def __init__(self, settings: Settings, rules: Rules, store: StateStore,
                 topology: Topology | None = None, committer: Committer | None = None,
                 ) -> None:
        self.settings = settings
        self.store = store
        self.committer: Committer = committer or InlineCommitter(store)
        self.topology = topology = topology or Topology.from_settings(settings)
        # Which rules each partition's queue is in force under (worker.rules_in_force).
        self.in_force = RulesInForce(rules, topology.partitions, partial(load_version, store),
                                     settings.view_sets)
        self.cache = AccountCache(store, settings.account_cache_size, settings.dedup_window,
                                  settings.tombstone_window)
        router = Router(frozenset(topology.consumed_queues()), topology.partitions_exchange,
                        topology.partitions) if topology.partitions else None
        self.step = Step(topology.updates_exchange, topology.dead_letter_exchange,
                         settings.max_message_bytes, EVALUATE_BUDGET,
                         requests_queue=topology.requests_queue, router=router,
                         own_queues=topology.own_queues(), token=store.control_token)
        # Told when a commit was fenced off: the partitions must be taken anew.
        self.on_fenced: Callable[[], None] | None = None
        self.stats = Stats()
        self.report = Report()  # what the monitor takes between two of its reads
        self.problem: str | None = None  # the last failure, until a commit succeeds again
        self.phase = Phase.OFFLINE
        self.link: Link | None = None
        self._buffer: deque[Delivery] = deque()
        self.confirms = ConfirmWindow()
        self._in_flight = InFlight(self.confirms)
        self._submitting = False
        self._consumer_on = False
        self._stop_requested = False
        self._batch_timer: object | None = None
        self._flush_due = False
        self._retry_timer: object | None = None
        self._pump_scheduled = False
        self._failures = 0
        self._unroutable: str | None = None
        self.sweeps = Sweeps(self)
        self.adoptions = Adoptions(self, on_read=self.sweeps.start)
        self.ownership = Ownership(self, self.adoptions, self.sweeps)  # several workers
        # Delivery tags evaluated so far, and acked so far, on this connection.
        self._evaluated_upto = 0
        self._acked_upto = 0
        # Deliveries arrived on this connection: we are the active consumer (a hot
        # standby on the same store must never sweep).
        self.active = False
        # Time crossings, by the worker's clock (tests set it).
        self.wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self.time = TimeCrossings(self)

    @property
    def rules(self) -> Rules:
        """The live rules: what this worker wants every partition to adopt."""
        return self.in_force.live.rules

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions this worker owns (several workers)."""
        return self.ownership.owned

    @property
    def categoriser(self) -> Categoriser:
        return self.in_force.live

    def attach(self, link: Link) -> None:
        self.link = link

    # -- what the monitor reads --------------------------------------------
    @property
    def consuming(self) -> bool:
        return self._consumer_on

    @property
    def unacked(self) -> int:
        """Deliveries held: buffered or in batches not yet acked."""
        return len(self._buffer) + self._in_flight.deliveries

    def linked(self) -> Link:
        assert self.link is not None, "attach() a link first"
        return self.link

    # -- control -----------------------------------------------------------
    def adopt(self, rules: Rules) -> None:
        """New live rules. Each partition owned adopts them when the adoption sent
        through its queue comes up (worker.control): everything before it stays under
        the rules in force then, whoever evaluates it again. Accounts follow before
        their next event, the rest by a paced sweep that shares the loop with events."""
        if not self.in_force.set_live(rules):
            return
        log.info("rules version %s wanted live: sent to the partitions owned",
                 rules.version)
        self.adoptions.sending.clear()
        self.adoptions.send()
        self._advance()

    def stop(self) -> None:
        """Finish the batches out (commit, ack), then leave: what was received but not
        started goes back to the queue, in order (see :meth:`Link.abort`)."""
        if self._stop_requested:
            return
        log.info("stopping: finishing the batches in hand")
        self._stop_requested = True
        if self.phase in (Phase.CONSUMING, Phase.HANDING_OVER):
            self.phase = Phase.DRAINING
            self._advance()
        elif self.phase is Phase.OFFLINE:
            self._close()

    def assign(self, partitions: frozenset[int]) -> None:
        """The partitions this worker should own now (several workers). New ones are
        consumed at once (their epochs are already taken); losing one hands everything
        over in order: finish the batches out, drop the connection, reconnect with the
        new set."""
        added, removed = self.ownership.assign(partitions)
        if self.phase is not Phase.CONSUMING:
            return  # on_ready consumes what is assigned then
        if removed:
            log.info("handing over partition(s) %s", ", ".join(map(str, sorted(removed))))
            self.phase = Phase.HANDING_OVER
            self._advance()
        elif added:
            self.ownership.take(added)
            self.linked().consume([self.topology.partition_queue(p) for p in sorted(added)])

    # -- LinkHandler -------------------------------------------------------
    def on_ready(self) -> None:
        self.confirms.reset()
        self._unroutable = None
        if self._stop_requested:
            self._close()
            return
        self.phase = Phase.CONSUMING
        self._consumer_on = True
        self.confirms.aside.clear()
        self.time.ticked.clear()  # unconfirmed ones may be lost: those still due go again
        self.adoptions.sending.clear()  # the same for adoptions
        self.ownership.connected()
        self.linked().consume([*self.topology.consumed_queues(),
                               *(self.topology.partition_queue(p)
                                 for p in sorted(self.partitions))])
        self.time.start()
        self._advance()

    def on_delivery(self, delivery: Delivery) -> None:
        self._buffer.append(delivery)
        if not self.active:
            self.active = True  # the active consumer: what a standby must not do, now
            self.adoptions.send()
        self.stats.consumed += not is_control(delivery.headers, self.step.token)  # not ticks
        if delivery.redelivered:
            self.stats.redelivered += 1
        if (self._in_flight and len(self._buffer) < self.settings.batch_size
                and self._batch_timer is not None):
            return  # a partial batch waits for its timer (hot path: no full _advance)
        self._advance()

    def on_confirm(self, sequence: int, multiple: bool, ok: bool) -> None:
        verdict = self.confirms.on_confirm(sequence, multiple, ok)
        if verdict is Confirm.REFUSED:
            self._fail("the broker refused a publish")
        elif verdict is Confirm.CONFIRMED:
            self._advance()

    def on_returned(self, returned: Returned) -> None:
        """A returned message that would be lost: its batch must not be acked, and is
        evaluated again after a backoff (the partition's owner declares its queue again
        when it reconnects)."""
        reason = unroutable(self.topology, returned)
        if reason is not None:
            self._unroutable = reason

    def on_cancelled(self) -> None:
        self._consumer_on = False
        self._advance()

    def on_lost(self) -> None:
        """Everything unacked comes back from the broker: drop it, and the memory it
        touched."""
        for timer in (self._batch_timer, self._retry_timer):
            if timer is not None:
                self.linked().cancel_timer(timer)
        self._batch_timer = self._retry_timer = None
        self.time.cancel()
        self._flush_due = False
        self._in_flight.discard(self.cache, self.in_force)
        self._buffer.clear()
        self._consumer_on = False
        self.active = False
        # The broker redelivers with new tags. What was evaluated here and not acked may
        # then be evaluated under pending rules: those updates carry other ids (the
        # rules version is part of an update id) and a downstream that sees
        # rules_version change resyncs with a snapshot (see README).
        self._evaluated_upto = self._acked_upto = 0
        if self._stop_requested:
            self._close()
        else:
            self.phase = Phase.OFFLINE

    # -- the loop ----------------------------------------------------------
    def _advance(self) -> None:
        """Move every batch as far as it can go: commit, start, publish."""
        if self.phase not in WORKING:
            return
        self._commit_ready()
        if self.phase not in WORKING:
            return
        while (self.phase is Phase.CONSUMING and self._retry_timer is None
               and len(self._in_flight) < self.settings.pipeline_depth
               and self._start_batch()):
            pass
        self._pump()
        self._commit_ready()
        if self.phase in (Phase.DRAINING, Phase.HANDING_OVER) and not (
                self._in_flight or self._in_flight.committing):
            self._leave()

    def _leave(self) -> None:
        """Every batch out is committed and acked: drop the connection so that what was
        received but not started goes back to its queue in order (a cancel would let
        the next consumer start while we still hold earlier messages)."""
        stop = self.phase is Phase.DRAINING
        if self._retry_timer is not None:
            self.linked().cancel_timer(self._retry_timer)
            self._retry_timer = None
        self.ownership.release()
        log.info("batches in hand committed and acknowledged; %s",
                 "leaving" if stop else "reconnecting with the new partitions")
        self.phase = Phase.STOPPED if stop else Phase.OFFLINE
        self.linked().abort(stop=stop)

    def _start_batch(self) -> bool:
        if self._in_flight.discarded_commit_running:
            return False  # the store is about to change under the cache: wait for it
        if self.adoptions.unread and not self.adoptions.read_in_force():
            return False  # nothing is evaluated before its rules in force are known
        if self.sweeps.wanted(self._in_flight.batches, bool(self._buffer)):
            return self.sweeps.start_batch(bool(self._buffer))
        if not self._buffer or not self._batch_ready():
            return False
        size = min(len(self._buffer), self.settings.batch_size)
        deliveries = [self._buffer.popleft() for _ in range(size)]
        if not self.check_takeover():
            self._buffer.extendleft(reversed(deliveries))
            return False
        started = time.monotonic()
        plan = self.step.run(deliveries, self.cache, self.in_force)
        self._buffer.extendleft(reversed(plan.rest))
        self.sweeps.last_was_sweep = False
        if plan.deliveries:
            self.launch(plan, sweep=None, started=started)
        if plan.adopted:
            for partition in plan.adopted:
                self.sweeps.start(partition)  # its accounts follow, paced
            self.time.start()  # the new rules may test time, or no longer
        if plan.stalled is not None:
            self.back_off(f"cannot load state: {plan.stalled}")
            return False
        if plan.rest:
            # The time budget ran out: let the ioloop breathe before the next batch.
            self._schedule_pump()
            return False
        return True

    def _batch_ready(self) -> bool:
        """A batch of the deliveries buffered may start: nothing is in flight, a full
        batch is there, or the partial one waited long enough (else its timer runs)."""
        ready = (not self._in_flight or len(self._buffer) >= self.settings.batch_size
                 or self._flush_due)
        if not ready:
            if self._batch_timer is None:
                self._batch_timer = self.linked().call_later(self.settings.max_batch_delay,
                                                             self._on_batch_timer)
            return False
        self._flush_due = False
        if self._batch_timer is not None:
            self.linked().cancel_timer(self._batch_timer)
            self._batch_timer = None
        return True

    def check_takeover(self) -> bool:
        """A standby that became the active consumer must not use accounts it cached
        before another worker moved on. False if the store cannot be read."""
        if self._in_flight or self._in_flight.committing:
            return True
        return self.ownership.takeover()

    def launch(self, plan: Plan, sweep: int | None, started: float) -> None:
        if plan.deliveries:
            self._evaluated_upto = max(self._evaluated_upto, plan.deliveries[-1].tag)
        self.cache.pin(plan.touched)
        self._in_flight.add(plan, sweep, started)

    def may_act(self) -> bool:
        """Only the active consumer sends ticks and adoptions and sweeps: with
        partitions, the owner of some (the store lists only their accounts); else a
        worker that received a message on this connection (a hot standby does none of
        it)."""
        return bool(self.partitions) if self.topology.partitions else self.active

    def publish_aside(self, message: Outgoing) -> bool:
        sequence = self.linked().publish(message)
        if sequence is None:
            return False  # the link is down: on_lost follows
        self.confirms.sent_aside(sequence)
        return True

    def _on_batch_timer(self) -> None:
        self._batch_timer = None
        self._flush_due = True
        self._advance()

    def _pump(self) -> None:
        """Publish within the confirm window, batches in order, a chunk per callback."""
        if self._in_flight.pump(self.linked().publish, self.settings.publish_window):
            self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self.linked().call_later(0, self._pump_again)

    def _pump_again(self) -> None:
        self._pump_scheduled = False
        self._advance()

    def _commit_ready(self) -> None:
        """Commit, in order, the oldest batches whose messages are all confirmed - all
        such batches in one transaction (group commit: under load one fsync serves
        several batches) - and ack them after the commit (:meth:`_on_committed`)."""
        while self._in_flight and not self._in_flight.committing:
            group = self._in_flight.confirmed_group()
            if not group:
                return
            now = time.monotonic()
            for batch in group:
                batch.confirmed = batch.confirmed or now
            if self._unroutable is not None:
                self._fail(self._unroutable)
                return
            self._submitting = True
            try:
                self._in_flight.submit(group, self.committer, self._on_committed)
            finally:
                self._submitting = False

    def _on_committed(self, group: list[Batch], error: StoreError | None) -> None:
        self._in_flight.committing = []
        if not (self._in_flight and self._in_flight.batches[0] is group[0]):
            # Discarded while its commit ran: whatever it wrote, its accounts reload
            # from the store (nothing was loaded while it ran).
            for batch in group:
                self.cache.forget(batch.plan.touched)
        elif isinstance(error, StoreFencedError):
            # Another worker took a partition of this batch: nothing of it may be acked
            # here; hand everything back in order and reconnect with what we still own.
            log.warning("%s: handing the batches in hand back", error)
            self._in_flight.discard(self.cache, self.in_force)
            self.ownership.assigned = frozenset()  # until the coordinator takes them anew
            if self.on_fenced is not None:
                self.on_fenced()
            self.stats.failed_batches += 1
            self.problem = str(error)
            self.phase = Phase.DRAINING if self._stop_requested else Phase.HANDING_OVER
        elif error is not None:
            self._fail(f"commit failed: {error}", conflict=isinstance(error, StoreConflictError))
        else:
            last = max((b for b in group if b.plan.deliveries), default=None,
                       key=lambda b: b.plan.deliveries[-1].tag)
            for batch in group:
                self._in_flight.batches.popleft()
                self._finished(batch, ack=batch is last)
        if not self._submitting:
            self._advance()

    def _finished(self, batch: Batch, ack: bool = True) -> None:
        plan = batch.plan
        self._failures = 0
        self.problem = None
        self.report.finished(batch)
        self.cache.unpin(plan.touched)
        stats = self.stats
        stats.commits += 1
        stats.dead_lettered += plan.dead_letters
        stats.updates += plan.updates
        if plan.deliveries:
            if ack:  # one ack (multiple) for a whole group commit
                self.linked().ack(plan.deliveries[-1].tag, multiple=True)
            self._acked_upto = max(self._acked_upto, plan.deliveries[-1].tag)
            stats.acked += len(plan.deliveries)
        if plan.ticked:
            stats.crossed_accounts += len(plan.ticked)
            self.time.committed(plan.ticked)
        if plan.adopted:
            self.in_force.committed(plan.adopted)
            self.adoptions.committed(plan.adopted)
        stats.swept_accounts += self.sweeps.committed(batch)
        self.cache.trim()

    # -- failures ----------------------------------------------------------
    def _fail(self, why: str, conflict: bool = False) -> None:
        """Discard every unfinished batch; evaluate its deliveries again later."""
        held = [d for batch in self._in_flight.batches for d in batch.plan.deliveries]
        self._in_flight.discard(self.cache, self.in_force)
        self._buffer.extendleft(reversed(held))
        self._unroutable = None
        self.confirms.discard()
        if conflict:
            self.cache.clear()
            try:
                self.store.resync()
            except StoreError as exc:
                log.error("cannot read the state store: %s", exc)
        self.stats.failed_batches += 1
        self.problem = why
        if self._stop_requested:
            # Give the events in hand back to the queue rather than hang the shutdown.
            log.warning("%d event(s) not acknowledged: %s; stopping anyway, the broker "
                        "will redeliver them", len(held), why)
            self._close()
            return
        self.back_off(f"{len(held)} event(s) not acknowledged: {why}")

    def back_off(self, why: str) -> None:
        self.problem = why
        if self._retry_timer is not None:
            return
        self._failures += 1
        delay = backoff_delay(self._failures, self.settings.reconnect_max_delay)
        log.warning("%s; retrying in %.1f s", why, delay)

        def again() -> None:
            self._retry_timer = None
            self._advance()

        self._retry_timer = self.linked().call_later(delay, again)

    def _close(self) -> None:
        self.phase = Phase.STOPPED
        self.linked().close()
