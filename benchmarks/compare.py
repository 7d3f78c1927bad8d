"""The worker against the bare relay, in the same run, on the same streams.

    python -m benchmarks.compare [--quick] [--only light/2,...] [--rich]

Against the local RabbitMQ (127.0.0.1:5672, guest/guest), in a vhost made for this
run and deleted after it. For each variant (fan-out light or heavy; 2, 50 or 500
agents per account) it runs ``benchmarks.relay`` and then ``inbox-rules run`` (the
worker, defaults except broker URL and state file; both with the worker's prefetch)
as subprocesses on the same pre-generated stream (:mod:`tests.support.streams`).
``--rich`` adds, after each variant, the same variant on the rich stream (``+rich``:
the same fan-out, agents and number of chats, with labels, attributes, priorities,
reads, mentions and snoozes; ``rich=True``), and prints its worker/relay ratios beside
the default stream's:

1. **Throughput**: the stream is pre-published into the worker's quorum queue
   (persistent), then the program is started; the clock runs from the moment its
   consumer appears until the output of a sentinel event published last arrives (one
   consumer processes the queue in order; everything before it was confirmed by
   then). Every output (the relay's copies, the worker's updates) is routed to a
   durable queue bound with ``#``, as downstream would have. Afterwards the program is
   stopped with SIGTERM and the input queue must be empty (everything acked) and the
   dead-letter queue too.
2. **Latency**: the program is started idle; events are published paced at HALF the
   measured maximum rate — half the relay's events/s, or half the worker's if the
   worker cannot sustain that (the table's ``rate`` column; the same rate for both
   programs) — and every output is received; latency = receive time minus publish
   time of its cause (matched by ``event_id`` for the relay, whose output is the event
   itself, and ``cause_event_id`` for the worker). p50/p99 are over outputs (updates).
3. **Peak RSS**: VmHWM of the program at the end of the throughput run. The "soak"
   checks it stays flat: the worker runs a long default stream whose first half
   creates every conversation (and fills every account's dedup window:
   ``INBOX_RULES_DEDUP_WINDOW`` is set to what the smallest account sends in it), and
   whose second half reopens and resolves the same conversations again, with new event
   ids; the state then no longer grows, so peak RSS at the end must be within 10% of
   peak RSS at half-way (more would be a leak on the path every event takes).

``CPU us/ev`` is the program's own CPU time per event; ``MQ us/ev`` is the local
RabbitMQ's (its ``beam.smp``) in the same run: on 2 cores the two share the machine.

Ratios are worker/relay, measured minutes apart on the same machine: absolute times on
this 2-core machine (broker included) drift, ratios much less.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import pika
import pika.exceptions

from benchmarks.relay import COPIES
from contracts import parse_event
from tests.support.harness import (
    PROFILE_RATE,
    WORKER_COMMAND,
    Bus,
    Profiler,
    WorkerProcess,
    amqp_url,
    await_broker,
    broker_cpu_seconds,
    fresh_vhost,
    wait_for,
    worker_env,
)
from tests.support.streams import as_lines, event_stream, soak_stream
from worker.domain.inbox import Inbox
from worker.rulebook import load_rules
from worker.settings import Settings

T = TypeVar("T")
SINK = "bench.outputs"  # every output, as downstream queues would hold it
SENTINEL_QUEUE = "bench.sentinel"
SENTINEL_ACCOUNT = "bench-sentinel"
SENTINEL_KEY = f"{SENTINEL_ACCOUNT}.end"  # the relay republishes with the same key
# The relay's output is the event (`"event_id": "…"`); the worker's names its cause.
CAUSE = re.compile(rb'"(cause_)?event_id": ?"([^"]+)"')

PROGRAMS = {
    "relay": (sys.executable, "-m", "benchmarks.relay"),
    "worker": WORKER_COMMAND,
}
# What makes a run fail and be tried again: a program died or timed out, the broker
# restarted (the machine is shared).
RETRIED = (RuntimeError, AssertionError, pika.exceptions.AMQPError, OSError)


@dataclass(frozen=True)
class Variant:
    fanout: str
    agents: int
    conversations: int
    rich: bool = False  # the rich stream (streams.Knobs.rich) of the same chats

    @property
    def name(self) -> str:
        return f"{self.fanout}/{self.agents}{RICH if self.rich else ''}"

    @property
    def plain(self) -> str:
        """The name of the same variant on the default stream."""
        return f"{self.fanout}/{self.agents}"


RICH = "+rich"


# Conversations per variant: sized so that each run takes seconds, not minutes (at 500
# agents an event averages well over 100 updates).
FULL = [Variant("light", 2, 3000), Variant("light", 50, 400), Variant("light", 500, 70),
        Variant("heavy", 2, 3000), Variant("heavy", 50, 250), Variant("heavy", 500, 45)]
QUICK = [Variant("light", 2, 1500), Variant("light", 50, 150), Variant("light", 500, 25),
         Variant("heavy", 2, 1500), Variant("heavy", 50, 100), Variant("heavy", 500, 16)]
DEFAULT = "light/2"  # the common case: small accounts, chats routed to groups


@dataclass
class Result:
    events: int = 0
    updates: int = 0
    seconds: float = 0.0
    rss_half_kb: int = 0
    rss_end_kb: int = 0
    cpu_seconds: float = 0.0  # the program's own CPU time (user + system) in the run
    broker_cpu_seconds: float = 0.0  # RabbitMQ's CPU time in the run (0: not measured)
    rate: float = 0.0  # events/s of the latency run
    latencies: list[float] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def updates_per_second(self) -> float:
        return self.updates / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_seconds / self.events * 1e6 if self.events else 0.0

    @property
    def broker_us_per_event(self) -> float:
        return self.broker_cpu_seconds / self.events * 1e6 if self.events else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class BenchError(RuntimeError):
    """A run went wrong (a program died, the broker restarted): the variant is retried."""


# -- the broker and the programs ------------------------------------------------
def reset(broker: Bus) -> None:
    """Empty the vhost for a run: the worker's queues, the sink, and the sentinel's
    queue, bound to the sentinel account's outputs."""
    broker.reset(SENTINEL_QUEUE)
    broker.channel.queue_declare(SENTINEL_QUEUE, durable=True)
    broker.channel.queue_bind(SENTINEL_QUEUE, broker.topology.updates_exchange,
                              f"{SENTINEL_ACCOUNT}.#")


