"""What operators see of a running worker, fed from the driver's own counters.

Once a second, on the ioloop, the monitor reads the driver's :class:`Stats` and the
link's state and turns them into Prometheus metrics, health and the status line. The
hot path pays nothing for it: the driver only counts (and keeps, per committed batch,
its timings and dead-letter reasons until the next tick).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from worker.driver import Driver, Phase, Stats
from worker.observability import HealthState, Metrics, StatusLine

TICK_SECONDS = 1.0


class Monitor:
    """``connected`` and ``broker_blocked`` read the link: whether it is up, and the
    broker's reason while it blocks the connection (None otherwise)."""

    def __init__(self, driver: Driver, connected: Callable[[], bool], metrics: Metrics,
                 health: HealthState, status: StatusLine,
                 broker_blocked: Callable[[], str | None]) -> None:
        self.driver = driver
        self.connected = connected
        self.broker_blocked = broker_blocked
        self.metrics = metrics
        self.health = health
        self.status = status
        self._last = Stats()
        self._rules_version = ""
        self._partitions: frozenset[int] = frozenset()

    def tick(self) -> None:
        """Publish everything the driver counted since the last tick."""
        driver, metrics = self.driver, self.metrics
        self.health.loop_turned()
        stats, last = driver.stats, self._last
        metrics.events_consumed(stats.consumed - last.consumed)
        metrics.redelivered(stats.redelivered - last.redelivered)
        metrics.updates_published(stats.updates - last.updates)
        for _ in range(stats.commits - last.commits):
            metrics.committed()
        for _ in range(stats.failed_batches - last.failed_batches):
            metrics.batch_failed()
        reasons = driver.report.take_dead_letter_reasons()
        for reason in reasons:
            metrics.dead_lettered(reason)
        # The driver keeps a bounded number of reasons between two ticks; a burst
        # beyond that is still counted (in the family "other").
        unnamed = stats.dead_lettered - last.dead_lettered - len(reasons)
        if unnamed > 0:
            metrics.dead_lettered("other", unnamed)
        for batch_seconds, confirm_seconds in driver.report.take_batch_timings():
            metrics.observe_batch(batch_seconds)
            metrics.observe_confirm_latency(confirm_seconds)
        self._last = Stats(**vars(stats))
        metrics.set_unacked_events(driver.unacked)
        metrics.set_cached_accounts(len(driver.cache))
        if driver.partitions != self._partitions:
            self._partitions = driver.partitions
            metrics.owned_partitions(sorted(self._partitions))
        if driver.rules.version != self._rules_version:
            self._rules_version = driver.rules.version
            metrics.rules_version(self._rules_version)
        connected = self.connected()
        consuming = connected and driver.phase is Phase.CONSUMING and driver.consuming
        problem = driver.problem
        blocked = self.broker_blocked()
        metrics.set_broker_blocked(blocked is not None)
        self.health.update(connected=connected, consuming=consuming,
                           can_commit=problem is None,
                           reason="" if problem is None else problem,
                           broker_blocked=blocked or "")
        self.status.tick(consumed=stats.consumed, published=stats.updates,
                         dead_lettered=stats.dead_lettered, unacked=driver.unacked)

    def run_every(self, call_later: Callable[[float, Callable[[], None]], object]) -> None:
        """Tick now and then every :data:`TICK_SECONDS` on the ioloop, for as long as
        it runs."""
        def again() -> None:
            started = time.monotonic()
            self.tick()
            call_later(max(0.0, TICK_SECONDS - (time.monotonic() - started)), again)

        again()
