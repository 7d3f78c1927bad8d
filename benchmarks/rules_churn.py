"""What many rule changes cost one worker process: RSS and threads over 100 versions.

durable-rules can never unregister a ruleset from a host, and a compiled rule set
keeps a C rete tree, its session state and an evaluation cache. A fleet that deploys
and rolls back all day must not grow with every version it has ever run.

    .venv/bin/python -m benchmarks.rules_churn [--cycles 100] [--every 10]

In one process, like a running worker: a driver (over an in-memory link double and
store) holds a few hundred accounts from a generated stream; then, ``--cycles`` times,
the live rules change in a SQLite state store, as ``inbox-rules rules deploy`` and
``rollback`` change them: odd cycles deploy a new version (alternating between the
shipped rules and a variant, each stamped with a comment that makes it a version of
its own, so each compiles a new ruleset), even cycles roll back to the version before.
Each time the worker's poll (:class:`LiveRulesFollower`) finds the change, loads the
version from the store, the driver adopts it, and the paced sweep re-categorises every
account (published, confirmed, committed). Every ``--every`` cycles it prints the
process's RSS (VmRSS), its OS threads, and how many compiled rule sets are alive.

With ``--worker``, the same changes go to a real ``inbox-rules run`` (a subprocess on a
vhost of its own, after the stream; it polls the store every 0.05 s): each change
waits until the worker switched and swept every account, and the worker's RSS and
threads are read from its /proc.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.support.streams import encode, event_stream
from worker.driver import Driver
from worker.link import Delivery, Link, Outgoing
from worker.rule_versions import LiveRulesFollower
from worker.rulebook.engine import (
    CompiledRules,
    default_rules_dir,
    load_rules,
    load_rules_from_files,
    read_rule_directory,
)
from worker.settings import Settings
from worker.store.memory import MemoryStore
from worker.store.sqlite import SqliteStore

VARIANT = ("{fact: account.group_count, greater_than: 0}",
           "{fact: account.group_count, greater_than: 99}")


class _Link:
    """Publishes into the void, confirms on demand, runs timers when asked."""

    def __init__(self) -> None:
        self.published = 0
        self.timers: list[Callable[[], None]] = []

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def consume(self, queues: Sequence[str]) -> None:
        return None

    def cancel(self) -> None:
        return None

    def abort(self, stop: bool) -> None:
        return None

    def publish(self, message: Outgoing) -> int | None:
        self.published += 1
        return self.published

    def ack(self, tag: int, multiple: bool) -> None:
        return None

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        self.timers.append(callback)
        return callback

    def cancel_timer(self, handle: object) -> None:
        self.timers = [t for t in self.timers if t is not handle]


def _checked(link: _Link) -> Link:
    return link  # mypy: the double implements the real protocol


def settle(driver: Driver, link: _Link) -> None:
    """Confirm whatever is published and run timers, until nothing moves."""
    confirmed = 0
    for _ in range(100_000):
        if confirmed < link.published:
            confirmed = link.published
            driver.on_confirm(confirmed, multiple=True, ok=True)
        elif link.timers:
            link.timers.pop(0)()
        else:
            return
    raise RuntimeError("the driver never settles")


def process_status() -> tuple[float, int]:
    """(VmRSS in MiB, OS threads) of this process."""
    fields = dict(line.split(":", 1) for line in
                  Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def rule_dirs(root: Path) -> tuple[Path, Path]:
    """The shipped rules (A) and a variant (B): groups route only with 100+ groups."""
    a, b = root / "a", root / "b"
    shutil.copytree(default_rules_dir(), a, ignore=shutil.ignore_patterns("cases"))
    shutil.copytree(default_rules_dir(), b, ignore=shutil.ignore_patterns("cases"))
    text = (b / "inbox.yaml").read_text()
    assert VARIANT[0] in text
    (b / "inbox.yaml").write_text(text.replace(*VARIANT))
    return a, b


def stamp(directory: Path, cycle: int) -> None:
    """Make the directory a version of its own: a comment changes the files' hash."""
    path = directory / "inbox.yaml"
    lines = [line for line in path.read_text().splitlines()
             if not line.startswith("# churn cycle")]
    path.write_text("\n".join([f"# churn cycle {cycle}", *lines]) + "\n")


def change(rule_store: SqliteStore, cycle: int, a: Path, b: Path) -> str:
    """One deploy (odd cycles: a new version, B and A in turn, stamped) or rollback (even
    cycles: to the version live before), as the command line makes them; the version
    live now."""
    if cycle % 2:
        directory = b if cycle % 4 == 1 else a
        stamp(directory, cycle)
        files = read_rule_directory(directory)
        version = load_rules_from_files(files, str(directory)).version
        rule_store.deploy_rules(version, files, "churn", f"cycle {cycle}")
        return version
    version = rule_store.rule_history()[-2].version
    rule_store.set_live(version, "churn", f"cycle {cycle}")
    return version