def sentinel(run: str) -> bytes:
    """An event that makes exactly one update (an agent joins an unknown account's
    conversation), published last: its output arrives after every other output."""
    return json.dumps({"event_id": f"sentinel-{run}", "type": "conversation.assigned",
                       "account_id": SENTINEL_ACCOUNT, "conversation_id": "c-end",
                       "occurred_at": "2026-11-24T23:59:59Z",
                       "data": {"agent_id": "ag-end"}}).encode()


def start(kind: str, broker: Bus, workdir: Path, **settings: object) -> WorkerProcess:
    """The relay or the worker: defaults except the broker URL, a fresh state file and
    ``settings``; both with the worker's prefetch."""
    env = worker_env(amqp_url(broker.vhost), workdir / f"state-{uuid.uuid4().hex[:6]}.db",
                     settings, defaults={"prefetch": Settings().prefetch})
    program = WorkerProcess(env, workdir / f"{kind}.log", command=PROGRAMS[kind], name=kind)
    program.start()
    return program


def wait_until(condition: Callable[[], bool], program: WorkerProcess, timeout: float,
               what: str, broker: Bus, interval: float = 0.002) -> float:
    """``wait_for`` with our consumers running meanwhile."""
    return wait_for(condition, timeout, f"{program.name}: {what}", interval, alive=program,
                    sleep=broker.pump)


def stop(kind: str, program: WorkerProcess) -> None:
    status = program.stop(timeout=60)
    # -SIGTERM: stopped before it installed its handler (a run cut short).
    if status not in (0, -signal.SIGTERM):
        raise BenchError(f"{kind} exited with {status}:\n{program.log()[-3000:]}")


def check_clean(broker: Bus, kind: str) -> None:
    """After the program stopped: every input acked, nothing dead-lettered."""
    left = broker.ready(broker.topology.events_queue)
    dead = broker.ready(broker.topology.dead_letter_queue)
    if left or dead:
        raise BenchError(f"{kind}: {left} event(s) not acked, {dead} dead-lettered")


