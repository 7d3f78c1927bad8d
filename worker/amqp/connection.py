"""The broker connection: its parameters (URL, heartbeat, TLS, a name the broker shows)
and the pika connection the link drives, which writes each ioloop pass in one piece.

:class:`ConnectionLike` is what :class:`worker.amqp.link.AmqpLink` uses of it, so that
tests can drive a double.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pika
import pika.exceptions

from worker.amqp.frames import FRAME_OVERHEAD, PublishFrames
from worker.settings import Settings


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


class CoalescingConnection(pika.SelectConnection):  # type: ignore[misc]
    """A SelectConnection that sends everything one ioloop pass produced in ONE write.

    Stock pika hands every frame to the transport separately (a publish is three
    frames, an ack one), and the transport send()s each chunk with its own system
    call: at thousands of updates a second those calls were the largest single cost
    of the worker. Here every frame still goes, in order, through the one method pika
    funnels all output through (``_output_marshaled_frames``, called by
    ``_send_frame`` and ``_send_message``); it is queued, and one callback per ioloop
    pass joins the queue and passes it on through pika's own ``_adapter_emit_data``.

    Publishes take a shorter road into the same queue (:meth:`publish`): their frames
    are marshalled in one piece by :mod:`worker.amqp.frames` instead of pika's frame
    objects, and queued in call order with everything else.

    This is the worker's only override of a private pika method (``drop`` also calls
    one: pika's own stream termination); pika is pinned to the minor release both were
    checked on, and tests/test_amqp_hook.py fails if either target moves. While the
    connection is not open (handshake, closing) frames are written at once, exactly as
    stock pika does: pika may tear the stream down in the same pass, and nothing may
    overtake a Close.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._publish_frames = PublishFrames()
        super().__init__(*args, **kwargs)

    def publish(self, channel: Any, exchange: str, routing_key: str, body: bytes,
                properties: bytes) -> None:
        """``basic.publish`` with ``mandatory`` on an open channel; ``properties`` is
        the encoded property list (:func:`worker.amqp.properties.encoded_properties`).
        Raises pika's wrong-state errors, as ``Channel.basic_publish`` does."""
        if not self.is_open:
            raise pika.exceptions.ConnectionWrongStateError("Connection is not open.")
        if not channel.is_open:
            raise pika.exceptions.ChannelWrongStateError("Channel is closed.")
        data, frames = self._publish_frames.encode(
            channel.channel_number, exchange, routing_key, properties, body,
            self.params.frame_max - FRAME_OVERHEAD)
        self.bytes_sent += len(data)
        self.frames_sent += frames
        self._pending.append(data)
        self._flush_soon()

    def _output_marshaled_frames(self, marshaled_frames: Sequence[bytes]) -> None:
        """Queue the frames; one flush per ioloop pass writes them all."""
        for marshaled in marshaled_frames:
            self.bytes_sent += len(marshaled)
            self.frames_sent += 1
            self._pending.append(marshaled)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self.is_open:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.ioloop.call_later(0, self._flush)

    def drop(self) -> None:
        """Close the TCP stream without an AMQP close, as a lost network would (pika's
        own path for a missed heartbeat): the broker requeues our unacked deliveries in
        their order. Queued frames are discarded, as on any loss."""
        self._pending.clear()
        self._terminate_stream(pika.exceptions.StreamLostError(
            "connection dropped on purpose: unacked deliveries go back in order"))

    def _flush(self) -> None:
        """Hand the queued frames to the transport as one chunk, in order."""
        self._flush_scheduled = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if self.is_closed:
            # The stream is gone: stock pika drops unsent output here too (the
            # transport's abort clears its buffers), and emitting would fail.
            return
        self._adapter_emit_data(data)


class ConnectionLike(Protocol):
    """What the link uses of a pika connection (so tests can drive a double)."""

    @property
    def is_closed(self) -> bool: ...

    @property
    def is_closing(self) -> bool: ...

    def close(self) -> None: ...

    def drop(self) -> None:
        """Close the stream without an AMQP close (see CoalescingConnection.drop)."""

    def channel(self, *, on_open_callback: Callable[[Any], None]) -> Any: ...

    def add_on_connection_blocked_callback(
            self, callback: Callable[[Any, Any], None]) -> None:
        """``callback(connection, frame)`` on the broker's ``connection.blocked``."""

    def add_on_connection_unblocked_callback(
            self, callback: Callable[[Any, Any], None]) -> None:
        """``callback(connection, frame)`` on the broker's ``connection.unblocked``."""

    def publish(self, channel: Any, exchange: str, routing_key: str, body: bytes,
                properties: bytes) -> None:
        """``basic.publish`` (mandatory) on ``channel`` (see CoalescingConnection)."""


ConnectionFactory = Callable[..., ConnectionLike]
