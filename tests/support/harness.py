"""The broker and process harness of every test and benchmark.

- the broker: ``rabbitmqctl``, a vhost per test or run (:func:`fresh_vhost`), users,
  a resource alarm (:func:`memory_alarm`), the worker's connections as the broker sees
  them, and :class:`Bus`, a blocking client
  that declares the worker's topology and a queue collecting every update;
- waiting: :func:`wait_for`, :func:`wait_drained`;
- the worker: :class:`WorkerProcess` (``inbox-rules run``, or another program such as
  the bare relay, as a subprocess configured by environment only) and
  :class:`ThreadWorker` (in process, on a thread of its own);
- traffic: :class:`Producer` (paced, confirmed, republishing after a broker restart)
  and :class:`Collector` (consumes a queue on a connection of its own), and
  :func:`rig`, a worker with both collectors, ready to consume;
- the network: :class:`TcpProxy`, a link between the worker and the broker that a test
  cuts and restores without touching the shared broker; :func:`free_port` and
  :func:`http_get` for the worker's HTTP endpoints.

A figure in docs/ and an assertion in CI go through the same code here.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import pika
import pika.exceptions
import psycopg
from pika.adapters.select_connection import IOLoop
from psycopg import sql

from worker.amqp.topology import Topology
from worker.rulebook.engine import default_rules_dir
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.service import Worker

REPO = Path(__file__).resolve().parents[2]
WORKER_COMMAND = (sys.executable, "-m", "worker.cli", "run")
# Our own connections carry this name, so a test can cut the worker's and only those.
HARNESS_CONNECTION = "inbox-rules test harness"
WORKER_CONNECTION = "inbox-rules worker"
UPDATES_QUEUE = "test.updates"
READY_LINE = "topology declared"  # the worker's log line once it is about to consume
PERSISTENT = pika.BasicProperties(delivery_mode=2)
# AMQP errors a client of a restarting broker sees; all of them mean "reconnect".
LINK_ERRORS = (pika.exceptions.AMQPError, OSError)
# Quick batches and reconnects; a short heartbeat: a worker that blocked its ioloop too
# long would be cut off; no HTTP port (workers of parallel tests would share it).
TEST_SETTINGS: Mapping[str, object] = {"max_batch_delay": 0.01, "reconnect_max_delay": 1.0,
                                       "heartbeat": 4, "http_port": 0}


# -- the broker -------------------------------------------------------------------------
def rabbitmqctl(*args: str, wait_for_app: float = 60.0) -> str:
    """Run rabbitmqctl; a missing or failing broker fails the test, never skips it.
    While the broker application restarts (another test may restart it), wait."""
    deadline = time.monotonic() + wait_for_app
    while True:
        result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True,
                                text=True, timeout=120, check=False)
        if result.returncode == 0:
            return result.stdout
        if "app to be running" not in result.stderr or time.monotonic() > deadline:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
        time.sleep(1)


def await_broker(timeout: float = 180.0) -> None:
    """Until the broker answers again (other work on this machine may restart it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            rabbitmqctl("await_startup")
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


BROKER = ("127.0.0.1", 5672)


def amqp_url(vhost: str, user: str = "guest", password: str = "guest", *,
             port: int = BROKER[1]) -> str:
    """The URL of ``vhost`` on the local broker (``port``: another way in to it, such
    as a :class:`TcpProxy`)."""
    return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}/" \
           f"{quote(vhost, safe='')}"


