"""The wire frames of one ``basic.publish``, marshalled in one piece.

pika builds a publish as three frame objects (method, content header, body) and
marshals each field by field in Python; at thousands of updates a second that costs
about five times what writing the bytes directly does (``python -m
benchmarks.publish_frames``: 11.9 against 2.4 us per update). The frames are AMQP
0-9-1's (section 4.2.3 of the specification); tests/test_amqp_frames.py holds them
byte for byte against pika's own ``pika.frame`` marshalling on every kind of message
the worker sends.

Only the method frame depends on (channel, exchange, routing key): it is kept per key,
and updates repeat their keys (one per account and agent).
"""

from __future__ import annotations

from struct import Struct

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = b"\xce"
# Type (1 byte), channel (2) and payload size (4) before a payload; FRAME_END after it.
FRAME_OVERHEAD = 8
FRAME_START = Struct(">BHI")  # what starts every frame (worker.amqp.intake reads it)
# class id (basic), weight, body size: the content header's fields before the properties.
_HEADER_START = Struct(">BHIHHQ")
_BASIC_CLASS = 60
# basic.publish: class 60, method 40, reserved short (ticket) 0.
_PUBLISH = b"\x00\x3c\x00\x28\x00\x00"
_MANDATORY = b"\x01"
_NOT_MANDATORY = b"\x00"
# A short string holds at most 255 bytes.
MAX_SHORT_STRING = 255
# Method frames kept, at most: far more than the (exchange, routing key) pairs a worker
# publishes to between two clears.
MAX_METHOD_FRAMES = 4096


class PublishFrames:
    """Encodes publishes; one per connection (the method frames it keeps name its
    channels)."""

    __slots__ = ("_methods",)

    def __init__(self) -> None:
        self._methods: dict[tuple[int, str, str, bool], bytes] = {}

    def encode(self, channel: int, exchange: str, routing_key: str, properties: bytes,
               body: bytes, body_max: int, mandatory: bool = True) -> tuple[bytes, int]:
        """The frames of one publish and how many there are. ``properties`` is the
        encoded property list of a content header (flags, then fields); bodies longer
        than ``body_max`` (the negotiated frame size less FRAME_OVERHEAD) are split."""
        key = (channel, exchange, routing_key, mandatory)
        method = self._methods.get(key)
        if method is None:
            method = self._method(*key)
        size = len(body)
        parts = [method,
                 _HEADER_START.pack(FRAME_HEADER, channel, 12 + len(properties), _BASIC_CLASS,
                                    0, size),
                 properties, FRAME_END]
        start = 0
        while start < size:
            chunk = body[start:start + body_max]
            parts += (FRAME_START.pack(FRAME_BODY, channel, len(chunk)), chunk, FRAME_END)
            start += body_max
        return b"".join(parts), 2 + -(-size // body_max)

    def _method(self, channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
        payload = b"".join((_PUBLISH, short_string(exchange), short_string(routing_key),
                            _MANDATORY if mandatory else _NOT_MANDATORY))
        method = b"".join((FRAME_START.pack(FRAME_METHOD, channel, len(payload)), payload,
                           FRAME_END))
        if len(self._methods) >= MAX_METHOD_FRAMES:
            self._methods.clear()
        self._methods[(channel, exchange, routing_key, mandatory)] = method
        return method


def short_string(text: str) -> bytes:
    """An AMQP short string: a length byte, then UTF-8."""
    encoded = text.encode()
    if len(encoded) > MAX_SHORT_STRING:
        raise ValueError(f"{text[:40]!r}...: longer than an AMQP short string "
                         f"({len(encoded)} > {MAX_SHORT_STRING} bytes)")
    return bytes((len(encoded),)) + encoded
