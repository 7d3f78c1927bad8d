"""A periodic one-line summary in the log while the worker is busy, nothing when idle.

Metrics need a Prometheus to be read; a log is always there. Every ``interval``
seconds in which something happened, one INFO line says how fast events went, how
many updates and dead letters they made, and the lag; a worker with nothing to do
writes nothing (no line every 30 s for days on a quiet queue).

The driver calls :meth:`StatusLine.tick` with its running totals (the same
monotonically growing counters it keeps for metrics) as often as it likes, e.g. after
each batch and from a one-second timer; the line computes the differences itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("worker.status")


@dataclass(frozen=True, slots=True)
class _Totals:
    consumed: int
    published: int
    dead_lettered: int


class StatusLine:
    """Emit at most one status line per ``interval`` seconds, only when busy.

    ``interval <= 0`` turns the line off. Time spent idle does not count in the rate:
    after a quiet hour, the first line's events/s covers the busy stretch only.
    """

    def __init__(self, interval: float, *, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._log = logger or log
        self._clock = clock
        self._since = clock()
        self._last = _Totals(0, 0, 0)

    def tick(self, *, consumed: int, published: int, dead_lettered: int, unacked: int,
             queue_depth: int | None = None) -> str | None:
        """Log (and return) a status line if one is due and something happened since
        the last; else None. Counters are totals since start, not increments."""
        if self.interval <= 0:
            return None
        now = self._clock()
        totals = _Totals(consumed, published, dead_lettered)
        last = self._last
        if totals == last:
            # Idle: slide the window so the next busy stretch is measured alone.
            self._since = now
            return None
        elapsed = now - self._since
        if elapsed < self.interval:
            return None
        events = totals.consumed - last.consumed
        updates = totals.published - last.published
        dead = totals.dead_lettered - last.dead_lettered
        lag = f"{unacked} unacked" + ("" if queue_depth is None else f", {queue_depth} queued")
        line = (f"status: {events / elapsed:.1f} events/s, {updates / elapsed:.1f} updates/s, "
                f"{dead} dead letter(s), lag {lag} (last {elapsed:.0f} s)")
        # "data" goes to the JSON line as numbers; the text line says it already.
        self._log.info(line, extra={"data": {
            "events_per_s": round(events / elapsed, 1),
            "updates_per_s": round(updates / elapsed, 1), "dead_letters": dead,
            "unacked": unacked, "queue_depth": queue_depth, "window_s": round(elapsed, 1)}})
        self._since = now
        self._last = totals
        return line
