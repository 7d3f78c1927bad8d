"""Several workers: events/s and CPU per event of 1 and 3 workers on PostgreSQL against
1 worker on SQLite, on the same stream, in the same run.

    python -m benchmarks.several_workers [--rounds 3] [--events 8000] [--accounts 200]

Against the local RabbitMQ and PostgreSQL (``INBOX_RULES_TEST_POSTGRES``, default
``postgresql://postgres@127.0.0.1:5432/postgres``), each run in a vhost and (for
PostgreSQL) a database made for it and dropped after. The variants run interleaved
(sqlite-1, postgres-1, postgres-3, then again), so that all of them see the same drift
of this shared machine.

Each run: the stream (``light`` from :mod:`tests.support.streams`, many accounts) is
pre-loaded into the intake queue ``inbox-rules.events`` while a consumer of this
benchmark holds it (the queue has a single active consumer: the workers that start
then wait behind it). The workers start (``inbox-rules run`` subprocesses, their
defaults except the store, broker URL and HTTP port) and, on PostgreSQL, deal the 16
partitions among them; then the hold is let go and the clock runs until every update
the offline replay publishes for the stream sits in a durable queue bound with ``#``
(no faults: each exactly once). On PostgreSQL the stream takes two hops: the active
router validates each event and passes it to its account's partition queue, whose
owner handles it.

Figures per run: events/s (wall); CPU per event, in microseconds, of the workers (their
own CPU time, which waiting for a busy broker does not inflate), of PostgreSQL (every
``postgres`` process) and of RabbitMQ (``beam.smp``); ``cores``: how many of the
machine's cores were busy on average, and ``ours``: how many of those the workers,
PostgreSQL and the broker account for (the rest is other work on this shared machine);
the workers' redeliveries (a worker that joins may hold a partition whose epoch another
took meanwhile: its first commit there is fenced off and the events it held come back).
With 3 workers the workers' CPU is split into the router's share and an owner's, per
event (the router is the one worker that received the whole stream on top of its
partitions). The summary takes the median of each variant and prints the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pika

from tests.support.harness import (
    Bus,
    Message,
    Producer,
    as_messages,
    connect,
    fresh_database,
    fresh_vhost,
    wait_for,
)
from tests.support.harness import topology as default_topology
from tests.support.oracle import replay
from tests.support.several import (
    Fleet,
    consumers,
    cpu_seconds,
    fleet,
    machine_busy_seconds,
    partitioned_topology,
    settled,
)
from tests.support.streams import event_stream

PARTITIONS = 16
VARIANTS = (("sqlite-1", False, 1), ("postgres-1", True, 1), ("postgres-3", True, 3))


@dataclass
class Result:
    variant: str
    events: int
    seconds: float
    worker_cpu: float
    postgres_cpu: float
    broker_cpu: float
    busy: float  # CPU seconds of the whole machine
    redelivered: int
    # Several workers: CPU per event of the router's work and of an owner's, apart.
    router_us: float | None = None
    owner_us: float | None = None

    @property
    def all_cpu(self) -> float:
        return self.worker_cpu + self.postgres_cpu + self.broker_cpu

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def per_event(self, cpu: float) -> float:
        """Microseconds per event."""
        return cpu / self.events * 1e6

    @property
    def cores(self) -> float:
        return self.busy / self.seconds

    @property
    def ours(self) -> float:
        """Cores used by the workers, PostgreSQL and the broker (the rest of ``cores``
        is other work on this machine)."""
        return self.all_cpu / self.seconds

    def row(self) -> str:
        split = "" if self.router_us is None or self.owner_us is None else \
            f"   (router {self.router_us:.0f} + owner {self.owner_us:.0f} us/event)"
        return (f"{self.variant:<11} {self.events:>7} {self.seconds:>7.2f} {self.rate:>9.0f} "
                f"{self.per_event(self.worker_cpu):>10.0f} "
                f"{self.per_event(self.postgres_cpu):>9.0f} "
                f"{self.per_event(self.broker_cpu):>9.0f} {self.cores:>6.2f} "
                f"{self.ours:>5.2f} {self.redelivered:>7}{split}")


HEADER = (f"{'variant':<11} {'events':>7} {'seconds':>7} {'events/s':>9} "
          f"{'worker us':>10} {'pg us':>9} {'broker us':>9} {'cores':>6} {'ours':>5} "
          f"{'redeliv':>7}")


# -- the machine's other processes --------------------------------------------------------
def pids_named(*names: str) -> list[int]:
    """Processes whose command name is one of ``names``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cpu_of(pids: list[int]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two samples: by the processes alive at both, and all of it for
    those started in between (a worker opens its PostgreSQL connections on first use).
    What a process that ended in between spent is not seen."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items() if cpu)


# -- one run ------------------------------------------------------------------------------
HOLD_BODY = b"benchmark: the message the hold takes (not JSON: dead-lettered)"


@contextmanager
def held(vhost: str, queue: str) -> Iterator[pika.BlockingConnection]:
    """A consumer that holds ``queue`` (single active consumer): the workers that
    subscribe after it wait. It takes one message, a dummy published first (an AMQP
    close may put a held message back behind later ones, so it must not be an event of
    the stream); closing the connection lets go."""
    connection = connect(vhost)
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(queue, lambda *_args: None)
        channel.confirm_delivery()  # in the queue (and so given to us) before the stream
        channel.basic_publish(default_topology().events_exchange, "benchmark.hold",
                              HOLD_BODY)
        yield connection
    finally:
        if connection.is_open:
            connection.close()


def run(variant: str, postgres: bool, workers: int, messages: list[Message],
        expected: int) -> Result:
    topology = partitioned_topology(PARTITIONS) if postgres else default_topology()
    with ExitStack() as stack:
        vhost = stack.enter_context(fresh_vhost("inbox-rules-bench", patient=True))
        store_url = stack.enter_context(fresh_database("inbox_rules_bench")) if postgres \
            else None
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        bus = Bus(vhost)
        stack.callback(bus.close)
        hold = stack.enter_context(held(vhost, topology.events_queue))
        producer = Producer(vhost, messages, rate=1e9)
        producer.start()
        producer.finish(300)
        assert bus.ready(topology.events_queue) == len(messages), "the hold took the dummy"
        settings: dict[str, object] = {"partitions": PARTITIONS} if postgres else {}
        group: Fleet = stack.enter_context(fleet(vhost, store_url, directory, settings,
                                                 defaults={}))
        for n in range(1, workers + 1):
            group.add(f"w{n}")
        if postgres:
            group.wait_dealt(PARTITIONS)
        wait_for(lambda: consumers(vhost).get(topology.events_queue) == (1, workers), 30,
                 "the workers waiting behind the hold", interval=0.2)
        processes = [m.process for m in group.members.values()]

        def sample() -> tuple[list[float], dict[int, float], dict[int, float], float]:
            return ([p.cpu_seconds() for p in processes], cpu_of(pids_named("postgres")),
                    cpu_of(pids_named("beam.smp")), machine_busy_seconds())

        before = sample()
        started = time.perf_counter()
        hold.close()
        wait_for(lambda: bus.ready(bus.updates_queue) >= expected, 600,
                 f"{expected} updates", interval=0.02)
        seconds = time.perf_counter() - started
        after = sample()
        wait_for(lambda: settled(bus, topology), 120, "every queue drained", interval=0.5)
        time.sleep(1.5)  # the workers refresh their metrics once a second
        metrics = [m.metrics() for m in group.members.values()]
        # Less the hold's dummy, which comes back to a worker once.
        redelivered = sum(int(m["inbox_rules_redeliveries_total"]) for m in metrics) - 1
        cpu = [a - b for a, b in zip(after[0], before[0], strict=True)]
        first = [m["inbox_rules_events_consumed_total"] - m["inbox_rules_redeliveries_total"]
                 for m in metrics]
        split = router_and_owner(cpu, first, len(messages)) if workers > 1 else None
        for member in group.members.values():
            status = member.process.stop()
            assert status == 0, f"{member.name} exit status {status}: {group.tails()}"
        assert bus.ready(bus.updates_queue) == expected, "every update exactly once"
    return Result(variant, len(messages), seconds, worker_cpu=sum(cpu),
                  postgres_cpu=cpu_delta(before[1], after[1]),
                  broker_cpu=cpu_delta(before[2], after[2]),
                  busy=after[3] - before[3], redelivered=redelivered,
                  router_us=split[0] if split else None,
                  owner_us=split[1] if split else None)


def router_and_owner(cpu: list[float], first: list[float], routed: int,
                     ) -> tuple[float, float] | None:
    """CPU per event of routing and of handling, in microseconds, from several workers'
    CPU and first deliveries: the router is the one that received the whole stream on
    top of its partitions; the others only handled. None if the routing moved between
    workers during the run (no single router shows)."""
    router = max(range(len(first)), key=lambda i: first[i])
    owned = [f - (routed if i == router else 0) for i, f in enumerate(first)]
    if min(owned) < 0:
        return None
    others = [i for i in range(len(cpu)) if i != router]
    handled = sum(owned[i] for i in others)
    if not handled:
        return None
    owner = sum(cpu[i] for i in others) / handled
    return (cpu[router] - owner * owned[router]) / routed * 1e6, owner * 1e6


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=200)
    args = parser.parse_args()
    # About 7.5 events per chat in the light profile: enough chats for the count.
    stream = event_stream(2026, args.events, args.accounts, profile="light",
                          conversations=args.events // 6)
    assert len(stream) == args.events
    expected = len(replay(stream))
    messages = as_messages(stream)
    print(f"{len(stream)} events of {args.accounts} accounts (light), {expected} updates; "
          f"{args.rounds} round(s) of {', '.join(v for v, _, _ in VARIANTS)}; "
          f"{PARTITIONS} partitions\n")
    print(HEADER, flush=True)
    results: dict[str, list[Result]] = {v: [] for v, _, _ in VARIANTS}
    began = time.monotonic()
    for _ in range(args.rounds):
        for variant, postgres, workers in VARIANTS:
            result = run(variant, postgres, workers, messages, expected)
            results[variant].append(result)
            print(result.row(), flush=True)
    print(f"\nmedians ({time.monotonic() - began:.0f} s in all):")
    print(HEADER)
    medians: dict[str, Result] = {}
    for variant, runs in results.items():
        medians[variant] = Result(
            variant, runs[0].events, statistics.median(r.seconds for r in runs),
            statistics.median(r.worker_cpu for r in runs),
            statistics.median(r.postgres_cpu for r in runs),
            statistics.median(r.broker_cpu for r in runs),
            statistics.median(r.busy for r in runs),
            int(statistics.median(r.redelivered for r in runs)),
            _median([r.router_us for r in runs]), _median([r.owner_us for r in runs]))
        print(medians[variant].row())
    base, one, three = (medians[v] for v, _, _ in VARIANTS)
    print("\nratios (medians):")
    for name, a, b in (("postgres-1 / sqlite-1", one, base),
                       ("postgres-3 / sqlite-1", three, base),
                       ("postgres-3 / postgres-1", three, one)):
        print(f"  {name:<24} events/s {a.rate / b.rate:5.2f}   worker CPU/event "
              f"{a.worker_cpu / b.worker_cpu:5.2f}   workers+PostgreSQL+broker CPU/event "
              f"{a.all_cpu / b.all_cpu:5.2f}")


if __name__ == "__main__":
    main()
