"""Test-side broker helpers: a vhost per test, publishing, draining, queue depths,
and the worker run in a thread or as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika

from worker.rulebook import load_rules
from worker.service import Worker
from worker.settings import Settings
from worker.store import SqliteStore
from worker.topology import Topology

UPDATES_QUEUE = "test.updates"
HEARTBEAT = 4
REPO = Path(__file__).resolve().parents[2]


def rabbitmqctl(*args: str, wait_for_app: float = 60.0) -> str:
    """Run rabbitmqctl; a missing or failing broker fails the test, never skips it.
    While the broker application restarts (another test may restart it), wait."""
    deadline = time.monotonic() + wait_for_app
    while True:
        result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True,
                                text=True, timeout=60, check=False)
        if result.returncode == 0:
            return result.stdout
        if "app to be running" not in result.stderr or time.monotonic() > deadline:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
        time.sleep(1)


def amqp_url(vhost: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


def settings_for(vhost: str, state_path: Path) -> Settings:
    # A short heartbeat: a worker that blocked its ioloop too long would be cut off.
    return Settings(AMQP_URL=amqp_url(vhost), state_path=state_path, max_batch_delay=0.01,
                    reconnect_max_delay=1.0, heartbeat=HEARTBEAT)


def settings_env(vhost: str, state_path: Path) -> dict[str, str]:
    return {**os.environ, "AMQP_URL": amqp_url(vhost),
            "INBOX_RULES_STATE_PATH": str(state_path),
            "INBOX_RULES_MAX_BATCH_DELAY": "0.01", "INBOX_RULES_RECONNECT_MAX_DELAY": "1",
            "INBOX_RULES_HEARTBEAT": str(HEARTBEAT)}


class Bus:
    """A blocking connection to the test vhost with the topology declared and a
    durable queue collecting every update, bound before anything is published."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self.topology = Topology.from_settings(settings_for(vhost, Path("unused")))
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost)))
        self.channel = self.connection.channel()
        self.topology.declare_blocking(self.channel)
        self.channel.queue_declare(UPDATES_QUEUE, durable=True)
        self.channel.queue_bind(UPDATES_QUEUE, self.topology.updates_exchange, "#")

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()

    def publish(self, bodies: list[bytes], routing_key: str | Callable[[bytes], str] = "event",
                ) -> None:
        for body in bodies:
            key = routing_key(body) if callable(routing_key) else routing_key
            self.channel.basic_publish(self.topology.events_exchange, key, body,
                                       pika.BasicProperties(delivery_mode=2))

    def publish_events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.channel.basic_publish(self.topology.events_exchange, event["type"],
                                       json.dumps(event).encode(),
                                       pika.BasicProperties(delivery_mode=2))

    def ready(self, queue: str) -> int:
        """Ready (not unacked) messages in ``queue``."""
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def drain(self, queue: str) -> list[tuple[Any, Any, bytes]]:
        """Every message now in ``queue`` (method, properties, body), acknowledged.
        (A consumer, not basic.get: quorum queues with a single active consumer
        refuse basic.get.)"""
        messages: list[tuple[Any, Any, bytes]] = []
        for method, properties, body in self.channel.consume(queue, auto_ack=True,
                                                              inactivity_timeout=0.3):
            if method is None:
                break
            messages.append((method, properties, body))
        self.channel.cancel()
        return messages

    def updates(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _m, _p, body in self.drain(UPDATES_QUEUE)]


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_drained(bus: Bus, queue: str, timeout: float = 60.0) -> None:
    """Until ``queue`` has no ready message. (rabbitmqctl's counts lag by seconds; a
    passive declare is live.) Messages a consumer still holds are not counted: stop
    the worker, which finishes them, then check ``ready`` again."""
    wait_for(lambda: bus.ready(queue) == 0, timeout, f"{queue} to drain", interval=0.05)


def close_connections(vhost: str) -> int:
    """Close every client connection of ``vhost`` (the broker-side view of a network
    cut); returns how many."""
    closed = 0
    for line in rabbitmqctl("list_connections", "--no-table-headers", "vhost",
                            "pid").splitlines():
        name, pid = line.split("\t")
        if name == vhost:
            rabbitmqctl("close_connection", pid, "test: connection cut")
            closed += 1
    return closed


class ThreadWorker:
    """The worker in-process on its own thread (the thread owns the connection)."""

    def __init__(self, settings: Settings, rules_dir: Path | None = None) -> None:
        self.store = SqliteStore(settings.state_path)
        self.worker = Worker(settings, load_rules(rules_dir), self.store)
        self.thread = threading.Thread(target=self.worker.run, name="worker", daemon=True)

    def __enter__(self) -> Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *_exc: object) -> None:
        self.worker.request_stop()
        self.thread.join(15)
        self.store.close()
        assert not self.thread.is_alive(), "worker did not stop"


class ProcessWorker:
    """``python -m worker.cli run`` as a subprocess, configured by environment
    variables only, keeping its state file and log across restarts."""

    def __init__(self, vhost: str, directory: Path) -> None:
        self.env = settings_env(vhost, directory / "state.sqlite3")
        self.log = directory / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "worker.cli", "run"],
                                            cwd=REPO, env=self.env, stdout=out, stderr=out)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig``; the exit status (negative: killed by that signal)."""
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout)

    def __enter__(self) -> ProcessWorker:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
