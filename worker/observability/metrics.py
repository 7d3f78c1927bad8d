"""The worker's Prometheus metrics, behind typed methods the driver calls.

Each :class:`Metrics` owns its own ``CollectorRegistry`` instead of the library's
global one: tests build as many as they like, and several workers in one process
(the broker tests run some) never clash over a metric name.

Cost: every method is a lock and an add inside ``prometheus_client`` (about a
microsecond). Call them per batch with a count (``events_consumed(len(batch))``),
not once per event, and nothing shows in a profile. Every method may be called from
the ioloop thread while the HTTP thread renders: the library's metrics are
thread-safe, and the little state kept here has its own lock.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from typing import Final, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

NAMESPACE: Final = "inbox_rules"
# What render() writes (the library's CONTENT_TYPE_LATEST moved to text format 1.0.0).
TEXT_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Dead-letter reasons are free text (they name fields and values); as a label they
# would make one time series per distinct message. They are folded into these.
DEAD_LETTER_FAMILIES: Final = (
    "invalid_json", "too_large", "schema", "not_utf8", "worker_error", "unroutable", "other")

# Batches take ~50 ms (MAX_BATCH_DELAY) to a few hundred ms; a fan-out over a big
# account or a store retry takes seconds. Buckets cover both ends.
BATCH_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                        30.0, 60.0)
# An event waits for its batch to fill, be evaluated, published and confirmed; a
# store outage or a reconnect holds it for the backoff (up to RECONNECT_MAX_DELAY).
CONFIRM_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                          60.0, 120.0)

# The reasons' texts come from contracts/events.py (parse_event and
# describe_validation_error) and worker/service.py; tests/observability checks this
# table against real parse_event output, so a reworded reason fails a test, not a
# dashboard.
_PREFIXES: Final = (
    ("message too large", "too_large"),
    ("message is not valid utf-8", "not_utf8"),
    ("invalid json", "invalid_json"),
    # The JSON decoder itself failed (e.g. nested deeper than it recurses): the body
    # is not usable JSON, whatever the exception's name.
    ("unreadable", "invalid_json"),
    ("worker error", "worker_error"),
    ("unroutable", "unroutable"),
    ("event must be a json object", "schema"),
)
# describe_validation_error: "<field path>: <why>" parts joined by "; ", e.g.
# "data.agent_id: Field required" or "type: unknown event type 'x'; ...".
_FIELD_REASON: Final = re.compile(r"^\(?[\w.\-\[\]]+\)?: ")


class HealthView(Protocol):
    """What the health collector reads (``worker.observability.http.HealthState``)."""

    @property
    def connected(self) -> bool: ...
    @property
    def consuming(self) -> bool: ...
    @property
    def can_commit(self) -> bool: ...
    def liveness(self) -> tuple[bool, str]: ...
    def readiness(self) -> tuple[bool, str]: ...


class _HealthCollector(Collector):
    """/healthz and /readyz as a gauge, read at scrape time: alerts need a series,
    and the driver then has nothing extra to call."""

    def __init__(self, health: HealthView) -> None:
        self._health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        health = self._health
        family = GaugeMetricFamily(
            f"{NAMESPACE}_healthy", "1 if the check passes: live (/healthz), ready (/readyz), "
            "connected, consuming, can_commit.", labels=["check"])
        for check, ok in (("live", health.liveness()[0]), ("ready", health.readiness()[0]),
                          ("connected", health.connected), ("consuming", health.consuming),
                          ("can_commit", health.can_commit)):
            family.add_metric([check], 1.0 if ok else 0.0)
        yield family


def reason_family(reason: str) -> str:
    """The family (one of :data:`DEAD_LETTER_FAMILIES`) of a dead-letter reason."""
    text = reason.strip()
    lowered = text.lower()
    for prefix, family in _PREFIXES:
        if lowered.startswith(prefix):
            return family
    if "unroutable" in lowered or "no route" in lowered or "no_route" in lowered:
        return "unroutable"
    if _FIELD_REASON.match(text):
        return "schema"
    return "other"


class Metrics:
    """Every metric the worker exports, in one registry; see the module docstring."""

    def __init__(self, *, process_metrics: bool = True) -> None:
        """``process_metrics`` adds the library's process collector (RSS, CPU, open
        files) and Python version info: the memory bound is a guarantee worth a graph."""
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._events = Counter("events_consumed", "Events received from the input queue.",
                               namespace=NAMESPACE, registry=reg)
        self._updates = Counter("updates_published",
                                "Category updates published and confirmed by the broker.",
                                namespace=NAMESPACE, registry=reg)
        self._dead = Counter("dead_letters", "Messages dead-lettered, by reason family.",
                             ["reason"], namespace=NAMESPACE, registry=reg)
        for family in DEAD_LETTER_FAMILIES:
            # Every family exists from the start at 0: rate() and alerts need a series
            # before the first bad message, not after it.
            self._dead.labels(family)
        self._redeliveries = Counter("redeliveries",
                                     "Events the broker delivered again (redelivered flag).",
                                     namespace=NAMESPACE, registry=reg)
        self._commits = Counter("commits", "Batches committed to the state store.",
                                namespace=NAMESPACE, registry=reg)
        self._failed = Counter("failed_batches",
                               "Batches not acknowledged (store or publish failure), retried.",
                               namespace=NAMESPACE, registry=reg)
        self._batch = Histogram("batch_duration_seconds",
                                "From a batch's start to its ack: evaluate, publish, confirm, "
                                "commit.", namespace=NAMESPACE, registry=reg,
                                buckets=BATCH_BUCKETS)
        self._confirm = Histogram("event_confirm_latency_seconds",
                                  "From an event's delivery to the worker to the broker's "
                                  "confirm of everything it caused (when it can be acked).",
                                  namespace=NAMESPACE, registry=reg, buckets=CONFIRM_BUCKETS)
        self._unacked = Gauge("unacked_events", "Events held unacknowledged by this worker.",
                              namespace=NAMESPACE, registry=reg)
        self._accounts = Gauge("cached_accounts", "Accounts held in memory.",
                               namespace=NAMESPACE, registry=reg)
        self._rules = Info("rules", "The rules version in force (a hash of the rule files).",
                           namespace=NAMESPACE, registry=reg)
        self._owned = Gauge("owned_partitions", "How many account partitions this worker owns.",
                            namespace=NAMESPACE, registry=reg)
        self._blocked = Gauge("broker_blocked",
                              "1 while the broker blocks this worker's connection (its "
                              "memory or disk alarm): nothing is published until it clears.",
                              namespace=NAMESPACE, registry=reg)
        self._partition = Gauge("partition_owned",
                                "1 for each account partition this worker owns.",
                                ["partition"], namespace=NAMESPACE, registry=reg)
        self._lock = threading.Lock()
        self._partitions: frozenset[str] = frozenset()
        self._health_exported: list[HealthView] = []
        if process_metrics:
            ProcessCollector(namespace=NAMESPACE, registry=reg)
            PlatformCollector(registry=reg)

    # Counters. A count of 0 is allowed (an empty batch) and changes nothing.

    def events_consumed(self, n: int = 1) -> None:
        self._events.inc(n)

    def updates_published(self, n: int = 1) -> None:
        self._updates.inc(n)

    def dead_lettered(self, reason: str, n: int = 1) -> None:
        """Count ``n`` dead letters under the family of ``reason`` (the x-error text)."""
        self._dead.labels(reason_family(reason)).inc(n)

    def redelivered(self, n: int = 1) -> None:
        self._redeliveries.inc(n)

    def committed(self) -> None:
        self._commits.inc()

    def batch_failed(self) -> None:
        self._failed.inc()

    # Histograms.

    def observe_batch(self, seconds: float) -> None:
        self._batch.observe(seconds)

    def observe_confirm_latency(self, seconds: float) -> None:
        self._confirm.observe(seconds)

    # Gauges.

    def set_unacked_events(self, n: int) -> None:
        self._unacked.set(n)

    def set_cached_accounts(self, n: int) -> None:
        self._accounts.set(n)

    def set_broker_blocked(self, blocked: bool) -> None:
        self._blocked.set(1 if blocked else 0)

    def rules_version(self, version: str) -> None:
        """The rules in force; a reload replaces the label (one series at a time)."""
        self._rules.info({"version": version})

    def owned_partitions(self, partitions: Iterable[int | str]) -> None:
        """The partitions this worker owns now; ones it lost stop being exported."""
        owned = frozenset(str(p) for p in partitions)
        with self._lock:
            for lost in self._partitions - owned:
                self._partition.remove(lost)
            for partition in owned - self._partitions:
                self._partition.labels(partition).set(1)
            self._partitions = owned
            self._owned.set(len(owned))

    def export_health(self, health: HealthView) -> None:
        """Export ``health`` as ``inbox_rules_healthy{check=...}`` (once per object;
        a second call with the same one changes nothing)."""
        with self._lock:
            if any(h is health for h in self._health_exported):
                return
            self._health_exported.append(health)
        self.registry.register(_HealthCollector(health))

    # Exposition.

    def render(self) -> bytes:
        """The registry in the Prometheus text format (:data:`TEXT_CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def render_for(self, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) for a scrape's ``Accept`` header, negotiated by the
        library as its own handler does: OpenMetrics when asked (Prometheus asks),
        the text format otherwise."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