# -- the measurements -------------------------------------------------------
def fan_out(lines: list[bytes]) -> list[int]:
    """Per event, how many updates the worker publishes for it (the default rules, as
    ``inbox-rules replay`` gives them): the relay publishes as many copies."""
    inbox = Inbox(load_rules())
    counts = []
    for line in lines:
        updates = inbox.handle(parse_event(line))
        counts.append(len(updates))
    return counts


def throughput(kind: str, broker: Bus, lines: list[bytes], keys: list[str],
               workdir: Path, timeout: float, profile: Path | None = None,
               copies: list[int] | None = None, **settings: object) -> Result:
    reset(broker)
    run = uuid.uuid4().hex[:8]
    for index, (key, line) in enumerate(zip(keys, lines, strict=True)):
        if copies is None:
            broker.send(key, line)
        else:
            broker.send(key, line, pika.BasicProperties(
                delivery_mode=2, headers={COPIES: copies[index]}))
    broker.send(SENTINEL_KEY, sentinel(run))
    total = len(lines) + 1
    queue = broker.topology.events_queue
    deadline = time.perf_counter() + 60
    while broker.ready(queue) < total:  # quorum queue: publishes land asynchronously
        if time.perf_counter() > deadline:
            raise BenchError("pre-published events did not all reach the queue")
        time.sleep(0.01)
    arrived: list[float] = []
    tag = broker.channel.basic_consume(
        SENTINEL_QUEUE, lambda _c, _m, _p, _b: arrived.append(time.perf_counter()),
        auto_ack=True)
    program = start(kind, broker, workdir, **settings)
    result = Result(events=len(lines))
    spy: Profiler | None = None
    raw = workdir / "profile.raw"
    try:
        started = wait_until(lambda: broker.consumers() > 0, program, 120,
                             "its consumer", broker)
        cpu_started = program.cpu_seconds()
        broker_started = broker_cpu_seconds()
        if profile is not None:
            spy = Profiler(program.pid, raw)
        last_poll = 0.0

        def done() -> bool:
            nonlocal last_poll
            now = time.perf_counter()
            if not result.rss_half_kb and now - last_poll > 0.05:
                last_poll = now
                if broker.ready(queue) <= total // 2:
                    result.rss_half_kb = program.status_kib("VmHWM")
            return bool(arrived)

        wait_until(done, program, timeout, "the sentinel's output", broker, 0.01)
        result.seconds = arrived[0] - started
        result.cpu_seconds = program.cpu_seconds() - cpu_started
        broker_ended = broker_cpu_seconds()
        if broker_started is not None and broker_ended is not None:
            result.broker_cpu_seconds = broker_ended - broker_started
        result.rss_end_kb = program.status_kib("VmHWM")
        if spy is not None and profile is not None:
            spy.stop()
            spy = None
            profile.write_text(summarize(raw.read_text(), f"{kind}, {profile.stem}: "
                                         f"{len(lines)} events in {result.seconds:.1f} s"))
    finally:
        if spy is not None:
            spy.kill()
        stop(kind, program)
        broker.cancel(tag)
    check_clean(broker, kind)
    outputs = broker.ready(SINK) - 1  # the sentinel's
    result.updates = outputs
    expected = len(lines) if copies is None else sum(copies)
    if kind == "relay" and outputs != expected:
        raise BenchError(f"relay: {outputs} outputs for {len(lines)} events "
                         f"({expected} expected)")
    return result


def latency(kind: str, broker: Bus, lines: list[bytes], keys: list[str],
            ids: list[str], rate: float, workdir: Path) -> Result:
    reset(broker)
    run = uuid.uuid4().hex[:8]
    sent: dict[str, list[float]] = {}
    result = Result(events=len(lines), rate=rate)
    finished: list[float] = []
    relay = kind == "relay"
    sentinel_id = f"sentinel-{run}"

    def on_output(_channel: object, _method: object, _props: object, body: bytes) -> None:
        now = time.perf_counter()
        match = CAUSE.search(body)
        if match is None:
            return
        cause = match.group(2).decode()
        if cause == sentinel_id:
            finished.append(now)
            return
        times = sent.get(cause)
        if not times:
            return
        result.latencies.append(now - (times.pop(0) if relay else times[0]))
        result.updates += 1

    program = start(kind, broker, workdir)
    tag = None
    try:
        wait_until(lambda: broker.consumers() > 0, program, 120, "its consumer", broker)
        tag = broker.channel.basic_consume(SINK, on_output, auto_ack=True)
        schedule = [*zip(keys, lines, ids, strict=True),
                    (SENTINEL_KEY, sentinel(run), sentinel_id)]
        begin = time.perf_counter()
        index = 0
        while index < len(schedule):
            now = time.perf_counter()
            due = min(len(schedule), int((now - begin) * rate) + 1)
            while index < due:
                key, line, event_id = schedule[index]
                broker.send(key, line)
                sent.setdefault(event_id, []).append(time.perf_counter())
                index += 1
            broker.pump(min(0.002, max(0.0, begin + index / rate - time.perf_counter())))
            program.assert_alive()
        wait_until(lambda: bool(finished), program, 120, "the sentinel's output", broker,
                   0.01)
    finally:
        stop(kind, program)
        if tag is not None:
            broker.cancel(tag)
    check_clean(broker, kind)
    return result


