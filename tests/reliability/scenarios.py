"""The fault scenarios, sized by their callers: CI-sized by the tests, long by
``--soak`` and ``benchmarks/reliability.py``. Each runs a real worker subprocess
against the test's vhost and returns a report; the caller asserts or prints it."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.reliability.bad_input import MAX_BYTES, BadMessage, bad_message
from tests.support.harness import (
    Bus,
    Collector,
    Producer,
    Received,
    WorkerProcess,
    as_messages,
    broker_restart,
    cut_worker_connections,
    rig,
    wait_for,
    worker_connections,
)
from tests.support.oracle import Oracle, Verdict, committed_accounts, judge, replay
from tests.support.streams import event_stream


@dataclass(frozen=True)
class Size:
    """How long each scenario runs."""

    soak: bool
    crash_events: int
    kills: int
    cut_events: int
    cuts: int
    restart_events: int
    restarts: int
    fuzz_rounds: int
    memory_events: int


# CI: the whole suite in a few minutes on two cores shared with the broker.
CI = Size(False, crash_events=5000, kills=4, cut_events=4000, cuts=3, restart_events=3000,
          restarts=1, fuzz_rounds=160, memory_events=12_000)
# pytest --soak and benchmarks/reliability.py: the figures of docs/reliability.md.
SOAK = Size(True, crash_events=30_000, kills=60, cut_events=15_000, cuts=12,
            restart_events=9000, restarts=3, fuzz_rounds=500, memory_events=100_000)


@dataclass
class FaultReport:
    """What happened to one run and how it ended."""

    verdict: Verdict
    faults: int = 0
    starts: int = 0
    reconnects: int = 0
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
         moments: list[float], fault: Callable[[WorkerProcess], None],
         **settings: object) -> FaultReport:
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
        r.settle(timeout=max(120.0, len(stream) / 50))  # a backlog after many faults
        settled = time.monotonic()
    worker = r.worker
    received, dead_letters = r.updates.received, r.dead.received
    report = FaultReport(judge(oracle, received, len(stream), r.state), faults=len(moments),
                         starts=worker.starts, dead_letters=len(dead_letters),
                         producer_resends=producer.resends, fault_moments=moments)
    report.reconnects = worker.reconnects()
    report.seconds = time.monotonic() - started
    report.phases = {"replay": begin - started, "publish": published - begin,
                     "settle": settled - published, "judge": time.monotonic() - settled}
    return report


def crash_run(vhost: str, workdir: Path, *, events: int, kills: int, seed: int,
              accounts: int = 40, rate: float = 600.0, **settings: object) -> FaultReport:
    """SIGKILL the worker ``kills`` times at random moments mid-stream, restarting it
    at once each time."""
    stream = event_stream(seed, events, accounts, profile="chaos")
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
    stream = event_stream(seed, events, accounts, profile="chaos")
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
    stream = event_stream(seed, events, accounts, profile="chaos")
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
    dedup_window: int  # per account
    # Per account: event ids kept in the store's duplicate window, and distinct event
    # ids the stream sent it (each one is remembered once applied).
    window_rows: dict[str, int] = field(default_factory=dict)
    event_ids: dict[str, int] = field(default_factory=dict)

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
                f"event ids kept per account at most {max(self.window_rows.values(), default=0)}"
                f" of up to {max(self.event_ids.values(), default=0)} received (window "
                f"{self.dedup_window} per account)")


def memory_run(vhost: str, workdir: Path, *, events: int, seed: int, dedup_window: int = 2000,
               rate: float = 2500.0, warm_up: float = 0.3) -> MemoryReport:
    """Publish a steady stream over a fixed working set and sample VmRSS throughout."""
    stream = event_stream(seed, events, profile="steady")
    oracle = Oracle.replay(stream, dedup_window=dedup_window)
    samples: list[tuple[int, int]] = []
    with rig(vhost, workdir, settings={"dedup_window": dedup_window}) as r:
        producer = Producer(vhost, as_messages(stream), rate)
        producer.start()
        try:
            while producer.is_alive():
                samples.append((producer.published, r.worker.rss_kib()))
                time.sleep(0.1)
            producer.finish()
        finally:
            producer.abandon()
        wait_for(r.broker.drained, 120, "the worker to catch up", interval=0.3)
        samples.append((producer.published, r.worker.rss_kib()))
        r.settle()
    report = MemoryReport(judge(oracle, r.updates.received, len(stream), r.state), samples,
                          max(int(len(stream) * warm_up), min(6000, len(stream) // 2)),
                          dedup_window)
    # Every row the store kept (a window far beyond any account's events).
    stored = committed_accounts(r.state, oracle.accounts, event_window=10**9,
                                tombstone_window=10**9)
    report.window_rows = {account_id: len(state.recent) if state else 0
                          for account_id, state in stored.items()}
    ids: dict[str, set[str]] = {}
    for event in stream:
        ids.setdefault(event["account_id"], set()).add(event["event_id"])
    report.event_ids = {account_id: len(event_ids) for account_id, event_ids in ids.items()}
    return report


# A good event behind bad ones must come out within this (seconds, a loaded CI box).
HELD_BACK = 15.0
FUZZ_ID = "fuzz-id"


@dataclass
class FuzzRun:
    """One worker, many rounds of bad messages interleaved with good events."""

    broker: Bus
    worker: WorkerProcess
    updates: Collector
    dead: Collector
    good: list[dict[str, Any]] = field(default_factory=list)
    expected_updates: list[dict[str, Any]] = field(default_factory=list)
    bad: dict[str, BadMessage] = field(default_factory=dict)
    kinds: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    rounds: int = 0
    # Bad messages sent again after a broker restart: they may be dead-lettered twice.
    resent: set[str] = field(default_factory=set)
    # Filled in at the end of fuzz_run:
    problems: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    starts: int = 0
    log: str = ""

    def summary(self) -> str:
        return (f"{len(self.bad)} bad messages in {self.rounds} rounds between "
                f"{len(self.good)} good events: {dict(self.kinds)}; slowest round "
                f"{max(self.latencies):.2f} s; problems {len(self.problems)}")

    def round(self, bad: list[BadMessage]) -> None:
        """Publish ``bad`` shuffled among as many good events; wait until every bad
        one is dead-lettered and every good one's updates are out."""
        self.rounds += 1
        number = self.rounds
        good = event_stream(seed=100_000 + number, count=max(2, len(bad)), accounts=2)
        rng = random.Random(number)
        slots: list[dict[str, Any] | BadMessage] = [*good, *bad]
        order = sorted(range(len(slots)), key=lambda i: rng.random())
        # Good events keep their relative order (one conversation's events are ordered).
        good_iter = iter(good)
        mixed = [slots[i] if isinstance(slots[i], BadMessage) else next(good_iter) for i in order]
        # Each round's accounts and event ids are its own (they come from its seed), so
        # replaying the round alone gives what replaying every round so far would.
        self.expected_updates.extend(replay(good))
        self.good.extend(good)
        started = time.monotonic()
        for index, item in enumerate(mixed):
            if isinstance(item, BadMessage):
                fuzz_id = f"{number}-{index}"
                self.bad[fuzz_id] = item
                self.kinds[item.kind.split("/")[0]] += 1
                if not self.broker.send(item.routing_key, item.body, pika.BasicProperties(
                        content_type=item.content_type, content_encoding=item.content_encoding,
                        headers={**item.headers, FUZZ_ID: fuzz_id}, delivery_mode=2)):
                    self.resent.add(fuzz_id)
            else:
                self.broker.send(item["type"], json.dumps(item).encode())

        def through() -> bool:
            assert self.worker.alive(), f"worker died: {self.worker.log_tail()}"
            return (len(self.dead) >= len(self.bad)
                    and len(self.updates) >= len(self.expected_updates))

        wait_for(through, HELD_BACK, f"round {number}: {len(bad)} bad and {len(good)} good "
                 f"message(s) through the worker; log: {self.worker.log_tail(5)[-2000:]}")
        self.latencies.append(time.monotonic() - started)


