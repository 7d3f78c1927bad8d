"""The batch step: deliveries in, one outcome per delivery and the state changes out.

Nothing here talks to the broker. What happens to each delivery is a value:

* :class:`Publish` - the event was applied; publish these updates (maybe none: a
  duplicate or a stale event), then ack it after the commit;
* :class:`DeadLetter` - bad input or an event the worker cannot handle: publish it to
  the dead-letter exchange with its reason, then ack it. Poison is final: it is never
  retried, and what it half-changed is undone;
* deliveries the step did not reach (its time budget ran out, or the store could not
  load an account) are returned in :attr:`Plan.rest`, to be retried in order.

The driver (:mod:`worker.driver`) only carries a plan out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from contracts import BadEvent, parse_event
from contracts.ids import MAX_ROUTING_KEY
from contracts.requests import BadRequest, parse_request
from contracts.trace import TRACEPARENT, trace_context
from worker.accounts import AccountCache
from worker.answers import UnanswerableError, answer
from worker.cluster.partitions import partition_of
from worker.control import (
    CONTROL_HEADER,
    CONTROL_KIND_HEADER,
    Adopt,
    BadControlError,
    Tick,
    is_trusted,
    read_control,
    without_internal,
)
from worker.domain.account import AccountWrite
from worker.domain.updates import Update
from worker.errors import RuleFileError, StoreError, UnknownRulesError
from worker.headers import copyable_headers, traced
from worker.link import Delivery, Outgoing
from worker.observability.logs import log_context
from worker.rules_in_force import RulesInForce

log = logging.getLogger(__name__)

# An x-error header must fit a frame with room to spare (frame_max is 128 KiB): a
# reason naming 20,000 wrong fields would get the connection closed, again and again.
# 1,000 characters are 4,000 bytes of UTF-8 at most.
MAX_REASON_CHARS = 1000


# Headers the router adds for the partition owner (honoured only with the fleet's
# token: worker.control).
REQUEST_HEADER = "x-inbox-request"  # the request kind (snapshot, explain)
ROUTING_KEY_HEADER = "x-inbox-routing-key"  # the routing key the message came with


@dataclass(frozen=True, slots=True)
class Router:
    """Several workers: what the active router needs to pass messages on."""

    intake: frozenset[str]  # the queues it routes from (events, requests)
    exchange: str
    partitions: int


@dataclass(frozen=True, slots=True)
class Publish:
    messages: tuple[Outgoing, ...]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    message: Outgoing


@dataclass(frozen=True, slots=True)
class Route:
    """Several workers: an event or request passed on to its account's partition queue
    (acked once the broker confirmed it there)."""

    message: Outgoing


@dataclass(frozen=True, slots=True)
class Reply:
    """A request answered from the state the events before it left; the request is
    acked, like an event, once the reply is confirmed."""

    message: Outgoing


Outcome = Publish | DeadLetter | Reply | Route
# A duplicate, a stale event, or one that changed no category: one shared value.
NOTHING_TO_PUBLISH = Publish(())


@dataclass(frozen=True, slots=True)
class Sweep:
    """Synthetic work: re-categorise these accounts under the live rules. Where it falls
    among an account's events does not matter: an account adopts new rules before
    anything else touches it, so the adoption is the same whoever makes it first."""

    account_ids: tuple[str, ...]


@dataclass
class Plan:
    """What one batch decided; carried out by the driver, committed as one."""

    deliveries: list[Delivery] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    # Updates of a rules sweep (no delivery caused them).
    swept: list[Outgoing] = field(default_factory=list)
    swept_accounts: list[str] = field(default_factory=list)
    writes: list[AccountWrite] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    # Accounts whose time crossings a tick of this batch made (docs/time.md).
    ticked: list[str] = field(default_factory=list)
    # Partitions whose queue adopted a rules version in this batch (committed with it).
    adopted: dict[int, str] = field(default_factory=dict)
    rest: list[Delivery] = field(default_factory=list)
    stalled: StoreError | None = None

    def messages(self) -> list[Outgoing]:
        """Everything to publish, in order: sweep updates first, then per delivery."""
        out = list(self.swept)
        for outcome in self.outcomes:
            if isinstance(outcome, Publish):
                out.extend(outcome.messages)
            else:
                out.append(outcome.message)
        return out

    @property
    def replies(self) -> int:
        return sum(isinstance(o, Reply) for o in self.outcomes)

    @property
    def dead_letters(self) -> int:
        return sum(isinstance(o, DeadLetter) for o in self.outcomes)

    @property
    def updates(self) -> int:
        return len(self.swept) + sum(len(o.messages) for o in self.outcomes
                                     if isinstance(o, Publish))


class Step:
    """Turns work into a :class:`Plan`; the account cache is its only side door."""

    def __init__(self, updates_exchange: str, dead_letter_exchange: str,
                 max_message_bytes: int, budget: float,
                 clock: Callable[[], float] = time.monotonic,
                 requests_queue: str | None = None, router: Router | None = None,
                 own_queues: frozenset[str] = frozenset(), token: str = "") -> None:
        self.updates_exchange = updates_exchange
        self.own_queues = own_queues  # no reply goes to these (Topology.own_queues)
        # The fleet's token: internal headers count only on messages that carry it.
        self.token = token
        self.requests_queue = requests_queue
        self.router = router
        self.dead_letter_exchange = dead_letter_exchange
        self.max_message_bytes = max_message_bytes
        self.budget = budget
        self.clock = clock

    def run(self, deliveries: Sequence[Delivery], cache: AccountCache,
            rules: RulesInForce, sweep: Sweep | None = None) -> Plan:
        plan = Plan()
        deadline = self.clock() + self.budget
        if sweep is not None:
            self._sweep(plan, sweep, cache, rules, deadline)
        clock, one, traced_one = self.clock, self._one, self._traced
        taken, outcomes = plan.deliveries, plan.outcomes
        for index, delivery in enumerate(deliveries):
            if (index or sweep is not None) and clock() > deadline:
                # Heavy events (an account snapshot re-categorises the whole account):
                # end the batch here so the ioloop answers heartbeats and confirms.
                plan.rest = list(deliveries[index:])
                break
            try:
                outcome = (traced_one if TRACEPARENT in delivery.headers else one)(
                    delivery, plan, cache, rules)
            except StoreError as exc:
                plan.rest = list(deliveries[index:])
                plan.stalled = exc
                break
            taken.append(delivery)
            outcomes.append(outcome)
        plan.writes = [w for w in (self._write(cache, a) for a in sorted(plan.touched))
                       if w is not None]
        return plan

    def _traced(self, delivery: Delivery, plan: Plan, cache: AccountCache,
                rules: RulesInForce) -> Outcome:
        """A delivery with a traceparent header: if valid, the lines logged about it
        carry its trace id, and its updates and its reply carry its trace context
        (its dead letter or routed copy copies it with the headers: copyable_headers).
        Ticks, adoptions and sweeps carry none (docs/contract.md#trace-context)."""
        trace = trace_context(delivery.headers)
        if trace is None:
            return self._one(delivery, plan, cache, rules)
        with log_context(trace_id=trace.trace_id):
            outcome = self._one(delivery, plan, cache, rules)
        if isinstance(outcome, Publish) and outcome.messages:
            return Publish(traced(outcome.messages, trace))
        return Reply(*traced((outcome.message,), trace)) if isinstance(outcome, Reply) else outcome

    def _one(self, delivery: Delivery, plan: Plan, cache: AccountCache,
             rules: RulesInForce) -> Outcome:
        router, headers, queue = self.router, delivery.headers, delivery.queue
        if router is not None and queue in router.intake:
            return self._route(delivery, router)
        kind = None
        if headers and CONTROL_HEADER in headers and is_trusted(headers, self.token):
            control = headers.get(CONTROL_KIND_HEADER)
            if control is not None:
                return self._control(delivery, control, plan, cache, rules)
            kind = headers.get(REQUEST_HEADER)
        if queue and queue == self.requests_queue:
            kind = delivery.routing_key
        if kind is not None:
            return self._request(delivery, str(kind), cache, rules)
        try:
            event = parse_event(delivery.body, max_bytes=self.max_message_bytes)
        except BadEvent as exc:
            return self.dead_letter(delivery, exc.reason)
        except Exception as exc:  # noqa: BLE001 - e.g. JSON nested too deep: still bad input
            return self.dead_letter(delivery, f"unreadable: {type(exc).__name__}: {exc}")
        categoriser = rules.for_account(event.account_id)
        state = cache.get(event.account_id, categoriser.rules.version)
        plan.touched.add(event.account_id)
        state.begin()
        try:
            updates = categoriser.handle(state, event)
        except BadEvent as exc:  # valid alone, impossible here (too many attributes)
            state.rollback()
            return self.dead_letter(delivery, exc.reason)
        except Exception as exc:  # a worker bug must not stop the stream
            state.rollback()
            log.exception("event %s failed; dead-lettering it", event.event_id,
                          extra={"context": {"event_id": event.event_id,
                                             "account_id": event.account_id}})
            return self.dead_letter(delivery, f"worker error: {type(exc).__name__}: {exc}")
        state.release()
        if not updates:
            return NOTHING_TO_PUBLISH
        update_message = self.update_message
        return Publish(tuple([update_message(u) for u in updates]))

    def _route(self, delivery: Delivery, router: Router) -> Outcome:
        """Validate, find the account's partition, pass it on with what the owner needs
        (the request kind, the reply address, the event's own routing key).

        A good message whose headers are too large to copy (see
        :func:`copyable_headers`) is routed without them, noted in
        ``x-original-headers-dropped``, never dead-lettered for that alone: the owner
        reads only the body and the router's own headers, so the event is applied
        exactly as with its headers; dead-lettering it would skip a valid event and
        leave its account's later events applied on a state that misses it (wrong
        categories downstream), and copying them would not fit a frame."""
        properties = delivery.properties
        headers = copyable_headers(without_internal(delivery.headers))
        if delivery.queue == self.requests_queue:
            kind = delivery.routing_key
            try:
                account_id = parse_request(delivery.body, kind,
                                           max_bytes=self.max_message_bytes).account_id or ""
            except BadRequest as exc:
                return self.dead_letter(delivery, f"bad {kind} request: {exc.reason}")
            unanswerable = self._unanswerable(delivery, kind)
            if unanswerable is not None:
                return unanswerable
            headers[REQUEST_HEADER] = kind
        else:
            try:
                account_id = parse_event(delivery.body,
                                         max_bytes=self.max_message_bytes).account_id
            except BadEvent as exc:
                return self.dead_letter(delivery, exc.reason)
            except Exception as exc:  # noqa: BLE001 - e.g. JSON nested too deep: bad input
                return self.dead_letter(delivery, f"unreadable: {type(exc).__name__}: {exc}")
        headers[ROUTING_KEY_HEADER] = delivery.routing_key
        headers[CONTROL_HEADER] = self.token
        partition = partition_of(account_id, router.partitions)
        return Route(Outgoing(
            router.exchange, str(partition), delivery.body,
            message_id=getattr(properties, "message_id", None), headers=headers,
            content_type=getattr(properties, "content_type", None),
            correlation_id=getattr(properties, "correlation_id", None),
            reply_to=getattr(properties, "reply_to", None), type=getattr(properties, "type", None),
            timestamp=getattr(properties, "timestamp", None),
            app_id=getattr(properties, "app_id", None) or "inbox-rules"))

    def _request(self, delivery: Delivery, kind: str, cache: AccountCache,
                 in_force: RulesInForce) -> Outcome:
        try:
            request = parse_request(delivery.body, kind, max_bytes=self.max_message_bytes)
        except BadRequest as exc:
            return self.dead_letter(delivery, f"bad {kind} request: {exc.reason}")
        unanswerable = self._unanswerable(delivery, kind)
        if unanswerable is not None:
            return unanswerable
        properties = delivery.properties
        reply_to: str = properties.reply_to
        # views.check without an account is answered by whoever owns the empty id's
        # partition (nothing is read).
        account_id = request.account_id or ""
        try:
            body = answer(request, in_force.for_account(account_id), cache)
        except UnanswerableError as exc:
            return self.dead_letter(delivery, f"bad {kind} request: {exc.reason}")
        except StoreError:
            raise  # the store, not the request: the batch stalls and is retried
        except Exception as exc:  # a worker bug must not stop the stream, as for an event
            log.exception("%s request for account %s failed; dead-lettering it", kind,
                          account_id,
                          extra={"context": {"account_id": account_id,
                                             "agent_id": request.agent_id}})
            return self.dead_letter(delivery, f"worker error: {type(exc).__name__}: {exc}")
        return Reply(Outgoing(
            "", reply_to, body, message_id=None, persistent=False,
            type=f"{kind}.reply", correlation_id=getattr(properties, "correlation_id", None)))

    def _control(self, delivery: Delivery, kind: object, plan: Plan, cache: AccountCache,
                 rules: RulesInForce) -> Outcome:
        """A tick: every named account crosses what is due by its ``until``; an
        adoption: the partition takes the rules version from here on. Both here in the
        account's order (worker.control)."""
        try:
            control = read_control(str(kind), delivery.body)
        except BadControlError as exc:
            return self.dead_letter(delivery, f"bad control message: {exc}")
        if isinstance(control, Adopt):
            return self._adopt(delivery, control, plan, rules)
        messages = self._cross(control, plan, cache, rules)
        return Publish(tuple(messages)) if messages else NOTHING_TO_PUBLISH

    def _adopt(self, delivery: Delivery, adopt: Adopt, plan: Plan,
               rules: RulesInForce) -> Outcome:
        if rules.version_of(adopt.partition) == adopt.rules_version:
            return NOTHING_TO_PUBLISH
        try:
            rules.switch(adopt.partition, adopt.rules_version)
        except UnknownRulesError as exc:  # no worker could ever load it: not a retry
            return self.dead_letter(delivery, f"bad control message: {exc}")
        except RuleFileError as exc:
            # Kept by a worker whose rules this one cannot load: every worker of this
            # version would refuse it the same way.
            return self.dead_letter(delivery, f"rules version {adopt.rules_version} does "
                                              f"not load here: {exc}")
        plan.adopted[adopt.partition] = adopt.rules_version
        log.info("partition %d: rules version %s in force from here on", adopt.partition,
                 adopt.rules_version)
        return NOTHING_TO_PUBLISH

    def _cross(self, tick: Tick, plan: Plan, cache: AccountCache,
               rules: RulesInForce) -> list[Outgoing]:
        # Every account loaded before any is changed: a store that cannot load one stops
        # the batch here (StoreError) and the tick is retried whole, in order, like an
        # event. Loading as it went would leave the accounts crossed before the failure
        # changed in memory with their updates never published.
        loaded = []
        for account_id in tick.accounts:
            categoriser = rules.for_account(account_id)
            loaded.append((account_id, categoriser,
                           cache.get(account_id, categoriser.rules.version)))
        messages: list[Outgoing] = []
        for account_id, categoriser, state in loaded:
            plan.touched.add(account_id)
            plan.ticked.append(account_id)
            state.begin()
            try:
                updates = categoriser.cross(state, tick.until)
            except Exception:  # a worker bug: the account waits for its next event
                state.rollback()
                log.exception("time crossings of account %s failed", account_id)
                continue
            state.release()
            messages.extend(self.update_message(u) for u in updates)
        return messages

    def _unanswerable(self, delivery: Delivery, kind: str) -> DeadLetter | None:
        """A request whose reply has nowhere sensible to go is bad: no reply_to, or one
        naming a queue of the worker's own (the reply would come back as an event, a
        request or a dead letter: anyone allowed to send requests could write there)."""
        reply_to = getattr(delivery.properties, "reply_to", None)
        if not reply_to:
            return self.dead_letter(delivery, f"bad {kind} request: no reply_to property: "
                                              "nowhere to send the reply")
        if reply_to in self.own_queues:
            return self.dead_letter(delivery, f"bad {kind} request: reply_to names one of "
                                              f"the worker's own queues ({reply_to})")
        return None

    def _sweep(self, plan: Plan, sweep: Sweep, cache: AccountCache,
               rules: RulesInForce, deadline: float) -> None:
        for index, account_id in enumerate(sweep.account_ids):
            if index and self.clock() > deadline:
                break
            categoriser = rules.for_account(account_id)
            try:
                state = cache.get(account_id, categoriser.rules.version)
            except StoreError as exc:
                plan.stalled = exc
                break
            plan.touched.add(account_id)
            plan.swept_accounts.append(account_id)
            state.begin()
            try:
                updates = categoriser.adopt(state)
            except Exception:  # a worker bug: leave the account for its next event
                state.rollback()
                log.exception("re-categorising account %s failed", account_id)
                continue
            state.release()
            plan.swept.extend(self.update_message(u) for u in updates)

    @staticmethod
    def _write(cache: AccountCache, account_id: str) -> AccountWrite | None:
        state = cache.peek(account_id)
        if state is None or not state.dirty:
            return None
        return state.take_write()

    def update_message(self, update: Update) -> Outgoing:
        # Positional (exchange, routing key, body, message id, headers, persistent,
        # content type, type): one is built per update, and keywords cost more.
        return Outgoing(self.updates_exchange, update.routing_key, update.body,
                        update.update_id, None, True, "application/json", "category.update")

    def dead_letter(self, delivery: Delivery, reason: str) -> DeadLetter:
        # Never the fleet's token (or the router's notes): the dead-letter queue is read
        # by people and tools outside the fleet. The original fitted in a frame; with
        # x-error added it might not, and a frame error would loop the connection: too
        # large, the headers are dropped.
        headers = copyable_headers(without_internal(delivery.headers))
        reason = bounded(reason)
        headers["x-error"] = reason
        original = delivery.properties
        log.warning("dead-lettering a message (routing key %s): %s", delivery.routing_key,
                    reason, extra={"context": {"routing_key": delivery.routing_key,
                                               "queue": delivery.queue}})
        routing_key = delivery.routing_key
        named = (delivery.headers.get(ROUTING_KEY_HEADER)
                 if is_trusted(delivery.headers, self.token) else None)
        # The router's header, when it came through a partition queue; it must still
        # fit a routing key.
        if isinstance(named, str) and len(named.encode()) <= MAX_ROUTING_KEY:
            routing_key = named
        return DeadLetter(reason, Outgoing(
            self.dead_letter_exchange, routing_key, delivery.body,
            message_id=getattr(original, "message_id", None), headers=headers,
            content_type=getattr(original, "content_type", None),
            content_encoding=getattr(original, "content_encoding", None),
            timestamp=getattr(original, "timestamp", None),
            type=getattr(original, "type", None),
            app_id=getattr(original, "app_id", None) or "inbox-rules"))


def bounded(reason: str) -> str:
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    cut = reason[:MAX_REASON_CHARS]
    return f"{cut}... ({len(reason) - len(cut)} more characters)"
