"""The receive side of the worker's connection: deliveries taken straight off the byte
stream, everything else left to pika.

pika turns every incoming frame into objects and runs it through its callback
registry, frame assembler and channel dispatch: about a quarter of the worker's main
thread on the default stream, per delivery three frames (``Basic.Deliver``, content
header, body). :class:`DeliveryIntake` sits between pika's transport and its
connection, as the ``AbstractStreamProtocol`` pika's public I/O services interface
hands data to (see :mod:`worker.amqp.io`). It splits the stream into frames by their
7-byte headers and

- hands a delivery for a consumer the :class:`DeliverySink` takes (the link's own
  consumers) to the sink whole: method fields, properties (decoded by pika's own
  ``BasicProperties``), body;
- passes every other frame to pika unchanged and in order (connection and channel
  methods, confirms, returns, heartbeats, deliveries for anyone else), only ever whole
  frames, so pika never sees a delivery's frames without its method;
- keeps pika's received-bytes count, which its heartbeat checker reads, as if pika had
  read the delivery itself;
- keeps no more of a body than the sink's ``max_body_bytes``: a body the content header
  declares larger is counted to its end but only its first ``max_body_bytes`` bytes are
  kept, and the sink gets them as a :class:`contracts.ids.TruncatedBody` (which the
  parsers refuse as too large, naming the declared size). With a broker limit of 128 MiB
  and hundreds of deliveries prefetched, whole bodies would bound memory by the broker's
  limit instead of the worker's.

Anything it does not recognise as a well-formed frame (the protocol header a broker
sends to refuse the version, a bad frame end) goes to pika as it came, and the intake
steps aside for good: pika's own errors and close handling stand.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

from pika.spec import BasicProperties

from contracts.ids import TruncatedBody
from worker.amqp.frames import (
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    FRAME_START,
)

HEADER_SIZE = FRAME_START.size  # type (1), channel (2), payload size (4)
_END = FRAME_END[0]
BASIC_DELIVER = (60 << 16) | 60  # class id, method id
KNOWN_FRAMES = frozenset((FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT))

_method_index = struct.Struct(">L")
_longlong = struct.Struct(">Q")  # a delivery tag, a body size


class DeliverySink(Protocol):
    """Who gets the deliveries the intake takes: the broker link."""

    @property
    def max_body_bytes(self) -> int:
        """Body bytes kept at most; a longer body reaches :meth:`delivered` as a
        :class:`TruncatedBody` of this length (read once, when the intake is made)."""

    def takes(self, channel_number: int, consumer_tag: str) -> bool:
        """Whether a delivery for this consumer on this channel is the sink's
        (asked at its ``Basic.Deliver`` and again once it is whole)."""

    def delivered(self, consumer_tag: str, delivery_tag: int, redelivered: bool,
                  routing_key: str, properties: BasicProperties, body: bytes) -> None:
        """One whole delivery, in stream order with everything pika processed."""

    def received(self, byte_count: int, frame_count: int) -> None:
        """Bytes and frames taken past pika (its counters, for heartbeats)."""


def _short_string(data: bytes, offset: int) -> tuple[str, int]:
    # As pika decodes a shortstr: UTF-8, or the raw bytes if that fails.
    length = data[offset]
    start = offset + 1
    raw = data[start:start + length]
    try:
        return raw.decode(), start + length
    except UnicodeDecodeError:
        return raw, start + length  # type: ignore[return-value]  # pika's behaviour


class _Pending:
    """A delivery whose method frame is in and whose content is still arriving.

    Made from the ``Basic.Deliver`` fields after the consumer tag, which begin at
    ``cursor`` in ``buffer``: read here, in the call the intake makes per delivery anyway.
    """

    __slots__ = ("body_size", "chunks", "consumer_tag", "delivery_tag", "kept",
                 "oversized", "properties", "received", "redelivered", "routing_key")

    def __init__(self, consumer_tag: str, buffer: bytes, cursor: int) -> None:
        self.consumer_tag = consumer_tag
        self.delivery_tag: int = _longlong.unpack_from(buffer, cursor)[0]
        self.redelivered = bool(buffer[cursor + 8] & 1)
        _exchange, cursor = _short_string(buffer, cursor + 9)
        self.routing_key, _end = _short_string(buffer, cursor)
        self.properties: BasicProperties | None = None
        self.body_size = 0
        self.chunks: list[bytes] = []
        self.received = 0  # body bytes that arrived
        self.oversized = False  # declared larger than the sink keeps
        self.kept = 0  # body bytes in chunks (counted only when oversized)


class DeliveryIntake:
    """An ``AbstractStreamProtocol`` in front of pika's (``protocol``)."""

    def __init__(self, protocol: Any, sink: DeliverySink) -> None:
        self._protocol = protocol
        self._sink = sink
        self._max_body_bytes = sink.max_body_bytes
        self._buffer = b""
        self._transparent = False
        self._pending: dict[int, _Pending] = {}  # channel -> delivery being assembled
        self.connection_made = protocol.connection_made
        self.connection_lost = protocol.connection_lost
        self.eof_received = protocol.eof_received

    def __getattr__(self, name: str) -> Any:
        # pika's connection workflow treats the protocol as its connection.
        return getattr(self._protocol, name)

    def data_received(self, data: bytes) -> None:
        if self._transparent:
            self._protocol.data_received(data)
            return
        buffer = self._buffer + data if self._buffer else data
        size = len(buffer)
        offset = 0  # the first byte not yet looked at
        passed = 0  # the first byte of the frames for pika not yet handed over
        taken_bytes = taken_frames = 0
        pending = self._pending
        while size - offset >= HEADER_SIZE:
            kind, channel, length = FRAME_START.unpack_from(buffer, offset)
            if kind not in KNOWN_FRAMES:
                self._step_aside(buffer[passed:])
                return
            end = offset + HEADER_SIZE + length + 1
            if end > size:
                break  # the rest of this frame is still on its way
            if buffer[end - 1] != _END:
                self._step_aside(buffer[passed:])
                return
            payload = offset + HEADER_SIZE
            delivery = pending.get(channel) if pending else None
            if delivery is None:
                if (kind != FRAME_METHOD or length < 4
                        or _method_index.unpack_from(buffer, payload)[0] != BASIC_DELIVER):
                    offset = end  # pika's, handed over with its neighbours
                    continue
                consumer_tag, cursor = _short_string(buffer, payload + 4)
                if not self._sink.takes(channel, consumer_tag):
                    offset = end
                    continue
                pending[channel] = _Pending(consumer_tag, buffer, cursor)
            elif kind == FRAME_HEADER:
                delivery.body_size = _longlong.unpack_from(buffer, payload + 4)[0]
                delivery.oversized = delivery.body_size > self._max_body_bytes
                delivery.properties = BasicProperties().decode(buffer[payload + 12:end - 1])
            elif kind == FRAME_BODY:
                if not delivery.oversized:
                    delivery.chunks.append(buffer[payload:end - 1])
                else:
                    self._keep_head(delivery, buffer, payload, end - 1)
                delivery.received += length
            else:
                # A content frame was due on this channel: the stream is not AMQP as
                # we know it. pika's frame assembler will say so.
                self._step_aside(buffer[passed:])
                return
            # This frame is ours: pika first gets what came before it, in order.
            if passed < offset:
                self._protocol.data_received(buffer[passed:offset])
            taken_bytes += end - offset
            taken_frames += 1
            offset = passed = end
            if (delivery is not None and delivery.properties is not None
                    and delivery.received >= delivery.body_size):
                del pending[channel]
                self._hand_over(channel, delivery)
        self._finish(buffer, passed, offset, taken_bytes, taken_frames)

    def _keep_head(self, delivery: _Pending, buffer: bytes, start: int, stop: int) -> None:
        """A body frame (``buffer[start:stop]``) of a body declared larger than the sink
        keeps: only what still fits under ``max_body_bytes`` is kept."""
        if delivery.kept < self._max_body_bytes:
            chunk = buffer[start:min(stop, start + self._max_body_bytes - delivery.kept)]
            delivery.chunks.append(chunk)
            delivery.kept += len(chunk)

    def _finish(self, buffer: bytes, passed: int, offset: int, taken_bytes: int,
                taken_frames: int) -> None:
        """After the last whole frame: pika gets the frames not yet handed over, the
        start of a frame still arriving is kept for the next data, and the sink hears
        how much was taken past pika."""
        if passed < offset:
            self._protocol.data_received(buffer[passed:offset])
        self._buffer = buffer[offset:]
        if taken_bytes:
            self._sink.received(taken_bytes, taken_frames)

    def _hand_over(self, channel: int, delivery: _Pending) -> None:
        # The sink may have let the consumer go since its method frame (a close
        # processed in between): then nobody takes it, as pika would drop it too.
        if not self._sink.takes(channel, delivery.consumer_tag):
            return
        chunks = delivery.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if delivery.oversized:
            body = TruncatedBody(body, delivery.body_size)
        assert delivery.properties is not None
        self._sink.delivered(delivery.consumer_tag, delivery.delivery_tag,
                             delivery.redelivered, delivery.routing_key,
                             delivery.properties, body)

    def _step_aside(self, rest: bytes) -> None:
        self._transparent = True
        self._pending.clear()
        self._buffer = b""
        self._protocol.data_received(rest)
