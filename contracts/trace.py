"""W3C Trace Context carried in AMQP headers: ``traceparent`` and ``tracestate``.

An event's (or a request's) valid trace context is copied onto every message it causes
(docs/contract.md#trace-context). Upstream need not send one, and one that does not
parse is ignored: it is never a reason to dead-letter. What is copied is bounded:

- ``traceparent`` (https://www.w3.org/TR/trace-context/#traceparent-header) is
  ``version-traceid-parentid-flags`` in lowercase hex, with a trace id and a parent id
  that are not all zeros. Version ``00`` is exactly 55 characters; a later version
  (not ``ff``) is read as the specification says (its first four fields, what follows
  them left alone) and copied as version ``00`` of those fields: 55 characters always.
- ``tracestate`` is copied only with a valid ``traceparent`` (the specification
  forbids reading it otherwise), as its list members (``key=value``, at most 32, keys
  unique), without the optional whitespace, at most :data:`MAX_TRACESTATE` characters:
  a longer one loses its members over 128 characters first, then members from its end,
  as the specification advises. One that does not parse is not copied.

Only string header values count (AMQP long strings, which is how clients send text).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACE_HEADERS = (TRACEPARENT, TRACESTATE)
# A traceparent as copied (version 00), for the AsyncAPI document and the tests.
TRACEPARENT_PATTERN = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
# The shape of one that is read (any version, more fields after a later one's four).
TRACEPARENT_READ_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$"
TRACEPARENT_LENGTH = 55
# A later version may carry more fields; a value longer than this is not read at all.
MAX_TRACEPARENT_INPUT = 512
# What the specification asks every participant to propagate at least; more is cut.
MAX_TRACESTATE = 512
MAX_TRACESTATE_MEMBERS = 32
# Members over this are the first to go when a tracestate is cut.
LONG_TRACESTATE_MEMBER = 128

_FIELDS = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE_ID = "0" * 32
_ZERO_PARENT_ID = "0" * 16
_KEY_CHAR = r"[a-z0-9_\-*/]"
_VALUE_CHAR = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]"  # printable ASCII but ',' and '='
_VALUE_END = r"[\x21-\x2b\x2d-\x3c\x3e-\x7e]"  # the same but a space
_MEMBER = re.compile(
    rf"(?P<key>[a-z]{_KEY_CHAR}{{0,255}}|[a-z0-9]{_KEY_CHAR}{{0,240}}@[a-z]{_KEY_CHAR}{{0,13}})"
    rf"={_VALUE_CHAR}{{0,255}}{_VALUE_END}")
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A valid trace context, as it is copied."""

    traceparent: str  # version 00, 55 characters
    tracestate: str | None = None

    @property
    def trace_id(self) -> str:
        """The 32 hex digits that name the trace (what log lines carry)."""
        return self.traceparent[3:35]

    def headers(self) -> dict[str, str]:
        """The AMQP headers that carry it."""
        if self.tracestate is None:
            return {TRACEPARENT: self.traceparent}
        return {TRACEPARENT: self.traceparent, TRACESTATE: self.tracestate}


def trace_context(headers: Mapping[str, Any] | None) -> TraceContext | None:
    """The valid trace context of a message's headers, or None (none, or not valid)."""
    if not headers:
        return None
    traceparent = parse_traceparent(headers.get(TRACEPARENT))
    if traceparent is None:
        return None
    return TraceContext(traceparent, parse_tracestate(headers.get(TRACESTATE)))


def parse_traceparent(value: object) -> str | None:
    """``value`` as a version-00 traceparent, or None when it is not a valid one."""
    if not isinstance(value, str) or not (
            TRACEPARENT_LENGTH <= len(value) <= MAX_TRACEPARENT_INPUT):
        return None
    version = value[:2]
    if len(value) > TRACEPARENT_LENGTH and (
            version == "00" or value[TRACEPARENT_LENGTH] != "-"):
        return None  # version 00 has nothing more; a later one's next field starts with '-'
    fields = _FIELDS.fullmatch(value, 0, TRACEPARENT_LENGTH)
    if fields is None or version == "ff":
        return None
    trace_id, parent_id, flags = fields.groups()
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_PARENT_ID:
        return None
    if version == "00":
        return value
    return f"00-{trace_id}-{parent_id}-{flags}"


def parse_tracestate(value: object) -> str | None:
    """``value`` as a tracestate to copy (bounded, see the module docstring), or None
    when there is none or it does not parse."""
    if not isinstance(value, str):
        return None
    members: list[str] = []
    keys: set[str] = set()
    for part in value.split(","):
        member = part.strip(_OWS)
        if not member:
            continue  # empty members are allowed, and dropped
        match = _MEMBER.fullmatch(member)
        if match is None or match["key"] in keys or len(members) == MAX_TRACESTATE_MEMBERS:
            return None
        keys.add(match["key"])
        members.append(member)
    members = _bounded(members)
    return ",".join(members) if members else None


def _bounded(members: list[str]) -> list[str]:
    """At most MAX_TRACESTATE characters joined: long members go first, then the last."""
    if len(",".join(members)) <= MAX_TRACESTATE:
        return members
    kept = [m for m in members if len(m) <= LONG_TRACESTATE_MEMBER]
    while kept and len(",".join(kept)) > MAX_TRACESTATE:
        kept.pop()
    return kept
