"""The intake against pika's own frame encoding: every delivery the sink takes reaches
it whole and in order, and pika gets exactly the other bytes, in order, whole frames
only, however the stream is cut into reads. What it does on a live connection is
covered by every broker test (every delivery the worker consumes goes through it)."""

from __future__ import annotations

import random
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

import pika.frame
import pika.spec
import pytest
from pika.spec import BasicProperties

from contracts import BadEvent, parse_event
from contracts.ids import TruncatedBody
from contracts.trace import trace_context
from worker.amqp.intake import DeliveryIntake

OURS = "ctag1.ours"
THEIRS = "ctag1.theirs"


@dataclass
class Sink:
    channel: int = 1
    consumers: set[str] = field(default_factory=lambda: {OURS})
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    bytes_taken: int = 0
    frames_taken: int = 0
    max_body_bytes: int = 64 * 1024

    def takes(self, channel_number: int, consumer_tag: str) -> bool:
        return channel_number == self.channel and consumer_tag in self.consumers

    def delivered(self, consumer_tag: str, delivery_tag: int, redelivered: bool,
                  routing_key: str, properties: BasicProperties, body: bytes) -> None:
        self.deliveries.append((consumer_tag, delivery_tag, redelivered, routing_key,
                                properties.message_id, properties.headers, body))

    def received(self, byte_count: int, frame_count: int) -> None:
        self.bytes_taken += byte_count
        self.frames_taken += frame_count


@dataclass
class PikaSide:
    """Stands for pika's protocol: records every chunk it is handed."""

    chunks: list[bytes] = field(default_factory=list)

    def data_received(self, data: bytes) -> None:
        assert data, "never an empty chunk"
        self.chunks.append(data)

    def connection_made(self, _transport: object) -> None: ...
    def connection_lost(self, _error: object) -> None: ...
    def eof_received(self) -> None: ...


def delivery_frames(channel: int, consumer: str, tag: int, body: bytes, *,
                    frame_max: int = 131072, redelivered: bool = False,
                    routing_key: str = "acc-1.ag-1",
                    headers: dict[str, Any] | None = None) -> list[bytes]:
    """A delivery as the broker sends it, marshalled by pika."""
    method = pika.spec.Basic.Deliver(consumer_tag=consumer, delivery_tag=tag,
                                     redelivered=redelivered, exchange="chat.events",
                                     routing_key=routing_key)
    properties = BasicProperties(message_id=f"m-{tag}", headers=headers,
                                 content_type="application/json", delivery_mode=2)
    frames = [pika.frame.Method(channel, method).marshal(),
              pika.frame.Header(channel, len(body), properties).marshal()]
    room = frame_max - 8
    frames += [pika.frame.Body(channel, body[i:i + room]).marshal()
               for i in range(0, len(body), room)]
    return frames


def other_frames(channel: int, tag: int) -> list[bytes]:
    """What pika must get: a confirm, a heartbeat, a channel method."""
    return [pika.frame.Method(channel, pika.spec.Basic.Ack(delivery_tag=tag)).marshal(),
            pika.frame.Heartbeat().marshal(),
            pika.frame.Method(channel, pika.spec.Basic.QosOk()).marshal()]


def stream(seed: int) -> tuple[list[bytes], list[tuple[Any, ...]], bytes]:
    """(frames in order, the deliveries the sink must get, the bytes pika must get)."""
    rng = random.Random(seed)
    frames: list[bytes] = []
    expected: list[tuple[Any, ...]] = []
    for_pika: list[bytes] = []
    for tag in range(1, 60):
        roll = rng.random()
        if roll < 0.6:
            body = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 50, 700))))
            headers = {"x-inbox-routing-key": f"acc-{tag}"} if tag % 3 else None
            if tag % 3 == 2:  # a trace context, as upstream sends it
                headers = {**(headers or {}), "traceparent": f"00-{tag:032x}-{tag:016x}-01",
                           "tracestate": f"rojo=t{tag},congo={'c' * (tag * 4)}"}
            frames += delivery_frames(1, OURS, tag, body, frame_max=rng.choice((4096, 300)),
                                      redelivered=tag % 5 == 0, headers=headers)
            expected.append((OURS, tag, tag % 5 == 0, "acc-1.ag-1", f"m-{tag}", headers,
                             body))
        elif roll < 0.75:  # someone else's consumer, or another channel: pika's
            channel, consumer = (1, THEIRS) if roll < 0.7 else (2, OURS)
            theirs = delivery_frames(channel, consumer, tag, b"x" * 40, frame_max=300)
            frames += theirs
            for_pika += theirs
        else:
            others = other_frames(1, tag)
            frames += others
            for_pika += others
    return frames, expected, b"".join(for_pika)


