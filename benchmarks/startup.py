"""Start-up to the first processed event, and RSS, against a small and a large state.

The claim under test (SPEC: "its start-up time does not grow with the stored state",
memory "bounded by its settings"): with 1,000 and with 100,000 stored conversations
(5,000 accounts both times, same settings), start-up is within 2x and RSS within
1.5x (+30 MB) of the small state.

Both state files hold the same 5,000 accounts (a snapshot each: 3 agents, every other
account on ``pro`` with a group). The conversations are spread evenly over them: 20
per account in the large file; in the small one, one in every fifth account. They are
made the way the worker makes them: generated events run through the
:class:`~worker.domain.categoriser.Categoriser` and written by
:meth:`SqliteStore.commit`, many accounts per transaction.

Each measurement starts the real ``inbox-rules run`` on one file, with one event
already waiting in its queue (a new conversation in an account that exists in both),
and times from the process start until the first update it causes arrives; the
worker's VmRSS is read right then. Runs alternate small/large, three times each.

``--rich`` measures what the details inboxes sort by cost at start-up instead: two
files of ``--large`` conversations over the same accounts, each account's history a
stream of :mod:`tests.support.streams` (20 chats of a 3-agent PRO team): the default
stream (``light``) in one, the same with ``rich=True`` (labels, attributes, priorities,
reads, mentions, snoozes) in the other. Runs alternate default/rich; it prints the
rich/default ratios of start-up time and RSS.

    .venv/bin/python -m benchmarks.startup [--reps 3] [--keep DIR] [--build-only] [--rich]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika

from contracts import parse_event_object
from tests.support.harness import amqp_url, fresh_vhost
from tests.support.streams import event_stream
from worker.amqp.topology import Topology
from worker.domain.account import AccountState
from worker.domain.categoriser import Categoriser
from worker.domain.state import Account
from worker.rulebook import load_rules
from worker.settings import Settings
from worker.store.sqlite import SqliteStore

ACCOUNTS = 5_000
SMALL, LARGE = 1_000, 100_000
AGENTS = ("ag-1", "ag-2", "ag-3")
ACCOUNTS_PER_COMMIT = 250
WORKER = Path(sys.executable).with_name("inbox-rules")
PROBE_ACCOUNT = "acc-00000"  # holds a conversation in both files
START_TIMEOUT = 180.0


class BenchError(RuntimeError):
    """The benchmark could not measure (a worker that does not start or answer)."""


# -- the state files -------------------------------------------------------------
def account_id(index: int) -> str:
    return f"acc-{index:05d}"


def account_events(index: int, conversations: range) -> Iterator[dict[str, Any]]:
    """A plausible history: the snapshot, then per conversation its creation, a visitor
    message, an agent joining and answering, and for every third a resolution."""
    acc = account_id(index)
    clock = iter(range(10**9))

    def event(kind: str, data: dict[str, Any], conversation: str | None = None,
              ) -> dict[str, Any]:
        n = next(clock)
        raw: dict[str, Any] = {
            "event_id": f"{acc}-e{n}", "type": kind, "account_id": acc,
            "occurred_at": f"2026-11-24T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z",
            "sequence": n, "data": data}
        if conversation is not None:
            raw["conversation_id"] = conversation
        return raw

    pro = index % 2 == 0
    yield event("account.updated", {"plan": "pro" if pro else "standard",
                                    "agents": list(AGENTS), "groups": {"g-1": ["ag-1"]}})
    for number in conversations:
        conversation = f"c-{number}"
        agent = AGENTS[number % len(AGENTS)]
        yield event("conversation.created", {"group_id": "g-1" if number % 2 else None},
                    conversation)
        yield event("message.created", {"author": "visitor"}, conversation)
        yield event("conversation.assigned", {"agent_id": agent}, conversation)
        yield event("message.created", {"author": "agent", "agent_id": agent}, conversation)
        if number % 3 == 0:
            yield event("conversation.resolved", {}, conversation)


History = Callable[[int, range], Iterable[dict[str, Any]]]


def stream_history(rich: bool) -> History:
    """Histories from the streams of the tests and benchmarks: per account the
    ``light`` lifecycles (``rich``: with details, reads, mentions and snoozes) of its
    conversations, for a 3-agent PRO team, under the account's id."""

    def history(index: int, conversations: range) -> Iterator[dict[str, Any]]:
        acc = account_id(index)
        for event in event_stream(index, profile="light", accounts=1, agents=len(AGENTS),
                                  conversations=len(conversations), rich=rich,
                                  prefix=acc):
            yield {**event, "account_id": acc}

    return history