# -- the profile ------------------------------------------------------------
# py-spy runs with --threads: each stack starts with "thread (TID): NAME". The ioloop
# runs on the main thread; it is idle when its stack ends in pika's poller
# (PollPoller.poll, EPollPoller.poll, SelectPoller.poll). Of the other threads only the
# commit thread's time in a store commit is shown (a blocked thread's Python stack does
# not say whether it waits for work).
IDLE_LEAF = re.compile(r"^\w*Poller\.poll \(pika/adapters/select_connection\.py:")
THREAD = re.compile(r"^thread \(\w+\): (?P<name>.+)$")
MAIN_THREAD = "MainThread"
COMMITTING = re.compile(r";\w+Store\.commit \(")


# Where a main-thread sample's time goes: the innermost of these functions on its stack.
PHASES = [
    ("parse_event", "parse + validate the event (pydantic)"),
    ("Categoriser._publishable", "update bodies + badge counts"),
    ("Categoriser.", "rules + state + diff (domain)"),
    ("AccountCache.", "account cache (load from the store, evict)"),
    ("Step.", "batch step (outcomes, update messages)"),
    ("AmqpLink.publish", "publish (encoded properties + frames, worker.amqp.frames)"),
    ("CoalescingConnection._flush", "socket send (one write per ioloop pass)"),
    ("Driver.on_confirm", "confirm bookkeeping"),
    ("Driver.", "driver (batches, commits, acks)"),
    ("AmqpLink.delivered", "delivery hand-over"),
    ("AmqpLink._on_message", "delivery hand-over"),
    ("DeliveryIntake.", "receive: deliveries off the stream (worker.amqp.intake)"),
    ("Connection._on_data_available", "pika receive + frame decoding"),
]


def summarize(raw: str, title: str, top: int = 25) -> str:
    """py-spy's collapsed stacks (``thread;frame;frame;... count``) as a short text: how
    the main thread's wall time splits into idle (waiting in poll) and busy, the commit
    thread's time in a store commit, then the main thread's busy samples by phase, by
    package (self time), and the functions with the most inclusive and self time."""
    main_total = idle = committing = 0
    inclusive: dict[str, int] = {}
    self_time: dict[str, int] = {}
    packages: dict[str, int] = {}
    phases: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        head, _, rest = stack.partition(";")
        match = THREAD.match(head)
        if match is None:  # recorded without --threads: every stack is the main thread's
            thread, rest = MAIN_THREAD, stack
        else:
            thread = match["name"]
        if thread != MAIN_THREAD:
            if COMMITTING.search(stack):
                committing += count
            continue
        main_total += count
        if not rest or IDLE_LEAF.match(rest.rsplit(";", 1)[-1]):
            idle += count
            continue
        frames = [_function(frame) for frame in rest.split(";")]
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count
        self_time[frames[-1]] = self_time.get(frames[-1], 0) + count
        package = _package(frames[-1])
        packages[package] = packages.get(package, 0) + count
        phase = next((label for frame in reversed(frames) for marker, label in PHASES
                      if frame.startswith(marker)), "other (ioloop, timers)")
        phases[phase] = phases.get(phase, 0) + count
    busy = max(main_total - idle, 1)
    wall = max(main_total, 1)

    def rows(counts: dict[str, int]) -> list[str]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [f"  {100 * n / busy:5.1f}%  {name}" for name, n in ranked]

    return "\n".join([
        f"# py-spy profile of the {title}",
        f"# main thread: {main_total} samples at {PROFILE_RATE}/s; idle (ioloop waiting in "
        f"poll): {100 * idle / wall:.1f}% of wall time; busy (running, or waiting for a "
        f"core or the GIL): {100 * (main_total - idle) / wall:.1f}%",
        f"# commit thread: in a store commit (SQL, fsync, waits for the GIL) "
        f"{100 * committing / wall:.1f}% of wall time",
        "", "main thread's busy time by phase (innermost step on the stack):",
        *rows(phases),
        "", "main thread's busy time by package (self):", *rows(packages),
        "", f"main thread: top {top} functions, inclusive:", *rows(inclusive),
        "", f"main thread: top {top} functions, self:", *rows(self_time), ""])


