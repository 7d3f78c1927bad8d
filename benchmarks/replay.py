"""Replay throughput at 2, 50 and 500 agents per account (no broker), and against a
hand-written plain-Python categoriser.

    python -m benchmarks.replay [--conversations N] [--repeat N] [--pairs N]

Two tables, one run (about a minute and a half):

1. events/s, updates per event and cost per update for each account size, and the
   ratio of each against the 2-agent run measured in the same process (absolute times
   drift on a noisy machine; ratios do not).
2. ``inbox-rules replay`` (its CLI entry, in process: parse, categorise, serialise,
   write to a null sink) against ``benchmarks.baseline`` (what a competent engineer
   would write without a rules engine) on the light streams, measured interleaved
   (A, B, A, B, ..., best of each) so that both see the same machine. The product
   should be at least as fast: ratio product/baseline >= 1.

Everything of the product goes through :func:`product_replay`, the one function to
adapt if the way of calling ``inbox-rules replay`` changes.
"""

from __future__ import annotations

import argparse
import gc
import io
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmarks.baseline import baseline_replay
from tests.support.streams import as_lines, event_stream
from worker import cli

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

AGENTS = (2, 50, 500)


class NullSink(io.RawIOBase):
    """Where the updates go: counts lines, keeps nothing (the disk is not measured)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Buffer, /) -> int:
        chunk = bytes(data)
        self.lines += chunk.count(b"\n")
        return len(chunk)


def product_replay(lines: list[bytes]) -> int:
    """``inbox-rules replay -`` with ``lines`` on stdin and stdout going nowhere.

    The same code path as the command (rules loaded once per run, as it does), minus
    process start-up. Returns how many updates it wrote.
    """
    sink = NullSink()
    stdout = io.TextIOWrapper(io.BufferedWriter(sink), encoding="utf-8")
    stdin = io.TextIOWrapper(io.BytesIO(b"\n".join(lines) + b"\n"), encoding="utf-8")
    saved = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = stdin, stdout
    try:
        cli.main.main(["replay", "-"], prog_name="inbox-rules", standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"inbox-rules replay exited with {exc.code}") from exc
    finally:
        sys.stdin, sys.stdout = saved
        stdout.flush()
    return sink.lines


def plain_replay(lines: list[bytes]) -> int:
    """The baseline, writing its update lines to a null sink like ``product_replay``."""
    sink = NullSink()
    out = io.BufferedWriter(sink)
    for update in baseline_replay(lines):
        out.write(update)
    out.flush()
    return sink.lines


Replayer = Callable[[list[bytes]], int]


@dataclass
class Result:
    label: str
    events: int
    updates: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds


def timed(replayer: Replayer, lines: list[bytes]) -> tuple[int, float]:
    """(updates written, seconds) of one run; earlier runs' garbage is collected first."""
    gc.collect()
    start = time.perf_counter()
    updates = replayer(lines)
    return updates, time.perf_counter() - start


def measure(label: str, lines: list[bytes], repeat: int) -> Result:
    best = min((timed(product_replay, lines) for _ in range(repeat)), key=lambda r: r[1])
    return Result(label, len(lines), best[0], best[1])


@dataclass
class Pair:
    """The product against the baseline on one stream, best run of each."""

    product: Result
    baseline: Result
    pairs: int

    @property
    def ratio(self) -> float:
        return self.product.events_per_second / self.baseline.events_per_second


def interleaved(label: str, lines: list[bytes], pairs: int, min_seconds: float) -> Pair:
    """Alternate product and baseline runs (at least ``pairs`` of them, and more while
    under ``min_seconds``: short streams need more runs for a stable best)."""
    product: list[tuple[int, float]] = []
    baseline: list[tuple[int, float]] = []
    start = time.perf_counter()
    while len(product) < pairs or (time.perf_counter() - start < min_seconds
                                   and len(product) < 25):
        product.append(timed(product_replay, lines))
        baseline.append(timed(plain_replay, lines))
    best_product = min(product, key=lambda r: r[1])
    best_baseline = min(baseline, key=lambda r: r[1])
    return Pair(Result(label, len(lines), *best_product),
                Result(label, len(lines), *best_baseline), len(product))


def fixed_cost(repeat: int = 5) -> float:
    """Seconds of a product run on no events: the per-run cost (rule loading)."""
    return min(timed(product_replay, [])[1] for _ in range(repeat))


def print_throughput(results: list[Result]) -> None:
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


def print_against_baseline(comparisons: list[Pair], fixed: float) -> None:
    print()
    print("inbox-rules replay (CLI path, in process) vs plain-Python baseline, "
          "interleaved, best of each")
    print(f"{'stream':18} {'events':>7} {'updates':>8} {'runs':>5} {'product ev/s':>12} "
          f"{'baseline ev/s':>13} {'product/baseline':>16}")
    for pair in comparisons:
        product, baseline = pair.product, pair.baseline
        print(f"{product.label:18} {product.events:7d} {product.updates:8d} {pair.pairs:5d} "
              f"{product.events_per_second:12.0f} {baseline.events_per_second:13.0f} "
              f"{pair.ratio:16.2f}")
        if product.updates != baseline.updates:
            print(f"  WARNING: not the same work: product wrote {product.updates} updates, "
                  f"baseline {baseline.updates} (see tests/test_baseline.py)")
    print(f"product fixed cost per run (rule loading; replay of no events): "
          f"{fixed * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs per heavy stream (best is kept)")
    parser.add_argument("--pairs", type=int, default=3,
                        help="product/baseline pairs per light stream, at least")
    parser.add_argument("--min-seconds", type=float, default=5.0,
                        help="keep adding pairs (up to 25) until a stream took this long")
    args = parser.parse_args()
    results: list[Result] = []
    comparisons: list[Pair] = []
    for fanout in ("light", "heavy"):
        for agents in AGENTS:
            lines = as_lines(event_stream(profile=fanout, agents=agents,
                                          conversations=args.conversations))
            label = f"{fanout:5} {agents:3} agents"
            if fanout == "light":
                # The light product runs serve both tables.
                pair = interleaved(label, lines, args.pairs, args.min_seconds)
                comparisons.append(pair)
                results.append(pair.product)
            else:
                results.append(measure(label, lines, args.repeat))
    print_throughput(results)
    print_against_baseline(comparisons, fixed_cost())


if __name__ == "__main__":
    main()
