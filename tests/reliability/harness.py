"""Machinery of the reliability suite: the worker as a subprocess, a paced producer and
update collectors on connections of their own, and the verdict against the offline
replay (the oracle).

Everything the suite and ``benchmarks/reliability.py`` observe goes through here, so
a figure in the README and an assertion in CI are computed the same way.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop

from contracts import parse_event
from tests.broker.bus import rabbitmqctl, wait_for
from tests.broker.streams import event_stream
from worker.domain.inbox import Inbox
from worker.domain.state import State
from worker.rulebook import load_rules
from worker.settings import Settings
from worker.store import SqliteStore
from worker.topology import Topology

REPO = Path(__file__).resolve().parents[2]
# Our own connections carry this name, so a test can cut the worker's and only those.
HARNESS_CONNECTION = "reliability-harness"
WORKER_CONNECTION = "inbox-rules worker"
UPDATES_QUEUE = "reliability.updates"
READY_LINE = "topology declared"
# AMQP errors a client of a restarting broker sees; all of them mean "reconnect".
LINK_ERRORS = (pika.exceptions.AMQPError, OSError)

Key = tuple[str, str, str]  # (account, agent, conversation)


def amqp_url(vhost: str, user: str = "guest", password: str = "guest") -> str:
    return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:5672/" \
           f"{quote(vhost, safe='')}"


def topology() -> Topology:
    """The default names, exactly as the worker derives them."""
    return Topology.from_settings(Settings(AMQP_URL="amqp://unused", state_path=Path("unused")))


def connect(vhost: str, attempts: int = 1, pause: float = 0.5) -> pika.BlockingConnection:
    params = pika.URLParameters(amqp_url(vhost))
    params.client_properties = {"connection_name": HARNESS_CONNECTION}
    # The test's own connections sit idle for minutes in a soak: no heartbeat to miss.
    params.heartbeat = 0
    for attempt in range(attempts):
        try:
            return pika.BlockingConnection(params)
        except LINK_ERRORS:
            if attempt == attempts - 1:
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


# -- the broker as the test sees it -----------------------------------------------------
class Broker:
    """A blocking connection to the test's vhost: topology declared, an updates queue
    bound with ``#`` before anything is published."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self.topology = topology()
        self.connection = connect(vhost)
        self.channel = self.connection.channel()
        self.topology.declare_blocking(self.channel)
        self.channel.queue_declare(UPDATES_QUEUE, durable=True)
        self.channel.queue_bind(UPDATES_QUEUE, self.topology.updates_exchange, "#")
        self.channel.confirm_delivery()

    def close(self) -> None:
        if self.connection.is_open:
            with suppress(*LINK_ERRORS):  # a broker restart may have closed it already
                self.connection.close()

    def reconnect(self) -> None:
        """After the broker restarted under us (on a shared broker, maybe not ours)."""
        self.close()
        self.connection = connect(self.vhost, attempts=240)
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def ready(self, queue: str) -> int:
        """Messages ready in ``queue``, live (a passive declare)."""
        try:
            return int(self.channel.queue_declare(queue, passive=True).method.message_count)
        except LINK_ERRORS:
            self.reconnect()
            return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def publish(self, routing_key: str, body: bytes, properties: pika.BasicProperties) -> bool:
        """Publish to the events exchange, confirmed; False if it had to be sent again
        after a broker restart (it may then be in the queue twice)."""
        try:
            self.channel.basic_publish(self.topology.events_exchange, routing_key, body,
                                       properties)
            return True
        except LINK_ERRORS:
            self.reconnect()
            self.channel.basic_publish(self.topology.events_exchange, routing_key, body,
                                       properties)
            return False

    def in_worker(self) -> int:
        """Events the worker holds unacknowledged, live."""
        return worker_unacked(self.vhost)

    def drained(self) -> bool:
        """Every event consumed and acknowledged (read in this order, so an event moving
        from ready to unacked between the two reads is still seen)."""
        return self.ready(self.topology.events_queue) == 0 and self.in_worker() == 0


def _worker_connections(vhost: str) -> dict[str, str]:
    """The worker's connections in ``vhost`` (not the harness's): name -> pid."""
    # The table form, not JSON: close_connection wants the pid as the table prints it.
    marker = f'{{"connection_name","{WORKER_CONNECTION}"}}'
    found = {}
    for line in rabbitmqctl("list_connections", "--no-table-headers", "vhost", "name", "pid",
                            "client_properties").splitlines():
        host, name, pid, properties = line.split("\t", 3)
        if host == vhost and marker in properties:
            found[name] = pid
    return found


