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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import partial

from worker.accounts import AccountCache
from worker.amqp.topology import Topology
from worker.backoff import backoff_delay
from worker.cluster.partitions import partition_of
from worker.committer import Committer, InlineCommitter
from worker.control import Adopt, Tick, adopt_message, chunks, tick_message
from worker.domain.categoriser import Categoriser
from worker.domain.rules import Rules
from worker.errors import (
    RuleFileError,
    StoreConflictError,
    StoreError,
    StoreFencedError,
    UnknownRulesError,
)
from worker.link import Delivery, Link, Outgoing, Returned
from worker.pipeline import DeadLetter, Plan, Router, Step, Sweep
from worker.rules_in_force import RulesInForce
from worker.settings import Settings
from worker.store import StateStore

log = logging.getLogger(__name__)

# Publishes per ioloop callback: bounded so heartbeats and confirms keep flowing.
PUBLISH_CHUNK = 500
# Seconds of rule evaluation per batch, at most (plus one event): the ioloop must come
# back often to answer heartbeats and take confirms.
EVALUATE_BUDGET = 0.25
# Accounts asked of the store per rules-sweep batch.
SWEEP_PAGE = 200
# Batch timings and dead-letter reasons kept for the monitor between two of its reads.
MAX_KEPT = 10_000
# Time crossings (rules with time facts only; docs/time.md): the store is asked for the
# accounts due at least this often (seconds), and sooner when it knows the next one;
# the accounts due are sent a tick through their queue (worker.control)...
TIME_POLL = 1.0
# ...at most this many at a look...
CROSS_PAGE = 1000
# ...and an account with a tick under way is not sent another for this long (seconds):
# its tick may have been lost with a connection, or taken by another worker.
TICK_PATIENCE = 30.0
# A worker that has received nothing since it connected cannot tell whether it is the
# active consumer or a hot standby; every this many seconds it sends its input queue an
# empty tick, which only the active consumer receives (SQLite store: one active worker).
TICK_INTERVAL = 5.0
# Accounts with a tick under way, at most (beyond: no new ticks until some come back).
MAX_TICKED = 10_000


class Phase(Enum):
    OFFLINE = "offline"  # no link: connecting, or reconnecting after a loss
    CONSUMING = "consuming"  # link up, deliveries flowing
    DRAINING = "draining"  # stop asked: finishing the batches out, then leaving
    HANDING_OVER = "handing over"  # partitions lost: finishing the batches out, reconnect
    STOPPED = "stopped"


_WORKING = (Phase.CONSUMING, Phase.DRAINING, Phase.HANDING_OVER)


@dataclass
class Stats:
    """Counters for operators, tests and the benchmark (counted once per commit)."""

    consumed: int = 0
    acked: int = 0
    updates: int = 0
    dead_lettered: int = 0
    commits: int = 0
    failed_batches: int = 0
    redelivered: int = 0
    swept_accounts: int = 0
    crossed_accounts: int = 0  # accounts looked at by ticks (time crossings)
    ticks_sent: int = 0


@dataclass
class Batch:
    """A plan on its way: published, confirmed, then committed and acked."""

    plan: Plan
    messages: list[Outgoing]
    sweep: int | None = None  # the partition a rules sweep batch covers
    published: int = 0
    last_sequence: int | None = None  # publish number of its last message
    started: float = field(default_factory=time.monotonic)
    confirmed: float = 0.0  # when the broker had confirmed all of it

    @property
    def all_published(self) -> bool:
        return self.published == len(self.messages)