@contextmanager
def fresh_vhost(prefix: str = "inbox-rules-test", *, patient: bool = False) -> Iterator[str]:
    """A new vhost where guest may do anything, deleted on leaving. ``patient``: first
    wait until the broker answers (a long run outlives other people's restarts)."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    if patient:
        await_broker()
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        if patient:
            await_broker()
        rabbitmqctl("delete_vhost", name)


@contextmanager
def vhost_user(vhost: str, user: str, password: str) -> Iterator[None]:
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield
    finally:
        rabbitmqctl("delete_user", user)


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


def _broker_status() -> dict[str, Any]:
    status: dict[str, Any] = json.loads(rabbitmqctl("status", "--formatter", "json"))
    return status


def _memory_watermark_args() -> list[str]:
    """The broker's memory high watermark as ``set_vm_memory_high_watermark`` takes it
    back (``0.4``, or ``absolute <bytes>``)."""
    setting = _broker_status()["vm_memory_high_watermark_setting"]
    if "absolute" in setting:
        return ["absolute", str(setting["absolute"])]
    return [str(setting["relative"])]


@contextmanager
def memory_alarm(timeout: float = 15.0) -> Iterator[None]:
    """A memory alarm on the broker (a watermark far below what it uses) until leaving,
    then the watermark exactly as it was, always. The broker then blocks every
    publishing connection of every vhost: keep what runs inside short."""
    before, alarms = _memory_watermark_args(), _broker_status()["alarms"]
    rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
    try:
        wait_for(lambda: _broker_status()["alarms"] != alarms, timeout, "the memory alarm",
                 interval=0.2)
        yield
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", *before)
        wait_for(lambda: _broker_status()["alarms"] == alarms, timeout,
                 "the memory alarm to clear", interval=0.2)


def _connections(vhost: str, named: str | None = None) -> dict[str, str]:
    """Client connections of ``vhost`` (with ``named``: only those that call themselves
    so): name -> pid."""
    # The table form, not JSON: close_connection wants the pid as the table prints it.
    marker = f'{{"connection_name","{named}"}}'
    found = {}
    for line in rabbitmqctl("list_connections", "--no-table-headers", "vhost", "name", "pid",
                            "client_properties").splitlines():
        host, name, pid, properties = line.split("\t", 3)
        if host == vhost and (named is None or marker in properties):
            found[name] = pid
    return found


def _worker_connections(vhost: str) -> dict[str, str]:
    """The worker's connections in ``vhost`` (not the harness's): name -> pid."""
    return _connections(vhost, WORKER_CONNECTION)


def _close(pids: list[str]) -> int:
    for pid in pids:
        rabbitmqctl("close_connection", pid, "test: connection cut")
    return len(pids)


def close_connections(vhost: str) -> int:
    """Close every client connection of ``vhost`` from the broker side (a network cut);
    returns how many."""
    return _close(list(_connections(vhost).values()))


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
    return _close(worker_connections(vhost))


def topology() -> Topology:
    """The default names, exactly as the worker derives them."""
    return Topology.from_settings(Settings(AMQP_URL="amqp://unused", state_path=Path("unused")))


def connect(vhost: str, attempts: int = 1, pause: float = 0.5) -> pika.BlockingConnection:
    params = pika.URLParameters(amqp_url(vhost))
    params.client_properties = {"connection_name": HARNESS_CONNECTION}
    # The test's own connections may sit idle for minutes in a soak: no heartbeat to miss.
    params.heartbeat = 0
    for attempt in range(attempts):
        try:
            return pika.BlockingConnection(params)
        except LINK_ERRORS:
            if attempt == attempts - 1:
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


@contextmanager
def blocking(vhost: str) -> Iterator[Any]:
    """A channel on a fresh, plain connection to ``vhost``, closed on exit."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost)))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