def worker_connections(vhost: str) -> list[str]:
    """Broker-side ids of the worker's connections in ``vhost``."""
    return list(_worker_connections(vhost).values())


def worker_unacked(vhost: str) -> int:
    """Messages delivered to the worker and not yet acknowledged. Channel figures are
    live; ``list_queues`` figures of a quorum queue lag by up to 5 s and would call a
    queue drained that is not."""
    names = _worker_connections(vhost)
    total = 0
    for line in rabbitmqctl("list_channels", "-p", vhost, "--no-table-headers", "name",
                            "messages_unacknowledged").splitlines():
        name, unacked = line.rsplit("\t", 1)
        if name.rsplit(" (", 1)[0] in names:
            total += int(unacked)
    return total


def cut_worker_connections(vhost: str) -> int:
    """Close the worker's connections from the broker side (a network cut, a broker
    failover); returns how many."""
    pids = worker_connections(vhost)
    for pid in pids:
        rabbitmqctl("close_connection", pid, "reliability test: connection cut")
    return len(pids)


@contextmanager
def broker_restart() -> Iterator[None]:
    """``stop_app`` now, ``start_app`` on leaving, always; then wait until it answers.

    This stops every vhost of the shared broker: keep what runs inside short."""
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


@contextmanager
def vhost_user(vhost: str, user: str, password: str) -> Iterator[None]:
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield
    finally:
        rabbitmqctl("delete_user", user)


