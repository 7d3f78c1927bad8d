"""Replay throughput at 2, 50 and 500 agents per account (no broker).

    python -m benchmarks.replay [--conversations N]

Prints events/s, updates per event and cost per update for each account size, and the
ratio of each against the 2-agent run measured in the same process (absolute times
drift on a noisy machine; ratios do not).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from benchmarks.streams import as_lines, generate
from contracts import parse_event
from worker.domain.inbox import Inbox
from worker.rulebook import load_rules


@dataclass
class Result:
    label: str
    events: int
    updates: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds


def run_once(lines: list[bytes]) -> tuple[int, float]:
    inbox = Inbox(load_rules())
    updates = 0
    start = time.perf_counter()
    for line in lines:
        for update in inbox.handle(parse_event(line)):
            update.model_dump_json()  # what replay writes / the worker publishes
            updates += 1
    return updates, time.perf_counter() - start


def measure(label: str, lines: list[bytes], repeat: int) -> Result:
    best = min((run_once(lines) for _ in range(repeat)), key=lambda r: r[1])
    return Result(label, len(lines), best[0], best[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    results = []
    for fanout in ("light", "heavy"):
        for agents in (2, 50, 500):
            lines = as_lines(generate(agents, conversations=args.conversations, fanout=fanout))
            results.append(measure(f"{fanout:5} {agents:3} agents", lines, args.repeat))
    print(f"{'stream':18} {'events':>7} {'updates':>8} {'events/s':>9} {'upd/event':>9} "
          f"{'us/update':>9} {'ev/s ratio':>10} {'(ev+upd)/s ratio':>16}")
    for result in results:
        base = next(r for r in results if r.label.split()[0] == result.label.split()[0])
        work = (result.events + result.updates) / result.seconds
        base_work = (base.events + base.updates) / base.seconds
        per_update = result.seconds / max(result.updates, 1) * 1e6
        print(f"{result.label:18} {result.events:7d} {result.updates:8d} "
              f"{result.events_per_second:9.0f} {result.updates / result.events:9.2f} "
              f"{per_update:9.1f} {result.events_per_second / base.events_per_second:10.2f} "
              f"{work / base_work:16.2f}")


if __name__ == "__main__":
    main()