# -- PostgreSQL ---------------------------------------------------------------------
ADMIN_URL = os.environ.get("INBOX_RULES_TEST_POSTGRES",
                           "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin() -> psycopg.Connection[tuple[Any, ...]]:
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise AssertionError(f"PostgreSQL is needed at {ADMIN_URL} (start it: "
                             f"bash .ci/ensure-postgres, or set INBOX_RULES_TEST_POSTGRES): "
                             f"{exc}") from exc


@contextmanager
def fresh_database(prefix: str = "inbox_rules_test") -> Iterator[str]:
    """A new database; its URL. Dropped on leaving, with every session still on it
    (a SIGKILLed or SIGSTOPped worker's)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        # A URL (not key=value): the worker, psycopg and `shadow --store` all take it.
        yield urlsplit(ADMIN_URL)._replace(path=f"/{name}").geturl()
    finally:
        with _admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                sql.Identifier(name)))


class Bus:
    """A blocking connection to a vhost: the worker's topology declared and a durable
    queue collecting every update (``updates_queue``, bound with ``#``) before anything
    is published. With ``confirm``, every publish waits for the broker's confirm. After
    a broker restart (on a shared broker, maybe not ours) it connects again."""

    def __init__(self, vhost: str, *, confirm: bool = False,
                 updates_queue: str = UPDATES_QUEUE) -> None:
        self.vhost = vhost
        self.confirm = confirm
        self.updates_queue = updates_queue
        self.topology = topology()
        self._open(connect(vhost))
        self.declare()

    def _open(self, connection: pika.BlockingConnection) -> None:
        self.connection = connection
        self.channel = connection.channel()
        if self.confirm:
            self.channel.confirm_delivery()

    def declare(self) -> None:
        self.topology.declare_blocking(self.channel)
        self.channel.queue_declare(self.updates_queue, durable=True)
        self.channel.queue_bind(self.updates_queue, self.topology.updates_exchange, "#")

    def reset(self, *queues: str) -> None:
        """Empty the vhost for a new run: delete the worker's queues, the updates queue
        and ``queues``, then declare them all again (``queues`` is the caller's to
        declare)."""
        t = self.topology
        for queue in (t.events_queue, t.dead_letter_queue, self.updates_queue, *queues):
            self.channel.queue_delete(queue)
        self.declare()

    def close(self) -> None:
        if self.connection.is_open:
            with suppress(*LINK_ERRORS):  # a broker restart may have closed it already
                self.connection.close()

    def reconnect(self) -> None:
        """After the broker restarted under us."""
        self.close()
        self._open(connect(self.vhost, attempts=240))

    def send(self, routing_key: str, body: bytes,
             properties: pika.BasicProperties = PERSISTENT) -> bool:
        """Publish one message to the events exchange; False if it had to be sent again
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

    def publish(self, bodies: Iterable[bytes], routing_key: str = "event") -> None:
        """Raw bodies, persistent, all with ``routing_key``."""
        for body in bodies:
            self.send(routing_key, body)

    def publish_events(self, events: Iterable[dict[str, Any]]) -> None:
        """Events as upstream publishes them: JSON, routing key = type, persistent."""
        for event in events:
            self.send(str(event["type"]), json.dumps(event).encode())

    def _declare_passive(self, queue: str) -> Any:
        try:
            return self.channel.queue_declare(queue, passive=True).method
        except LINK_ERRORS:
            self.reconnect()
            return self.channel.queue_declare(queue, passive=True).method

    def ready(self, queue: str) -> int:
        """Messages ready (not unacked) in ``queue``, live (a passive declare;
        rabbitmqctl's counts lag by seconds)."""
        return int(self._declare_passive(queue).message_count)

    def consumers(self, queue: str | None = None) -> int:
        """Consumers of ``queue`` (default: the worker's events queue)."""
        return int(self._declare_passive(queue or self.topology.events_queue).consumer_count)

    def in_worker(self) -> int:
        """Events the worker holds unacknowledged, live."""
        return worker_unacked(self.vhost)

    def drained(self) -> bool:
        """Every event consumed and acknowledged (read in this order, so an event moving
        from ready to unacked between the two reads is still seen)."""
        return self.ready(self.topology.events_queue) == 0 and self.in_worker() == 0

    def take(self, queue: str, quiet: float = 0.3) -> Iterator[tuple[Any, Any, bytes]]:
        """Every message now in ``queue`` (method, properties, body), each as it arrives,
        until none came for ``quiet`` seconds. (A consumer, not basic.get: quorum
        queues with a single active consumer refuse basic.get.) What was yielded is
        acknowledged, and only that: a message the broker delivers while we cancel goes
        back to the queue for the next call (with auto-ack, pika's cancel dropped it)."""
        last: int | None = None
        try:
            for method, properties, body in self.channel.consume(queue,
                                                                  inactivity_timeout=quiet):
                if method is None:
                    break
                last = method.delivery_tag
                yield method, properties, body
        finally:
            if last is not None:
                self.channel.basic_ack(last, multiple=True)
            self.channel.cancel()

    def drain(self, queue: str) -> list[tuple[Any, Any, bytes]]:
        """Every message now in ``queue``, acknowledged (see :meth:`take`)."""
        return list(self.take(queue))

    def updates(self) -> list[dict[str, Any]]:
        """Every update collected so far, in order, as JSON objects (drains the queue)."""
        return [json.loads(body) for _m, _p, body in self.drain(self.updates_queue)]

    def pump(self, seconds: float) -> None:
        """Let this connection's consumers run for ``seconds``."""
        self.connection.process_data_events(time_limit=seconds)

    def cancel(self, consumer_tag: str) -> None:
        """Cancel our consumer, unless the connection is already gone."""
        if self.channel.is_open:
            with suppress(*LINK_ERRORS, AssertionError):
                self.channel.basic_cancel(consumer_tag)


# -- waiting ----------------------------------------------------------------------------
def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.05, *, alive: WorkerProcess | None = None,
             sleep: Callable[[float], None] = time.sleep) -> float:
    """Until ``condition()``; fails after ``timeout`` seconds, or at once if the process
    ``alive`` exits. ``sleep``: how to pass ``interval`` (e.g. :meth:`Bus.pump`).
    Returns the moment it held (``time.perf_counter()``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if alive is not None:
            alive.assert_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        sleep(interval)
    return time.perf_counter()


def wait_drained(bus: Bus, queue: str, timeout: float = 60.0) -> None:
    """Until ``queue`` has no ready message and the worker holds none unacknowledged:
    every message is handled. (A stopping worker finishes only the batches it started;
    what it received but had not started goes back to the queue.)"""
    wait_for(lambda: bus.ready(queue) == 0 and bus.in_worker() == 0, timeout,
             f"{queue} to drain and the worker to ack all it holds", interval=0.2)


# -- the worker -------------------------------------------------------------------------
def settings_for(vhost: str, state_path: Path, **settings: Any) -> Settings:
    """The worker's settings for an in-process run against ``vhost``."""
    values: dict[str, Any] = {**TEST_SETTINGS, **settings}
    return Settings(AMQP_URL=amqp_url(vhost), state_path=state_path, **values)


def worker_env(url: str, state_path: Path, settings: Mapping[str, object] | None = None, *,
               defaults: Mapping[str, object] = TEST_SETTINGS) -> dict[str, str]:
    """The environment of ``inbox-rules run``: settings (by field name) only from here,
    ``defaults`` then ``settings``, none inherited."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("INBOX_RULES_") and k != "AMQP_URL"}
    env.update(AMQP_URL=url, INBOX_RULES_STATE_PATH=str(state_path))
    for name, value in {**defaults, **(settings or {})}.items():
        env[f"INBOX_RULES_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """``inbox-rules run`` (or ``command``) as a subprocess: start, stop, SIGKILL,
    pause, restart; its resources from /proc. Every run appends to one log file;
    ``log()`` is everything it said so far."""

    def __init__(self, env: dict[str, str], log: Path, args: tuple[str, ...] = (), *,
                 command: tuple[str, ...] = WORKER_COMMAND, name: str = "worker") -> None:
        self.env = env
        self.args = args
        self.command = command
        self.name = name
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.paused = False
        self._log_offset = 0

    @classmethod
    def in_vhost(cls, vhost: str, directory: Path, **settings: object) -> WorkerProcess:
        """The worker on ``vhost`` with the test settings, its state file and log in
        ``directory`` (kept across restarts)."""
        env = worker_env(amqp_url(vhost), directory / "state.sqlite3", settings)
        return cls(env, directory / "worker.log")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        assert not self.alive(), "already running"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen([*self.command, *self.args], cwd=REPO,
                                            env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1
        self.paused = False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def assert_alive(self, grace: float = 0.0) -> None:
        """Fails, with the log's tail, unless running. ``grace``: a process seen to
        misbehave (its port refused) may be on its way out; wait that long for its
        exit and last words (a traceback) first."""
        if grace and self.process is not None:
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        if not self.alive():
            status = self.process.returncode if self.process is not None else "never started"
            raise AssertionError(f"{self.name} exited ({status}): {self.log_tail()}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until this run has declared its topology (it is about to consume)."""
        wait_for(lambda: READY_LINE in self.log(self._log_offset), timeout,
                 "the worker to connect", alive=self)

    def reconnects(self) -> int:
        """Times a run connected again after its first connection (log lines, all runs)."""
        return self.log().count(READY_LINE) - self.starts

    def kill(self) -> None:
        """SIGKILL: a crash at whatever it was doing."""
        self.assert_alive()
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(10) == -signal.SIGKILL
        self.kills += 1

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` (SIGTERM: finish the batch in hand, ack, exit) and wait; the exit
        status (negative: killed by that signal). Not gone in time: killed, and fails."""
        assert self.process is not None
        if self.process.poll() is None:
            if self.paused and sig != signal.SIGKILL:
                self.resume()
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.name} did not exit within {timeout:.0f} s "
                                 f"of signal {sig}: {self.log_tail()}") from None

    def pause(self) -> None:
        """SIGSTOP: the process hangs (no heartbeat, no acks) until :meth:`resume`."""
        self.assert_alive()
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def ensure_dead(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.ensure_dead()

    def status_kib(self, key: str) -> int:
        """A ``/proc/<pid>/status`` figure in KiB: ``VmRSS`` now, ``VmHWM`` the peak."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {key} line for pid {self.pid}")

    def rss_kib(self) -> int:
        """Resident set size now (VmRSS), KiB."""
        return self.status_kib("VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (immune to other load, unlike wall time)."""
        return process_cpu_seconds(self.pid)

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


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_cpu_seconds() -> float | None:
    """CPU time of the local RabbitMQ (its Erlang VM, beam.smp) so far; None when it is
    not a local process this user can read. Benchmarks show what a program costs the
    broker: on a 2-core machine the broker's share bounds throughput too."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if "(beam.smp)" in stat.read_text():
                return process_cpu_seconds(int(stat.parent.name))
        except OSError:
            continue
    return None


PROFILE_RATE = 200  # py-spy samples per second


class Profiler:
    """py-spy (``pip install py-spy``) sampling a process without pausing it, idle
    included, into ``raw`` (collapsed stacks, each starting with its thread) until
    :meth:`stop`."""

    def __init__(self, pid: int, raw: Path, rate: int = PROFILE_RATE) -> None:
        spy = Path(sys.executable).with_name("py-spy")
        command = [str(spy) if spy.exists() else "py-spy", "record", "--pid", str(pid),
                   "--idle", "--threads", "--nonblocking", "--rate", str(rate), "--format", "raw",
                   "-o", str(raw)]
        try:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            raise SystemExit("profiling needs py-spy: pip install py-spy") from None

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        self.process.wait(60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _build_worker(settings: Settings, rules_dir: Path | None,
                  ) -> tuple[Worker, Callable[[], None]]:
    """The in-process worker, and what to call once it has stopped: the one place that
    knows how the worker is put together."""
    from worker.rule_versions import keep_directory
    from worker.service import Worker
    from worker.store.sqlite import SqliteStore

    store = SqliteStore(settings.state_path)
    return Worker(settings, keep_directory(store, rules_dir), store), store.close


class ThreadWorker:
    """The worker in process on its own thread (the thread owns the connection):
    ``with ThreadWorker(settings) as worker: ... worker.stats.acked``."""

    def __init__(self, settings: Settings, rules_dir: Path | None = None) -> None:
        self.worker, self._release = _build_worker(settings, rules_dir)
        self.thread = threading.Thread(target=self.worker.run, name="worker", daemon=True)

    def __enter__(self) -> Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *_exc: object) -> None:
        self.worker.request_stop()
        self.thread.join(15)
        self._release()
        assert not self.thread.is_alive(), "worker did not stop"


# -- producing and collecting -----------------------------------------------------------
@dataclass(frozen=True)
class Message:
    routing_key: str
    body: bytes
    properties: pika.BasicProperties = field(default_factory=lambda: PERSISTENT)


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

    broker: Bus
    worker: WorkerProcess
    updates: Collector
    dead: Collector
    state: Path

    def publish(self, events: Iterable[dict[str, Any]]) -> None:
        self.broker.publish_events(events)

    def settle(self, timeout: float = 120.0) -> None:
        settle(self.broker, self.worker, [self.updates, self.dead], timeout)

    def reopen(self) -> None:
        """A fresh broker view, for after a broker restart cut the old one."""
        self.broker.close()
        self.broker = Bus(self.broker.vhost, confirm=True)


@contextmanager
def rig(vhost: str, workdir: Path, *, url: str | None = None, state: Path | None = None,
        settings: dict[str, object] | None = None, args: tuple[str, ...] = ()) -> Iterator[Rig]:
    """Collectors first, then the worker, ready to consume; all torn down on leaving.
    ``collector.received`` stays readable afterwards."""
    state = state or workdir / "state.sqlite3"
    # A heartbeat of 5 s, as the reliability suite has always run (a loaded soak box).
    env = worker_env(url or amqp_url(vhost), state, {"heartbeat": 5, **(settings or {})})
    worker = WorkerProcess(env, workdir / "worker.log", args)
    broker = Bus(vhost, confirm=True)
    try:
        with collecting(vhost, broker.updates_queue) as updates, \
                collecting(vhost, broker.topology.dead_letter_queue) as dead, running(worker):
            worker.wait_ready()
            the_rig = Rig(broker, worker, updates, dead, state)
            try:
                yield the_rig
            finally:
                broker = the_rig.broker
    finally:
        broker.close()


def settle(broker: Bus, worker: WorkerProcess, collectors: Iterable[Collector],
           timeout: float = 120.0) -> None:
    """Until the input queue is empty with nothing unacked, then stop the worker
    cleanly (exit status 0) and wait until every collector has all there is."""
    wait_for(broker.drained, timeout, "the worker to consume and ack every event",
             interval=0.5, alive=worker)
    status = worker.stop()
    assert status == 0, f"worker exit status {status}: {worker.log_tail()}"
    # Its connection is gone: anything it left unacked would be ready again.
    assert broker.ready(broker.topology.events_queue) == 0, \
        "the worker left events unacknowledged"
    for collector in collectors:
        def collected(c: Collector = collector) -> bool:
            return broker.ready(c.queue) == 0 and c.quiet_for(0.5)

        wait_for(collected, 60, f"{collector.queue} to be collected", interval=0.2)


# -- the network ------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now (bound on port 0 and released): for a
    subprocess that must be told its port up front, as the worker's HTTP server is.
    Another process could take it in between; on this machine that is a rare failure
    that says so (the worker logs that it cannot bind), never a wrong result."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """``GET http://127.0.0.1:<port><path>``: (status, body). Any status is an answer
    (a 503 is not an exception, unlike urllib); a refused connection raises OSError."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


class _Pipe:
    """One proxied connection: the client's socket, the broker's, a pump thread per
    direction. Whichever side ends first shuts both down (which wakes the other pump
    out of ``recv`` or ``sendall``); the last pump out closes the sockets."""

    def __init__(self, client: socket.socket, upstream: socket.socket, chunk: int,
                 on_closed: Callable[[_Pipe], None]) -> None:
        self._sockets = (client, upstream)
        self._chunk = chunk
        self._on_closed = on_closed
        self._lock = threading.Lock()
        self._running = 2
        self._threads = [threading.Thread(target=self._pump, args=(src, dst), daemon=True,
                                          name=f"tcp-proxy-{direction}")
                         for src, dst, direction in ((client, upstream, "up"),
                                                     (upstream, client, "down"))]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        # Blocking sendall is the back-pressure: at most one chunk per direction is ever
        # held here, however fast one side writes.
        try:
            while data := source.recv(self._chunk):
                sink.sendall(data)
        except OSError:
            pass  # cut, reset by a peer, or shut down by the other pump: all mean "end"
        finally:
            self.shut()
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                for sock in self._sockets:
                    sock.close()
                self._on_closed(self)

    def shut(self) -> None:
        """End both directions now (idempotent; the pumps close the sockets)."""
        for sock in self._sockets:
            with suppress(OSError):  # already shut, or closed by the last pump
                sock.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)


class TcpProxy:
    """A TCP proxy on 127.0.0.1 (a free port) in front of the broker: the worker's
    network, which a test cuts and restores while the shared broker stays up.

    ``url(vhost)`` is the worker's AMQP_URL through it. :meth:`cut` closes every
    proxied connection and refuses new ones (accepted, then reset: the client sees its
    connection fail, as with a broker that is gone) until :meth:`restore`.
    :meth:`close` (or leaving ``with``) stops it: listener, connections and threads.

    Bounded: at most ``max_connections`` at once (others are refused), two daemon
    threads and one ``chunk`` of buffered bytes per direction each, plus the accept
    thread, which polls its stop flag every ``ACCEPT_POLL`` seconds.
    """

    ACCEPT_POLL = 0.1

    def __init__(self, upstream: tuple[str, int] = BROKER, *, max_connections: int = 16,
                 chunk: int = 65536) -> None:
        self.upstream = upstream
        self.max_connections = max_connections
        self.chunk = chunk
        self.accepted = 0  # connections proxied, ever
        self.refused = 0  # connections refused (cut, full, or upstream unreachable)
        self._pipes: set[_Pipe] = set()
        self._lock = threading.Lock()
        self._open = threading.Event()
        self._open.set()
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(self.ACCEPT_POLL)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy",
                                        daemon=True)
        self._thread.start()

    def url(self, vhost: str, user: str = "guest", password: str = "guest") -> str:
        """``vhost``'s AMQP URL through this proxy."""
        return amqp_url(vhost, user, password, port=self.port)

    @property
    def connections(self) -> int:
        """Connections proxied right now."""
        with self._lock:
            return len(self._pipes)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            self._take(client)

    def _take(self, client: socket.socket) -> None:
        client.settimeout(None)  # accepted sockets inherit the listener's timeout
        with self._lock:
            full = len(self._pipes) >= self.max_connections
        if not self._open.is_set() or full or self._stopping.is_set():
            self._refuse(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5.0)
        except OSError:
            self._refuse(client)
            return
        upstream.settimeout(None)
        pipe = _Pipe(client, upstream, self.chunk, self._forget)
        with self._lock:
            self._pipes.add(pipe)
            self.accepted += 1
        pipe.start()
        if not self._open.is_set():  # cut() ran while this one was being connected
            pipe.shut()

    def _refuse(self, client: socket.socket) -> None:
        # SO_LINGER 0: close() sends a reset, not an orderly FIN.
        with suppress(OSError):
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        self.refused += 1

    def _forget(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)

    def cut(self, timeout: float = 5.0) -> int:
        """Close every proxied connection and refuse new ones; returns how many were
        open. When it returns, none is left."""
        self._open.clear()
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.shut()
        for pipe in pipes:
            pipe.join(timeout)
        assert self.connections == 0, "a proxied connection outlived the cut"
        return len(pipes)

    def restore(self) -> None:
        """Accept and proxy connections again."""
        self._open.set()

    def close(self) -> None:
        """Stop: no more connections, every open one closed, threads joined (idempotent)."""
        self._stopping.set()
        self.cut()
        self._thread.join(5 * self.ACCEPT_POLL + 5)
        self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def sla_rules(directory: Path, threshold: int) -> Path:
    """The shipped SLA example in ``directory``, overdue after ``threshold`` seconds of
    waiting (a test cannot wait 300), plus a category at 300 s that is never reached."""
    rules = directory / "sla"
    shutil.copytree(default_rules_dir() / "examples" / "sla", rules)
    shutil.rmtree(rules / "cases")
    path = rules / "sla.yaml"
    text = path.read_text().replace("at_least: 300", f"at_least: {threshold}")
    path.write_text(text + """
  very_overdue:
    when:
      all:
        - predicate: open
        - {fact: conversation.waiting_seconds, at_least: 300}
""")
    return rules
