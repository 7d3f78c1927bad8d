"""The broker link: one pika SelectConnection, owned by the thread running its ioloop.

It connects (again and again, with backoff and jitter), declares the topology, turns
on publisher confirms and prefetch, and reports what happens to a :class:`LinkHandler`.
It knows nothing of events or state: :mod:`worker.service` decides what to ack.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pika
from pika.adapters.select_connection import IOLoop
from pika.adapters.utils import io_services_utils

from worker.backoff import backoff_delay
from worker.settings import Settings
from worker.topology import Topology

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One input message as received, unacknowledged."""

    tag: int
    routing_key: str
    properties: pika.BasicProperties
    body: bytes


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish with a confirm."""

    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties


class LinkHandler(Protocol):
    def on_ready(self) -> None:
        """Channel open, topology declared, confirms on; not consuming yet."""

    def on_delivery(self, delivery: Delivery) -> None: ...

    def on_confirm(self, sequence: int, multiple: bool, ok: bool) -> None:
        """The broker confirmed (ok) or refused publishes up to ``sequence``."""

    def on_cancelled(self) -> None:
        """Our consumer is cancelled: no more deliveries will come."""

    def on_lost(self) -> None:
        """The channel is gone: unacked deliveries go back to the queue, pending
        confirms will never come."""


def connection_parameters(settings: Settings, name: str = "inbox-rules worker",
                          ) -> pika.URLParameters:
    """Parameters from the URL plus heartbeat, TLS and a name the broker shows."""
    params = pika.URLParameters(settings.amqp_url)
    if settings.heartbeat:
        params.heartbeat = settings.heartbeat
    params.connection_attempts = 1
    params.client_properties = {"connection_name": name}
    context = settings.tls_context()
    if context is not None:
        params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
    return params


# pika keeps each write as its own chunk and send()s them one by one when the socket
# is writable: one system call per published message (and per ack). Joining what is
# buffered first sends the same bytes, in the same order, in a few large writes: one
# system call per ioloop pass instead of hundreds. Wraps a private pika 1.x method
# (pika is pinned <2); should it vanish, nothing is wrapped and the worker is only
# slower, never wrong.
_JOIN_UP_TO = 256 * 1024


def _joining_produce(produce: Callable[[Any], None]) -> Callable[[Any], None]:
    def produce_joined(transport: Any) -> None:
        buffers = getattr(transport, "_tx_buffers", None)
        if buffers is not None and len(buffers) > 1:
            joined: list[bytes] = []
            pending: list[bytes] = []
            size = 0
            for chunk in buffers:
                pending.append(chunk)
                size += len(chunk)
                if size >= _JOIN_UP_TO:
                    joined.append(b"".join(pending))
                    pending, size = [], 0
            if pending:
                joined.append(b"".join(pending))
            buffers.clear()
            buffers.extend(joined)
        produce(transport)

    produce_joined.__wrapped__ = produce  # type: ignore[attr-defined]
    return produce_joined


_transport = getattr(io_services_utils, "_AsyncTransportBase", None)
if _transport is not None and hasattr(_transport, "_produce") and not hasattr(
        _transport._produce, "__wrapped__"):
    _transport._produce = _joining_produce(_transport._produce)


class _CoalescingConnection(pika.SelectConnection):  # type: ignore[misc]
    """One socket write per published message instead of one per frame (method,
    header, body): at thousands of updates a second the system calls were the single
    largest cost of the worker. Overrides a private pika 1.x hook (pika is pinned <2);
    should it ever vanish, this is only slower, never wrong."""

    def _output_marshaled_frames(self, marshaled_frames: list[bytes]) -> None:
        if len(marshaled_frames) < 2:
            super()._output_marshaled_frames(marshaled_frames)
            return
        data = b"".join(marshaled_frames)
        self.bytes_sent += len(data)
        self.frames_sent += len(marshaled_frames)
        self._adapter_emit_data(data)


class AmqpLink:
    """Keeps one connection and one channel up; everything runs on ``ioloop``."""

    def __init__(self, settings: Settings, topology: Topology, handler: LinkHandler,
                 ioloop: IOLoop) -> None:
        self.settings = settings
        self.topology = topology
        self.handler = handler
        self.ioloop = ioloop
        self._connection: _CoalescingConnection | None = None
        self._channel: Any = None
        self._consumer_tag: str | None = None
        self._published = 0
        self._attempt = 0
        self._closing = False
        self.ready = False
        self.reconnects = 0

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        self._connect()

    def close(self) -> None:
        """Close the connection, then stop the ioloop."""
        self._closing = True
        connection = self._connection
        if connection is None or connection.is_closed:
            self.ioloop.stop()
        elif self.ready and not connection.is_closing:
            connection.close()
        # Otherwise it is still opening: pika does not take a close in the middle of
        # its handshake well, so _on_qos (or the open error) finishes the job.

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        return self.ioloop.call_later(delay, callback)

    def cancel_timer(self, handle: object) -> None:
        self.ioloop.remove_timeout(handle)

    def _connect(self) -> None:
        if self._closing:
            self.ioloop.stop()
            return
        log.debug("connecting to %s", self.settings.safe_amqp_url)
        self._connection = _CoalescingConnection(
            connection_parameters(self.settings),
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_open_error,
            on_close_callback=self._on_connection_closed,
            custom_ioloop=self.ioloop,
        )

    def _reconnect_later(self, what: str, why: BaseException) -> None:
        if self._closing:
            self.ioloop.stop()
            return
        self._attempt += 1
        delay = backoff_delay(self._attempt, self.settings.reconnect_max_delay)
        log.warning("%s %s (%s); retrying in %.1f s", what, self.settings.safe_amqp_url,
                    _describe(why), delay)
        self.reconnects += 1
        self.ioloop.call_later(delay, self._connect)

    def _on_connection_open_error(self, _connection: object, error: BaseException) -> None:
        self._reconnect_later("cannot connect to", error)

    def _on_connection_closed(self, _connection: object, reason: BaseException) -> None:
        self._channel = None
        self._consumer_tag = None
        was_ready, self.ready = self.ready, False
        if was_ready:
            self.handler.on_lost()
        if self._closing:
            log.info("broker connection closed")
            self.ioloop.stop()
        else:
            self._reconnect_later("lost the connection to", reason)

    def _on_connection_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.add_on_cancel_callback(self._on_broker_cancel)
        self.topology.declare_async(channel, self._on_declared)

    def _on_declared(self) -> None:
        self._channel.confirm_delivery(ack_nack_callback=self._on_ack_nack,
                                       callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: object) -> None:
        self._channel.basic_qos(prefetch_count=self.settings.prefetch, callback=self._on_qos)

    def _on_qos(self, _frame: object) -> None:
        if self._closing:
            if self._connection is not None:
                self._connection.close()
            return
        self._published = 0
        self._attempt = 0
        self.ready = True
        log.info("connected to %s; topology declared", self.settings.safe_amqp_url)
        self.handler.on_ready()

    def _on_channel_closed(self, _channel: object, reason: BaseException) -> None:
        # One channel per connection: a closed channel (a declaration refused, a
        # broker error) is handled like a lost connection.
        if not self._closing:
            log.warning("channel closed: %s", reason)
        connection = self._connection
        if connection is not None and not (connection.is_closed or connection.is_closing):
            connection.close()

    # -- consuming ---------------------------------------------------------
    def consume(self) -> None:
        self._consumer_tag = self._channel.basic_consume(
            self.topology.events_queue, on_message_callback=self._on_message)

    def cancel(self) -> None:
        if self._consumer_tag is None or self._channel is None:
            self.handler.on_cancelled()
            return
        self._channel.basic_cancel(self._consumer_tag,
                                   callback=lambda _frame: self.handler.on_cancelled())
        self._consumer_tag = None

    def _on_broker_cancel(self, _frame: object) -> None:
        # The queue was deleted under us: reconnecting redeclares it.
        log.warning("broker cancelled the consumer; reconnecting")
        self._on_channel_closed(self._channel, RuntimeError("consumer cancelled by broker"))

    def _on_message(self, _channel: object, method: Any, properties: pika.BasicProperties,
                    body: bytes) -> None:
        self.handler.on_delivery(Delivery(method.delivery_tag, method.routing_key,
                                          properties, body))

    def ack(self, tag: int, multiple: bool) -> None:
        if self._channel is not None and self._channel.is_open:
            self._channel.basic_ack(tag, multiple=multiple)

    # -- publishing --------------------------------------------------------
    def publish(self, message: Outgoing) -> int:
        """Publish with mandatory set; the returned number is the one confirms refer to."""
        self._channel.basic_publish(message.exchange, message.routing_key, message.body,
                                    message.properties, mandatory=True)
        self._published += 1
        return self._published

    def _on_ack_nack(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        self.handler.on_confirm(method.delivery_tag, bool(method.multiple), ok)

    def _on_return(self, _channel: object, method: Any, _properties: object,
                   _body: bytes) -> None:
        # No queue bound for that routing key: nobody downstream wants this update.
        log.debug("unroutable: %s %s (%s)", method.exchange, method.routing_key,
                  method.reply_text)


def _describe(error: BaseException) -> str:
    """The innermost cause pika wraps its connection failures around."""
    while True:
        inner = getattr(error, "exceptions", None)  # AMQPConnectionWorkflowFailed
        wrapped = getattr(error, "exception", None)  # AMQPConnectorPhaseErrorBase
        if inner:
            error = inner[-1]
        elif isinstance(wrapped, BaseException):
            error = wrapped
        elif error.args and isinstance(error.args[0], BaseException):
            error = error.args[0]
        else:
            break
    text = str(error) or type(error).__name__
    return text if type(error).__name__ in text else f"{type(error).__name__}: {text}"
