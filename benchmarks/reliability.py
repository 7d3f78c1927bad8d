"""The long reliability run behind the figures of docs/reliability.md.

Runs the reliability suite's scenarios at soak size against the local RabbitMQ, each in
a vhost of its own, with the worker as a subprocess: SIGKILLs mid-stream, connections
cut by the broker, broker application restarts (these stop every vhost of the broker
for a moment), fuzzed bad input, and a long steady stream for memory. Everything is
judged against the offline replay, exactly as the CI-sized tests judge it.

    .venv/bin/python -m benchmarks.reliability            # the docs/reliability.md figures, ~12 min
    .venv/bin/python -m benchmarks.reliability --quick    # a smoke run, ~2 min
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from tests.reliability.scenarios import (
    SOAK,
    Size,
    crash_run,
    cut_run,
    fuzz_run,
    memory_run,
    restart_run,
)
from tests.support.harness import fresh_vhost
from tests.support.oracle import Verdict

T = TypeVar("T")


QUICK = Size(False, crash_events=5000, kills=4, cut_events=3000, cuts=2, restart_events=3000,
             restarts=1, fuzz_rounds=50, memory_events=15_000)


@contextmanager
def vhost() -> Iterator[tuple[str, Path]]:
    workdir = Path(tempfile.mkdtemp(prefix="inbox-rules-reliability-"))
    with fresh_vhost("inbox-rules-reliability", patient=True) as name:
        try:
            yield name, workdir
        except BaseException:
            print(f"kept the worker's log and state in {workdir}", file=sys.stderr)
            raise
        shutil.rmtree(workdir)


def timed(what: str, run: Callable[[str, Path], T]) -> T:
    started = time.monotonic()
    print(f"{what} ...", file=sys.stderr, flush=True)
    with vhost() as (name, workdir):
        result = run(name, workdir)
    print(f"{what}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, not the figures")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    plan = QUICK if args.quick else SOAK
    seed = args.seed
    started = time.monotonic()

    crash = timed(f"{plan.kills} SIGKILLs over {plan.crash_events} events", lambda v, w: crash_run(
        v, w, events=plan.crash_events, kills=plan.kills, seed=seed, batch_size=50))
    cuts = timed(f"{plan.cuts} connection cuts", lambda v, w: cut_run(
        v, w, events=plan.cut_events, cuts=plan.cuts, seed=seed + 1))
    restarts = timed(f"{plan.restarts} broker restarts", lambda v, w: restart_run(
        v, w, events=plan.restart_events, restarts=plan.restarts, seed=seed + 2))
    fuzz = timed(f"{plan.fuzz_rounds} fuzz rounds", lambda v, w: fuzz_run(
        v, w, rounds=plan.fuzz_rounds))
    memory = timed(f"memory over {plan.memory_events} events", lambda v, w: memory_run(
        v, w, events=plan.memory_events, seed=seed + 3))
    assert fuzz.verdict is not None
    verdicts: list[Verdict] = [crash.verdict, cuts.verdict, restarts.verdict, fuzz.verdict,
                               memory.verdict]

    def total(name: str) -> int:
        return sum(len(getattr(v, name)) for v in verdicts)

    good_events = sum(v.events for v in verdicts)
    rows = [
        ("valid events through the worker", f"{good_events:,}"),
        ("SIGKILLs survived (worker restarted each time)", f"{crash.faults}"),
        ("connections cut by the broker, survived", f"{cuts.faults}"),
        ("broker restarts (stop_app/start_app) survived", f"{restarts.faults}"),
        ("bad messages tried (fuzzed, 10 families)", f"{len(fuzz.bad):,}"),
        ("bad messages not dead-lettered as sent", f"{len(fuzz.problems)}"),
        ("events lost", f"{total('lost_events')}"),
        ("wrong final categories", f"{total('wrong_final_categories')}"),
        ("wrong final badge counts", f"{total('wrong_final_counts')}"),
        ("wrong final unread flags or unread counts", f"{total('wrong_final_unread')}"),
        ("updates that differ from the replay",
         f"{total('wrong_bodies') + total('unexpected_updates')}"),
        ("duplicate updates (same update_id, identical body)",
         f"{sum(v.duplicates for v in verdicts):,}"),
        ("duplicates with a different body", f"{total('conflicting_duplicates')}"),
        ("committed state differing from the replay", f"{total('state_differences')}"),
        (f"worker RSS after {memory.warm_up_events:,} warm-up events -> end "
         f"({memory.verdict.events:,} events)",
         f"{memory.baseline / 1024:.1f} MiB -> {memory.final / 1024:.1f} MiB "
         f"(peak {memory.peak / 1024:.1f})"),
    ]
    print(f"\nReliability run, seed {seed}, {time.monotonic() - started:.0f} s "
          f"({'quick' if args.quick else 'soak'}):\n")
    width = max(len(name) for name, _ in rows)
    print(f"| {'figure':<{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    for report in (crash, cuts, restarts):
        print(f"\n{report.summary()}", file=sys.stderr)
    print(fuzz.summary(), file=sys.stderr)
    print(memory.summary(), file=sys.stderr)
    problems = [p for v in verdicts for p in v.problems()] + fuzz.problems
    if problems or fuzz.starts != 1 or memory.peak > memory.baseline * 1.10:
        print("\nFAILED:\n" + "\n".join(problems[:20]), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