# -- the worker -------------------------------------------------------------------------
def worker_env(url: str, state_path: Path, **settings: object) -> dict[str, str]:
    """The environment of ``inbox-rules run``: settings only from here, none inherited."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("INBOX_RULES_") and k != "AMQP_URL"}
    env.update(AMQP_URL=url, INBOX_RULES_STATE_PATH=str(state_path))
    defaults: dict[str, object] = {"max_batch_delay": 0.01, "reconnect_max_delay": 1.0,
                                   "heartbeat": 5}
    for name, value in {**defaults, **settings}.items():
        env[f"INBOX_RULES_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """``python -m worker.cli run`` as a subprocess: start, SIGKILL, restart, stop.

    Every run appends to one log file; ``log()`` is everything it said so far."""

    def __init__(self, env: dict[str, str], log: Path, args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.args = args
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self._log_offset = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "run", *self.args], cwd=REPO, env=self.env,
                stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def reconnects(self) -> int:
        """Times a run connected again after its first connection (log lines, all runs)."""
        return self.log().count(READY_LINE) - self.starts

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until this run has declared its topology (it is about to consume)."""
        def ready() -> bool:
            assert self.alive(), f"worker exited: {self.log_tail()}"
            return READY_LINE in self.log(self._log_offset)
        wait_for(ready, timeout, "the worker to connect", interval=0.05)

    def kill(self) -> None:
        assert self.process is not None and self.alive(), f"worker died: {self.log_tail()}"
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(10) == -signal.SIGKILL
        self.kills += 1

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM: finish the batch in hand, ack, exit; the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def ensure_dead(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def rss_kib(self) -> int:
        """Resident set size now (VmRSS), KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def log(self, offset: int = 0) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


@contextmanager
def running(worker: WorkerProcess) -> Iterator[WorkerProcess]:
    """Start it, and whatever happens never leave it behind."""
    worker.start()
    try:
        yield worker
    finally:
        worker.ensure_dead()


# -- producing and collecting -----------------------------------------------------------
@dataclass(frozen=True)
class Message:
    routing_key: str
    body: bytes
    properties: pika.BasicProperties = field(
        default_factory=lambda: pika.BasicProperties(delivery_mode=2))


def as_messages(events: Iterable[dict[str, Any]]) -> list[Message]:
    return [Message(str(e["type"]), json.dumps(e).encode()) for e in events]


class Producer(threading.Thread):
    """Publishes ``messages`` in order to ``chat.events`` at ``rate`` per second on a
    connection of its own, with up to ``window`` publishes awaiting their confirm (a
    quorum queue confirms after an fsync: one at a time would crawl).

    If the broker goes away it reconnects and publishes again from the first
    unconfirmed message, like a real at-least-once producer. The broker keeps a prefix
    of what one channel sent, so the queue then holds some events twice, in order; the
    worker drops the second copy by event id, and the replay of ``messages`` stays the
    oracle."""

    def __init__(self, vhost: str, messages: list[Message], rate: float,
                 window: int = 500) -> None:
        super().__init__(name="producer", daemon=True)
        self.vhost = vhost
        self.messages = messages
        self.rate = rate
        self.window = window
        self.confirmed = 0  # every message before this index is confirmed
        self.resends = 0
        self.reconnects = 0
        self.error: BaseException | None = None
        self._next = 0
        self._pending: dict[int, int] = {}  # delivery tag -> message index
        self._tag = 0
        self._channel: Any = None
        self._connection: pika.SelectConnection | None = None
        self._began = 0.0
        self._stopping = False
        self._ioloop = IOLoop()
        self._exchange = topology().events_exchange

    @property
    def published(self) -> int:
        """Messages confirmed so far."""
        return self.confirmed

    @property
    def done(self) -> bool:
        return self.confirmed == len(self.messages)

    def run(self) -> None:
        try:
            self._began = time.monotonic()
            self._connect()
            self._ioloop.start()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test by finish()
            self.error = exc
        finally:
            self._ioloop.close()

    def _connect(self) -> None:
        params = pika.URLParameters(amqp_url(self.vhost))
        params.client_properties = {"connection_name": HARNESS_CONNECTION}
        self._connection = pika.SelectConnection(
            params, on_open_callback=lambda c: c.channel(on_open_callback=self._on_channel),
            on_open_error_callback=lambda _c, _e: self._reconnect(),
            on_close_callback=lambda _c, _e: self._reconnect(), custom_ioloop=self._ioloop)

    def _reconnect(self) -> None:
        self._channel = None
        if self._stopping:
            self._ioloop.stop()
            return
        self.reconnects += 1
        if self._pending:  # unknown fate: send again, in order, from the first of them
            first = min(self._pending.values())
            self.resends += self._next - first
            self._next = first
            self._pending.clear()
        self._ioloop.call_later(0.5, self._connect)

    def _on_channel(self, channel: Any) -> None:
        self._tag = 0
        channel.confirm_delivery(ack_nack_callback=self._on_confirm,
                                 callback=lambda _frame: self._ready(channel))

    def _ready(self, channel: Any) -> None:
        self._channel = channel
        self._pump()

    def _pump(self) -> None:
        channel = self._channel
        if channel is None or self._stopping:
            return
        due = int((time.monotonic() - self._began) * self.rate) + 1
        while (self._next < min(due, len(self.messages)) and len(self._pending) < self.window
               and channel.is_open):
            message = self.messages[self._next]
            channel.basic_publish(self._exchange, message.routing_key, message.body,
                                  message.properties)
            self._tag += 1
            self._pending[self._tag] = self._next
            self._next += 1
        if self._next < len(self.messages) and len(self._pending) < self.window:
            self._ioloop.call_later(0.005, self._pump)  # the rate allows more soon

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if not isinstance(method, pika.spec.Basic.Ack):
            raise AssertionError(f"the broker refused an event: {method}")
        tags = ([t for t in self._pending if t <= method.delivery_tag] if method.multiple
                else [method.delivery_tag])
        for tag in tags:
            self._pending.pop(tag, None)
        self.confirmed = min(self._pending.values()) if self._pending else self._next
        if self.done:
            self._stopping = True
            assert self._connection is not None
            self._connection.close()
        else:
            self._pump()

    def finish(self, timeout: float = 600.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"producer did not finish: {self.confirmed} confirmed"
        if self.error is not None:
            raise self.error
        assert self.done

    def abandon(self) -> None:
        if self.is_alive():
            def stop() -> None:
                self._stopping = True
                if self._connection is not None and self._connection.is_open:
                    self._connection.close()
                else:
                    self._ioloop.stop()
            self._ioloop.add_callback_threadsafe(stop)
            self.join(30)


@dataclass(frozen=True)
class Received:
    routing_key: str
    properties: pika.BasicProperties
    body: bytes


class Collector(threading.Thread):
    """Consumes ``queue`` on a connection of its own, acking each message after keeping
    it; reconnects if the broker goes away. A message the broker redelivers after such
    a cut is kept only if it is not the one already kept."""

    def __init__(self, vhost: str, queue: str) -> None:
        super().__init__(name=f"collect-{queue}", daemon=True)
        self.vhost = vhost
        self.queue = queue
        self.received: list[Received] = []
        self.reconnects = 0
        self.last_seen = time.monotonic()
        self.error: BaseException | None = None
        self._kept: set[tuple[str | None, bytes]] = set()
        self._stop_requested = threading.Event()

    def __len__(self) -> int:
        return len(self.received)

    def run(self) -> None:
        try:
            while not self._stop_requested.is_set():
                try:
                    self._consume()
                except LINK_ERRORS:
                    self.reconnects += 1
                    time.sleep(0.2)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test by stop()
            self.error = exc

    def _consume(self) -> None:
        connection = connect(self.vhost, attempts=240)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=1000)
            channel.basic_consume(self.queue, self._on_message)
            while not self._stop_requested.is_set():
                connection.process_data_events(time_limit=0.05)
        finally:
            if connection.is_open:
                connection.close()

    def _on_message(self, channel: Any, method: Any, properties: pika.BasicProperties,
                    body: bytes) -> None:
        key = (properties.message_id, body)
        if not (method.redelivered and key in self._kept):
            self.received.append(Received(method.routing_key, properties, body))
            self._kept.add(key)
        self.last_seen = time.monotonic()
        channel.basic_ack(method.delivery_tag)

    def quiet_for(self, seconds: float) -> bool:
        return time.monotonic() - self.last_seen >= seconds

    def stop(self) -> list[Received]:
        self._stop_requested.set()
        self.join(30)
        assert not self.is_alive(), f"collector of {self.queue} did not stop"
        if self.error is not None:
            raise self.error
        return self.received


@contextmanager
def collecting(vhost: str, queue: str) -> Iterator[Collector]:
    collector = Collector(vhost, queue)
    collector.start()
    try:
        yield collector
    finally:
        if collector.is_alive():
            collector.stop()


@dataclass
class Rig:
    """A running worker with its broker view and both collectors."""

    broker: Broker
    worker: WorkerProcess
    updates: Collector
    dead: Collector
    state: Path

    def publish(self, events: Iterable[dict[str, Any]]) -> None:
        for message in as_messages(events):
            self.broker.publish(message.routing_key, message.body, message.properties)

    def settle(self, timeout: float = 120.0) -> None:
        settle(self.broker, self.worker, [self.updates, self.dead], timeout)


    def reopen(self) -> None:
        """A fresh broker view, for after a broker restart cut the old one."""
        self.broker.close()
        self.broker = Broker(self.broker.vhost)


@contextmanager
def rig(vhost: str, workdir: Path, *, url: str | None = None, state: Path | None = None,
        settings: dict[str, object] | None = None, args: tuple[str, ...] = ()) -> Iterator[Rig]:
    """Collectors first, then the worker, ready to consume; all torn down on leaving.
    ``collector.received`` stays readable afterwards."""
    state = state or workdir / "state.sqlite3"
    worker = WorkerProcess(worker_env(url or amqp_url(vhost), state, **(settings or {})),
                           workdir / "worker.log", args)
    broker = Broker(vhost)
    try:
        with collecting(vhost, UPDATES_QUEUE) as updates, \
                collecting(vhost, broker.topology.dead_letter_queue) as dead, running(worker):
            worker.wait_ready()
            the_rig = Rig(broker, worker, updates, dead, state)
            try:
                yield the_rig
            finally:
                broker = the_rig.broker
    finally:
        broker.close()


def settle(broker: Broker, worker: WorkerProcess, collectors: Iterable[Collector],
           timeout: float = 120.0) -> None:
    """Until the input queue is empty with nothing unacked, then stop the worker
    cleanly (exit status 0) and wait until every collector has all there is."""
    events_queue = broker.topology.events_queue

    def drained() -> bool:
        assert worker.alive(), f"worker died: {worker.log_tail()}"
        return broker.drained()

    wait_for(drained, timeout, "the worker to consume and ack every event", interval=0.5)
    status = worker.stop()
    assert status == 0, f"worker exit status {status}: {worker.log_tail()}"
    # Its connection is gone: anything it left unacked would be ready again.
    assert broker.ready(events_queue) == 0, "the worker left events unacknowledged"
    for collector in collectors:
        def collected(c: Collector = collector) -> bool:
            return broker.ready(c.queue) == 0 and c.quiet_for(0.5)

        wait_for(collected, 60, f"{collector.queue} to be collected", interval=0.2)


# -- the oracle -------------------------------------------------------------------------
def chaos_stream(seed: int, count: int, accounts: int) -> list[dict[str, Any]]:
    """A valid stream over many accounts, with every event type, re-sent duplicates
    (same event id), stale events (an older event of the same conversation or account
    sent again under a new id) and some events without a sequence.

    Most later account snapshots are left out: each re-categorises every conversation of
    the account for every agent, and at the generator's rate they would be most of the
    traffic (a plan or team change is rarer than a chat)."""
    rng = random.Random(seed)
    stream: list[dict[str, Any]] = []
    known: set[str] = set()
    for event in event_stream(seed, count, accounts=accounts):
        roll = rng.random()
        if event["type"] == "account.updated":
            if event["account_id"] in known and roll < 0.8:
                continue
            known.add(event["account_id"])
        if roll < 0.02:
            event = {k: v for k, v in event.items() if k != "sequence"}
        stream.append(event)
        if roll > 0.97 and len(stream) > 10:
            older = dict(rng.choice(stream[:-1]))
            if "sequence" in older:
                older["event_id"] = f"{older['event_id']}-stale-{len(stream)}"
                stream.append(older)
    return stream


@dataclass
class Oracle:
    """What a clean, crash-free run produces for ``events``: the updates in publish
    order and the final state."""

    updates: list[dict[str, Any]]
    state: State

    @classmethod
    def replay(cls, events: Iterable[dict[str, Any]], dedup_window: int = 1_000_000) -> Oracle:
        inbox = Inbox(load_rules(None), State(dedup_window=dedup_window))
        updates = []
        for event in events:
            for update in inbox.handle(parse_event(json.dumps(event).encode())):
                updates.append(json.loads(update.model_dump_json()))
        return cls(updates, inbox.state)


def last_per_key(updates: Iterable[dict[str, Any]]) -> tuple[dict[Key, list[str]],
                                                              dict[tuple[str, str], Any]]:
    categories: dict[Key, list[str]] = {}
    counts: dict[tuple[str, str], Any] = {}
    for u in updates:
        categories[(u["account_id"], u["agent_id"], u["conversation_id"])] = u["categories"]
        counts[(u["account_id"], u["agent_id"])] = u["counts"]
    return categories, counts


@dataclass
class Verdict:
    """Downstream and the state file compared with the oracle. Every list should be
    empty; the numbers are figures."""

    events: int
    expected_updates: int
    received_updates: int
    duplicates: int = 0
    lost_updates: list[str] = field(default_factory=list)
    lost_events: list[str] = field(default_factory=list)
    unexpected_updates: list[str] = field(default_factory=list)
    wrong_bodies: list[str] = field(default_factory=list)
    conflicting_duplicates: list[str] = field(default_factory=list)
    bad_message_ids: list[str] = field(default_factory=list)
    wrong_final_categories: list[str] = field(default_factory=list)
    wrong_final_counts: list[str] = field(default_factory=list)
    state_differences: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        for name in ("lost_updates", "lost_events", "unexpected_updates", "wrong_bodies",
                     "conflicting_duplicates", "bad_message_ids", "wrong_final_categories",
                     "wrong_final_counts", "state_differences"):
            items = getattr(self, name)
            if items:
                out.append(f"{name}: {len(items)}, e.g. {items[:3]}")
        return out

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, "differs from the offline replay:\n" + "\n".join(problems)


def judge(oracle: Oracle, received: list[Received], events: int,
          state_path: Path | None = None) -> Verdict:
    """Compare what downstream received (in arrival order) with the oracle."""
    verdict = Verdict(events, len(oracle.updates), len(received))
    expected = {u["update_id"]: u for u in oracle.updates}
    first_body: dict[str, bytes] = {}
    bodies: list[dict[str, Any]] = []
    for message in received:
        update = json.loads(message.body)
        uid = update["update_id"]
        bodies.append(update)
        if message.properties.message_id != uid:
            verdict.bad_message_ids.append(f"{uid} has message_id {message.properties.message_id}")
        if uid in first_body:
            verdict.duplicates += 1
            if first_body[uid] != message.body:
                verdict.conflicting_duplicates.append(uid)
            continue
        first_body[uid] = message.body
        if uid not in expected:
            verdict.unexpected_updates.append(f"{uid} caused by {update['cause_event_id']}")
        elif update != expected[uid]:
            verdict.wrong_bodies.append(f"{uid}: {update} != {expected[uid]}")
    lost = [u for u in oracle.updates if u["update_id"] not in first_body]
    verdict.lost_updates = [f"{u['update_id']} caused by {u['cause_event_id']}" for u in lost]
    verdict.lost_events = sorted({u["cause_event_id"] for u in lost})

    want, want_counts = last_per_key(oracle.updates)
    got, got_counts = last_per_key(bodies)
    for key in sorted(set(want) | set(got)):
        # Never non-empty for the oracle and never seen downstream: nothing to show.
        if want.get(key, []) != got.get(key, []):
            verdict.wrong_final_categories.append(
                f"{key}: downstream {got.get(key)}, replay {want.get(key)}")
    for agent in sorted(set(want_counts) | set(got_counts)):
        if want_counts.get(agent) != got_counts.get(agent):
            verdict.wrong_final_counts.append(
                f"{agent}: downstream {got_counts.get(agent)}, replay {want_counts.get(agent)}")
    if state_path is not None:
        committed = load_state(state_path, oracle.state.dedup_window)
        verdict.state_differences = compare_state(oracle.state, committed)
        never_committed = {event_id for key in oracle.state.seen if key not in committed.seen
                           for event_id in key[1:]}
        verdict.lost_events = sorted(set(verdict.lost_events) | never_committed)
    return verdict


def load_state(state_path: Path, dedup_window: int) -> State:
    store = SqliteStore(state_path)
    try:
        return store.load(dedup_window)
    finally:
        store.close()


def compare_state(want: State, got: State) -> list[str]:
    """Where the worker's committed state differs from the oracle's final state."""
    out = []
    for name in ("accounts", "conversations", "counts"):
        mine, theirs = getattr(got, name), getattr(want, name)
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                out.append(f"{name}[{key}]: worker {mine.get(key)!r}, replay {theirs.get(key)!r}")
    if list(got.seen) != list(want.seen):
        out.append(f"remembered event ids differ: worker {len(got.seen)}, replay {len(want.seen)}")
    return out


def type_counts(events: Iterable[dict[str, Any]]) -> Counter[str]:
    return Counter(str(e["type"]) for e in events)


def steady_stream(seed: int, count: int, accounts: int = 10,
                  conversations: int = 100) -> list[dict[str, Any]]:
    """A long stream over a fixed working set: every conversation is created first, then
    lives through joins, transfers, resolves and reopens over and over, with snapshots
    and re-sent recent events. Memory should stop growing once all of it is known."""
    rng = random.Random(seed)
    agents = [f"ag-{n}" for n in range(1, 7)]
    sequences: dict[tuple[str, str], int] = {}
    events: list[dict[str, Any]] = []

    def emit(kind: str, account: str, data: dict[str, Any], conversation: str = "") -> None:
        key = (account, conversation)
        sequences[key] = sequences.get(key, 0) + 1
        event: dict[str, Any] = {
            "event_id": f"m{seed}-{len(events)}", "type": kind, "account_id": account,
            "occurred_at": "2026-11-24T10:00:00Z", "sequence": sequences[key], "data": data}
        if conversation:
            event["conversation_id"] = conversation
        events.append(event)

    def snapshot(account: str) -> None:
        team = sorted(rng.sample(agents, rng.randint(2, 5)))
        emit("account.updated", account, {"plan": rng.choice(("free", "pro")), "agents": team,
                                          "groups": {"g-1": team[:2]}})

    names = [f"acc-m{seed}-{a}" for a in range(accounts)]
    for account in names:
        snapshot(account)
        for c in range(conversations):
            emit("conversation.created", account, {"group_id": rng.choice((None, "g-1"))},
                 f"c-{c}")
    while len(events) < count:
        account = rng.choice(names)
        roll = rng.random()
        if roll < 0.002:
            snapshot(account)  # re-categorises all the account's conversations
        elif roll < 0.012:
            events.append(dict(events[-rng.randint(1, 50)]))  # a re-sent recent event
        else:
            agent = rng.choice(agents)
            kind, data = rng.choice((
                ("message.created", {"author": "visitor"}),
                ("message.created", {"author": "agent", "agent_id": agent}),
                ("conversation.assigned", {"agent_id": agent}),
                ("conversation.unassigned", {"agent_id": agent}),
                ("conversation.transferred", {"to_agent_id": agent}),
                ("conversation.transferred", {"to_group_id": "g-1"}),
                ("conversation.resolved", {}),
                ("conversation.reopened", {}),
            ))
            emit(kind, account, data, f"c-{rng.randrange(conversations)}")
    return events[:count]
