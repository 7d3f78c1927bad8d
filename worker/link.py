"""The seam between the worker and the broker: what the driver may ask of a link, and
what a link reports back. :class:`worker.amqp.link.AmqpLink` is the real one; tests use a
recording double that mypy checks against the same protocol."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

_NO_HEADERS: Mapping[str, Any] = MappingProxyType({})


# Deliveries and outgoing messages are NamedTuples: one or two are built per event, and
# a frozen dataclass's __init__ costs several times more.


class Delivery(NamedTuple):
    """One input message as received, unacknowledged."""

    tag: int
    routing_key: str
    body: bytes
    headers: Mapping[str, Any] = _NO_HEADERS
    # The original AMQP properties (content type, correlation id ...), or None in tests.
    properties: Any = None
    redelivered: bool = False
    # The queue it came from: events and requests share one channel, one stream of tags.
    queue: str = ""
    received: float = 0.0  # time.monotonic() on arrival (latency metrics)


class Outgoing(NamedTuple):
    """One message to publish with a confirm (always ``mandatory``)."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None
    headers: dict[str, Any] | None = None
    # Category updates and dead letters are persistent; replies need not be.
    persistent: bool = True
    content_type: str | None = "application/json"
    type: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    # A dead letter keeps these properties of the original message.
    content_encoding: str | None = None
    timestamp: int | None = None
    app_id: str = "inbox-rules"


@dataclass(frozen=True, slots=True)
class Returned:
    """A ``mandatory`` publish the broker could not route to any queue."""

    exchange: str
    routing_key: str
    message_id: str | None
    reply_text: str


class LinkHandler(Protocol):
    """What a link reports; every call comes from the link's own (ioloop) thread."""

    def on_ready(self) -> None:
        """Channel open, topology declared, confirms on; not consuming yet."""

    def on_delivery(self, delivery: Delivery) -> None: ...

    def on_confirm(self, sequence: int, multiple: bool, ok: bool) -> None:
        """The broker confirmed (ok) or refused publishes up to ``sequence``."""

    def on_returned(self, returned: Returned) -> None:
        """A publish came back unroutable. RabbitMQ sends the return *before* the
        confirm of the same publish, so the handler can hold that confirm's batch."""

    def on_cancelled(self) -> None:
        """Our consumer is cancelled: no more deliveries will come."""

    def on_lost(self) -> None:
        """The channel is gone: unacked deliveries go back to the queue, pending
        confirms will never come."""


class Link(Protocol):
    """What the driver asks of the broker. Calls on a link that is not ready are
    no-ops that say so (``publish`` returns None): a lost link is reported once,
    through :meth:`LinkHandler.on_lost`, never by an exception out of the ioloop."""

    def start(self) -> None: ...

    def close(self) -> None:
        """Close the connection (when idle), then stop the ioloop."""

    def consume(self, queues: Sequence[str]) -> None:
        """Consume these queues too (those already consumed are left as they are)."""

    def cancel(self) -> None:
        """Stop consuming; ``on_cancelled`` follows."""

    def abort(self, stop: bool) -> None:
        """Hand every unacked delivery back in order: make sure the acks sent so far
        reached the broker, then drop the connection without an AMQP close (the broker
        then requeues what we hold, in order, and hands each single-active-consumer
        queue to the next consumer in the same step). Then reconnect, or with ``stop``,
        stop the ioloop."""

    def publish(self, message: Outgoing) -> int | None:
        """Publish; the number confirms refer to, or None when the link is down."""

    def ack(self, tag: int, multiple: bool) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> object: ...

    def cancel_timer(self, handle: object) -> None: ...
