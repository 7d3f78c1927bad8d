"""What time costs the worker while conversations wait: CPU per second of idle waiting
against the number of open, waiting conversations (issue 13, docs/time.md).

    python -m benchmarks.time_cost [--sizes 1000,10000,100000] [--window 30]

For each size N, a SQLite state file is built with N open conversations that wait for
an agent (100 per account, 2 agents each, created "now") under the example rule set
``rules/examples/sla`` (overdue after 300 s): every one has a crossing due, none within
the run. Then ``inbox-rules run`` (a subprocess, HTTP off, in a vhost made for the run)
starts on that file with an empty queue, becomes the active consumer (its own tick),
and waits. Its CPU time (user + system, from /proc) is read over ``--window`` seconds of
that idle waiting, after a few seconds of settling; nothing is published meanwhile.
The same is measured once with the default rules (no time fact: no look at all) at
the largest size, for the fixed cost every idle worker has (heartbeats, the monitor).

What stays flat, and why: the worker never walks the conversations. Once a second (or
at the next due instant, when sooner) it asks the store for the accounts with a
crossing due by now, an index range scan over what is due (nothing here) plus the
index's first entry for the next due time; a conversation costs nothing until its
instant. Those two queries are also timed in process against each file (microseconds).

Verdict: CPU per idle second at the largest size at most 25% above that at the smallest,
or at most 1 ms of CPU per second above it (0.1% of a core; the CPU clock ticks in
10 ms, so a 30 s window resolves 0.33 ms/s).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from contracts import parse_event_object
from tests.support.harness import Bus, WorkerProcess, fresh_vhost, wait_for
from worker.domain.account import AccountState
from worker.domain.categoriser import Categoriser
from worker.domain.state import Account
from worker.rulebook.engine import CompiledRules, default_rules_dir, load_rules
from worker.store.sqlite import SqliteStore

SLA_DIR = default_rules_dir() / "examples" / "sla"
PER_ACCOUNT = 100
SETTLE = 4.0  # seconds after start-up before the window opens


@dataclass
class Run:
    rules: str
    conversations: int
    build_seconds: float
    window: float
    cpu_seconds: float
    look_us: float
    published: int

    @property
    def cpu_ms_per_second(self) -> float:
        return 1000 * self.cpu_seconds / self.window


def build_state(path: Path, rules: CompiledRules, conversations: int,
                now: datetime) -> float:
    """N waiting conversations, committed 100 accounts at a time; seconds taken."""
    started = time.perf_counter()
    store = SqliteStore(path)
    categoriser = Categoriser(rules)
    occurred = now.isoformat()
    accounts = (conversations + PER_ACCOUNT - 1) // PER_ACCOUNT
    pending: list[AccountState] = []
    for a in range(accounts):
        account_id = f"acc-{a:05d}"
        state = AccountState(Account(account_id), rules_version=rules.version)
        categoriser.handle(state, parse_event_object({
            "event_id": "snapshot", "type": "account.updated", "account_id": account_id,
            "occurred_at": occurred,
            "data": {"plan": "free", "agents": ["ag-1", "ag-2"], "groups": {}}}))
        for c in range(min(PER_ACCOUNT, conversations - a * PER_ACCOUNT)):
            categoriser.handle(state, parse_event_object({
                "event_id": f"created-{c}", "type": "conversation.created",
                "account_id": account_id, "occurred_at": occurred,
                "conversation_id": f"c-{c}", "data": {"group_id": None}}))
        pending.append(state)
        if len(pending) == 100:
            store.commit([s.take_write() for s in pending])
            pending = []
    if pending:
        store.commit([s.take_write() for s in pending])
    store.close()
    return time.perf_counter() - started


def look_cost(path: Path, now: datetime, repeat: int = 200) -> float:
    """Microseconds for one look of the driver (due_accounts + next_due), best of."""
    store = SqliteStore(path)
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        assert store.due_accounts(now, 200) == []
        store.next_due()
        best = min(best, time.perf_counter() - started)
    store.close()
    return best * 1e6


def measure(rules_dir: Path | None, rules: CompiledRules, conversations: int,
            window: float, directory: Path) -> Run:
    now = datetime.now(UTC)
    build = build_state(directory / "state.sqlite3", rules, conversations, now)
    look = look_cost(directory / "state.sqlite3", now)
    with fresh_vhost("inbox-rules-bench", patient=True) as vhost:
        bus = Bus(vhost)
        settings: dict[str, object] = {"http_port": 0, "status_interval": 0}
        if rules_dir is not None:
            settings["rules_dir"] = rules_dir
        worker = WorkerProcess.in_vhost(vhost, directory, **settings)
        worker.start()
        try:
            worker.wait_ready(60)
            time.sleep(SETTLE)
            worker.assert_alive()
            cpu = worker.cpu_seconds()
            time.sleep(window)
            cpu = worker.cpu_seconds() - cpu
            worker.assert_alive()
            published = len(bus.updates())
            wait_for(bus.drained, 10, "the worker's own ticks acknowledged")
        finally:
            worker.stop()
            bus.close()
    assert datetime.now(UTC) < now + timedelta(seconds=300), "a crossing fell due mid-run"
    return Run("default" if rules_dir is None else "sla", conversations, build, window, cpu,
               look, published)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    sla = load_rules(SLA_DIR)
    runs: list[Run] = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="time-cost-") as tmp:
            runs.append(measure(SLA_DIR, sla, size, args.window, Path(tmp)))
        print(f"... {size} conversations measured", flush=True)
    with tempfile.TemporaryDirectory(prefix="time-cost-") as tmp:
        runs.append(measure(None, load_rules(), sizes[-1], args.window, Path(tmp)))
    print(f"\nidle waiting, {args.window:.0f} s window, {PER_ACCOUNT} conversations an account")
    print(f"{'rules':8} {'waiting':>8} {'build s':>8} {'CPU s':>7} {'CPU ms/s':>9} "
          f"{'look us':>8} {'published':>9}")
    for run in runs:
        print(f"{run.rules:8} {run.conversations:>8} {run.build_seconds:>8.1f} "
              f"{run.cpu_seconds:>7.2f} {run.cpu_ms_per_second:>9.2f} {run.look_us:>8.0f} "
              f"{run.published:>9}")
    timed = [r for r in runs if r.rules == "sla"]
    low, high = timed[0], timed[-1]
    difference = high.cpu_ms_per_second - low.cpu_ms_per_second
    flat = difference <= max(0.25 * low.cpu_ms_per_second, 1.0)
    print(f"{'PASS' if flat else 'FAIL'} CPU per idle second with {high.conversations} "
          f"waiting conversations: {high.cpu_ms_per_second:.2f} ms/s, with "
          f"{low.conversations}: {low.cpu_ms_per_second:.2f} ms/s ({difference:+.2f} ms/s; "
          "flat: at most 25% or 1 ms/s more)")
    print(f"time machinery when idle (sla - default rules at {high.conversations}): "
          f"{high.cpu_ms_per_second - runs[-1].cpu_ms_per_second:+.2f} ms of CPU per second")
    if any(r.published for r in runs):
        print("FAIL something was published while nothing was due")


if __name__ == "__main__":
    main()
