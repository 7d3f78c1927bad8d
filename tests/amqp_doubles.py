"""Doubles for testing :class:`worker.amqp.link.AmqpLink`: a handler that records what the
link reports, and a pika connection/channel pair the test drives by hand (so the
link's state machine runs without a broker). And for the downstream client
(:mod:`contracts.client`): :class:`BlockingWorker`, a pika ``BlockingConnection`` with a
worker behind it."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pika
import pika.exceptions
import pika.frame
import pika.spec

from contracts.asyncapi_parts.common import DIRECT_REPLY_TO, REQUESTS_EXCHANGE
from contracts.requests import SnapshotReply, SnapshotRequest
from contracts.updates import CategoryUpdate
from worker.link import Delivery, Returned


@dataclass
class RecordingHandler:
    """A :class:`worker.link.LinkHandler` that records every report, in order, as
    ``(kind, payload)``; ``on_ready_do``/``on_lost_do`` run on the link's thread."""

    events: list[tuple[str, Any]] = field(default_factory=list)
    on_ready_do: list[Callable[[], None]] = field(default_factory=list)
    on_lost_do: list[Callable[[], None]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def _record(self, kind: str, payload: Any = None) -> None:
        with self.changed:
            self.events.append((kind, payload))
            self.changed.notify_all()

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def count(self, kind: str) -> int:
        return self.kinds().count(kind)

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(condition, timeout):
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                     f"saw {self.kinds()}")

    def on_ready(self) -> None:
        self._record("ready")
        for action in self.on_ready_do:
            action()

    def on_delivery(self, delivery: Delivery) -> None:
        self._record("delivery", delivery)

    def on_confirm(self, sequence: int, multiple: bool, ok: bool) -> None:
        self._record("confirm", (sequence, multiple, ok))

    def on_returned(self, returned: Returned) -> None:
        self._record("returned", returned)

    def on_cancelled(self) -> None:
        self._record("cancelled")

    def on_lost(self) -> None:
        self._record("lost")
        for action in self.on_lost_do:
            action()


class FakeChannel:
    """The slice of ``pika.channel.Channel`` the link uses. Declarations succeed at
    once unless ``refuse`` names a queue: then the broker "closes" the channel."""

    def __init__(self, refuse: dict[str, tuple[int, str]]) -> None:
        self.is_open = True
        self.refuse = refuse
        self.declared: list[tuple[str, dict[str, Any]]] = []
        self.published: list[tuple[str, str, bytes, Any, bool]] = []
        self.acks: list[tuple[int, bool]] = []
        self.consuming: list[str] = []
        self.on_close: list[Callable[[Any, BaseException], None]] = []
        self.on_return: list[Callable[[Any, Any, Any, bytes], None]] = []
        self.on_cancel: list[Callable[[Any], None]] = []
        self.on_ack_nack: Callable[[Any], None] | None = None
        self.deliver: Callable[..., None] | None = None  # the consumer's callback

    def add_on_close_callback(self, callback: Callable[[Any, BaseException], None]) -> None:
        self.on_close.append(callback)

    def add_on_return_callback(self, callback: Callable[[Any, Any, Any, bytes], None]) -> None:
        self.on_return.append(callback)

    def add_on_cancel_callback(self, callback: Callable[[Any], None]) -> None:
        self.on_cancel.append(callback)

    def _declare(self, method: str, callback: Callable[[Any], None],
                 kwargs: dict[str, Any]) -> None:
        self.declared.append((method, kwargs))
        refusal = self.refuse.get(kwargs.get("queue", "")) if method == "queue_declare" \
            else None
        if refusal is not None:
            self.close_by_broker(*refusal)
        else:
            callback(None)

    def exchange_declare(self, callback: Callable[[Any], None], **kwargs: Any) -> None:
        self._declare("exchange_declare", callback, kwargs)

    def queue_declare(self, callback: Callable[[Any], None], **kwargs: Any) -> None:
        self._declare("queue_declare", callback, kwargs)

    def queue_bind(self, callback: Callable[[Any], None], **kwargs: Any) -> None:
        self._declare("queue_bind", callback, kwargs)

    def confirm_delivery(self, ack_nack_callback: Callable[[Any], None],
                         callback: Callable[[Any], None]) -> None:
        self.on_ack_nack = ack_nack_callback
        callback(None)

    def basic_qos(self, prefetch_count: int, callback: Callable[[Any], None]) -> None:
        callback(None)

    def _raise_if_closed(self) -> None:
        # What pika does for any call on a channel that is not open.
        if not self.is_open:
            raise pika.exceptions.ChannelWrongStateError("Channel is closed.")

    def basic_publish(self, exchange: str, routing_key: str, body: bytes,
                      properties: Any = None, mandatory: bool = False) -> None:
        self._raise_if_closed()
        self.published.append((exchange, routing_key, body, properties, mandatory))

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self._raise_if_closed()
        self.acks.append((delivery_tag, multiple))

    def basic_consume(self, queue: str, on_message_callback: Callable[..., None]) -> str:
        self._raise_if_closed()
        self.consuming.append(queue)
        self.deliver = on_message_callback
        return f"ctag-{len(self.consuming)}"

    def basic_cancel(self, consumer_tag: str, callback: Callable[[Any], None]) -> None:
        self._raise_if_closed()
        callback(None)

    def close_by_broker(self, code: int, text: str) -> None:
        self.is_open = False
        for callback in self.on_close:
            callback(self, pika.exceptions.ChannelClosedByBroker(code, text))

    def close_with(self, reason: BaseException) -> None:
        """What pika does to the channels of a connection that is gone."""
        self.is_open = False
        for callback in self.on_close:
            callback(self, reason)


