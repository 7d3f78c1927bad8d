"""Control messages: the changes a worker makes on its own, put in the account's order.

Everything that changes an account goes through one queue per partition (one queue in
all with the SQLite store), and whichever worker consumes that queue applies it in that
queue's order. Events come from upstream. What a worker would otherwise decide by its
own clock or its own view is sent through the same queue as a message. A time
crossing is an example. Its effect is then a pure function of the account's state and
the message, wherever the message falls in the order. A worker that takes the
partition over after a crash or a hang gets whatever the previous owner left
unacknowledged, in order, then these messages behind it. So it publishes exactly what
the previous owner published, with the same ``seq``, and continues from there.

* :class:`Tick` - cross the time thresholds of the named accounts due by ``until``.
  The worker whose clock says something is due sends one; the state, not the sender,
  decides what crosses (a tick that finds nothing due changes nothing).
* :class:`Adopt` - from here on, the partition's messages are evaluated under this
  rules version. Whatever came before it in the queue stays under the version in
  force then, also when it is evaluated again after a crash; an account adopts the
  new version before anything else touches it (worker.rules_in_force).

A control message is honoured only when it carries the fleet's token
(``x-inbox-rules-control``): a random value kept in the state store and shared by the
workers of one store. Upstream cannot know it, so an event that happens to carry
one of these headers is just an event. The router strips every ``x-inbox-`` header
from what it passes on and adds its own under the same token.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from worker.link import Outgoing

CONTROL_HEADER = "x-inbox-rules-control"
# What a control message asks (a tick); absent on events and requests the router passed on.
CONTROL_KIND_HEADER = "x-inbox-control"
# Every header the workers put on messages for each other starts with this; the router
# drops those that upstream sent.
INTERNAL_PREFIX = "x-inbox-"
TICK_TYPE = "inbox-rules.tick"
ADOPT_TYPE = "inbox-rules.adopt"
# Accounts one tick names, at most: its body stays far below any message size limit
# (128-character ids), and one tick is a bounded piece of work for a batch.
TICK_ACCOUNTS = 200


class BadControlError(ValueError):
    """A message with the fleet's token whose body is not a control message."""


@dataclass(frozen=True, slots=True)
class Tick:
    """Cross every threshold of these accounts due at or before ``until``; with no
    accounts, only a question (SQLite standbys: who is the active consumer?)."""

    until: datetime
    accounts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Adopt:
    """The partition's queue takes ``rules_version`` from here on."""

    partition: int
    rules_version: str


def is_control(headers: Mapping[str, Any], token: str) -> bool:
    """A tick or an adoption of this fleet, not an event or request (cheap for those:
    one header lookup)."""
    return CONTROL_KIND_HEADER in headers and is_trusted(headers, token)


def is_trusted(headers: Mapping[str, Any] | None, token: str) -> bool:
    """The message was put in the queue by a worker of this fleet."""
    if not headers or not token:
        return False
    value = headers.get(CONTROL_HEADER)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return isinstance(value, str) and hmac.compare_digest(value, token)


def without_internal(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Upstream's headers minus any that claim to be ours."""
    if not headers:
        return {}
    return {k: v for k, v in headers.items() if not k.startswith(INTERNAL_PREFIX)}


def tick_message(exchange: str, routing_key: str, token: str, tick: Tick) -> Outgoing:
    """A tick, persistent: once confirmed it is part of the account's order, and a
    takeover must find it where it was."""
    body = orjson.dumps({"until": tick.until.isoformat(), "accounts": list(tick.accounts)})
    return Outgoing(exchange, routing_key, body, message_id=None,
                    headers={CONTROL_HEADER: token, CONTROL_KIND_HEADER: TICK_TYPE},
                    persistent=bool(tick.accounts),
                    content_type="application/json", type=TICK_TYPE)


def adopt_message(exchange: str, routing_key: str, token: str, adopt: Adopt) -> Outgoing:
    body = orjson.dumps({"partition": adopt.partition, "rules_version": adopt.rules_version})
    return Outgoing(exchange, routing_key, body, message_id=None,
                    headers={CONTROL_HEADER: token, CONTROL_KIND_HEADER: ADOPT_TYPE},
                    content_type="application/json", type=ADOPT_TYPE)


def read_control(kind: str, body: bytes) -> Tick | Adopt:
    """The control message of a trusted delivery; :class:`BadControlError` if it is not one
    (a worker of another version, or a bug: dead-lettered, never guessed at)."""
    if kind == ADOPT_TYPE:
        return _read_adopt(body)
    if kind != TICK_TYPE:
        raise BadControlError(f"unknown control message type {kind!r}")
    try:
        data = orjson.loads(body)
        until = datetime.fromisoformat(data["until"])
        accounts = data["accounts"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BadControlError(f"unreadable tick: {exc}") from exc
    if (until.tzinfo is None or not isinstance(accounts, list)
            or len(accounts) > TICK_ACCOUNTS or not all(isinstance(a, str) for a in accounts)):
        raise BadControlError("unreadable tick: needs an aware 'until' and at most "
                         f"{TICK_ACCOUNTS} account ids")
    return Tick(until, tuple(accounts))


def _read_adopt(body: bytes) -> Adopt:
    try:
        data = orjson.loads(body)
        partition, version = data["partition"], data["rules_version"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadControlError(f"unreadable adoption: {exc}") from exc
    if not isinstance(partition, int) or partition < 0 or not isinstance(version, str):
        raise BadControlError("unreadable adoption: needs a partition number and a version")
    return Adopt(partition, version)


def chunks(ids: Sequence[str], size: int = TICK_ACCOUNTS) -> list[tuple[str, ...]]:
    return [tuple(ids[i:i + size]) for i in range(0, len(ids), size)]