class Report:
    """Prints (or collects, for --json) one line per measurement."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.rows: list[dict[str, float | int]] = []
        self.started = time.monotonic()

    def __call__(self, cycle: int, rss: float, threads: int, note: str = "",
                 **extra: int) -> None:
        seconds = time.monotonic() - self.started
        self.rows.append({"cycle": cycle, "rss_mib": round(rss, 1), "threads": threads,
                          "seconds": round(seconds, 2), **extra})
        if not self.as_json:
            print(f"after {cycle:4d} changes: RSS {rss:7.1f} MiB  threads {threads}  {note}"
                  f"({seconds:.1f} s)", flush=True)


def in_process(args: argparse.Namespace, report: Report, tmp: Path) -> None:
    """The driver of this process, over an in-memory link double and store."""
    alive: weakref.WeakSet[CompiledRules] = weakref.WeakSet()
    a, b = rule_dirs(tmp)
    settings = Settings(batch_size=200, prefetch=600, max_batch_delay=0.0)
    first = load_rules(a)
    alive.add(first)
    driver = Driver(settings, first, MemoryStore())
    link = _Link()
    driver.attach(_checked(link))
    driver.on_ready()
    events = encode(event_stream(seed=31, count=args.events, accounts=args.accounts))
    for tag, body in enumerate(events, start=1):
        driver.on_delivery(Delivery(tag, "event", body))
    settle(driver, link)
    del first
    if not report.as_json:
        print(f"in process: {len(driver.store.accounts)} accounts, "  # type: ignore[attr-defined]
              f"{len(events)} events; {args.cycles} deploys and rollbacks")

    def measure(cycle: int) -> None:
        rss, threads = process_status()
        report(cycle, rss, threads, f"compiled rule sets alive {len(alive)}  ",
               compiled_alive=len(alive))

    measure(0)
    rule_store = SqliteStore(tmp / "state.sqlite3")
    # The shipped rules are the first deployed version (what the driver runs).
    rule_store.deploy_rules(driver.rules.version, read_rule_directory(a), "churn", "start")
    follower = LiveRulesFollower(rule_store, driver.rules)  # type: ignore[arg-type]
    for cycle in range(1, args.cycles + 1):
        change(rule_store, cycle, a, b)
        rules = follower.poll()
        assert rules is not None, "every cycle changes the live version"
        alive.add(rules)
        driver.adopt(rules)
        del rules
        settle(driver, link)
        assert driver.rules.version == follower.version
        if cycle % args.every == 0:
            measure(cycle)
    rule_store.close()
    gc.collect()
    measure(args.cycles)


def in_worker(args: argparse.Namespace, report: Report, tmp: Path) -> None:
    """A real ``inbox-rules run`` on a vhost of its own: the stream first, then each
    change waits until the worker has switched and swept every account; RSS and
    threads from its /proc."""
    from tests.support.harness import Bus, WorkerProcess, fresh_vhost, wait_drained, wait_for

    a, b = rule_dirs(tmp)
    events = event_stream(seed=31, count=args.events, accounts=args.accounts)
    with fresh_vhost("inbox-rules-churn") as vhost:
        bus = Bus(vhost)
        bus.publish_events(events)
        worker = WorkerProcess.in_vhost(vhost, tmp, rules_poll_interval=0.05)
        worker.start()
        try:
            wait_drained(bus, bus.topology.events_queue, timeout=120)
            if not report.as_json:
                print(f"worker pid {worker.pid}: {len(events)} events; {args.cycles} deploys "
                      "and rollbacks")

            def measure(cycle: int) -> None:
                fields = dict(line.split(":", 1) for line in Path(
                    f"/proc/{worker.pid}/status").read_text().splitlines() if ":" in line)
                report(cycle, int(fields["VmRSS"].split()[0]) / 1024,
                       int(fields["Threads"]))

            measure(0)
            rule_store = SqliteStore(tmp / "state.sqlite3")
            rule_store.deploy_rules(load_rules(a).version, read_rule_directory(a), "churn",
                                    "start")
            def switched(count: int) -> Callable[[], bool]:
                return lambda: worker.log().count("re-categorising every account") == count

            def swept(version: str) -> Callable[[], bool]:
                return lambda: rule_store.accounts_behind(version, "", 1) == []

            for cycle in range(1, args.cycles + 1):
                version = change(rule_store, cycle, a, b)
                wait_for(switched(cycle), 30, f"the worker to adopt {version}", alive=worker)
                wait_for(swept(version), 30, "the sweep", alive=worker)
                if cycle % args.every == 0:
                    measure(cycle)
            rule_store.close()
        finally:
            status = worker.stop()
            bus.close()
        assert status == 0, worker.log_tail()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--worker", action="store_true",
                        help="measure a real 'inbox-rules run' (needs the local RabbitMQ)")
    parser.add_argument("--json", action="store_true", help="one JSON object at the end")
    args = parser.parse_args()
    report = Report(args.json)
    with tempfile.TemporaryDirectory() as tmp:
        (in_worker if args.worker else in_process)(args, report, Path(tmp))
    if args.json:
        print(json.dumps(report.rows))


if __name__ == "__main__":
    main()