def feed(intake: DeliveryIntake, data: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in [*cuts, len(data)]:
        if cut > start:
            intake.data_received(data[start:cut])
            start = cut


@pytest.mark.parametrize("seed", range(12))
def test_deliveries_reach_the_sink_and_the_rest_reaches_pika_in_order(seed: int) -> None:
    frames, expected, for_pika = stream(seed)
    data = b"".join(frames)
    rng = random.Random(seed)
    # Reads of every size: one byte at a time, pika's 4 KiB, random, all at once.
    cuts = {0: list(range(1, len(data))), 1: list(range(4096, len(data), 4096)),
            2: []}.get(seed % 4, sorted(rng.sample(range(1, len(data)), 40)))
    sink, pika_side = Sink(), PikaSide()
    feed(DeliveryIntake(pika_side, sink), data, cuts)

    assert sink.deliveries == expected
    assert b"".join(pika_side.chunks) == for_pika
    for chunk in pika_side.chunks:  # whole frames only
        offset = 0
        while offset < len(chunk):
            frame = pika.frame.decode_frame(chunk[offset:])
            assert frame[1] is not None, "a chunk ended inside a frame"
            offset += frame[0]
    assert sink.bytes_taken == len(data) - len(for_pika)
    intercepted = sum(1 for frame in frames if frame not in for_pika)
    assert sink.frames_taken == intercepted


def test_a_confirm_between_two_deliveries_is_processed_between_them() -> None:
    order: list[str] = []

    class Ordered(Sink):
        def delivered(self, *args: Any) -> None:
            order.append(f"delivery {args[1]}")

    class PikaOrdered(PikaSide):
        def data_received(self, data: bytes) -> None:
            order.append("pika")

    data = b"".join([*delivery_frames(1, OURS, 1, b"a"),
                     *other_frames(1, 9),
                     *delivery_frames(1, OURS, 2, b"b")])
    DeliveryIntake(PikaOrdered(), Ordered()).data_received(data)
    assert order == ["delivery 1", "pika", "delivery 2"]


def test_a_consumer_let_go_while_its_delivery_arrives_gets_nothing() -> None:
    sink, pika_side = Sink(), PikaSide()
    intake = DeliveryIntake(pika_side, sink)
    first, header, body = delivery_frames(1, OURS, 1, b"payload")
    intake.data_received(first + header)
    sink.consumers.clear()  # the channel closed in between
    intake.data_received(body)
    assert sink.deliveries == []


@pytest.mark.parametrize("garbage", [b"AMQP\x00\x00\x09\x01",  # the broker refuses 0-9-1
                                     b"\x01\x00\x01\x00\x00\x00\x01\x00\x00"])  # bad end
def test_what_is_not_a_frame_goes_to_pika_as_it_came(garbage: bytes) -> None:
    sink, pika_side = Sink(), PikaSide()
    intake = DeliveryIntake(pika_side, sink)
    before = b"".join(other_frames(1, 1))
    intake.data_received(before + garbage)
    after = b"".join(delivery_frames(1, OURS, 2, b"late"))
    intake.data_received(after)  # from now on everything is pika's
    assert b"".join(pika_side.chunks) == before + garbage + after
    assert sink.deliveries == []


def test_it_passes_the_connection_events_and_attributes_through() -> None:
    class Shim(PikaSide):
        is_open = True

    shim = Shim()
    intake = DeliveryIntake(shim, Sink())
    assert intake.connection_made == shim.connection_made
    assert intake.eof_received == shim.eof_received
    assert intake.connection_lost == shim.connection_lost
    assert intake.is_open is True  # pika's workflow treats it as the connection


def test_a_body_over_the_limit_is_kept_only_to_the_limit_and_the_stream_stays_in_step(
        ) -> None:
    """A 5 MB body declared in its content header, in 1,281 body frames: the intake
    holds no more than the sink's limit of it at any point (traced allocations stay
    flat while it arrives), hands over its first bytes as a TruncatedBody that knows
    the declared size, and the delivery after it arrives whole."""
    limit, declared, room = 1000, 5 * 1024 * 1024, 4096 - 8
    sink, pika_side = Sink(max_body_bytes=limit), PikaSide()
    intake = DeliveryIntake(pika_side, sink)
    method = pika.spec.Basic.Deliver(consumer_tag=OURS, delivery_tag=1, exchange="chat.events",
                                     routing_key="acc-1.ag-1")
    intake.data_received(pika.frame.Method(1, method).marshal())
    intake.data_received(pika.frame.Header(1, declared, BasicProperties()).marshal())

    block = random.Random(5).randbytes(room)

    def pattern(offset: int, size: int) -> bytes:
        # Each frame starts with its offset; made frame by frame, so the test does not
        # hold 5 MB either.
        return (offset.to_bytes(8, "big") + block[8:])[:size]

    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        held = []
        for offset in range(0, declared, room):
            intake.data_received(pika.frame.Body(1, pattern(offset, min(room, declared - offset)))
                                 .marshal())
            held.append(tracemalloc.get_traced_memory()[0] - baseline)
    finally:
        tracemalloc.stop()
    assert len(held) > 1000, "many frames"
    assert max(held) < 64 * 1024, f"the intake kept {max(held)} bytes of a body over {limit}"

    after = b"".join(delivery_frames(1, OURS, 2, b'{"next": true}'))
    intake.data_received(after)
    (_c1, tag1, *_rest1, body), (_c2, tag2, *_rest2, next_body) = sink.deliveries
    assert (tag1, tag2) == (1, 2)
    assert isinstance(body, TruncatedBody)
    assert body == pattern(0, limit) and body.size == declared
    assert next_body == b'{"next": true}' and not isinstance(next_body, TruncatedBody)
    assert pika_side.chunks == [], "every frame was the intake's"
    with pytest.raises(BadEvent, match=f"message too large: {declared} bytes exceeds the "
                                       f"limit of {limit}; the body was not kept"):
        parse_event(body, max_bytes=limit)


def test_a_body_exactly_at_the_limit_is_kept_whole() -> None:
    sink = Sink(max_body_bytes=700)
    body = bytes(range(256)) * 2 + b"x" * 188
    DeliveryIntake(PikaSide(), sink).data_received(
        b"".join(delivery_frames(1, OURS, 1, body, frame_max=300)))
    delivered = sink.deliveries[0][-1]
    assert delivered == body and not isinstance(delivered, TruncatedBody)


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(("headers", "traced"), [
    ({"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
      "tracestate": "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"}, True),
    ({"traceparent": f"01-{TRACE_ID}-00f067aa0ba902b7-01-later", "tracestate": "x=" + "y" * 256,
      "n": 3, "nested": {"hops": [1, "two", True]}, "\u20ac": "\u20ac" * 100}, True),
    ({"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode()}, False),  # a byte array
    ({"traceparent": "not one", "tracestate": "rojo=1"}, False),
], ids=["plain", "later-version", "bytes", "invalid"])
def test_trace_headers_reach_the_sink_as_pika_decodes_them(headers: dict[str, Any],
                                                           traced: bool) -> None:
    """The worker reads a delivery's trace context from its headers (on pika's road
    when the intake is off): the intake's headers are pika's, value for value, so both
    roads find the same trace context, or none."""
    frames = delivery_frames(1, OURS, 1, b"{}", headers=headers)
    sink = Sink()
    DeliveryIntake(PikaSide(), sink).data_received(b"".join(frames))
    [(*_fields, taken, _body)] = sink.deliveries
    _size, header_frame = pika.frame.decode_frame(frames[1])
    assert isinstance(header_frame, pika.frame.Header)
    by_pika = header_frame.properties.headers
    assert taken == by_pika
    assert [type(v) for v in taken.values()] == [type(v) for v in by_pika.values()]
    assert trace_context(taken) == trace_context(by_pika)
    assert (trace_context(taken) is not None) is traced
