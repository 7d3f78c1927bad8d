"""The headers of what the worker publishes because of a message: the original's headers
on its copies (a dead letter, the router's copy for a partition queue), and its trace
context on every message it causes (docs/contract.md#trace-context).

A trace context is copied only when valid (:mod:`contracts.trace`): a copy carries the
original's other headers as they came, but its ``traceparent`` and ``tracestate`` as
checked and bounded, and those two even when the others are too large to copy.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import pika.data
import pika.exceptions

from contracts.trace import TRACE_HEADERS, TRACEPARENT, TRACESTATE, TraceContext, trace_context
from worker.link import Outgoing

log = logging.getLogger(__name__)

# Original headers whose AMQP encoding (pika's, the one that publishes the copy) is
# larger than this are not copied to a dead letter or to the router's copy: half of
# the 128 KiB frame_max RabbitMQ and pika agree on by default, so the copy's content
# header (those headers, the few the worker adds, the other properties: short strings
# of 255 bytes at most) always fits one frame. An original may fill its frame: a
# bigger copy gets the connection closed (FRAME_ERROR), again on every redelivery.
MAX_COPIED_HEADERS_BYTES = 64 * 1024
# Says that (and why) a copy goes without the original's headers.
HEADERS_DROPPED_HEADER = "x-original-headers-dropped"
# What pika's table encoder raises for a value it cannot encode again.
_UNENCODABLE = (pika.exceptions.AMQPError, struct.error, TypeError, ValueError)


def copyable_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a message's headers to publish again with a few added, or a note in
    their place when their encoding is over MAX_COPIED_HEADERS_BYTES. Measured in
    encoded bytes, by pika's own encoder: strings go as UTF-8 ('€' takes 3 bytes for
    1 character of repr) and small integers grow on the way back (a 1-byte 'b' field is
    encoded again as a 5-byte 'I'). Headers pika cannot encode again are dropped too:
    the publish of the copy would fail. The trace context goes as checked, and stays
    when the rest is dropped."""
    copied = dict(headers)
    if not copied:
        return copied
    traced: dict[str, str] = {}
    if TRACEPARENT in copied or TRACESTATE in copied:
        trace = trace_context(copied)
        for name in TRACE_HEADERS:
            copied.pop(name, None)
        if trace is not None:
            traced = trace.headers()
            copied.update(traced)
    try:
        size = pika.data.encode_table([], copied)
    except _UNENCODABLE as exc:
        note = f"{len(copied)} header(s), not encodable: {type(exc).__name__}"
    else:
        if size <= MAX_COPIED_HEADERS_BYTES:
            return copied
        note = f"{len(copied)} header(s), too large"
    log.warning("a message's headers are not copied (%s): its copy goes without them", note)
    return {HEADERS_DROPPED_HEADER: note, **traced}


def traced(messages: Sequence[Outgoing], trace: TraceContext) -> tuple[Outgoing, ...]:
    """``messages`` carrying ``trace`` (over any headers of theirs of those names); the
    messages without headers share one dict (nothing changes a message's headers)."""
    headers = trace.headers()
    return tuple([m._replace(headers={**m.headers, **headers} if m.headers else headers)
                  for m in messages])
