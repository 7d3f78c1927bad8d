"""The worker: events in, category updates out, at least once, nothing lost.

Acknowledgement policy, stated: an input message is acknowledged only after

1. its state change is committed to the store, and
2. every update it caused (or its dead letter) is confirmed by the broker.

A batch goes through the same steps every time: evaluate every event in memory,
publish the updates and dead letters, wait for all their confirms, commit the store
once, then ack the batch with one ``multiple=True`` ack. The commit comes *after* the
confirms on purpose: if the link drops before the commit, memory is reloaded from the
store (memory == last commit), the broker redelivers the batch, and the events are
applied again so their updates are published again (same ``update_id``; downstream
drops the duplicates). Committing first would mark the events seen while their
updates might never reach the broker.

A failed commit (store busy, disk full) reloads the state and retries the same batch,
still held unacknowledged, after a bounded, jittered backoff. The messages are not
requeued: requeueing would count against the queue's delivery limit and dead-letter
good events during a store outage, and would let later events overtake them.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pika

from contracts import BadEvent, CategoryUpdate, parse_event
from worker.amqp import AmqpLink, Delivery, Outgoing
from worker.backoff import backoff_delay
from worker.domain.inbox import Inbox
from worker.errors import PublishRejectedError, RuleFileError, StoreError
from worker.rulebook import CompiledRules, load_rules
from worker.settings import Settings
from worker.store import SqliteStore, StateStore
from worker.topology import Topology

log = logging.getLogger(__name__)

# Publishes per ioloop callback: bounded so heartbeats and confirms keep flowing.
PUBLISH_CHUNK = 500
# Seconds of rule evaluation per ioloop callback, at most (plus one event): the
# ioloop must come back often to answer heartbeats and take confirms.
EVALUATE_BUDGET = 0.25
# Original headers larger than this (as repr, a generous over-estimate of their AMQP
# size) are not copied to a dead letter: half of RabbitMQ's default 128 KiB frame.
MAX_COPIED_HEADERS_CHARS = 64 * 1024
# An x-error header must fit a frame with room to spare (frame_max is 128 KiB): a
# reason naming 20,000 wrong fields would get the connection closed, again and again.
MAX_REASON_CHARS = 1000


@dataclass
class Stats:
    """Counters for operators, tests and the benchmark."""

    acked: int = 0
    updates: int = 0
    dead_lettered: int = 0
    commits: int = 0
    failed_batches: int = 0


@dataclass
class Batch:
    """Deliveries handled together: one commit, one ack."""

    deliveries: list[Delivery]
    adopt_rules: bool = False
    # Deliveries whose handling raised: dead-lettered on every retry (poison is final).
    poison: dict[int, str] = field(default_factory=dict)
    outgoing: list[Outgoing] = field(default_factory=list)
    published: int = 0
    # Publish sequence numbers awaiting a confirm, ascending (publishes are numbered in
    # order); single confirms may come out of order and wait in a set until the front
    # of the queue reaches them. No per-confirm rebuild of the whole window.
    unconfirmed: deque[int] = field(default_factory=deque)
    confirmed_ahead: set[int] = field(default_factory=set)
    rejected: bool = False

    @property
    def settled(self) -> bool:
        return self.published == len(self.outgoing) and not self.unconfirmed

    def confirm(self, sequence: int, multiple: bool) -> None:
        pending = self.unconfirmed
        if multiple:
            while pending and pending[0] <= sequence:
                pending.popleft()
        else:
            self.confirmed_ahead.add(sequence)
        ahead = self.confirmed_ahead
        while pending and ahead and pending[0] in ahead:
            ahead.discard(pending.popleft())


class Worker:
    """Consumes events, runs the rules, publishes updates; see the module docstring."""

    def __init__(self, settings: Settings, rules: CompiledRules, store: StateStore,
                 ioloop: pika.adapters.select_connection.IOLoop | None = None) -> None:
        self.settings = settings
        self.rules = rules
        self.store = store
        self.topology = Topology.from_settings(settings)
        self.ioloop = ioloop or pika.adapters.select_connection.IOLoop()
        self.link = AmqpLink(settings, self.topology, self, self.ioloop)
        self.inbox = Inbox(rules, store.load(settings.dedup_window))
        self.stats = Stats()
        self._buffer: deque[Delivery] = deque()
        self._batch: Batch | None = None
        self._batch_timer: object | None = None
        self._retry_timer: object | None = None
        self._failures = 0
        self._dirty = False  # memory is ahead of the store
        self._consuming = False
        self._stopping = False
        self._adopted: Batch | None = None  # new rules applied, not yet published

    # -- running -----------------------------------------------------------
    def run(self) -> None:
        """Block, running the ioloop, until :meth:`stop` has finished its work."""
        self._prepare_adoption()
        self.link.start()
        try:
            self.ioloop.start()
        finally:
            self.ioloop.close()  # its wake-up socket pair

    def request_stop(self) -> None:
        """Thread- and signal-safe: ask the ioloop thread to stop gracefully."""
        self.ioloop.add_callback_threadsafe(self.stop)

    def request_reload(self) -> None:
        """Thread- and signal-safe: ask the ioloop thread to reload the rule files."""
        self.ioloop.add_callback_threadsafe(self.reload_rules)

    def reload_rules(self) -> bool:
        """Load the rule directory again; new rules go live with the next batch.

        A rule set that does not validate never goes live: the worker keeps the rules
        it has and logs every problem as file:line. True if new rules were adopted.
        """
        try:
            rules = load_rules(self.settings.rules_dir)
        except RuleFileError as exc:
            log.error("rules not reloaded, keeping version %s; the new files do not "
                      "validate:\n%s", self.rules.version, exc)
            return False
        if rules.version == self.rules.version:
            log.info("rules reloaded: unchanged (version %s)", rules.version)
            return False
        log.info("rules reloaded: version %s -> %s; re-categorising with the next batch",
                 self.rules.version, rules.version)
        self.rules = rules
        if (self._consuming and self._batch is None and not self._buffer
                and self._retry_timer is None):
            self._start(Batch([], adopt_rules=True))  # idle: publish the changes now
        return True

    def stop(self) -> None:
        """Stop consuming, finish what is in hand, commit, ack, close."""
        if self._stopping:
            return
        log.info("stopping: finishing the events in hand")
        self._stopping = True
        if self._consuming:
            self.link.cancel()
        else:
            self._maybe_finish()

    # -- LinkHandler -------------------------------------------------------
    def on_ready(self) -> None:
        if self._stopping:
            self.link.close()
            return
        adopted, self._adopted = self._adopted, None
        if adopted is not None:
            self._batch = adopted  # published before anything is consumed
            self._pump(adopted)
        elif self.inbox.state.rules_version != self.rules.version:
            self._start(Batch([], adopt_rules=True))
        else:
            self._consume()

    def on_delivery(self, delivery: Delivery) -> None:
        self._buffer.append(delivery)
        self._maybe_start()

    def on_cancelled(self) -> None:
        self._consuming = False
        self._maybe_start()
        self._maybe_finish()

    def on_confirm(self, sequence: int, multiple: bool, ok: bool) -> None:
        batch = self._batch
        if batch is None:
            return
        batch.confirm(sequence, multiple)
        if not ok:
            batch.rejected = True
        self._pump(batch)

    def on_lost(self) -> None:
        """Everything unacked comes back from the broker: drop it, and the memory it
        touched."""
        for timer in (self._batch_timer, self._retry_timer):
            if timer is not None:
                self.link.cancel_timer(timer)
        self._batch_timer = self._retry_timer = None
        self._batch = None
        self._buffer.clear()
        self._consuming = False
        self._reload_if_dirty()
        if self._stopping:
            self.link.close()
        else:
            self._prepare_adoption()

    def _prepare_adoption(self) -> None:
        """Re-categorise everything under new rules while no connection waits on us:
        on a large state it takes long, and a connected ioloop must answer heartbeats."""
        if self._adopted is None and self.inbox.state.rules_version != self.rules.version:
            log.info("rules changed (%s -> %s): re-categorising before consuming",
                     self.inbox.state.rules_version, self.rules.version)
            batch = Batch([], adopt_rules=True)
            try:
                self._evaluate(batch)
            except StoreError as exc:
                log.error("cannot re-categorise now: %s", exc)  # on_ready retries
                return
            self._adopted = batch

    # -- batching ----------------------------------------------------------
    def _consume(self) -> None:
        self._consuming = True
        self.link.consume()

    def _maybe_start(self) -> None:
        if self._batch is not None or self._retry_timer is not None or not self._buffer:
            return
        if len(self._buffer) >= self.settings.batch_size or not self._consuming:
            self._start_next()
        elif self._batch_timer is None:
            self._batch_timer = self.link.call_later(self.settings.max_batch_delay,
                                                     self._on_batch_timer)

    def _on_batch_timer(self) -> None:
        self._batch_timer = None
        if self._batch is None and self._retry_timer is None and self._buffer:
            self._start_next()

    def _start_next(self) -> None:
        if self._batch_timer is not None:
            self.link.cancel_timer(self._batch_timer)
            self._batch_timer = None
        size = min(len(self._buffer), self.settings.batch_size)
        self._start(Batch([self._buffer.popleft() for _ in range(size)]))

    def _start(self, batch: Batch) -> None:
        # Rules reloaded since the state was categorised: adopt them before the events.
        if self.inbox.state.rules_version != self.rules.version:
            batch.adopt_rules = True
        self._batch = batch
        try:
            # A standby that just became the active consumer must not publish updates
            # computed from the state it loaded at start: another worker moved on.
            if not self._dirty and self.store.changed_elsewhere():
                log.info("the state store was written by another worker: reloading")
                self._dirty = True
            if not self._reload_if_dirty():
                raise StoreError("state store unreadable")
            self._evaluate(batch)
        except StoreError as exc:
            self._retry_later(batch, str(exc))
            return
        self._pump(batch)

    def _evaluate(self, batch: Batch) -> None:
        """Run every event of the batch through the inbox; collect what to publish."""
        while True:
            batch.outgoing = []
            try:
                self._evaluate_once(batch)
                return
            except _Poisoned as poisoned:
                # The inbox may be half-way through the event: start again from the
                # store, with that message set aside for the dead-letter queue.
                batch.poison[poisoned.tag] = poisoned.reason
                if not self._reload_if_dirty():
                    raise StoreError("state store unreadable after a failed event") from None

    def _evaluate_once(self, batch: Batch) -> None:
        out = batch.outgoing
        if batch.adopt_rules and self.inbox.state.rules_version != self.rules.version:
            self._dirty = True
            out.extend(self._update(u) for u in
                       self.inbox.adopt_rules(self.rules, datetime.now(UTC)))
        deadline = time.monotonic() + EVALUATE_BUDGET
        for index, delivery in enumerate(batch.deliveries):
            if index and time.monotonic() > deadline:
                self._shorten(batch, index)
                return
            reason = batch.poison.get(delivery.tag)
            if reason is None:
                try:
                    event = parse_event(delivery.body, max_bytes=self.settings.max_message_bytes)
                except BadEvent as exc:
                    reason = exc.reason
                except Exception as exc:  # e.g. JSON nested too deep for the parser
                    raise _Poisoned(delivery.tag, f"unreadable: {type(exc).__name__}: {exc}"
                                    ) from exc
            if reason is not None:
                out.append(self._dead_letter(delivery, reason))
                continue
            self._dirty = True
            try:
                updates = self.inbox.handle(event)
            except Exception as exc:  # a worker bug must not stop the stream
                log.exception("event %s failed; dead-lettering it", event.event_id)
                raise _Poisoned(delivery.tag, f"worker error: {type(exc).__name__}: {exc}"
                                ) from exc
            out.extend(self._update(u) for u in updates)

    def _shorten(self, batch: Batch, keep: int) -> None:
        """Heavy events (an account snapshot re-categorises the whole account): end the
        batch here and give the rest back to the buffer, in order, for the next one."""
        self._buffer.extendleft(reversed(batch.deliveries[keep:]))
        del batch.deliveries[keep:]

    def _update(self, update: CategoryUpdate) -> Outgoing:
        properties = pika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=update.update_id,
            type="category.update", app_id="inbox-rules")
        return Outgoing(self.topology.updates_exchange, update.routing_key,
                        update.model_dump_json().encode(), properties)

    def _dead_letter(self, delivery: Delivery, reason: str) -> Outgoing:
        original = delivery.properties
        headers = dict(original.headers or {})
        if len(repr(headers)) > MAX_COPIED_HEADERS_CHARS:
            # The original fitted in a frame; with x-error added it might not, and a
            # frame error would loop the connection. Keep the body, drop the headers.
            headers = {"x-original-headers-dropped": f"{len(headers)} header(s), too large"}
        headers["x-error"] = _bounded(reason)
        properties = pika.BasicProperties(
            content_type=original.content_type, content_encoding=original.content_encoding,
            message_id=original.message_id, timestamp=original.timestamp,
            type=original.type, app_id=original.app_id, headers=headers, delivery_mode=2)
        log.warning("dead-lettering message %d (%s): %s", delivery.tag, delivery.routing_key,
                    headers["x-error"])
        return Outgoing(self.topology.dead_letter_exchange, delivery.routing_key,
                        delivery.body, properties)

    def _pump(self, batch: Batch) -> None:
        """Publish within the confirm window, a bounded chunk per ioloop callback."""
        if batch is not self._batch:
            return
        window = self.settings.publish_window
        sent = 0
        while (batch.published < len(batch.outgoing) and len(batch.unconfirmed) < window
               and sent < PUBLISH_CHUNK):
            batch.unconfirmed.append(self.link.publish(batch.outgoing[batch.published]))
            batch.published += 1
            sent += 1
        if batch.settled:
            self._settle(batch)
        elif sent == PUBLISH_CHUNK and len(batch.unconfirmed) < window:
            self.link.call_later(0, lambda: self._pump(batch))

    def _settle(self, batch: Batch) -> None:
        """All confirmed: commit once, then ack the whole batch."""
        try:
            if batch.rejected:
                raise PublishRejectedError("the broker refused a publish")
            self.store.commit(self.inbox.state.take_changes(), self.inbox.state)
        except (StoreError, PublishRejectedError) as exc:
            self._retry_later(batch, str(exc))
            return
        self._dirty = False
        self._failures = 0
        self._batch = None
        self.stats.commits += 1
        dead = sum(1 for o in batch.outgoing if o.exchange == self.topology.dead_letter_exchange)
        self.stats.dead_lettered += dead
        self.stats.updates += len(batch.outgoing) - dead
        if batch.deliveries:
            self.link.ack(batch.deliveries[-1].tag, multiple=True)
            self.stats.acked += len(batch.deliveries)
        # The next batch may start right here, while callers up the stack still hold
        # this one: let its messages go first (a fan-out batch holds tens of thousands).
        batch.outgoing = []
        self._after_batch()

    def _after_batch(self) -> None:
        if self._stopping:
            if self._buffer:
                self._start_next()
            else:
                self._maybe_finish()
            return
        if not self._consuming:
            self._consume()
        self._maybe_start()

    def _retry_later(self, batch: Batch, why: str) -> None:
        """Memory may be ahead of the store: reload, wait, run the same batch again."""
        self._batch = None
        self._failures += 1
        self.stats.failed_batches += 1
        self._reload_if_dirty()
        if self._stopping:
            # Give the events in hand back to the queue rather than hang the shutdown.
            log.warning("batch of %d event(s) not acknowledged: %s; stopping anyway, the "
                        "broker will redeliver them", len(batch.deliveries), why)
            self.link.close()
            return
        delay = backoff_delay(self._failures, self.settings.reconnect_max_delay)
        log.warning("batch of %d event(s) not acknowledged: %s; state reloaded, retrying "
                    "in %.1f s", len(batch.deliveries), why, delay)
        retry = Batch(batch.deliveries, adopt_rules=batch.adopt_rules, poison=batch.poison)

        def again() -> None:
            self._retry_timer = None
            self._start(retry)

        self._retry_timer = self.link.call_later(delay, again)

    def _reload_if_dirty(self) -> bool:
        """Make memory equal the last commit; False if the store cannot be read."""
        if not self._dirty:
            return True
        try:
            state = self.store.load(self.settings.dedup_window)
        except StoreError as exc:
            log.error("cannot reload state: %s", exc)
            return False
        self.inbox = Inbox(self.rules, state)
        self._dirty = False
        return True

    def _maybe_finish(self) -> None:
        if (self._stopping and not self._consuming and self._batch is None
                and self._retry_timer is None and not self._buffer):
            log.info("all events in hand committed and acknowledged; closing")
            self.link.close()


def _bounded(reason: str) -> str:
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    cut = reason[:MAX_REASON_CHARS]
    return f"{cut}... ({len(reason) - len(cut)} more characters)"


class _Poisoned(Exception):  # noqa: N818 - internal signal, never escapes this module
    def __init__(self, tag: int, reason: str) -> None:
        super().__init__(reason)
        self.tag = tag
        self.reason = reason


def serve(settings: Settings, rules: CompiledRules) -> Stats:
    """Run the worker in this thread until SIGTERM or SIGINT; the state store is closed
    on the way out."""
    store = SqliteStore(settings.state_path)
    try:
        worker = Worker(settings, rules, store)
        known = sum(len(c) for c in worker.inbox.state.conversations.values())
        log.info("rules version %s; state %s; %d conversation(s) known", rules.version,
                 settings.state_path, known)
        previous = {sig: signal.signal(sig, lambda _sig, _frame: worker.request_stop())
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(
            signal.SIGHUP, lambda _sig, _frame: worker.request_reload())
        try:
            worker.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return worker.stats
    finally:
        store.close()
