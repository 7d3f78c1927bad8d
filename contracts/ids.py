"""Identifier and limit types shared by both contracts."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, StringConstraints
from pydantic.dataclasses import dataclass

# Ids become parts of routing keys: '.', '*' and '#' would break topic routing.
ID_PATTERN = r"^[A-Za-z0-9_:\-]{1,128}$"

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
# An update's routing key is "<account_id>.<agent_id>", and AMQP carries a routing key
# as a short string: 255 bytes at most. Two ids of 128 would make 257.
MAX_ROUTING_KEY = 255
EventId = Annotated[str, StringConstraints(min_length=1, max_length=256)]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
# Sequences are stored as SQLite integers: keep them inside a signed 64-bit range.
MAX_SEQUENCE = 2**63 - 1


class TruncatedBody(bytes):
    """The first bytes of a body over the size limit, with the whole body's size.

    A receiver stops keeping a body at the limit: a body may be as large as the broker
    allows (128 MiB by default) and a worker holds hundreds unacknowledged, so keeping
    them whole would bound its memory by the broker's limit, not its own. What is kept
    tells which message it was; :func:`parse_event` and :func:`parse_request` refuse it
    as too large, and their reason says the body is cut, so it is never taken for the
    message itself (a dead letter carries these bytes, not the original).
    """

    size: int  # the whole body's, as the message's content header declared it

    def __new__(cls, kept: bytes, size: int) -> TruncatedBody:
        body = super().__new__(cls, kept)
        body.size = size
        return body


def too_large(body: bytes, max_bytes: int) -> bool:
    """Whether ``body`` is refused for its size (a truncated one always is)."""
    return len(body) > max_bytes or isinstance(body, TruncatedBody)


def too_large_reason(body: bytes, max_bytes: int) -> str:
    """Why a body :func:`too_large` was refused; the same words for events and requests
    (the metrics' dead-letter family is read from its start)."""
    if isinstance(body, TruncatedBody):
        return (f"message too large: {body.size} bytes exceeds the limit of {max_bytes}; "
                f"the body was not kept: this message carries only its first {len(body)} "
                f"bytes")
    return f"message too large: {len(body)} bytes exceeds the limit of {max_bytes}"


# Unknown fields are ignored (forward compatibility); types are strict so that "4" is
# not silently taken for 4.
_STRICT = ConfigDict(extra="ignore", strict=True)
# Every event is a frozen, slotted pydantic dataclass: validated from JSON in
# pydantic-core like a model, but built a third cheaper (one is built per event, and
# parsing was the largest single cost of replay). Keyword-only: an envelope field with
# a default comes before the fields of each event type.
contract = dataclass(frozen=True, slots=True, kw_only=True, config=_STRICT)
