"""The fault scenarios, sized by their callers: CI-sized by the tests, long by
``--soak`` and ``benchmarks/reliability.py``. Each runs a real worker subprocess
against the test's vhost and returns a report; the caller asserts or prints it."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.broker.bus import wait_for
from tests.reliability.harness import (
    Oracle,
    Producer,
    Verdict,
    WorkerProcess,
    as_messages,
    broker_restart,
    chaos_stream,
    cut_worker_connections,
    judge,
    load_state,
    rig,
    steady_stream,
    worker_connections,
)


@dataclass
class FaultReport:
    """What happened to one run and how it ended."""

    verdict: Verdict
    faults: int = 0
    starts: int = 0
    reconnects_logged: int = 0
    dead_letters: int = 0
    producer_resends: int = 0
    seconds: float = 0.0
    fault_moments: list[float] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        v = self.verdict
        return (f"{v.events} events, {self.faults} faults, {v.received_updates} updates "
                f"({v.duplicates} duplicates) for {v.expected_updates} expected, "
                f"lost events {len(v.lost_events)}, wrong finals "
                f"{len(v.wrong_final_categories)}, {self.seconds:.1f} s "
                + " ".join(f"{k} {t:.1f}" for k, t in self.phases.items()))


def fault_moments(rng: random.Random, count: int, duration: float) -> list[float]:
    """``count`` moments spread at random over the middle 90% of ``duration``."""
    return sorted(rng.uniform(0.05, 0.95) * duration for _ in range(count))


def _run(vhost: str, workdir: Path, stream: list[dict[str, Any]], rate: float,
         moments: list[float], fault: Any, **settings: object) -> FaultReport:
    """Publish ``stream`` at ``rate`` while calling ``fault(worker)`` at each moment
    (seconds after the producer starts); then settle and judge."""
    started = time.monotonic()
    oracle = Oracle.replay(stream)
    with rig(vhost, workdir, settings=settings) as r:
        producer = Producer(vhost, as_messages(stream), rate)
        producer.start()
        begin = time.monotonic()
        try:
            for moment in moments:
                time.sleep(max(0.0, begin + moment - time.monotonic()))
                fault(r.worker)
            producer.finish()
        finally:
            producer.abandon()
        published = time.monotonic()
        r.reopen()  # a broker restart may have cut the old one
        r.settle()
        settled = time.monotonic()
    worker = r.worker
    received, dead_letters = r.updates.received, r.dead.received
    report = FaultReport(judge(oracle, received, len(stream), r.state), faults=len(moments),
                         starts=worker.starts, dead_letters=len(dead_letters),
                         producer_resends=producer.resends, fault_moments=moments)
    report.reconnects_logged = worker.log().count("reconnecting in")
    report.seconds = time.monotonic() - started
    report.phases = {"replay": begin - started, "publish": published - begin,
                     "settle": settled - published, "judge": time.monotonic() - settled}
    return report


def crash_run(vhost: str, workdir: Path, *, events: int, kills: int, seed: int,
              accounts: int = 40, rate: float = 600.0, **settings: object) -> FaultReport:
    """SIGKILL the worker ``kills`` times at random moments mid-stream, restarting it
    at once each time."""
    stream = chaos_stream(seed, events, accounts)
    moments = fault_moments(random.Random(seed), kills, len(stream) / rate)

    def kill_and_restart(worker: WorkerProcess) -> None:
        worker.kill()
        worker.start()

    report = _run(vhost, workdir, stream, rate, moments, kill_and_restart, **settings)
    assert report.starts == kills + 1
    return report


def cut_run(vhost: str, workdir: Path, *, events: int, cuts: int, seed: int,
            accounts: int = 40, rate: float = 600.0) -> FaultReport:
    """Close the worker's connection from the broker side ``cuts`` times mid-stream;
    nobody restarts the worker."""
    stream = chaos_stream(seed, events, accounts)
    moments = fault_moments(random.Random(seed), cuts, len(stream) / rate)

    def cut(worker: WorkerProcess) -> None:
        assert worker.alive(), worker.log_tail()
        # Cut a live link, not one still reconnecting from the previous cut.
        wait_for(lambda: bool(worker_connections(vhost)), 30, "the worker to reconnect",
                 interval=0.1)
        assert cut_worker_connections(vhost) >= 1

    report = _run(vhost, workdir, stream, rate, moments, cut)
    assert report.starts == 1
    return report


def restart_run(vhost: str, workdir: Path, *, events: int, restarts: int, seed: int,
                accounts: int = 40, rate: float = 600.0, down: float = 1.0) -> FaultReport:
    """Stop and start the broker application ``restarts`` times mid-stream (every vhost
    of the broker goes down for a moment); nobody restarts the worker."""
    stream = chaos_stream(seed, events, accounts)
    moments = fault_moments(random.Random(seed), restarts, len(stream) / rate)

    def restart(worker: WorkerProcess) -> None:
        assert worker.alive(), worker.log_tail()
        with broker_restart():
            time.sleep(down)

    report = _run(vhost, workdir, stream, rate, moments, restart)
    assert report.starts == 1
    return report


@dataclass
class MemoryReport:
    """The worker's resident set over a long steady stream, KiB."""

    verdict: Verdict
    samples: list[tuple[int, int]]  # (events published so far, VmRSS)
    warm_up_events: int
    dedup_window: int
    seen_rows: int = 0

    @property
    def after_warm_up(self) -> list[int]:
        return [rss for published, rss in self.samples if published >= self.warm_up_events]

    @property
    def baseline(self) -> int:
        return self.after_warm_up[0]

    @property
    def peak(self) -> int:
        return max(self.after_warm_up)

    @property
    def final(self) -> int:
        return self.samples[-1][1]

    def summary(self) -> str:
        return (f"{self.verdict.events} events, RSS {self.baseline / 1024:.1f} MiB after "
                f"{self.warm_up_events} warm-up events, peak {self.peak / 1024:.1f} MiB, "
                f"final {self.final / 1024:.1f} MiB ({len(self.samples)} samples); "
                f"{self.seen_rows} event ids remembered (window {self.dedup_window})")


def memory_run(vhost: str, workdir: Path, *, events: int, seed: int, dedup_window: int = 2000,
               rate: float = 2500.0, warm_up: float = 0.3) -> MemoryReport:
    """Publish a steady stream over a fixed working set and sample VmRSS throughout."""
    stream = steady_stream(seed, events)
    oracle = Oracle.replay(stream, dedup_window=dedup_window)
    samples: list[tuple[int, int]] = []
    with rig(vhost, workdir, settings={"dedup_window": dedup_window}) as r:
        producer = Producer(vhost, as_messages(stream), rate)
        producer.start()
        try:
            while producer.is_alive():
                samples.append((producer.published, r.worker.rss_kib()))
                time.sleep(0.25)
            producer.finish()
        finally:
            producer.abandon()
        wait_for(r.broker.drained, 120, "the worker to catch up", interval=0.3)
        samples.append((producer.published, r.worker.rss_kib()))
        r.settle()
    report = MemoryReport(judge(oracle, r.updates.received, len(stream), r.state), samples,
                          int(len(stream) * warm_up), dedup_window)
    report.seen_rows = len(load_state(r.state, 10**9).seen)
    return report