def _function(frame: str) -> str:
    """``name (path:line)`` without the line number."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def _package(function: str) -> str:
    where = function.rpartition(" (")[2].rstrip(")")
    parts = where.split("/")
    return "/".join(parts[:2]) if parts[0] == "worker" else parts[0]


# -- the run ----------------------------------------------------------------
@dataclass
class Row:
    variant: Variant
    updates_per_event: float
    relay: Result
    worker: Result
    relay_latency: Result
    worker_latency: Result


def best(results: list[Result]) -> Result:
    """Noise only slows a run down: keep the fastest, and the least CPU seen."""
    fastest = max(results, key=lambda r: r.events_per_second)
    fastest.cpu_seconds = min(r.cpu_seconds for r in results)
    return fastest


def measure(variant: Variant, broker: Bus, workdir: Path, latency_seconds: float,
            profiles: Path | None, repeat: int) -> Row:
    events = event_stream(profile=variant.fanout, agents=variant.agents,
                          conversations=variant.conversations, rich=variant.rich)
    lines = as_lines(events)
    keys = [str(e["type"]) for e in events]
    ids = [str(e["event_id"]) for e in events]
    copies = fan_out(lines)
    profile = (profiles / f"{variant.fanout}-{variant.agents}{'-rich' * variant.rich}.txt"
               if profiles is not None else None)
    relays, workers = [], []
    for attempt in range(repeat):  # interleaved, so that both see the same noise
        relays.append(throughput("relay", broker, lines, keys, workdir, timeout=300,
                                 copies=copies))
        workers.append(throughput("worker", broker, lines, keys, workdir, timeout=600,
                                  profile=profile if attempt == repeat - 1 else None))
    relay, worker = best(relays), best(workers)
    if latency_seconds <= 0:  # --no-latency: throughput, CPU and RSS only
        return Row(variant, worker.updates / worker.events, relay, worker, Result(),
                   Result())
    # Half the measured maximum: the relay's, unless the worker cannot sustain it.
    rate = 0.5 * min(relay.events_per_second, worker.events_per_second)
    count = max(100, min(len(lines), int(rate * latency_seconds)))
    relay_latency = latency("relay", broker, lines[:count], keys[:count], ids[:count],
                            rate, workdir)
    worker_latency = latency("worker", broker, lines[:count], keys[:count], ids[:count],
                             rate, workdir)
    return Row(variant, worker.updates / worker.events, relay, worker, relay_latency,
               worker_latency)


def attempt(vhost: str, what: str, run: Callable[[Bus], T]) -> T:
    """``run`` with a new :class:`Bus` on ``vhost`` (outputs collected in :data:`SINK`),
    tried up to three times: a program that died or timed out, or a broker restart
    (the machine is shared), fails one try, not the benchmark."""
    for tries in range(1, 4):
        broker: Bus | None = None
        try:
            broker = Bus(vhost, updates_queue=SINK)
            return run(broker)
        except RETRIED as exc:
            if tries == 3:
                raise
            print(f"{what}: {type(exc).__name__}: {exc}; retrying once the broker "
                  "answers", file=sys.stderr, flush=True)
            await_broker()
        finally:
            if broker is not None:
                broker.close()
    raise AssertionError("unreachable")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def table(rows: list[Row]) -> str:
    width = max([11, *(len(row.variant.name) for row in rows)])  # light/500+rich: 14
    head = (f"{'variant':{width}} {'program':7} {'events':>6} {'upd/ev':>6} {'events/s':>9} "
            f"{'updates/s':>9} {'CPU us/ev':>9} {'MQ us/ev':>8} {'rate ev/s':>9} "
            f"{'p50 ms':>8} {'p99 ms':>8} "
            f"{'RSS MB':>7}")
    out = [head, "-" * len(head)]
    for row in rows:
        for name, thr, lat in (("relay", row.relay, row.relay_latency),
                               ("worker", row.worker, row.worker_latency)):
            out.append(
                f"{row.variant.name:{width}} {name:7} {thr.events:6d} "
                f"{thr.updates / thr.events:6.1f} {thr.events_per_second:9.0f} "
                f"{thr.updates_per_second:9.0f} {thr.cpu_us_per_event:9.0f} "
                f"{thr.broker_us_per_event:8.0f} {lat.rate:9.0f} "
                f"{lat.percentile(0.5) * 1e3:8.1f} {lat.percentile(0.99) * 1e3:8.1f} "
                f"{thr.rss_end_kb / 1024:7.1f}")
        w, r, wl, rl = row.worker, row.relay, row.worker_latency, row.relay_latency
        out.append(
            f"{'':{width}} {'w/r':7} {'':6} {'':6} "
            f"{ratio(w.events_per_second, r.events_per_second):>9} "
            f"{ratio(w.updates_per_second, r.updates_per_second):>9} "
            f"{ratio(w.cpu_us_per_event, r.cpu_us_per_event):>9} "
            f"{ratio(w.broker_us_per_event, r.broker_us_per_event):>8} {'':9} "
            f"{ratio(wl.percentile(0.5), rl.percentile(0.5)):>8} "
            f"{ratio(wl.percentile(0.99), rl.percentile(0.99)):>8} "
            f"{ratio(w.rss_end_kb, r.rss_end_kb):>7}")
    return "\n".join(out)


def rich_against_default(rows: list[Row]) -> list[str]:
    """Each rich variant's worker/relay ratios beside its default stream's (in
    brackets), then the worker's rich/default figures: the same fan-out, agents and
    chats, in the same run."""
    by_name = {row.variant.name: row for row in rows}
    lines = []
    for row in rows:
        default = by_name.get(row.variant.plain)
        if not row.variant.rich or default is None:
            continue
        # (label, figure, from the latency runs)
        figures: list[tuple[str, Callable[[Result], float], bool]] = [
            ("events/s", lambda r: r.events_per_second, False),
            ("CPU us/ev", lambda r: r.cpu_us_per_event, False),
            ("RSS", lambda r: r.rss_end_kb, False)]
        if row.worker_latency.latencies and default.worker_latency.latencies:
            figures.append(("p99 latency", lambda r: r.percentile(0.99), True))
        ratios, worker = [], []
        for label, figure, latency_run in figures:
            rich_w, rich_r, plain_w, plain_r = (
                (row.worker_latency, row.relay_latency, default.worker_latency,
                 default.relay_latency) if latency_run else
                (row.worker, row.relay, default.worker, default.relay))
            ratios.append(f"{label} {ratio(figure(rich_w), figure(rich_r))} "
                          f"({ratio(figure(plain_w), figure(plain_r))})")
            worker.append(f"{label} {ratio(figure(rich_w), figure(plain_w))}")
        lines.append(f"{row.variant.name}: worker/relay {', '.join(ratios)}; "
                     f"worker rich/default {', '.join(worker)}")
    return lines


def verdicts(rows: list[Row], soak: Result | None) -> list[str]:
    by_name = {row.variant.name: row for row in rows}
    lines = []

    def verdict(ok: bool, text: str) -> None:
        lines.append(f"{'PASS' if ok else 'FAIL'} {text}")

    default = by_name.get(DEFAULT)
    if default is not None:
        value = default.worker.events_per_second / default.relay.events_per_second
        verdict(value >= 0.9, f"events/s worker/relay on the default stream ({DEFAULT}: "
                f"fan-out light, 2 agents) = {value:.2f} (target >= 0.90)")
    for fanout in ("light", "heavy"):
        small, large = by_name.get(f"{fanout}/2"), by_name.get(f"{fanout}/500")
        if small is None or large is None:
            continue
        value = large.worker.updates_per_second / small.worker.updates_per_second
        verdict(value >= 0.5, f"per update produced, {fanout}: worker updates/s at 500 "
                f"agents / at 2 agents = {value:.2f} (target >= 0.50; events/s ratio "
                f"{large.worker.events_per_second / small.worker.events_per_second:.3f} "
                f"at {large.updates_per_event:.0f} vs {small.updates_per_event:.1f} "
                f"updates/event)")
    if default is not None and default.worker_latency.latencies:
        w, r = default.worker_latency, default.relay_latency
        value = w.percentile(0.99) / r.percentile(0.99)
        verdict(value <= 3.0, f"p99 latency at half load, worker/relay on {DEFAULT} "
                f"({w.rate:.0f} events/s) = {w.percentile(0.99) * 1e3:.1f} ms / "
                f"{r.percentile(0.99) * 1e3:.1f} ms = {value:.2f} (target <= 3.00)")
    if soak is not None:
        value = soak.rss_end_kb / soak.rss_half_kb if soak.rss_half_kb else float("inf")
        verdict(value <= 1.10, f"RSS flat over a long run ({soak.events} events of "
                f"{DEFAULT}, second half on the same conversations): peak RSS at half-way "
                f"{soak.rss_half_kb / 1024:.1f} MB, at the end {soak.rss_end_kb / 1024:.1f}"
                f" MB = {value:.2f} (target <= 1.10)")
    return lines


def chosen(variants: list[Variant], only: str, *, rich: bool) -> list[Variant]:
    """``only`` (comma-separated names; all if empty), each followed by its rich
    counterpart with ``rich``."""
    if only:
        wanted = {name.removesuffix(RICH) for name in only.split(",")}
        variants = [v for v in variants if v.name in wanted]
    if rich:
        variants = [v for plain in variants for v in (plain, replace(plain, rich=True))]
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller streams (~3 min)")
    parser.add_argument("--only", default="", help="comma-separated variants, e.g. light/2")
    parser.add_argument("--no-soak", action="store_true", help="skip the RSS soak run")
    parser.add_argument("--rich", action="store_true",
                        help="also each variant on the rich stream (NAME+rich: same fan-out, "
                        "agents and chats), its ratios printed beside the default stream's")
    parser.add_argument("--no-latency", action="store_true",
                        help="skip the latency runs (quicker A/B of throughput and CPU)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="throughput runs per program, best kept (default: 2, "
                        "--quick: 1)")
    parser.add_argument("--profile", type=Path, metavar="DIR", default=None,
                        help="profile the worker's throughput runs with py-spy; a text "
                        "summary per variant goes to DIR (e.g. benchmarks/profiles)")
    args = parser.parse_args()
    variants = chosen(QUICK if args.quick else FULL, args.only, rich=args.rich)
    latency_seconds = 0.0 if args.no_latency else 4.0 if args.quick else 10.0
    repeat = args.repeat or (1 if args.quick else 2)
    load_before = os.getloadavg()[0]
    soak_conversations = 2000 if args.quick else 5000
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    rows: list[Row] = []
    soak: Result | None = None
    with fresh_vhost("inbox-rules-compare", patient=True) as vhost, \
            tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for variant in variants:
            def run_variant(broker: Bus, variant: Variant = variant) -> Row:
                return measure(variant, broker, work, latency_seconds, args.profile, repeat)

            rows.append(attempt(vhost, variant.name, run_variant))
            print(f"[{time.perf_counter() - began:5.0f} s] {variant.name} done",
                  file=sys.stderr, flush=True)
        if not args.no_soak:
            events, window = soak_stream(soak_conversations)
            soak = attempt(vhost, "soak", lambda b: throughput(
                "worker", b, as_lines(events), [str(e["type"]) for e in events], work,
                timeout=600, dedup_window=window))
    print(f"benchmarks.compare{' --quick' if args.quick else ''}"
          f"{' --rich' if args.rich else ''}: "
          f"{time.perf_counter() - began:.0f} s; prefetch {Settings().prefetch}, batch "
          f"{Settings().batch_size}; best of {repeat} throughput run(s); latency runs "
          f"~{latency_seconds:.0f} s; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (2 cores)")
    print(table(rows))
    print()
    if args.rich:
        print("the rich stream against the default one (worker/relay, the default "
              "stream's in brackets):")
        for line in rich_against_default(rows):
            print(f"  {line}")
        print()
    for line in verdicts(rows, soak):
        print(line)


if __name__ == "__main__":
    main()