def check_dead_letters(sent: dict[str, BadMessage], dead: list[Received],
                       resent: set[str]) -> list[str]:
    """Each bad message exactly once, body untouched (but for one over the size limit:
    only its first MAX_BYTES, the worker keeps no more), its headers kept, a reason
    added."""
    problems = []
    seen: Counter[str] = Counter()
    for message in dead:
        headers = message.properties.headers or {}
        fuzz_id = headers.get(FUZZ_ID)
        if fuzz_id not in sent:
            problems.append(f"a good event was dead-lettered: {message.body[:200]!r} "
                            f"({headers.get('x-error')!r}, x-death {headers.get('x-death')})")
            continue
        seen[fuzz_id] += 1
        original = sent[fuzz_id]
        reason = headers.get("x-error")
        if message.body != original.body[:MAX_BYTES]:
            problems.append(f"{fuzz_id} ({original.kind}): body changed")
        if not isinstance(reason, str) or not reason:
            problems.append(f"{fuzz_id} ({original.kind}): no x-error reason: {headers}")
        elif reason.startswith("worker error"):
            problems.append(f"{fuzz_id} ({original.kind}): handled as a worker bug: {reason}")
        kept = {k: headers.get(k) for k in original.headers}
        if kept != original.headers:
            problems.append(f"{fuzz_id}: headers {original.headers} came back as {kept}")
        if message.properties.content_type != original.content_type:
            problems.append(f"{fuzz_id}: content type {message.properties.content_type}")
    missing = sorted(set(sent) - set(seen))
    if missing:
        problems.append(f"{len(missing)} bad message(s) not dead-lettered, e.g. "
                        f"{[(m, sent[m].kind) for m in missing[:5]]}")
    twice = [m for m, n in seen.items() if n > 1 and m not in resent]
    if twice:
        problems.append(f"dead-lettered more than once: {twice[:5]}")
    return problems


def fuzz_run(vhost: str, workdir: Path, *, rounds: int) -> FuzzRun:
    """``rounds`` hypothesis examples, each a list of 8-30 bad messages shuffled among as
    many good events, through one worker; derandomized, so a failure replays."""
    with rig(vhost, workdir, settings={"max_message_bytes": MAX_BYTES}) as r:
        run = FuzzRun(r.broker, r.worker, r.updates, r.dead)

        @settings(max_examples=rounds, derandomize=True, database=None, deadline=None,
                  phases=[Phase.generate], print_blob=False,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(bad_message(), min_size=8, max_size=30))
        def one_round(bad: list[BadMessage]) -> None:
            run.round(bad)

        one_round()
        r.settle()
    run.problems = check_dead_letters(run.bad, r.dead.received, run.resent)
    run.verdict = judge(Oracle(run.good, run.expected_updates), r.updates.received,
                        len(run.good), r.state)
    run.starts = r.worker.starts
    run.log = r.worker.log()
    return run
