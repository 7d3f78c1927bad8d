"""Waiting time (``conversation.waiting_seconds``): what the engine is given, and when
a conversation must be looked at again (docs/time.md)."""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, datetime, timedelta

ONE_SECOND = timedelta(seconds=1)


def waiting_seconds(since: datetime | None, now: datetime) -> int:
    """``conversation.waiting_seconds`` at ``now``: whole seconds since ``since`` (0 while
    not waiting, and never below 0 when the clocks disagree)."""
    if since is None or now <= since:
        return 0
    return (now - since) // ONE_SECOND


def waited_and_due(since: datetime, now: datetime, thresholds: tuple[int, ...],
                   ) -> tuple[int, datetime | None]:
    """The waiting time the engine is given at ``now`` - the largest threshold at or
    below the real value, 0 below the first: every test on it has the same truth, and
    the cache sees one value per bucket - and the instant the next threshold is
    reached (None after the last, or when it is past what a datetime can hold)."""
    index = bisect_right(thresholds, waiting_seconds(since, now))
    waited = thresholds[index - 1] if index else 0
    due = _after(since, thresholds[index]) if index < len(thresholds) else None
    return waited, due


def _after(since: datetime, seconds: int) -> datetime | None:
    """``since`` plus ``seconds``, or None ("never due") past the last instant a
    datetime holds, in its own offset or in UTC (crossings are stamped in UTC): an event
    dated 9999-12-31 must not stop the account."""
    try:
        due = since + timedelta(seconds=seconds)
        due.astimezone(UTC)
    except OverflowError:
        return None
    return due
