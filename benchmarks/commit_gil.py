"""A commit beside a busy thread: multi-row statements against row-by-row executemany.

    python -m benchmarks.commit_gil [--rows 600] [--commits 30]

The worker commits on a thread of its own while its ioloop thread holds the GIL nearly
all the time. Python's sqlite3 gives the GIL up around every step, and ``executemany``
steps once per row: each row must win the GIL back. This inserts the same rows both
ways (``worker.store.sqlite``'s multi-row ``_insert`` and plain ``executemany``), once
alone and once beside a thread that spins in Python, and prints the median commit time
and the ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from worker.store.sqlite import SqliteStore

Rows = list[tuple[object, ...]]


class Spinner:
    """A thread that runs Python code (holding the GIL) until stopped."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        total = 0
        while not self._stop.is_set():
            for i in range(1000):
                total += i

    def __enter__(self) -> Spinner:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def median_ms(commit: Callable[[Rows], None], make_rows: Callable[[], Rows],
              commits: int) -> float:
    times = []
    for _ in range(commits):
        rows = make_rows()
        start = time.perf_counter()
        commit(rows)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600, help="event rows per commit")
    parser.add_argument("--commits", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "state.sqlite3")
        db = store._db  # the benchmark drives the store's own connection
        numbers = iter(range(1, 1 << 62))

        def make_rows() -> Rows:
            return [("acc-1", n, f"event-{n}") for n in
                    (next(numbers) for _ in range(args.rows))]

        def chunked(rows: Rows) -> None:
            db.execute("BEGIN IMMEDIATE")
            store._insert("INSERT", "events", rows)  # what commit() uses
            db.execute("COMMIT")

        def row_by_row(rows: Rows) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO events VALUES (?, ?, ?)", rows)
            db.execute("COMMIT")

        print(f"{args.rows} rows per commit, median of {args.commits} commits (ms)")
        print(f"{'':14} {'multi-row':>10} {'executemany':>12} {'ratio':>7}")
        for label, busy in (("alone", False), ("busy thread", True)):
            with Spinner() if busy else contextlib.nullcontext():
                fast = median_ms(chunked, make_rows, args.commits)
                slow = median_ms(row_by_row, make_rows, args.commits)
            print(f"{label:14} {fast:10.2f} {slow:12.2f} {slow / fast:6.1f}x")
        store.close()


if __name__ == "__main__":
    main()