class Driver:
    """Owns the live rules, the account cache and the batches in flight."""

    def __init__(self, settings: Settings, rules: Rules, store: StateStore,
                 topology: Topology | None = None, committer: Committer | None = None,
                 ) -> None:
        self.settings = settings
        self.store = store
        self.committer: Committer = committer or InlineCommitter(store)
        self.topology = topology or Topology.from_settings(settings)
        # Which rules each partition's queue is in force under (worker.rules_in_force).
        self.in_force = RulesInForce(rules, self.topology.partitions, self._load_rules)
        self.cache = AccountCache(store, settings.account_cache_size, settings.dedup_window,
                                  settings.tombstone_window)
        topology = self.topology
        router = Router(frozenset(topology.consumed_queues()), topology.partitions_exchange,
                        topology.partitions) if topology.partitions else None
        self.step = Step(topology.updates_exchange, topology.dead_letter_exchange,
                         settings.max_message_bytes, EVALUATE_BUDGET,
                         requests_queue=topology.requests_queue, router=router,
                         own_queues=topology.own_queues(), token=store.control_token)
        # Several workers: the partitions this worker owns (the coordinator says), and
        # what to release before the next connection consumes the new set.
        self.partitions: frozenset[int] = frozenset()
        self._assigned: frozenset[int] = frozenset()
        self.on_released: Callable[[frozenset[int]], None] | None = None
        # Told when a commit was fenced off: the partitions must be taken anew.
        self.on_fenced: Callable[[], None] | None = None
        self.stats = Stats()
        self.phase = Phase.OFFLINE
        self.link: Link | None = None
        self._buffer: deque[Delivery] = deque()
        self._in_flight: deque[Batch] = deque()
        # The batches whose commit was submitted and has not reported back; they may
        # have been discarded meanwhile (then nothing is loaded until it reports).
        self._committing: list[Batch] = []
        self._submitting = False
        self._consumer_on = False
        self._stop_requested = False
        self._batch_timer: object | None = None
        self._flush_due = False
        self._retry_timer: object | None = None
        self._pump_scheduled = False
        self._failures = 0
        # Publish numbers confirmed so far: all up to _confirmed, and some beyond.
        self._confirmed = 0
        self._confirmed_ahead: set[int] = set()
        self._published = 0
        self._stale_upto = 0  # confirms up to here belong to discarded batches
        self._unroutable: str | None = None
        # The rules sweeps: per partition, the next account id to look at.
        self._sweeps: dict[int, str] = {}
        self._last_was_sweep = False
        # Partitions whose version in force is not read yet (the store failed), and the
        # adoptions sent per partition that have not come back (worker.control).
        self._unread: set[int] = set()
        self._adopting: dict[int, str] = {}
        # Since the monitor last asked: dead-letter reasons and (batch, confirm) timings
        # of committed batches; the last failure, until a commit succeeds again.
        # Delivery tags evaluated so far, and acked so far, on this connection.
        self._evaluated_upto = 0
        self._acked_upto = 0
        self._dead_letter_reasons: list[str] = []
        self._batch_timings: list[tuple[float, float]] = []
        self.problem: str | None = None
        # Deliveries arrived on this connection: we are the active consumer (a hot
        # standby on the same store must never sweep).
        self._active = False
        # Time crossings: the worker's clock (tests set it), the timer of the next look
        # at the store, the timer of the next standby probe, the publish numbers of
        # ticks in flight (their confirms concern no batch), and the accounts with a
        # tick under way (when it was sent, time.monotonic()).
        self.wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self._time_timer: object | None = None
        self._tick_timer: object | None = None
        self._ticks: set[int] = set()
        self._ticked: dict[str, float] = {}

    @property
    def rules(self) -> Rules:
        """The live rules: what this worker wants every partition to adopt."""
        return self.in_force.live.rules

    @property
    def categoriser(self) -> Categoriser:
        return self.in_force.live

    def _load_rules(self, version: str) -> Rules:
        """A version in force somewhere but not live here: from the store, where every
        adopted version's files are kept (:class:`UnknownRulesError` if they are not)."""
        from worker.rule_versions import load_version  # rule files: only when needed

        if self.store.rule_files(version) is None:
            raise UnknownRulesError(version)
        return load_version(self.store, version)

    def attach(self, link: Link) -> None:
        self.link = link

    # -- what the monitor reads --------------------------------------------
    @property
    def consuming(self) -> bool:
        return self._consumer_on

    @property
    def unacked(self) -> int:
        """Deliveries held: buffered or in batches not yet acked."""
        return len(self._buffer) + sum(len(b.plan.deliveries) for b in self._in_flight)

    def take_dead_letter_reasons(self) -> list[str]:
        reasons, self._dead_letter_reasons = self._dead_letter_reasons, []
        return reasons

    def take_batch_timings(self) -> list[tuple[float, float]]:
        timings, self._batch_timings = self._batch_timings, []
        return timings

    def _link(self) -> Link:
        assert self.link is not None, "attach() a link first"
        return self.link

    # -- control -----------------------------------------------------------
    def adopt(self, rules: Rules) -> None:
        """New live rules. Each partition owned adopts them when the adoption sent
        through its queue comes up (worker.control): everything before it stays under
        the rules in force then, whoever evaluates it again. Accounts follow before
        their next event, the rest by a paced sweep that shares the loop with events."""
        was_timed = self.in_force.timed
        if not self.in_force.set_live(rules):
            return
        log.info("rules version %s wanted live: sent to the partitions owned",
                 rules.version)
        self._adopting.clear()
        self._send_adoptions()
        if self.in_force.timed != was_timed:
            self._start_time()
        self._advance()

    def _send_adoptions(self) -> None:
        """Every partition owned whose queue is not (about to be) under the live rules is
        sent an adoption, once per version; only by the active consumer (a hot standby
        would make the active worker adopt its rules)."""
        if self.phase is not Phase.CONSUMING or not self._may_act():
            return
        live = self.rules.version
        for partition in self.in_force.behind():
            if self._adopting.get(partition) == live:
                continue
            exchange, routing_key = self._partition_route(partition)
            sequence = self._link().publish(adopt_message(
                exchange, routing_key, self.step.token, Adopt(partition, live)))
            if sequence is None:
                return  # the link is down: on_ready sends them again
            self._published = sequence
            self._ticks.add(sequence)  # its confirm concerns no batch
            self._adopting[partition] = live

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
        # Assigned while offline or handing over, never taken, and withdrawn now: nothing
        # of them is cached or in flight, so the coordinator may give them up at once
        # (no later _leave would name them).
        untaken = self._assigned - self.partitions - partitions
        self._assigned = partitions
        if untaken and self.on_released is not None:
            self.on_released(untaken)
        if self.phase is not Phase.CONSUMING:
            return  # on_ready consumes what is assigned then
        added, removed = partitions - self.partitions, self.partitions - partitions
        if removed:
            log.info("handing over partition(s) %s", ", ".join(map(str, sorted(removed))))
            self.phase = Phase.HANDING_OVER
            self._advance()
        elif added:
            self._take(added)
            self._link().consume([self.topology.partition_queue(p) for p in sorted(added)])

    def _take(self, added: frozenset[int]) -> None:
        # Another worker may have changed these accounts since we last held them, and
        # their rules in force: read both again. The rules sweep covers them too.
        self.cache.forget_where(lambda a: partition_of(a, self.topology.partitions) in added)
        self.partitions = self.partitions | added
        if self.topology.partitions:
            self._unread |= added
            self._read_in_force()
            self._send_adoptions()

    def _read_in_force(self) -> bool:
        """The committed version in force of each partition taken (and a sweep for
        it: a previous owner may have left one unfinished). False if the store failed
        (a back-off; evaluation waits until they are known)."""
        for partition in sorted(self._unread):
            try:
                version = self.store.rules_in_force(partition, self.rules.version)
                try:
                    self.in_force.take(partition, version)
                except UnknownRulesError:
                    log.warning("partition %d is in force under rules version %s, whose "
                                "files the store does not keep (an older inbox-rules "
                                "adopted it): it follows version %s from here on",
                                partition, version, self.rules.version)
                    version = self.rules.version
                    self.in_force.take(partition, version)
            except (StoreError, RuleFileError) as exc:
                self._back_off(f"cannot read the rules in force of partition {partition}: "
                               f"{exc}")
                return False
            self._unread.discard(partition)
            self._sweeps[partition] = ""
            if version != self.rules.version:
                log.info("partition %d is under rules version %s until its queue adopts "
                         "%s", partition, version, self.rules.version)
        return True

    # -- LinkHandler -------------------------------------------------------
    def on_ready(self) -> None:
        self._confirmed = self._published = self._stale_upto = 0
        self._confirmed_ahead.clear()
        self._unroutable = None
        if self._stop_requested:
            self._close()
            return
        self.phase = Phase.CONSUMING
        self._consumer_on = True
        self._ticks.clear()
        self._ticked.clear()  # unconfirmed ones may be lost: those still due go again
        self._adopting.clear()  # the same for adoptions
        if self.topology.partitions:
            # Without a connection this worker was nobody's consumer: another worker may
            # have owned any of its partitions meanwhile and committed over what it
            # cached, its rules in force included (a hang, a cut). Computing from that
            # would publish stale updates under true ids; only the commit would be
            # fenced off, too late. Every partition is taken afresh.
            self.cache.clear()
            self.in_force.drop(self.partitions)
            self.partitions = frozenset()
        else:
            self._unread.add(0)  # the one partition; another worker may have moved it
            self._read_in_force()
        self.partitions &= self._assigned
        if self._assigned - self.partitions:
            self._take(self._assigned - self.partitions)
        self._link().consume([*self.topology.consumed_queues(),
                              *(self.topology.partition_queue(p) for p in sorted(self.partitions))])
        self._start_time()
        self._advance()

    def on_delivery(self, delivery: Delivery) -> None:
        self._buffer.append(delivery)
        if not self._active:
            self._active = True  # the active consumer: what a standby must not do, now
            self._send_adoptions()
        self.stats.consumed += 1
        if delivery.redelivered:
            self.stats.redelivered += 1
        if (self._in_flight and len(self._buffer) < self.settings.batch_size
                and self._batch_timer is not None):
            return  # a partial batch waits for its timer (hot path: no full _advance)
        self._advance()

    def on_confirm(self, sequence: int, multiple: bool, ok: bool) -> None:
        ticks = self._ticks
        if not ok and not multiple and sequence in ticks:
            ok = True  # a refused tick concerns no batch: counted as done
        if not ok:
            if sequence > self._stale_upto:
                self._fail("the broker refused a publish")
            return
        if ticks:
            if multiple:
                ticks.difference_update([t for t in ticks if t <= sequence])
            else:
                ticks.discard(sequence)
        if multiple:
            self._confirmed = max(self._confirmed, sequence)
        elif sequence == self._confirmed + 1:
            self._confirmed = sequence
        else:
            self._confirmed_ahead.add(sequence)
        ahead = self._confirmed_ahead
        while ahead and (self._confirmed + 1) in ahead:
            self._confirmed += 1
            ahead.discard(self._confirmed)
        if ahead and min(ahead) <= self._confirmed:
            self._confirmed_ahead = {s for s in ahead if s > self._confirmed}
        self._advance()

    def on_returned(self, returned: Returned) -> None:
        """An update nobody downstream bound a queue for is not an error. A dead letter,
        or an event or request the router passed on to a partition queue (one an
        operator deleted), that reached no queue would be lost: its batch must not be
        acked, and is evaluated again after a backoff (the partition's owner declares
        its queue again when it reconnects)."""
        topology = self.topology
        if returned.exchange == topology.dead_letter_exchange:
            self._unroutable = (f"a dead letter was unroutable ({returned.reply_text}): is "
                                f"{topology.dead_letter_queue} bound to "
                                f"{topology.dead_letter_exchange}?")
        elif topology.partitions and returned.exchange == topology.partitions_exchange:
            key = returned.routing_key
            queue = topology.partition_queue(int(key)) if key.isdecimal() else repr(key)
            self._unroutable = (f"a message routed to partition {key} was unroutable "
                                f"({returned.reply_text}): is {queue} bound to "
                                f"{topology.partitions_exchange}?")

    def on_cancelled(self) -> None:
        self._consumer_on = False
        self._advance()

    def on_lost(self) -> None:
        """Everything unacked comes back from the broker: drop it, and the memory it
        touched."""
        for timer in (self._batch_timer, self._retry_timer):
            if timer is not None:
                self._link().cancel_timer(timer)
        self._batch_timer = self._retry_timer = None
        self._cancel_time()
        self._flush_due = False
        self._discard_in_flight()
        self._buffer.clear()
        self._consumer_on = False
        self._active = False
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
        if self.phase not in _WORKING:
            return
        self._commit_ready()
        if self.phase not in _WORKING:
            return
        while (self.phase is Phase.CONSUMING and self._retry_timer is None
               and len(self._in_flight) < self.settings.pipeline_depth
               and self._start_batch()):
            pass
        self._pump()
        self._commit_ready()
        if self.phase in (Phase.DRAINING, Phase.HANDING_OVER) and not (
                self._in_flight or self._committing):
            self._leave()

    def _leave(self) -> None:
        """Every batch out is committed and acked: drop the connection so that what was
        received but not started goes back to its queue in order (a cancel would let
        the next consumer start while we still hold earlier messages)."""
        stop = self.phase is Phase.DRAINING
        if self._retry_timer is not None:
            self._link().cancel_timer(self._retry_timer)
            self._retry_timer = None
        released = self.partitions - self._assigned
        self.partitions &= self._assigned
        if released:
            self.cache.forget_where(lambda a: partition_of(a, self.topology.partitions)
                                    in released)
            self.in_force.drop(released)
            for partition in released:
                self._sweeps.pop(partition, None)
                self._adopting.pop(partition, None)
                self._unread.discard(partition)
            if self.on_released is not None:
                self.on_released(released)
        log.info("batches in hand committed and acknowledged; %s",
                 "leaving" if stop else "reconnecting with the new partitions")
        self.phase = Phase.STOPPED if stop else Phase.OFFLINE
        self._link().abort(stop=stop)

    def _start_batch(self) -> bool:
        if self._discarded_commit_running:
            return False  # the store is about to change under the cache: wait for it
        if self._unread and not self._read_in_force():
            return False  # nothing is evaluated before its rules in force are known
        sweep_due = (self._may_act() and bool(self._sweeps)
                     and not any(b.sweep is not None for b in self._in_flight))
        if sweep_due and (not self._last_was_sweep or not self._buffer):
            return self._start_sweep()
        if not self._buffer:
            return False
        ready = (not self._in_flight or len(self._buffer) >= self.settings.batch_size
                 or self._flush_due)
        if not ready:
            if self._batch_timer is None:
                self._batch_timer = self._link().call_later(self.settings.max_batch_delay,
                                                            self._on_batch_timer)
            return False
        self._flush_due = False
        if self._batch_timer is not None:
            self._link().cancel_timer(self._batch_timer)
            self._batch_timer = None
        size = min(len(self._buffer), self.settings.batch_size)
        deliveries = [self._buffer.popleft() for _ in range(size)]
        if not self._check_takeover():
            self._buffer.extendleft(reversed(deliveries))
            return False
        started = time.monotonic()
        plan = self.step.run(deliveries, self.cache, self.in_force)
        self._buffer.extendleft(reversed(plan.rest))
        self._last_was_sweep = False
        if plan.deliveries:
            self._launch(plan, sweep=None, started=started)
        if plan.adopted:
            for partition in plan.adopted:
                self._sweeps[partition] = ""  # its accounts follow, paced
            self._start_time()  # the new rules may test time, or no longer
        if plan.stalled is not None:
            self._back_off(f"cannot load state: {plan.stalled}")
            return False
        if plan.rest:
            # The time budget ran out: let the ioloop breathe before the next batch.
            self._schedule_pump()
            return False
        return True

    def _start_sweep(self) -> bool:
        """One page of a partition's accounts still under other rules than its queue's,
        re-categorised. Where this falls among an account's events does not matter: an
        account adopts its partition's rules before anything else touches it."""
        if not self._check_takeover():
            return False
        partition, after = next(iter(self._sweeps.items()))
        version = self.in_force.version_of(partition) or self.rules.version
        try:
            ids = self.store.accounts_behind(
                version, after, SWEEP_PAGE,
                partition=partition if self.topology.partitions else None)
        except StoreError as exc:
            self._back_off(f"cannot list accounts to re-categorise: {exc}")
            return False
        if not ids:
            if after:
                log.info("every stored account of partition %d follows rules version %s",
                         partition, version)
            del self._sweeps[partition]
            return bool(self._buffer) or bool(self._sweeps)
        started = time.monotonic()
        plan = self.step.run([], self.cache, self.in_force, sweep=Sweep(tuple(ids)))
        self._last_was_sweep = True
        if not plan.swept_accounts and plan.stalled is not None:
            self._back_off(f"cannot load state: {plan.stalled}")
            return False
        self._launch(plan, sweep=partition, started=started)
        return True

    def _check_takeover(self) -> bool:
        """A standby that became the active consumer must not use accounts it cached
        before another worker moved on. False if the store cannot be read."""
        if self._in_flight or self._committing:
            return True
        try:
            if self.store.changed_elsewhere():
                log.info("the state store was written by another worker: dropping the cache")
                self.cache.clear()
                self.store.resync()
                self._unread.add(0)  # its queue may have adopted other rules meanwhile
                if not self._read_in_force():
                    return False
        except StoreError as exc:
            self._back_off(str(exc))
            return False
        return True

    def _launch(self, plan: Plan, sweep: int | None, started: float) -> None:
        if plan.deliveries:
            self._evaluated_upto = max(self._evaluated_upto, plan.deliveries[-1].tag)
        self.cache.pin(plan.touched)
        self._in_flight.append(Batch(plan, plan.messages(), sweep=sweep, started=started))

    # -- time crossings (docs/time.md) -------------------------------------
    def _start_time(self) -> None:
        """Rules with time facts: look for due crossings at once, then now and then; a
        worker that may be a standby first finds out whether it is the active consumer.
        Under rules without time facts: no timer, no query, nothing."""
        self._cancel_time()
        if self.link is None or self.phase is not Phase.CONSUMING or not self.in_force.timed:
            return
        self._time_timer = self._link().call_later(0, self._on_time_timer)
        if not self.topology.partitions and not self._active:
            self._tick_timer = self._link().call_later(0, self._send_probe)

    def _cancel_time(self) -> None:
        for timer in (self._time_timer, self._tick_timer):
            if timer is not None and self.link is not None:
                self.link.cancel_timer(timer)
        self._time_timer = self._tick_timer = None

    def _may_act(self) -> bool:
        """Only the active consumer sends ticks and adoptions and sweeps: with
        partitions, the owner of some (the store lists only their accounts); else a
        worker that received a message on this connection (a hot standby does none of
        it)."""
        return bool(self.partitions) if self.topology.partitions else self._active

    def _tick_route(self, account_id: str) -> tuple[str, str]:
        """Where an account's tick goes: its partition's queue, or the one input queue."""
        return self._partition_route(self.in_force.partition(account_id))

    def _partition_route(self, partition: int) -> tuple[str, str]:
        topology = self.topology
        if topology.partitions:
            return topology.partitions_exchange, str(partition)
        return "", topology.events_queue

    def _send_probe(self) -> None:
        """Send the input queue an empty tick: the broker gives it to the active
        consumer only, so receiving it (or anything) tells this worker it is the one.
        Repeated while nothing came, so a standby finds out when it takes over on an
        idle queue."""
        self._tick_timer = None
        if self.phase is not Phase.CONSUMING or self._active or not self.in_force.timed:
            return
        self._publish_tick(*self._tick_route(""), Tick(self.wall_clock(), ()))
        self._tick_timer = self._link().call_later(TICK_INTERVAL, self._send_probe)

    def _publish_tick(self, exchange: str, routing_key: str, tick: Tick) -> bool:
        sequence = self._link().publish(tick_message(exchange, routing_key,
                                                     self.step.token, tick))
        if sequence is None:
            return False  # the link is down: on_lost follows
        self._published = sequence
        self._ticks.add(sequence)
        return True

    def _send_ticks(self) -> None:
        """Ask the store which accounts have a crossing due by the worker's clock (less
        the time lag) and send each a tick through its queue, behind whatever is there
        already: the crossing is made when the tick comes back, in the account's
        order, by whoever owns the account then (worker.control)."""
        now = self.wall_clock() - timedelta(seconds=self.settings.time_lag)
        ticked = self._ticked
        if ticked:
            patience = time.monotonic() - TICK_PATIENCE
            for account_id in [a for a, sent in ticked.items() if sent < patience]:
                del ticked[account_id]
        try:
            ids = self.store.due_accounts(now, CROSS_PAGE + len(ticked))
        except StoreError as exc:
            log.warning("cannot list accounts with time crossings due: %s", exc)
            self._schedule_time(now)
            return
        fresh = [a for a in ids if a not in ticked][:max(0, MAX_TICKED - len(ticked))]
        routes: dict[tuple[str, str], list[str]] = {}
        for account_id in fresh:
            routes.setdefault(self._tick_route(account_id), []).append(account_id)
        sent_at = time.monotonic()
        for (exchange, routing_key), accounts in routes.items():
            for page in chunks(sorted(accounts)):
                if not self._publish_tick(exchange, routing_key, Tick(now, page)):
                    return
                self.stats.ticks_sent += 1
                ticked.update(dict.fromkeys(page, sent_at))
        self._schedule_time(now)

    def _schedule_time(self, now: datetime) -> None:
        """The next look: when the store says the next crossing is due, TIME_POLL at
        most (another worker's accounts may become ours, a commit may bring one)."""
        if not self.in_force.timed or self.phase is not Phase.CONSUMING:
            return
        if self._time_timer is not None:
            self._link().cancel_timer(self._time_timer)
            self._time_timer = None
        delay = TIME_POLL
        try:
            upcoming = self.store.next_due()
        except StoreError:
            upcoming = None  # the next look says why
        if upcoming is not None and upcoming > now:
            delay = min(delay, (upcoming - now).total_seconds())
        self._time_timer = self._link().call_later(delay, self._on_time_timer)

    def _on_time_timer(self) -> None:
        """Look now (the look schedules the next one); not the active consumer (yet):
        come back later."""
        self._time_timer = None
        if not self.in_force.timed or self.phase is not Phase.CONSUMING:
            return
        if self._may_act():
            self._send_ticks()
        if self._time_timer is None and self.phase is Phase.CONSUMING:
            self._time_timer = self._link().call_later(TIME_POLL, self._on_time_timer)

    def _on_batch_timer(self) -> None:
        self._batch_timer = None
        self._flush_due = True
        self._advance()

    def _pump(self) -> None:
        """Publish within the confirm window, batches in order, a chunk per callback."""
        link = self._link()
        window = self.settings.publish_window
        sent = 0
        for batch in self._in_flight:
            messages = batch.messages
            while (batch.published < len(messages) and sent < PUBLISH_CHUNK
                   and self._published - self._confirmed < window):
                sequence = link.publish(messages[batch.published])
                if sequence is None:
                    return  # the link is down: on_lost follows
                self._published = sequence
                batch.published += 1
                sent += 1
                if batch.all_published:
                    batch.last_sequence = sequence
            if not batch.all_published:
                break
        if sent >= PUBLISH_CHUNK:
            self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self._link().call_later(0, self._pump_again)

    def _pump_again(self) -> None:
        self._pump_scheduled = False
        self._advance()

    def _commit_ready(self) -> None:
        """Commit, in order, the oldest batches whose messages are all confirmed - all
        such batches in one transaction (group commit: under load one fsync serves
        several batches) - and ack them after the commit (:meth:`_on_committed`)."""
        while self._in_flight and not self._committing:
            group: list[Batch] = []
            for batch in self._in_flight:
                if not batch.all_published or (batch.last_sequence is not None
                                               and batch.last_sequence > self._confirmed):
                    break
                group.append(batch)
            if not group:
                return
            now = time.monotonic()
            for batch in group:
                batch.confirmed = batch.confirmed or now
            if self._unroutable is not None:
                self._fail(self._unroutable)
                return
            self._committing = group
            self._submitting = True
            try:
                adopted = {p: v for b in group for p, v in b.plan.adopted.items()}
                self.committer.submit([w for b in group for w in b.plan.writes],
                                      partial(self._on_committed, group), adopted or None)
            finally:
                self._submitting = False

    def _on_committed(self, group: list[Batch], error: StoreError | None) -> None:
        self._committing = []
        if not (self._in_flight and self._in_flight[0] is group[0]):
            # Discarded while its commit ran: whatever it wrote, its accounts reload
            # from the store (nothing was loaded while it ran).
            for batch in group:
                self.cache.forget(batch.plan.touched)
        elif isinstance(error, StoreFencedError):
            # Another worker took a partition of this batch: nothing of it may be acked
            # here; hand everything back in order and reconnect with what we still own.
            log.warning("%s: handing the batches in hand back", error)
            self._discard_in_flight()
            self._assigned = frozenset()  # until the coordinator takes them anew
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
                self._in_flight.popleft()
                self._finished(batch, ack=batch is last)
        if not self._submitting:
            self._advance()

    @property
    def _discarded_commit_running(self) -> bool:
        committing = self._committing
        return bool(committing) and not (self._in_flight
                                         and self._in_flight[0] is committing[0])

    def _finished(self, batch: Batch, ack: bool = True) -> None:
        plan = batch.plan
        self._failures = 0
        self.problem = None
        if len(self._batch_timings) < MAX_KEPT:  # bounded even with no monitor reading
            # Event to confirm: from the arrival of the batch's oldest event.
            arrived = plan.deliveries[0].received if plan.deliveries else batch.started
            self._batch_timings.append((time.monotonic() - batch.started,
                                        batch.confirmed - (arrived or batch.started)))
        if plan.dead_letters and len(self._dead_letter_reasons) < MAX_KEPT:
            self._dead_letter_reasons.extend(o.reason for o in plan.outcomes
                                             if isinstance(o, DeadLetter))
        self.cache.unpin(plan.touched)
        stats = self.stats
        stats.commits += 1
        stats.dead_lettered += plan.dead_letters
        stats.updates += plan.updates
        if plan.deliveries:
            if ack:  # one ack (multiple) for a whole group commit
                self._link().ack(plan.deliveries[-1].tag, multiple=True)
            self._acked_upto = max(self._acked_upto, plan.deliveries[-1].tag)
            stats.acked += len(plan.deliveries)
        if plan.ticked:
            stats.crossed_accounts += len(plan.ticked)
            for account_id in plan.ticked:
                self._ticked.pop(account_id, None)
        if plan.adopted:
            self.in_force.committed(plan.adopted)
            for partition, version in plan.adopted.items():
                if self._adopting.get(partition) == version:
                    del self._adopting[partition]
        if batch.sweep is not None and plan.swept_accounts:
            stats.swept_accounts += len(plan.swept_accounts)
            after = self._sweeps.get(batch.sweep)
            if after is not None:
                self._sweeps[batch.sweep] = max(after, plan.swept_accounts[-1])
        self.cache.trim()

    # -- failures ----------------------------------------------------------
    def _fail(self, why: str, conflict: bool = False) -> None:
        """Discard every unfinished batch; evaluate its deliveries again later."""
        held = [d for batch in self._in_flight for d in batch.plan.deliveries]
        self._discard_in_flight()
        self._buffer.extendleft(reversed(held))
        self._unroutable = None
        self._stale_upto = self._published
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
        self._back_off(f"{len(held)} event(s) not acknowledged: {why}")

    def _discard_in_flight(self) -> None:
        for batch in self._in_flight:
            self.cache.forget(batch.plan.touched)
        self._in_flight.clear()
        self.in_force.rollback()  # their adoptions are evaluated again, in order

    def _back_off(self, why: str) -> None:
        self.problem = why
        if self._retry_timer is not None:
            return
        self._failures += 1
        delay = backoff_delay(self._failures, self.settings.reconnect_max_delay)
        log.warning("%s; retrying in %.1f s", why, delay)

        def again() -> None:
            self._retry_timer = None
            self._advance()

        self._retry_timer = self._link().call_later(delay, again)

    def _close(self) -> None:
        self.phase = Phase.STOPPED
        self._link().close()
