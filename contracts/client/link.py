"""The mirror's work on one connection: a channel, a queue bound for every agent before
any snapshot is asked for, the snapshot requests and their replies, and a timer that
asks again when a reply is late.

Everything here runs where the connection's I/O runs (pika's consumer and timer
callbacks, inside ``process_data_events``): on the mirror's own thread, or on the
caller's when the caller lends its connection.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pydantic import ValidationError

from contracts.asyncapi_parts.common import DIRECT_REPLY_TO
from contracts.client.inbox import Applied, Gap, InboxKeeper, NewRules, Result
from contracts.requests import (
    DEFAULT_SNAPSHOT_LIMIT,
    SnapshotReply,
    SnapshotRequest,
    describe_request_error,
)
from contracts.updates import CategoryUpdate

log = logging.getLogger("contracts.client")

SNAPSHOT_ROUTING_KEY = "snapshot"
TICK = 0.1  # seconds between two looks at the replies' deadlines


class MirrorError(Exception):
    """The mirror cannot do what was asked: no broker, no worker answering, a broken
    reply, or a channel the broker closed. ``str()`` says what to check."""


@dataclass(frozen=True)
class Options:
    """What a link asks for, and where (for messages)."""

    account_id: str
    categories: tuple[str, ...] | None  # the snapshot requests' filter
    page_limit: int | None
    timeout: float
    updates_exchange: str
    requests_exchange: str
    where: str


Changed = Callable[[str, Sequence[CategoryUpdate | None]], None]


@dataclass
class _Ask:
    agent_id: str
    correlation_id: str
    after: str | None
    deadline: float
    asked: int  # how many times this page was asked for (a late reply asks again)


class Link:
    """One channel of ``connection`` keeping ``keepers`` (by agent id): set up on
    creation (queue declared and bound, consumers on, a snapshot asked for every agent),
    closed by :meth:`close`. Raises :class:`MirrorError` when the broker refuses the
    set-up, and pika's connection errors as they come.

    The keepers change under ``lock``; ``changed(agent_id, updates)`` is called outside
    it after updates were applied (``None`` for a snapshot loaded), ``problem(text)``
    when something holds a snapshot up.
    """

    def __init__(self, connection: Any, options: Options, keepers: Mapping[str, InboxKeeper],
                 lock: threading.RLock, changed: Changed,
                 problem: Callable[[str], None]) -> None:
        self.options = options
        self.connection = connection
        self.keepers = keepers
        self.lock = lock
        self.changed = changed
        self.problem = problem
        self.ignored = 0  # update bodies that were not one of our agents' CategoryUpdate
        self._asks: dict[str, _Ask] = {}
        self._timer: Any = None
        self._closed = False
        try:
            self.channel = connection.channel()
            self._declare()
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise MirrorError(self._refused(exc)) from exc
        for agent_id in keepers:
            self._ask(agent_id, None)
        self._arm()

    def _declare(self) -> None:
        o, channel = self.options, self.channel
        # The worker declares the requests exchange: without it nobody could answer.
        channel.exchange_declare(o.requests_exchange, passive=True)
        channel.exchange_declare(o.updates_exchange, exchange_type="topic", durable=True)
        # Bind first: every update a snapshot does not hold is then in this queue. The
        # copy lives in memory and dies with the queue, so there is nothing to ack.
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        for agent_id in self.keepers:
            channel.queue_bind(queue, o.updates_exchange,
                               routing_key=f"{o.account_id}.{agent_id}")
        channel.basic_consume(queue, self._on_update, auto_ack=True)
        # RabbitMQ: consume the direct reply-to, no-ack, before publishing with it.
        channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
        channel.add_on_return_callback(self._on_return)

    def _refused(self, exc: pika.exceptions.ChannelClosedByBroker) -> str:
        o = self.options
        if exc.reply_code == 404:
            return (f"{exc.reply_text}: the worker declares {o.requests_exchange!r}; is a "
                    f"worker (inbox-rules run) running on {o.where}?")
        return f"the broker closed the mirror's channel: {exc.reply_text}"

    # -- asking ---------------------------------------------------------------------
    def _ask(self, agent_id: str, after: str | None, asked: int = 1) -> None:
        o = self.options
        request = SnapshotRequest(account_id=o.account_id, agent_id=agent_id,
                                  categories=list(o.categories) if o.categories else None,
                                  after=after,
                                  limit=o.page_limit or DEFAULT_SNAPSHOT_LIMIT)
        ask = _Ask(agent_id, uuid.uuid4().hex, after, time.monotonic() + o.timeout, asked)
        self._asks[agent_id] = ask
        # mandatory: with no worker's queue bound, the broker returns it at once.
        self.channel.basic_publish(
            o.requests_exchange, SNAPSHOT_ROUTING_KEY,
            request.model_dump_json(exclude_none=True).encode(),
            pika.BasicProperties(reply_to=DIRECT_REPLY_TO, correlation_id=ask.correlation_id,
                                 content_type="application/json"),
            mandatory=True)

    def pending(self) -> int:
        """How many times the oldest unanswered request was asked (0: none waits)."""
        return max((ask.asked for ask in self._asks.values()), default=0)

    def _arm(self) -> None:
        if not self._closed:
            self._timer = self.connection.call_later(TICK, self._tick)

    def _tick(self) -> None:
        """Ask again where a reply is late, and for a snapshot where one is needed."""
        now = time.monotonic()
        if self.channel.is_open:
            for agent_id, keeper in self.keepers.items():
                ask = self._asks.get(agent_id)
                if ask is not None and now > ask.deadline:
                    text = self._no_answer()
                    log.warning("%s (asked %d time(s)); asking again", text, ask.asked)
                    self.problem(text)
                    self._ask(agent_id, ask.after, ask.asked + 1)
                elif ask is None and not keeper.synced:
                    self._ask(agent_id, None)
        self._arm()

    def _no_answer(self) -> str:
        o = self.options
        return (f"no snapshot reply within {o.timeout:g} s: is a worker (inbox-rules run) "
                f"answering {o.requests_exchange!r} on {o.where}?")

    # -- callbacks (inside process_data_events) -------------------------------------
    def _on_update(self, _channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        try:
            update = CategoryUpdate.model_validate_json(body)
        except ValidationError as exc:
            self.ignored += 1  # a gap later, if it was one of ours: that resyncs
            log.warning("ignoring an update that is not a CategoryUpdate: %s", exc)
            return
        keeper = self.keepers.get(update.agent_id)
        if keeper is None or update.account_id != self.options.account_id:
            self.ignored += 1
            return
        with self.lock:
            result = keeper.apply(update)
        if isinstance(result, Gap | NewRules):
            log.info("%s.%s: %s; asking for a snapshot", update.account_id,
                     update.agent_id, result)
            if update.agent_id not in self._asks:
                self._ask(update.agent_id, None)
        elif isinstance(result, Applied):
            self.changed(update.agent_id, [update])

    def _on_reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        ask = next((a for a in self._asks.values()
                    if a.correlation_id == properties.correlation_id), None)
        if ask is None:
            return  # a late answer to a request asked again since
        try:
            reply = SnapshotReply.model_validate_json(body)
        except ValidationError as exc:
            # Left waiting: asked again at its deadline.
            self.problem(f"the worker's snapshot reply is not a SnapshotReply: "
                               f"{describe_request_error(exc)}")
            return
        keeper = self.keepers[ask.agent_id]
        with self.lock:
            loaded = keeper.load_snapshot(reply, after=ask.after)
        del self._asks[ask.agent_id]
        if loaded.next_after is not None:
            self._ask(ask.agent_id, loaded.next_after)
            return
        if loaded.resync_needed:
            self._ask(ask.agent_id, None)
        self.changed(ask.agent_id, [None, *applied(loaded.results)])

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        if any(a.correlation_id == properties.correlation_id for a in self._asks.values()):
            o = self.options
            # Left waiting: asked again at its deadline, when a worker may be up.
            self.problem(
                f"no worker is bound to {o.requests_exchange!r} with routing key "
                f"{SNAPSHOT_ROUTING_KEY!r} ({method.reply_text}): is a worker "
                f"(inbox-rules run) running on {o.where}?")

    # -- the end --------------------------------------------------------------------
    def check(self) -> None:
        """:class:`MirrorError` if the broker closed the channel (a blocking channel
        says so only at its next use)."""
        if self.channel.is_closed and not self._closed:
            raise MirrorError("the broker closed the mirror's channel (its log says why)")

    def close(self) -> None:
        """Stop the timer and close the channel (the queue goes with it), leaving the
        connection open; quietly, whatever state the connection is in."""
        self._closed = True
        if self._timer is not None:
            try:
                self.connection.remove_timeout(self._timer)
            except (pika.exceptions.AMQPError, OSError, ValueError, KeyError):
                log.debug("removing the mirror's timer failed", exc_info=True)
        if self.connection.is_open and self.channel.is_open:
            try:
                self.channel.close()
            except (pika.exceptions.AMQPError, OSError):
                log.debug("closing the mirror's channel failed", exc_info=True)


def applied(results: Sequence[Result]) -> list[CategoryUpdate]:
    return [result.update for result in results if isinstance(result, Applied)]
