"""Offline replay: the worker's rules and state logic with no broker.

Time passes by the events: before each event, every time threshold crossing due by its
``occurred_at`` is made (see :class:`worker.domain.inbox.Inbox`); ``--until`` makes the
rest up to a given moment at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from contracts import BadEvent, parse_event
from contracts.ids import DEFAULT_MAX_MESSAGE_BYTES
from worker.domain.inbox import Inbox
from worker.domain.updates import Update


@dataclass(frozen=True)
class BadLine:
    number: int
    reason: str


# Progress is reported every this many lines (a call per line would cost throughput).
PROGRESS_EVERY = 1024


def replay_lines(inbox: Inbox, lines: Iterable[bytes],
                 max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 progress: Callable[[int], None] | None = None,
                 ) -> Iterator[Update | BadLine]:
    """Updates in publish order; a bad line yields a :class:`BadLine` and is skipped.
    ``progress(n)`` is told every :data:`PROGRESS_EVERY` lines read."""
    for number, line in enumerate(lines, start=1):
        if progress is not None and not number % PROGRESS_EVERY:
            progress(PROGRESS_EVERY)
        body = line.rstrip()  # JSON ignores surrounding whitespace; an empty line is none
        if not body:
            continue
        try:
            event = parse_event(body, max_bytes=max_bytes)
        except BadEvent as exc:
            yield BadLine(number, exc.reason)
            continue
        yield from inbox.cross_until(event.occurred_at)  # due before it, bad or not
        try:
            updates = inbox.handle(event)
        except BadEvent as exc:  # a change its conversation cannot hold
            yield BadLine(number, exc.reason)
            continue
        yield from updates


def parse_moment(text: str) -> datetime:
    """An ISO 8601 timestamp (``2026-11-24T10:05:00Z``); one without an offset is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