class FakeConnection:
    """A ``SelectConnection`` stand-in: opens (and opens its channel) when the test
    says so; ``close`` or ``drop`` starts closing, ``closed`` finishes it."""

    def __init__(self, broker: FakeBroker, *, on_open_callback: Callable[[Any], None],
                 on_open_error_callback: Callable[[Any, BaseException], None],
                 on_close_callback: Callable[[Any, BaseException], None]) -> None:
        self.broker = broker
        self.is_closed = False
        self.is_closing = False
        self.dropped = False
        self.channels: list[FakeChannel] = []
        self.on_blocked: list[Callable[[Any, Any], None]] = []
        self.on_unblocked: list[Callable[[Any, Any], None]] = []
        self._on_open = on_open_callback
        self._on_open_error = on_open_error_callback
        self._on_close = on_close_callback

    def open(self) -> FakeChannel:
        self._on_open(self)
        return self.channels[-1]

    def fail_to_open(self, error: BaseException) -> None:
        self.is_closed = True
        self._on_open_error(self, error)

    def channel(self, *, on_open_callback: Callable[[Any], None]) -> FakeChannel:
        channel = FakeChannel(self.broker.refuse)
        self.channels.append(channel)
        on_open_callback(channel)
        return channel

    def add_on_connection_blocked_callback(self, callback: Callable[[Any, Any], None],
                                           ) -> None:
        self.on_blocked.append(callback)

    def add_on_connection_unblocked_callback(self, callback: Callable[[Any, Any], None],
                                             ) -> None:
        self.on_unblocked.append(callback)

    def block(self, reason: str) -> None:
        """The broker's ``connection.blocked`` (a resource alarm), as pika reports it."""
        frame = pika.frame.Method(0, pika.spec.Connection.Blocked(reason=reason))
        for callback in self.on_blocked:
            callback(self, frame)

    def unblock(self) -> None:
        """The broker's ``connection.unblocked``: the alarm cleared."""
        frame = pika.frame.Method(0, pika.spec.Connection.Unblocked())
        for callback in self.on_unblocked:
            callback(self, frame)

    def publish(self, channel: FakeChannel, exchange: str, routing_key: str, body: bytes,
                properties: bytes) -> None:
        """What CoalescingConnection.publish puts on the wire, recorded by the channel
        as a ``basic_publish`` with the properties decoded from those bytes."""
        decoded = pika.BasicProperties()
        decoded.decode(properties)
        channel.basic_publish(exchange, routing_key, body, decoded, mandatory=True)

    def close(self) -> None:
        assert not (self.is_closing or self.is_closed), "pika raises on a second close()"
        self.is_closing = True

    def drop(self) -> None:
        """The stream is cut without an AMQP close; pika finishes that asynchronously,
        as ``closed`` does here (with the reason the test gives)."""
        assert not self.is_closed, "nothing left to drop"
        self.dropped = True
        self.is_closing = True

    def closed(self, reason: BaseException) -> None:
        """The connection is gone (closed by us, or lost): pika closes its channels
        with the reason first, then reports the connection."""
        for channel in self.channels:
            if channel.is_open:
                channel.close_with(reason)
        self.is_closing = False
        self.is_closed = True
        self._on_close(self, reason)


