"""The broker link: one pika SelectConnection, owned by the thread running its ioloop.

It connects (again and again, with backoff and jitter), declares the topology, turns
on publisher confirms and prefetch, and reports what happens to a
:class:`worker.link.LinkHandler`. It knows nothing of events or state:
:mod:`worker.service` decides what to publish and what to ack.

The connection itself (its parameters, and the pika connection that writes each ioloop
pass in one piece) is :mod:`worker.amqp.connection`; ``CoalescingConnection`` and
``connection_parameters`` are still importable from here, where they used to live.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop

from contracts.ids import TruncatedBody
from worker.amqp.connection import CoalescingConnection as CoalescingConnection
from worker.amqp.connection import ConnectionFactory, ConnectionLike
from worker.amqp.connection import connection_parameters as connection_parameters
from worker.amqp.io import IOServices
from worker.amqp.properties import encoded_properties
from worker.amqp.topology import Topology, describe_refusal
from worker.backoff import backoff_delay
from worker.link import Delivery, LinkHandler, Outgoing, Returned
from worker.settings import Settings

log = logging.getLogger("worker.amqp")  # the name log filters know

# A delivery tag the link hands out is (channel number << TAG_BITS) | the broker's tag.
# Broker tags restart at 1 on every channel, so a tag kept across a reconnect would
# ack a *different* message on the new channel; with the channel number in the high
# bits such a stale ack is recognised and dropped (the broker has requeued that
# message already). Tags still grow within a channel, so ``multiple`` acks work.
TAG_BITS = 48


class AmqpLink:
    """Keeps one connection and one channel up; everything runs on ``ioloop``.

    Implements :class:`worker.link.Link`: calls made while the link is down are
    no-ops (``publish`` returns None), and a lost channel is reported once, through
    ``handler.on_lost``, when its connection has closed -- never by an exception
    out of the ioloop.

    A broker that runs out of memory or disk blocks its publishers (``connection.blocked``):
    the connection stays up and confirms simply stop coming until the alarm clears.
    :attr:`blocked` says so, for readiness and metrics; nothing is torn down (pika's
    ``blocked_connection_timeout`` is left unset: reconnecting to a broker that is
    still in alarm only gets blocked again, and gives back every unacked event).
    """

    def __init__(self, settings: Settings, topology: Topology, handler: LinkHandler,
                 ioloop: IOLoop, *,
                 connection_factory: ConnectionFactory = CoalescingConnection) -> None:
        self.settings = settings
        self.topology = topology
        self.handler = handler
        self.ioloop = ioloop
        self.ready = False  # channel open, topology declared, confirms on
        self.reconnects = 0
        self._connection_factory = connection_factory
        self._connection: ConnectionLike | None = None
        self._channel: Any = None
        self._channel_number = 0  # counts channels opened: the high bits of our tags
        self._consumers: dict[str, str] = {}  # consumer tag -> queue
        self._published = 0
        self._attempt = 0
        self.frames_taken = 0  # frames the intake took past pika (deliveries), ever
        self._closing = False
        self._reported_ready = False  # on_ready sent, on_lost not yet
        # Why the broker closed our channel (it then closes the connection, too).
        self._channel_error: BaseException | None = None
        self._refusal: str | None = None  # the set-up refusal last logged
        self._refused = False  # this connection ended in a set-up refusal
        # The broker's reason while it blocks our publishes (its memory or disk alarm).
        self.blocked: str | None = None
        self._blocked_since = 0.0

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        self._connect()

    def close(self) -> None:
        """Close the connection (when idle), then stop the ioloop."""
        self._closing = True
        connection = self._connection
        if connection is None or connection.is_closed:
            self.ioloop.stop()
        elif self.ready and not connection.is_closing:
            connection.close()
        # Otherwise it is opening (pika does not take a close in the middle of its
        # handshake well: _on_qos or the open error finishes the job) or closing.

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        return self.ioloop.call_later(delay, callback)

    def cancel_timer(self, handle: object) -> None:
        self.ioloop.remove_timeout(handle)

    def _connect(self) -> None:
        if self._closing:
            self.ioloop.stop()
            return
        log.debug("connecting to %s", self.settings.safe_amqp_url)
        self._channel_error = None
        self._refused = False
        self._connection = self._connection_factory(
            connection_parameters(self.settings),
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_open_error,
            on_close_callback=self._on_connection_closed,
            # pika's services for our ioloop, but a peer that resets the socket as it
            # connects fails the attempt instead of raising out of the ioloop, and
            # deliveries for our consumers come to :meth:`delivered` past pika's frames.
            custom_ioloop=IOServices(self.ioloop,
                                     sink=self if self.settings.amqp_intake else None),
        )

    def _reconnect_later(self, what: str, why: BaseException, quiet: bool = False) -> None:
        if self._closing:
            self.ioloop.stop()
            return
        self._attempt += 1
        delay = backoff_delay(self._attempt, self.settings.reconnect_max_delay)
        log.log(logging.DEBUG if quiet else logging.WARNING, "%s %s (%s); retrying in %.1f s",
                what, self.settings.safe_amqp_url, _describe(why), delay)
        self.reconnects += 1
        self.ioloop.call_later(delay, self._connect)

    def _on_connection_open_error(self, _connection: object, error: BaseException) -> None:
        self._reconnect_later("cannot connect to", error)

    def _on_connection_closed(self, _connection: object, reason: BaseException) -> None:
        self._channel = None
        self._consumers = {}
        self.ready = False
        if self.blocked is not None:
            # The next connection is blocked only if the broker says so again.
            log.info("the connection the broker blocked (%s) is closed", self.blocked)
            self.blocked = None
        if self._reported_ready:
            self._reported_ready = False
            self.handler.on_lost()
        if self._closing:
            log.info("broker connection closed")
            self.ioloop.stop()
        elif self._channel_error is not None:
            # A refused set-up was logged once, with its fix: retry quietly.
            self._reconnect_later("channel closed on", self._channel_error, quiet=self._refused)
        else:
            self._reconnect_later("lost the connection to", reason)

    def _on_connection_open(self, connection: ConnectionLike) -> None:
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_blocked(self, connection: object, frame: Any) -> None:
        if connection is not self._connection:
            return
        reason = str(frame.method.reason or "a resource alarm")
        if self.blocked is None:
            self._blocked_since = time.monotonic()
            log.warning("the broker blocks publishing on this connection (%s): its memory "
                        "or disk alarm; updates and acks wait until it clears", reason)
        self.blocked = reason

    def _on_unblocked(self, connection: object, _frame: object) -> None:
        if connection is not self._connection or self.blocked is None:
            return
        log.info("the broker unblocked this connection after %.1f s (%s cleared); "
                 "publishing resumes", time.monotonic() - self._blocked_since, self.blocked)
        self.blocked = None

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        self._channel_number += 1
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.add_on_cancel_callback(self._on_broker_cancel)
        self.topology.declare_async(channel, lambda: self._on_declared(channel))

    def _on_declared(self, channel: Any) -> None:
        channel.confirm_delivery(ack_nack_callback=self._on_ack_nack,
                                 callback=lambda _frame: self._on_confirm_mode(channel))

    def _on_confirm_mode(self, channel: Any) -> None:
        channel.basic_qos(prefetch_count=self.settings.prefetch, callback=self._on_qos)

    def _on_qos(self, _frame: object) -> None:
        if self._closing:
            self._close_connection()
            return
        self._published = 0
        self._attempt = 0
        self._refusal = None
        self.ready = True
        self._reported_ready = True
        log.info("connected to %s; topology declared", self.settings.safe_amqp_url)
        self.handler.on_ready()

    def _on_channel_closed(self, channel: object, reason: BaseException) -> None:
        """One channel per connection: a closed channel (a declaration refused, a
        publish to a missing exchange, a broker error) ends its connection too, and
        the connection's close reports the loss. Until then the link is down."""
        if channel is self._channel:
            self._channel = None
            self._consumers = {}
        was_ready, self.ready = self.ready, False
        # A lost connection closes its channels first, with the connection's error:
        # only a close the broker sent for this channel is the channel's own story.
        if not self._closing and isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            self._channel_error = reason
            if not was_ready:
                self._log_refusal(reason)
        self._close_connection()

    def _log_refusal(self, reason: BaseException) -> None:
        """The broker refused the set-up (usually a queue declared with other
        arguments than it has): say so once, clearly, then retry quietly -- an
        operator may fix it while the worker waits."""
        text = describe_refusal(self.topology, self.settings, _describe(reason))
        self._refused = True
        if text == self._refusal:
            log.debug("%s", text)
            return
        self._refusal = text
        log.error("%s", text)

    def _close_connection(self) -> None:
        connection = self._connection
        if connection is not None and not (connection.is_closed or connection.is_closing):
            connection.close()

    # -- consuming ---------------------------------------------------------
    def consume(self, queues: Sequence[str]) -> None:
        channel = self._channel
        if not self.ready or channel is None:
            log.debug("consume() while the link is down: ignored")
            return
        consumed = set(self._consumers.values())
        for queue in queues:
            if queue not in consumed:
                tag = channel.basic_consume(queue, on_message_callback=self._on_message)
                self._consumers[tag] = queue

    def cancel(self) -> None:
        channel = self._channel
        if not self._consumers or channel is None or not channel.is_open:
            self.handler.on_cancelled()
            return
        pending = set(self._consumers)

        def cancelled(tag: str, _frame: object) -> None:
            pending.discard(tag)
            if not pending:
                self.handler.on_cancelled()

        for tag in list(self._consumers):
            channel.basic_cancel(tag, callback=partial(cancelled, tag))
        self._consumers = {}

    def abort(self, stop: bool) -> None:
        connection, channel = self._connection, self._channel
        if stop:
            self._closing = True
        if connection is None or connection.is_closed or channel is None or not self.ready:
            if stop:
                self.close()
            return
        # Qos-Ok comes back only after the broker processed every frame we sent on
        # this channel before it: the acks are in, nothing acked can come back.
        channel.basic_qos(prefetch_count=self.settings.prefetch,
                          callback=lambda _frame: self._drop(connection))

    def _drop(self, connection: ConnectionLike) -> None:
        if not connection.is_closed:
            log.info("dropping the broker connection so that what it holds goes back in "
                     "order")
            connection.drop()

    def _on_broker_cancel(self, _frame: object) -> None:
        # The queue was deleted under us: reconnecting redeclares it.
        log.warning("the broker cancelled the consumer (queue %s deleted?); reconnecting",
                    self.topology.events_queue)
        self.ready = False
        self._channel_error = RuntimeError("consumer cancelled by the broker")
        self._close_connection()

    def _on_message(self, _channel: object, method: Any, properties: pika.BasicProperties,
                    body: bytes) -> None:
        # pika's road (with the intake off, or for consumers the intake left to pika).
        # pika assembled the body whole; what the worker holds from here on is bounded
        # as on the intake's road.
        limit = self.settings.max_message_bytes
        if len(body) > limit:
            body = TruncatedBody(body[:limit], len(body))
        self.delivered(method.consumer_tag, method.delivery_tag, bool(method.redelivered),
                       method.routing_key, properties, body)

    # -- the intake's sink (worker.amqp.intake.DeliverySink) -----------------
    @property
    def max_body_bytes(self) -> int:
        """A body longer than the worker takes is only kept this far: it is
        dead-lettered as too large all the same (see contracts.ids.TruncatedBody)."""
        return self.settings.max_message_bytes

    def takes(self, channel_number: int, consumer_tag: str) -> bool:
        channel = self._channel
        return (channel is not None and channel.channel_number == channel_number
                and consumer_tag in self._consumers)

    def delivered(self, consumer_tag: str, delivery_tag: int, redelivered: bool,
                  routing_key: str, properties: pika.BasicProperties, body: bytes) -> None:
        # Positional, in field order (tag, routing key, body, headers, properties,
        # redelivered, queue, received): one is built per delivery.
        self.handler.on_delivery(Delivery(
            (self._channel_number << TAG_BITS) | delivery_tag, routing_key,
            body, properties.headers or {}, properties, redelivered,
            self._consumers.get(consumer_tag, ""), time.monotonic()))

    def received(self, byte_count: int, frame_count: int) -> None:
        self.frames_taken += frame_count
        connection: Any = self._connection
        if connection is not None:  # pika's counters: its heartbeat checker reads them
            connection.bytes_received += byte_count
            connection.frames_received += frame_count

    def ack(self, tag: int, multiple: bool) -> None:
        """Ack on the channel the delivery came from; a no-op once that is gone (the
        broker has requeued the message, and a new channel's tags mean others)."""
        channel = self._channel
        number, delivery_tag = tag >> TAG_BITS, tag & ((1 << TAG_BITS) - 1)
        if channel is None or not channel.is_open or number != self._channel_number:
            log.debug("ack of %d on a lost channel: ignored", tag)
            return
        channel.basic_ack(delivery_tag, multiple=multiple)

    # -- publishing --------------------------------------------------------
    def publish(self, message: Outgoing) -> int | None:
        """Publish with mandatory set; the number confirms refer to, or None when the
        link is down (the message is not sent; on_lost tells the driver)."""
        channel, connection = self._channel, self._connection
        if not self.ready or channel is None or connection is None or not channel.is_open:
            return None
        try:
            connection.publish(channel, message.exchange, message.routing_key, message.body,
                               encoded_properties(message))
        except (pika.exceptions.ChannelWrongStateError,
                pika.exceptions.ConnectionWrongStateError) as exc:
            log.debug("publish on a closing link: %s", exc)
            return None
        self._published += 1
        return self._published

    def _on_ack_nack(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        self.handler.on_confirm(method.delivery_tag, bool(method.multiple), ok)

    def _on_return(self, _channel: object, method: Any, properties: Any,
                   _body: bytes) -> None:
        """RabbitMQ sends basic.return before the confirm of the same publish, so the
        handler hears of it in time to hold that confirm's batch."""
        log.debug("returned: %s %s (%s)", method.exchange, method.routing_key,
                  method.reply_text)
        self.handler.on_returned(Returned(
            exchange=method.exchange,
            routing_key=method.routing_key,
            message_id=getattr(properties, "message_id", None),
            reply_text=method.reply_text,
        ))


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
