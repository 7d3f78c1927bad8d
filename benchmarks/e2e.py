"""End-to-end events/s of one worker against the local RabbitMQ.

Pre-publishes N generated events into the worker's queue (in a vhost of its own),
starts ``python -m worker.cli run`` as a subprocess (every update is routed to a
durable queue bound with ``#``), and times from the moment its consumer appears until
the update of a sentinel event published last arrives (one worker handles the queue
in order); then stops it and checks that every event was acknowledged.

    .venv/bin/python -m benchmarks.e2e --events 20000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pika

from tests.support.harness import Bus, WorkerProcess, fresh_vhost, wait_drained, wait_for
from tests.support.streams import event_stream

SENTINEL = "bench-sentinel"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=50)
    args = parser.parse_args()
    with fresh_vhost("inbox-rules-bench") as vhost:
        rate = run(vhost, args.events, args.accounts)
    print(f"{args.events} events end to end: {rate:,.0f} events/s")


def run(vhost: str, count: int, accounts: int) -> float:
    events = event_stream(seed=42, count=count, accounts=accounts)
    # The sentinel account needs an agent, or its conversation has no inbox to update.
    events.append({"event_id": "sentinel-agents", "type": "account.updated",
                   "account_id": SENTINEL, "occurred_at": "2026-11-24T10:00:00Z",
                   "data": {"plan": "free", "agents": ["ag-1"]}})
    events.append({"event_id": "sentinel", "type": "conversation.created",
                   "account_id": SENTINEL, "conversation_id": "c-1",
                   "occurred_at": "2026-11-24T10:00:00Z", "data": {}})
    bus = Bus(vhost)
    sentinel_queue = bus.channel.queue_declare("", exclusive=True).method.queue
    bus.channel.queue_bind(sentinel_queue, bus.topology.updates_exchange, f"{SENTINEL}.*")
    # The Bus's durable queue bound with '#' stays: every update is routed and stored,
    # as downstream would have it (unroutable updates would come back as returns).
    started = time.perf_counter()
    bus.publish_events(events)
    print(f"published {len(events)} events in {time.perf_counter() - started:.1f} s")
    with tempfile.TemporaryDirectory() as tmp, WorkerProcess.in_vhost(vhost, Path(tmp)) as worker:
        worker.start()
        queue = bus.topology.events_queue
        started = wait_for(lambda: bus.consumers() > 0, 60, "its consumer", 0.005,
                           alive=worker)
        cpu_before = worker.cpu_seconds()
        elapsed = _wait_sentinel(bus, sentinel_queue) - started
        cpu = worker.cpu_seconds() - cpu_before
        wait_drained(bus, queue)
        assert worker.stop() == 0, worker.log_tail()
        assert bus.ready(queue) == 0, "every event acknowledged"
    bus.close()
    # The machine is shared with the broker (and whatever else runs): events per
    # second of the worker's own CPU time says what a dedicated core would do.
    print(f"worker CPU {cpu:.1f} s for {elapsed:.1f} s wall: "
          f"{len(events) / cpu:,.0f} events per worker CPU-second")
    return len(events) / elapsed


def _wait_sentinel(bus: Bus, queue: str) -> float:
    for _method, _properties, body in bus.channel.consume(queue, auto_ack=True,
                                                           inactivity_timeout=120):
        if body is None:
            raise SystemExit("no sentinel update within 120 s")
        if json.loads(body)["cause_event_id"] == "sentinel":
            arrived = time.perf_counter()
            bus.channel.cancel()
            return arrived
    raise SystemExit("consumer ended")


if __name__ == "__main__":
    pika.BasicProperties()  # fail early if pika is missing
    main()
