"""The AMQP headers of the AsyncAPI document's messages: the W3C trace context
(:mod:`contracts.trace`), as the worker reads it on events and requests and as it
copies it onto updates, replies and dead letters."""

from __future__ import annotations

from typing import Any

from contracts.trace import (
    LONG_TRACESTATE_MEMBER,
    MAX_TRACEPARENT_INPUT,
    MAX_TRACESTATE,
    TRACEPARENT,
    TRACEPARENT_LENGTH,
    TRACEPARENT_PATTERN,
    TRACEPARENT_READ_PATTERN,
    TRACESTATE,
)


def received_trace(copied_onto: str) -> dict[str, Any]:
    """The headers schema of a message the worker receives (an event, a request)."""
    return {"type": "object", "properties": {
        TRACEPARENT: {
            "type": "string", "pattern": TRACEPARENT_READ_PATTERN,
            "maxLength": MAX_TRACEPARENT_INPUT,
            "description": (
                "Optional W3C Trace Context `traceparent`: `version-traceid-parentid-flags` "
                "in lowercase hex, with a trace id and a parent id not all zeros and a "
                "version other than `ff`; version `00` is exactly "
                f"{TRACEPARENT_LENGTH} characters. A valid one is copied onto "
                f"{copied_onto} (a later version as version `00` of its first four fields), "
                "and lines logged about the message carry its trace id; an invalid one is "
                "ignored, never a reason to dead-letter."),
        },
        TRACESTATE: {
            "type": "string",
            "description": (
                "Optional W3C Trace Context `tracestate`, read only with a valid "
                "`traceparent`: its `key=value` members (at most 32, keys unique) are "
                "copied with it, without optional whitespace, cut to "
                f"{MAX_TRACESTATE} characters (members over {LONG_TRACESTATE_MEMBER} "
                "characters go first, then members from the end). One that does not parse "
                "is not copied."),
        },
    }}


def copied_trace(whose: str, more: str = "") -> dict[str, Any]:
    """The properties of the trace headers on a message the worker sends because of
    ``whose``; ``more`` ends the traceparent's description."""
    return {
        TRACEPARENT: {
            "type": "string", "pattern": TRACEPARENT_PATTERN,
            "description": (f"The `traceparent` of {whose} as version `00`, when it carried "
                            f"a valid one; absent otherwise.{more}"),
        },
        TRACESTATE: {
            "type": "string", "maxLength": MAX_TRACESTATE,
            "description": (f"The `tracestate` of {whose}, with its `traceparent`, when it "
                            "parsed (bounded as described on the received messages)."),
        },
    }


def sent_trace(whose: str, more: str = "") -> dict[str, Any]:
    """The headers schema of a message the worker sends with no other headers."""
    return {"type": "object", "properties": copied_trace(whose, more)}
