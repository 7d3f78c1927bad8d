"""The delivery intake against pika's own receive path, live, with the relay as the yardstick.

    python -m benchmarks.intake [--rounds 5] [--conversations 3000]

On the default stream (light/2, as ``benchmarks.compare``), each round runs the bare
relay, the worker with ``INBOX_RULES_AMQP_INTAKE=true`` (deliveries taken off the
byte stream, worker/amqp/intake.py) and the worker with it false (every frame
through pika), one after the other on the same pre-published events, so that all
three see the same stretch of this noisy machine. It prints each round and the
medians: worker/relay events/s with and without the intake, and the intake's CPU per
event against pika's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.compare import SINK, Result, throughput
from tests.support.harness import Bus, fresh_vhost
from tests.support.streams import as_lines, event_stream

RUNS: tuple[tuple[str, str, dict[str, object]], ...] = (
    ("relay", "relay", {}),
    ("intake", "worker", {"amqp_intake": True}),
    ("pika", "worker", {"amqp_intake": False}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--conversations", type=int, default=3000)
    args = parser.parse_args()
    events = event_stream(profile="light", agents=2, conversations=args.conversations)
    lines = as_lines(events)
    keys = [str(e["type"]) for e in events]
    results: dict[str, list[Result]] = {name: [] for name, _kind, _settings in RUNS}
    began = time.perf_counter()
    print(f"benchmarks.intake: light/2, {len(lines)} events, {args.rounds} rounds")
    print("round  relay ev/s  intake ev/s  pika ev/s  intake/relay  pika/relay  "
          "CPU us/ev intake  pika  intake/pika")
    with fresh_vhost("inbox-rules-intake", patient=True) as vhost, \
            tempfile.TemporaryDirectory() as tmp:
        broker = Bus(vhost, updates_queue=SINK)
        try:
            for number in range(1, args.rounds + 1):
                for name, kind, settings in RUNS:
                    worker_settings: dict[str, Any] = dict(settings)
                    results[name].append(throughput(kind, broker, lines, keys, Path(tmp),
                                                    600, None, **worker_settings))
                relay, intake, pika = (results[name][-1] for name, _k, _s in RUNS)
                print(f"{number:5d}  {relay.events_per_second:10.0f}  "
                      f"{intake.events_per_second:11.0f}  {pika.events_per_second:9.0f}  "
                      f"{intake.events_per_second / relay.events_per_second:12.2f}  "
                      f"{pika.events_per_second / relay.events_per_second:10.2f}  "
                      f"{intake.cpu_us_per_event:16.1f}  {pika.cpu_us_per_event:4.1f}  "
                      f"{intake.cpu_us_per_event / pika.cpu_us_per_event:11.2f}",
                      flush=True)
        finally:
            broker.close()

    def median_ratio(name: str, against: str, measure: str) -> float:
        return float(statistics.median(
            getattr(a, measure) / getattr(b, measure)
            for a, b in zip(results[name], results[against], strict=True)))

    print(f"median over {args.rounds} rounds ({time.perf_counter() - began:.0f} s): "
          f"worker/relay events/s {median_ratio('intake', 'relay', 'events_per_second'):.2f} "
          f"with the intake, {median_ratio('pika', 'relay', 'events_per_second'):.2f} "
          f"without; worker CPU per event with/without "
          f"{median_ratio('intake', 'pika', 'cpu_us_per_event'):.2f}")


if __name__ == "__main__":
    main()
