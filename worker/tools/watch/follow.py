"""The transport of ``inbox-rules watch``: one agent's inbox from the broker into an
:class:`~worker.tools.watch.view.InboxView` (pika, one blocking connection, one thread).

It binds its own queue *before* it asks for a snapshot, so no update can fall between
the two.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pydantic import ValidationError

from contracts.requests import SnapshotReply, SnapshotRequest, describe_request_error
from contracts.updates import CategoryUpdate
from worker.amqp.connection import connection_parameters
from worker.amqp.io import blocking_connection
from worker.amqp.topology import Topology
from worker.backoff import backoff_delay
from worker.errors import InboxRulesError
from worker.settings import Settings
from worker.tools.watch.view import Applied, Gap, InboxView

log = logging.getLogger("worker.watch")  # the name log filters know

# The contract's requests (docs/contract.md); the exchange is Topology.requests_exchange.
SNAPSHOT_ROUTING_KEY = "snapshot"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


class WatchError(InboxRulesError):
    """The watch cannot go on: no broker, no worker answering, or a broken reply."""


OnChange = Callable[[InboxView, str], None]


@dataclass
class _Ask:
    correlation_id: str
    after: str | None
    deadline: float
    asked: int  # how many times this snapshot was asked for (a resync re-asks)


class Watcher:
    """One agent's inbox from the broker into an :class:`InboxView`.

    ``open()`` binds an exclusive, auto-delete queue to the updates exchange with
    ``<account>.<agent>`` and starts consuming it (updates are buffered), and consumes
    RabbitMQ's direct reply-to; only then does :meth:`sync` ask for a snapshot (every
    page of it), so every update after the snapshot is in the queue. :meth:`run` then
    applies updates as they come, asks for a new snapshot on a gap, and reconnects
    (queue, snapshot and all) after a lost connection. ``on_change(view, status)`` is
    called at most every ``render_interval`` seconds while something changed.
    """

    def __init__(self, settings: Settings, account_id: str, agent_id: str, *,
                 categories: Iterable[str] | None = None, timeout: float = 10.0,
                 page_limit: int | None = None, on_change: OnChange | None = None,
                 render_interval: float = 0.25,
                 connect: Callable[[pika.URLParameters], Any] = blocking_connection,
                 ) -> None:
        wanted = list(categories) if categories else None
        try:  # the contract's own checks: ids fit a routing key, names are categories
            SnapshotRequest(account_id=account_id, agent_id=agent_id, categories=wanted)
        except ValidationError as exc:
            raise WatchError(f"bad watch request: {describe_request_error(exc)}") from exc
        self.settings = settings
        self.view = InboxView(account_id, agent_id, categories=wanted)
        self.timeout = timeout
        self.page_limit = page_limit
        self.on_change = on_change
        self.render_interval = render_interval
        topology = Topology.from_settings(settings)  # the worker's names, from the settings
        self.updates_exchange = topology.updates_exchange
        self.requests_exchange = topology.requests_exchange
        self._connect = connect  # a seam: tests pass a double of BlockingConnection
        self.status = "connecting"
        self.ignored = 0  # update bodies that were not a CategoryUpdate
        self.snapshots = 0  # snapshots asked for: 1 + resyncs (+ reconnects)
        self._connection: Any = None
        self._channel: Any = None
        self._ask: _Ask | None = None
        self._returned: str | None = None
        self._dirty = True
        self._last_render = 0.0

    @property
    def routing_key(self) -> str:
        return f"{self.view.account_id}.{self.view.agent_id}"

    # -- the link -------------------------------------------------------------------
    def __enter__(self) -> Watcher:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Connect, bind our queue, consume it and the direct reply-to."""
        params = connection_parameters(self.settings, "inbox-rules watch")
        try:
            self._connection = self._connect(params)
            channel = self._connection.channel()
            # The worker declares the requests exchange: without it nobody could answer.
            channel.exchange_declare(self.requests_exchange, passive=True)
            channel.exchange_declare(self.updates_exchange, exchange_type="topic",
                                     durable=True)
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue, self.updates_exchange, routing_key=self.routing_key)
            # The view is the copy of record and dies with us, as the queue does: no acks.
            channel.basic_consume(queue, self._on_update, auto_ack=True)
            # RabbitMQ: consume the direct reply-to, no-ack, before publishing with it.
            channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
            channel.add_on_return_callback(self._on_return)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self.close()
            raise WatchError(self._refused(exc)) from exc
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            raise WatchError(f"cannot connect to {self.settings.safe_amqp_url}: "
                             f"{exc!r}") from exc
        self._channel = channel
        self._ask = None
        self._returned = None

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except (pika.exceptions.AMQPError, OSError):
                log.debug("closing the watch connection failed", exc_info=True)

    # -- asking for a snapshot ------------------------------------------------------
    def sync(self) -> InboxView:
        """Ask for a snapshot and wait until it (every page) is loaded and the updates
        buffered meanwhile are applied; :class:`WatchError` if no worker answers in
        ``timeout`` seconds (each page, each resync)."""
        if self._channel is None:
            raise WatchError("not connected: call open() first")
        self._request(None)
        while not self.view.synced or self._ask is not None:
            self._pump(0.05)
            if self._returned is not None:
                raise WatchError(self._returned)
            ask = self._ask
            if ask is not None and time.monotonic() > ask.deadline:
                raise WatchError(self._no_answer())
            if ask is None and not self.view.synced:  # a gap among the buffered updates
                self._request(None)
        self.status = "live"
        self._dirty = True
        return self.view

    def _request(self, after: str | None, asked: int = 1) -> None:
        request = SnapshotRequest(account_id=self.view.account_id,
                                  agent_id=self.view.agent_id,
                                  categories=list(self.view.filter) if self.view.filter else None,
                                  after=after,
                                  **({"limit": self.page_limit} if self.page_limit else {}))
        correlation_id = uuid.uuid4().hex
        if after is None and asked == 1:
            self.snapshots += 1
        self._ask = _Ask(correlation_id, after, time.monotonic() + self.timeout, asked)
        self.status = ("loading snapshot" if self.view.seq == 0 and after is None
                       else "resyncing" if after is None else f"loading snapshot after {after}")
        # mandatory: with no worker's queue bound, the broker returns it at once.
        self._channel.basic_publish(
            self.requests_exchange, SNAPSHOT_ROUTING_KEY,
            request.model_dump_json(exclude_none=True).encode(),
            pika.BasicProperties(reply_to=DIRECT_REPLY_TO, correlation_id=correlation_id,
                                 content_type="application/json"),
            mandatory=True)

    def _no_answer(self) -> str:
        return (f"no snapshot reply within {self.timeout:g} s: is a worker (inbox-rules run) "
                f"answering {self.requests_exchange!r} on {self.settings.safe_amqp_url}?")

    # -- callbacks (run inside process_data_events) ---------------------------------
    def _on_update(self, _channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        try:
            update = CategoryUpdate.model_validate_json(body)
        except ValidationError as exc:
            self.ignored += 1  # a gap later, if it was one of ours: that resyncs
            log.warning("ignoring an update that is not a CategoryUpdate: %s", exc)
            return
        if (update.account_id, update.agent_id) != (self.view.account_id, self.view.agent_id):
            self.ignored += 1
            return
        result = self.view.apply(update)
        if isinstance(result, Gap):
            log.info("updates %d..%d missed: resyncing", result.expected, result.got - 1)
            if self._ask is None:
                self._request(None)
        self._dirty = self._dirty or isinstance(result, Applied | Gap)

    def _on_reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        ask = self._ask
        if ask is None or properties.correlation_id != ask.correlation_id:
            return  # a late answer to a request we gave up on
        try:
            reply = SnapshotReply.model_validate_json(body)
        except ValidationError as exc:
            raise WatchError(f"the worker's snapshot reply is not a SnapshotReply: "
                             f"{describe_request_error(exc)}") from exc
        loaded = self.view.load_snapshot(reply, after=ask.after)
        self._ask = None
        if loaded.next_after is not None:
            self._request(loaded.next_after)
        elif loaded.resync_needed:
            self._request(None)
        else:
            self.status = "live"
        self._dirty = True

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        if self._ask is not None and properties.correlation_id == self._ask.correlation_id:
            self._returned = (
                f"no worker is bound to {self.requests_exchange!r} with routing key "
                f"{SNAPSHOT_ROUTING_KEY!r} ({method.reply_text}): is a worker "
                f"(inbox-rules run) running on {self.settings.safe_amqp_url}?")

    def _refused(self, exc: pika.exceptions.ChannelClosedByBroker) -> str:
        if exc.reply_code == 404:
            return (f"{exc.reply_text}: the worker declares {self.requests_exchange!r}; is a "
                    f"worker (inbox-rules run) running on {self.settings.safe_amqp_url}?")
        return f"the broker closed the channel: {exc.reply_text}"

    def _pump(self, seconds: float) -> None:
        self._connection.process_data_events(time_limit=seconds)
        # A blocking channel the broker closed says so only at its next use.
        if self._channel.is_closed:
            raise WatchError("the broker closed the watch channel (see its log for why)")

    # -- live -----------------------------------------------------------------------
    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Keep the view current until ``stop()`` (or Ctrl-C): apply updates, resync on
        a gap (asking again while no worker answers), reconnect after a lost link."""
        attempt = 0
        while not stop():
            try:
                if self._channel is None:
                    self.open()
                    self.sync()
                    attempt = 0
                self._live(stop)
            except (pika.exceptions.AMQPError, WatchError, OSError) as exc:
                attempt += 1
                self.close()
                self.view.reset()  # the queue died with the link: updates may be lost
                delay = backoff_delay(attempt, self.settings.reconnect_max_delay)
                self.status = f"reconnecting in {delay:.1f} s ({exc})"
                self._changed(force=True)
                log.warning("watch link lost (%s): reconnecting in %.1f s", exc, delay)
                time.sleep(delay)

    def _live(self, stop: Callable[[], bool]) -> None:
        while not stop():
            self._pump(0.1)
            ask = self._ask
            if ask is not None and time.monotonic() > ask.deadline:
                # No answer to a resync: ask again (the worker may be restarting).
                log.warning("%s; asking again", self._no_answer())
                self._request(ask.after, ask.asked + 1)
                self.status = f"resyncing: no answer after {ask.asked} request(s)"
                self._dirty = True
            elif ask is None and not self.view.synced:
                self._request(None)
            self._changed()

    def _changed(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.on_change is None or not (self._dirty or force):
            return
        if not force and now - self._last_render < self.render_interval:
            return
        self._dirty = False
        self._last_render = now
        self.on_change(self.view, self.status)