class FakeBroker:
    """Makes the link's connections (pass ``connect`` as its ``connection_factory``)
    and keeps them, newest last; ``refuse`` maps a queue name to the (code, text)
    the broker closes the channel with when that queue is declared."""

    def __init__(self) -> None:
        self.connections: list[FakeConnection] = []
        self.refuse: dict[str, tuple[int, str]] = {}

    def connect(self, _parameters: object, *, on_open_callback: Callable[[Any], None],
                on_open_error_callback: Callable[[Any, BaseException], None],
                on_close_callback: Callable[[Any, BaseException], None],
                custom_ioloop: object) -> FakeConnection:
        connection = FakeConnection(self, on_open_callback=on_open_callback,
                                    on_open_error_callback=on_open_error_callback,
                                    on_close_callback=on_close_callback)
        self.connections.append(connection)
        return connection

    @property
    def connection(self) -> FakeConnection:
        return self.connections[-1]


# -- the downstream client's broker -------------------------------------------------------
class Frame:
    """A stand-in for pika's method frames and properties: the given attributes."""

    def __init__(self, *args: Any, **attributes: Any) -> None:
        if args:
            self.method = args[0]
        self.__dict__.update(attributes)


Answer = Callable[[SnapshotRequest], SnapshotReply | None]


@dataclass
class BlockingWorker:
    """A ``pika.BlockingConnection`` and its channels in one, with a worker behind it:
    snapshot requests are answered by ``answer`` (None: never), or returned unrouted
    (``returns``); :meth:`publish_updates` delivers updates to the queue bound for
    them. Deliveries and timers (``call_later``) run in ``process_data_events``, which
    raises ``lose`` (a lost connection) once it is set. Call it as ``connect``: it
    records the connection and gives itself."""

    answer: Answer
    returns: bool = False
    lose: BaseException | None = None
    calls: list[str] = field(default_factory=list)
    requests: list[tuple[SnapshotRequest, Any, bool]] = field(default_factory=list)
    bindings: dict[str, str] = field(default_factory=dict)  # routing key -> queue
    pending: deque[Callable[[], None]] = field(default_factory=deque)
    timers: dict[int, tuple[float, Callable[[], None]]] = field(default_factory=dict)
    consumers: dict[str, Callable[..., None]] = field(default_factory=dict)
    on_return: Callable[..., None] | None = None
    is_open: bool = True
    queues: int = 0
    channels: list[BlockingChannel] = field(default_factory=list)

    @property
    def is_closed(self) -> bool:
        return not self.is_open

    # connection
    def __call__(self, _params: object) -> BlockingWorker:
        self.calls.append("connect")
        self.is_open, self.lose = True, None
        return self

    def channel(self) -> BlockingChannel:
        self.channels.append(BlockingChannel(self))
        return self.channels[-1]

    def close(self) -> None:
        self.calls.append("close")
        self.is_open = False

    def call_later(self, delay: float, callback: Callable[[], None]) -> int:
        timer = max(self.timers, default=0) + 1
        self.timers[timer] = (time.monotonic() + delay, callback)
        return timer

    def remove_timeout(self, timer: int) -> None:
        self.timers.pop(timer, None)

    def process_data_events(self, time_limit: float = 0) -> None:
        if self.lose is not None:
            self.is_open = False
            raise self.lose
        if not self.pending:
            time.sleep(min(time_limit, 0.005))
        for _ in range(len(self.pending)):  # what came meanwhile waits for the next call
            self.pending.popleft()()
        now = time.monotonic()
        for timer, (due, callback) in sorted(self.timers.items()):
            if due <= now:
                del self.timers[timer]
                callback()

    # the channel's (BlockingChannel passes them on)
    def exchange_declare(self, exchange: str, **_kw: object) -> None:
        self.calls.append(f"exchange_declare {exchange}")

    def queue_declare(self, queue: str, **kw: object) -> Any:
        assert kw == {"exclusive": True, "auto_delete": True}
        self.calls.append("queue_declare")
        self.queues += 1
        return Frame(Frame(queue=f"amq.gen-{self.queues}"))

    def queue_bind(self, queue: str, exchange: str, routing_key: str) -> None:
        self.calls.append(f"queue_bind {exchange} {routing_key}")
        self.bindings[routing_key] = queue

    def basic_consume(self, queue: str, callback: Callable[..., None],
                      auto_ack: bool = False) -> None:
        assert auto_ack
        self.calls.append(f"basic_consume {queue}")
        self.consumers[queue] = callback

    def add_on_return_callback(self, callback: Callable[..., None]) -> None:
        self.on_return = callback

    def basic_publish(self, exchange: str, routing_key: str, body: bytes,
                      properties: Any, mandatory: bool = False) -> None:
        assert (exchange, routing_key) == (REQUESTS_EXCHANGE, "snapshot")
        # RabbitMQ's rule: the direct reply-to is consumed before it is published with.
        assert DIRECT_REPLY_TO in self.consumers
        self.calls.append("basic_publish")
        request = SnapshotRequest.model_validate_json(body)
        self.requests.append((request, properties, mandatory))
        if self.returns:
            on_return = self.on_return
            assert on_return is not None
            method = Frame(reply_text="NO_ROUTE")
            self.pending.append(lambda: on_return(self, method, properties, body))
            return
        reply = self.answer(request)
        if reply is not None:
            answer = Frame(correlation_id=properties.correlation_id)
            deliver = self.consumers[DIRECT_REPLY_TO]
            self.pending.append(
                lambda: deliver(self, None, answer, reply.model_dump_json().encode()))

    def publish_updates(self, updates: Sequence[CategoryUpdate]) -> None:
        """Deliver ``updates`` (after whatever is pending) to the queue bound for each."""
        for update in updates:
            queue = self.bindings[update.routing_key]
            body = update.model_dump_json().encode()
            self.pending.append(partial(self._deliver, queue, body))

    def _deliver(self, queue: str, body: bytes) -> None:
        self.consumers[queue](self, None, None, body)


class BlockingChannel:
    """A channel of a :class:`BlockingWorker`: its own state, the worker's methods."""

    def __init__(self, worker: BlockingWorker) -> None:
        self.worker = worker
        self.closed_by_broker = False
        self.closed = False

    @property
    def is_open(self) -> bool:
        return self.worker.is_open and not (self.closed or self.closed_by_broker)

    @property
    def is_closed(self) -> bool:
        return not self.is_open

    def close(self) -> None:
        self.worker.calls.append("channel close")
        self.closed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.worker, name)
