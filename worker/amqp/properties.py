"""AMQP properties of outgoing messages, encoded from a template once per shape.

A category update's properties differ from the next one's only in ``message_id``
(the update id); pika encodes ``BasicProperties`` field by field in Python on every
publish, which cost the worker more per update than the rest of the publish together
(benchmarks/compare.py profiles). So the properties of one shape (every field but
``message_id`` and the headers) are encoded once, and each message splices its id into
that encoding, and its headers table when they are all text (an update's trace
context: docs/contract.md#trace-context), encoded here as pika encodes text fields.

Only public pika API is used: a shape is what ``BasicProperties.encode()`` gives for
it, and the bytes go into a content header frame (:mod:`worker.amqp.frames`);
tests/test_amqp_properties.py compares them with pika's encoding on every shape the
worker sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from struct import Struct
from typing import Any

import pika

from worker.amqp.frames import MAX_SHORT_STRING
from worker.link import Outgoing

APP_ID = "inbox-rules"
# Stands for the message id while a shape is encoded; found again by its length byte.
_MARKER = "\x01inbox-rules:message-id\x01"
_MARKER_ENCODED = bytes((len(_MARKER),)) + _MARKER.encode()
# Stands for the headers table the same way (encoded below by text_table).
_TABLE_MARKER = {"\x01inbox-rules:headers\x01": "\x01"}
_TABLE_SIZE = Struct(">I")
_TEXT_FIELD = Struct(">cI")


def encoded_properties(message: Outgoing) -> bytes:
    """The property list of ``message``'s content header, encoded: its shape's bytes
    with the message id (and its headers table) spliced in, or pika's encoding for
    other messages (headers that are not all text, no id, an id no short string holds:
    pika refuses that one, as before)."""
    message_id, headers = message.message_id, message.headers
    table = None if headers is None else text_table(headers)
    if message_id is not None and (headers is None or table is not None):
        encoded_id = message_id.encode()
        if len(encoded_id) <= MAX_SHORT_STRING:
            shape = _shape(message.content_type, message.persistent, message.type,
                           message.correlation_id, message.reply_to,
                           message.content_encoding, message.timestamp,
                           message.app_id or APP_ID, table is not None)
            if shape is not None:
                found = (bytes((len(encoded_id),)), encoded_id, shape.tail)
                if table is None:
                    return b"".join((shape.head, *found))
                return b"".join((shape.head, table, shape.between, *found))
    return b"".join(outgoing_properties(message).encode())


def text_table(headers: Mapping[str, Any]) -> bytes | None:
    """``headers`` as the AMQP table pika encodes when every value is text (long
    strings); None when one is not, or a name is longer than a short string."""
    parts: list[bytes] = []
    for name, value in headers.items():
        if not isinstance(value, str):
            return None
        key, text = name.encode(), value.encode()
        if len(key) > MAX_SHORT_STRING:
            return None
        parts += (bytes((len(key),)), key, _TEXT_FIELD.pack(b"S", len(text)), text)
    fields = b"".join(parts)
    return _TABLE_SIZE.pack(len(fields)) + fields


# (Never empty: a shape that cannot find it again would take pika's encoder.)
_TABLE_MARKER_ENCODED = text_table(_TABLE_MARKER) or b""


def outgoing_properties(message: Outgoing) -> pika.BasicProperties:
    """The AMQP properties of an :class:`Outgoing`, as pika builds them."""
    return _properties(message.content_type, message.persistent, message.message_id,
                       message.headers, message.type, message.correlation_id,
                       message.reply_to, message.content_encoding, message.timestamp,
                       message.app_id or APP_ID)


def _properties(content_type: str | None, persistent: bool, message_id: str | None,
                headers: dict[str, Any] | None, kind: str | None, correlation_id: str | None,
                reply_to: str | None, content_encoding: str | None, timestamp: int | None,
                app_id: str) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=content_type, delivery_mode=2 if persistent else None,
        message_id=message_id, headers=headers, type=kind, correlation_id=correlation_id,
        reply_to=reply_to, content_encoding=content_encoding, timestamp=timestamp,
        app_id=app_id)


class _Shape:
    """The encoding of one set of properties around its message id (and, with
    headers, around their table: head, table, between, id, tail)."""

    __slots__ = ("between", "head", "tail")

    def __init__(self, encoded: bytes, with_headers: bool) -> None:
        self.head, _, self.tail = encoded.partition(_MARKER_ENCODED)
        self.between = b""
        if with_headers:
            self.head, _, self.between = self.head.partition(_TABLE_MARKER_ENCODED)


@lru_cache(maxsize=64)
def _shape(content_type: str | None, persistent: bool, kind: str | None,
           correlation_id: str | None, reply_to: str | None, content_encoding: str | None,
           timestamp: int | None, app_id: str, with_headers: bool = False) -> _Shape | None:
    """The shape of these properties; None if a marker could not be found again (a
    field that happened to contain it): such messages take pika's encoder."""
    template = _properties(content_type, persistent, _MARKER,
                           dict(_TABLE_MARKER) if with_headers else None, kind,
                           correlation_id, reply_to, content_encoding, timestamp, app_id)
    encoded = b"".join(template.encode())
    if encoded.count(_MARKER_ENCODED) != 1 or (
            with_headers and encoded.count(_TABLE_MARKER_ENCODED) != 1):
        return None
    return _Shape(encoded, with_headers)