def conversations_of(index: int, conversations: int, accounts: int) -> range:
    """Conversation numbers of one account: spread evenly, in order."""
    first = -(-index * conversations // accounts)
    last = -(-(index + 1) * conversations // accounts)
    return range(first, last)


@dataclass(frozen=True)
class Built:
    path: Path
    conversations: int
    events: int
    seconds: float

    @property
    def megabytes(self) -> float:
        return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*")) / 1e6


def build_state(path: Path, conversations: int, accounts: int, settings: Settings,
                history: History = account_events) -> Built:
    """Write a state file of ``accounts`` accounts holding ``conversations`` open or
    resolved conversations between them (each account's events: ``history``), as the
    worker would have stored it."""
    started = time.perf_counter()
    categoriser = Categoriser(load_rules(settings.rules_dir))
    store = SqliteStore(path)
    events = 0
    try:
        writes = []
        for index in range(accounts):
            state = AccountState(Account(account_id(index)),
                                 rules_version=categoriser.rules.version,
                                 event_window=settings.dedup_window,
                                 tombstone_window=settings.tombstone_window)
            for raw in history(index, conversations_of(index, conversations, accounts)):
                categoriser.handle(state, parse_event_object(raw))
                events += 1
            writes.append(state.take_write())
            if len(writes) == ACCOUNTS_PER_COMMIT:
                store.commit(writes)
                writes = []
        store.commit(writes)
    finally:
        store.close()
    built = Built(path, conversations, events, time.perf_counter() - started)
    _check_built(built, accounts)
    return built


def _check_built(built: Built, accounts: int) -> None:
    with sqlite3.connect(built.path) as db:
        stored = db.execute("SELECT (SELECT COUNT(*) FROM accounts),"
                            " (SELECT COUNT(*) FROM conversations)").fetchone()
    if stored != (accounts, built.conversations):
        raise BenchError(f"{built.path}: {stored} (accounts, conversations) stored, "
                         f"expected {(accounts, built.conversations)}")


# -- the broker ------------------------------------------------------------------
class Broker:
    """The topology declared as the worker declares it, and a queue seeing every update."""

    def __init__(self, vhost: str) -> None:
        self.url = amqp_url(vhost)
        self.topology = Topology.from_settings(Settings(AMQP_URL=self.url))
        self.connection = pika.BlockingConnection(pika.URLParameters(self.url))
        self.channel = self.connection.channel()
        self.topology.declare_blocking(self.channel)
        self.updates = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(self.updates, self.topology.updates_exchange, "#")
        self.channel.confirm_delivery()

    def publish_probe(self, run: str) -> str:
        """One new conversation in an account both files hold (an update per agent);
        returns its event id."""
        event = {"event_id": f"probe-{run}", "type": "conversation.created",
                 "account_id": PROBE_ACCOUNT, "conversation_id": f"probe-{run}",
                 "occurred_at": "2026-11-25T10:00:00Z", "data": {"group_id": None}}
        parse_event_object(event)  # the probe must be good input
        self.channel.basic_publish(
            self.topology.events_exchange, "conversation.created",
            json.dumps(event).encode(),
            pika.BasicProperties(delivery_mode=2, content_type="application/json"))
        return str(event["event_id"])

    def first_update(self, cause: str, worker: subprocess.Popen[bytes], log: Path) -> None:
        """Block until the first update caused by ``cause`` arrives (any other update,
        say of a rules sweep, would not be the first processed event); fail early if
        the worker dies."""
        deadline = time.monotonic() + START_TIMEOUT
        for method, _properties, body in self.channel.consume(
                self.updates, auto_ack=True, inactivity_timeout=0.002):
            if method is not None and json.loads(body)["cause_event_id"] == cause:
                self.channel.cancel()
                return
            if worker.poll() is not None:
                self.channel.cancel()
                raise BenchError(f"the worker exited ({worker.returncode}) before "
                                 f"publishing:\n{_tail(log)}")
            if time.monotonic() > deadline:
                self.channel.cancel()
                raise BenchError(f"no update within {START_TIMEOUT:.0f} s:\n{_tail(log)}")

    def close(self) -> None:
        self.connection.close()


# -- one measurement -------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    seconds: float
    rss_mb: float


def measure(broker: Broker, state: Path, run: str, log: Path) -> Sample:
    broker.channel.queue_purge(broker.updates)
    probe = broker.publish_probe(run)
    env = {**os.environ, "AMQP_URL": broker.url, "INBOX_RULES_STATE_PATH": str(state),
           "INBOX_RULES_HTTP_PORT": "0"}
    with log.open("wb") as out:
        started = time.perf_counter()
        worker = subprocess.Popen([str(WORKER), "run"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
        try:
            broker.first_update(probe, worker, log)
            elapsed = time.perf_counter() - started
            rss = _rss_mb(worker.pid)
        finally:
            _stop(worker)
    return Sample(elapsed, rss)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


def _stop(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM (finish, commit, ack), so the next run finds an empty queue."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# -- the whole run ---------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=ACCOUNTS)
    parser.add_argument("--small", type=int, default=SMALL)
    parser.add_argument("--large", type=int, default=LARGE)
    parser.add_argument("--keep", type=Path, default=None,
                        help="directory for the state files (kept; default: a temporary one)")
    parser.add_argument("--build-only", action="store_true",
                        help="build the two state files and stop")
    parser.add_argument("--rich", action="store_true",
                        help="compare a state built from the rich stream with one built "
                        "from the default stream (--large conversations each)")
    args = parser.parse_args()
    try:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            run(args, args.keep)
        else:
            with tempfile.TemporaryDirectory(prefix="inbox-rules-startup-") as tmp:
                run(args, Path(tmp))
    except RuntimeError as exc:  # ours, or rabbitmqctl's: a message, not a traceback
        sys.exit(f"startup benchmark: {exc}")


@dataclass(frozen=True)
class StateFile:
    name: str
    conversations: int
    history: History
    label: str


def plan(args: argparse.Namespace) -> list[StateFile]:
    """The two files to compare, the baseline first."""
    if args.rich:
        return [StateFile("default", args.large, stream_history(rich=False),
                          f"{args.large:,}, default stream"),
                StateFile("rich", args.large, stream_history(rich=True),
                          f"{args.large:,}, rich stream")]
    return [StateFile(name, conversations, account_events, f"{conversations:,} conversations")
            for name, conversations in (("small", args.small), ("large", args.large))]


def run(args: argparse.Namespace, directory: Path) -> None:
    settings = Settings()
    state_files = plan(args)
    files: dict[str, Path] = {}
    for state in state_files:
        name = state.name
        path = directory / f"{name}-{state.conversations}-{args.accounts}.sqlite3"
        files[name] = path
        if path.exists():
            print(f"{name}: reusing {path}")
            continue
        built = build_state(path, state.conversations, args.accounts, settings, state.history)
        print(f"{name}: {built.conversations:,} conversations over {args.accounts:,} "
              f"accounts ({built.events:,} events) built in {built.seconds:.1f} s, "
              f"{built.megabytes:.1f} MB")
    if args.build_only:
        return
    samples: dict[str, list[Sample]] = {state.name: [] for state in state_files}
    # Probe ids unique per invocation: a kept file already holds earlier probes, and a
    # repeated event id is (rightly) a duplicate that produces no update.
    token = uuid.uuid4().hex[:8]
    # A vhost of our own, deleted at the end: no queue of anyone else is touched.
    with fresh_vhost("inbox-rules-startup", patient=True) as vhost:
        broker = Broker(vhost)
        try:
            for rep in range(args.reps):
                for name in samples:
                    sample = measure(broker, files[name], f"{token}-{rep}-{name}",
                                     directory / f"worker-{name}-{rep}.log")
                    samples[name].append(sample)
                    print(f"run {rep + 1} {name}: first update after {sample.seconds:.3f} s, "
                          f"RSS {sample.rss_mb:.1f} MB")
        finally:
            broker.close()
    report(samples, state_files, args)


def report(samples: dict[str, list[Sample]], state_files: list[StateFile],
           args: argparse.Namespace) -> None:
    start = {n: statistics.median(s.seconds for s in v) for n, v in samples.items()}
    rss = {n: statistics.median(s.rss_mb for s in v) for n, v in samples.items()}
    base, other = state_files[0].name, state_files[1].name
    start_ratio = start[other] / start[base]
    rss_ratio = rss[other] / rss[base]
    print(f"\nmedians of {args.reps} runs, {args.accounts:,} accounts:")
    print(f"  {'':<28}{'start-up to 1st update':>24}{'RSS':>12}")
    for state in state_files:
        print(f"  {state.label:<28}{start[state.name]:>22.3f} s"
              f"{rss[state.name]:>9.1f} MB")
    print(f"  {f'{other} / {base}':<28}{start_ratio:>23.2f}x{rss_ratio:>11.2f}x")
    if not args.rich:
        rss_goal = 1.5 * rss[base] + 30
        print(f"goal: start-up within 2x: {'met' if start_ratio <= 2 else 'NOT met'}; "
              f"RSS within 1.5x + 30 MB ({rss_goal:.1f} MB): "
              f"{'met' if rss[other] <= rss_goal else 'NOT met'}")


if __name__ == "__main__":
    main()
