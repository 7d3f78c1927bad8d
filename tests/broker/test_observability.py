"""Operators can see and trust it: what ``/metrics``, ``/readyz``, ``/healthz`` and the
JSON log of a real worker (a subprocess, its HTTP server on a free port) say, checked
against what the test did to it.

- the counters against what was sent: every message consumed, every bad one
  dead-lettered under the family of the way it was broken, every update the offline
  replay publishes counted, and the rules version in force;
- readiness against the network: a :class:`TcpProxy` between the worker and the broker
  is cut (the shared broker itself is never restarted): ``/readyz`` goes 503 and comes
  back, ``/healthz`` never moves;
- the log through a reconnect at DEBUG: every line one JSON object, no password.

The monitor copies the driver's counters into the metrics once a second: values are
waited for, never slept for.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import (
    Bus,
    TcpProxy,
    WorkerProcess,
    amqp_url,
    cut_worker_connections,
    free_port,
    http_get,
    memory_alarm,
    rig,
    running,
    vhost_user,
    wait_for,
    worker_env,
)
from tests.support.oracle import Oracle, judge
from tests.support.streams import event_stream
from worker.observability import DEAD_LETTER_FAMILIES
from worker.settings import Settings

pytestmark = pytest.mark.broker

METRICS_TICK = 1.0  # worker.monitor.TICK_SECONDS: how stale a scrape may be
MAX_BYTES = Settings.model_fields["max_message_bytes"].default


# -- scraping ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Scrape:
    """One ``/metrics`` answer, parsed by the Prometheus client's own parser (so a
    malformed exposition fails here, as it would fail Prometheus)."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def of(cls, text: str) -> Scrape:
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(samples)

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name{labels}``; a missing series fails with what there is."""
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no sample {name}{labels} in /metrics: " \
            f"{sorted(n for n, _ in self.samples if n.startswith('inbox_rules'))}"
        return self.samples[key]

    def labelled(self, name: str, label: str) -> dict[str, float]:
        """Every sample ``name`` by the value of its ``label``."""
        return {dict(labels)[label]: value for (n, labels), value in self.samples.items()
                if n == name and label in dict(labels)}


def scrape(port: int) -> Scrape:
    status, body = http_get(port, "/metrics")
    assert status == 200, f"/metrics answered {status}: {body[:500]}"
    return Scrape.of(body)


def wait_http(port: int, worker: WorkerProcess, timeout: float = 30.0) -> None:
    """Until the worker's HTTP server answers at all."""
    def answers() -> bool:
        try:
            http_get(port, "/healthz", timeout=1.0)
        except OSError:
            return False
        return True

    wait_for(answers, timeout, f"the worker's HTTP server on port {port}", interval=0.1,
             alive=worker)


def http_settings(port: int) -> dict[str, object]:
    """HTTP on ``port`` of 127.0.0.1 only (the harness turns it off by default)."""
    return {"http_port": port, "http_host": "127.0.0.1"}


@contextmanager
def worker_on(url: str, tmp_path: Path, port: int, *args: str,
              **settings: object) -> Iterator[WorkerProcess]:
    """The worker on ``url`` with HTTP on ``port``, started and serving."""
    env = worker_env(url, tmp_path / "state.sqlite3", {**http_settings(port), **settings})
    worker = WorkerProcess(env, tmp_path / "worker.log", args)
    with running(worker):
        wait_http(port, worker)
        yield worker


# -- bad input, by dead-letter family ---------------------------------------------------
def _event(event_id: str, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event_id": event_id, "type": "conversation.created",
                             "account_id": "acc-bad", "conversation_id": "c-1",
                             "occurred_at": "2026-11-24T10:00:00Z", "sequence": 1,
                             "data": {}}
    event.update(changes)
    return event


def _oversized(event_id: str) -> bytes:
    body = json.dumps(_event(event_id, padding="x" * MAX_BYTES)).encode()
    assert len(body) > MAX_BYTES
    return body


# Each bad message with the family its dead letter must be counted under: the family
# is what the test broke, not what the worker's classifier says.
BAD: list[tuple[str, bytes]] = [
    ("invalid_json", b"not json at all"),
    ("invalid_json", b'{"event_id": "bad-1", "type": "conversation.created",'),
    ("invalid_json", b""),
    ("too_large", _oversized("bad-2")),
    ("too_large", _oversized("bad-3")),
    ("schema", json.dumps(_event("bad-4", type="conversation.exploded")).encode()),
    ("schema", json.dumps(_event("bad-5", type=42)).encode()),
    ("schema", json.dumps(_event("bad-6", sequence="seven")).encode()),
    ("schema", b'["an", "array"]'),
    ("not_utf8", b'{"event_id": "bad-\xff7", "type": "conversation.created"}'),
    ("not_utf8", json.dumps(_event("caf\u00e9-8"), ensure_ascii=False).encode("latin-1")),
]


def test_metrics_count_what_was_sent(vhost: str, bus: Bus, tmp_path: Path) -> None:
    events = event_stream(seed=71, count=400, accounts=4)
    oracle = Oracle.replay(events)
    assert oracle.updates, "a stream that publishes nothing proves nothing"
    versions = {update["rules_version"] for update in oracle.updates}
    assert len(versions) == 1
    # Bad messages between the good events, every family in the first half already.
    step = len(events) // (len(BAD) + 1)
    for index, (_family, body) in enumerate(BAD):
        bus.publish_events(events[index * step:(index + 1) * step])
        bus.send("bad", body)
    bus.publish_events(events[len(BAD) * step:])
    sent = len(events) + len(BAD)

    port = free_port()
    with worker_on(amqp_url(vhost), tmp_path, port) as worker:
        wait_for(bus.drained, 60, "the worker to consume and ack everything", interval=0.3,
                 alive=worker)
        # consumed == sent with nothing held, in one tick: every batch had finished
        # when the monitor read the counters, so all of them are final.
        def settled() -> bool:
            now = scrape(port)
            return (now.value("inbox_rules_events_consumed_total") >= sent
                    and now.value("inbox_rules_unacked_events") == 0)

        wait_for(settled, 10 * METRICS_TICK, "the metrics to catch up", interval=0.2,
                 alive=worker)
        metrics = scrape(port)
        assert worker.stop() == 0, worker.log_tail()

    assert metrics.value("inbox_rules_events_consumed_total") == sent
    assert metrics.value("inbox_rules_redeliveries_total") == 0
    dead = metrics.labelled("inbox_rules_dead_letters_total", "reason")
    assert set(dead) == set(DEAD_LETTER_FAMILIES), "every family exported, from 0"
    expected = Counter(family for family, _body in BAD)
    assert {family: n for family, n in dead.items() if n} == expected
    assert sum(dead.values()) == len(BAD) == len(bus.drain(bus.topology.dead_letter_queue))
    assert metrics.value("inbox_rules_updates_published_total") == len(oracle.updates)
    assert len(bus.updates()) == len(oracle.updates), "downstream got what was counted"
    assert metrics.value("inbox_rules_commits_total") > 0
    assert metrics.value("inbox_rules_failed_batches_total") == 0
    assert metrics.value("inbox_rules_rules_info", version=versions.pop()) == 1
    assert metrics.value("inbox_rules_batch_duration_seconds_count") > 0
    assert metrics.value("inbox_rules_healthy", check="ready") == 1


def test_readiness_follows_the_broker_link_and_liveness_does_not(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    events = event_stream(seed=72, count=300, accounts=3)
    port = free_port()
    checks: list[tuple[str, int, str]] = []  # every probe answer, in order

    def probe(path: str) -> tuple[int, str]:
        try:
            status, body = http_get(port, path)
        except OSError:
            worker.assert_alive(grace=5)  # a refused probe: most likely the worker died
            raise
        checks.append((path, status, body.strip()))
        return status, body

    def ready() -> bool:
        assert probe("/healthz")[0] == 200, checks[-1]
        return probe("/readyz")[0] == 200

    with TcpProxy() as proxy, worker_on(proxy.url(vhost), tmp_path, port) as worker:
        wait_for(ready, 30, "/readyz to say 200", interval=0.1, alive=worker)
        assert proxy.connections == 1, "the worker reaches the broker through the proxy"
        bus.publish_events(events[:150])
        wait_for(bus.drained, 30, "the first events", interval=0.2, alive=worker)

        assert proxy.cut() == 1
        wait_for(lambda: not ready(), 10 * METRICS_TICK, "/readyz to say 503",
                 interval=0.1, alive=worker)
        assert checks[-1][1:] == (503, "not connected to the broker"), checks[-1]
        assert scrape(port).value("inbox_rules_healthy", check="ready") == 0
        # Several reconnect attempts refused (reconnect_max_delay is 1 s in tests):
        # not ready throughout, alive throughout.
        until = time.monotonic() + 4 * METRICS_TICK
        while time.monotonic() < until:
            assert not ready(), checks[-1]
            time.sleep(0.2)
        assert proxy.refused >= 2, "the worker kept trying"

        proxy.restore()
        wait_for(ready, 30, "/readyz to say 200 again", interval=0.1, alive=worker)
        assert proxy.connections == 1
        bus.publish_events(events[150:])  # and it works again
        wait_for(bus.drained, 30, "the rest of the events", interval=0.2, alive=worker)
        wait_for(lambda: scrape(port).value("inbox_rules_events_consumed_total")
                 >= len(events), 10 * METRICS_TICK, "the metrics", alive=worker)
        assert scrape(port).value("inbox_rules_healthy", check="live") == 1
        assert worker.stop() == 0, worker.log_tail()

    health = [status for path, status, _body in checks if path == "/healthz"]
    readiness = [status for path, status, _body in checks if path == "/readyz"]
    assert set(health) == {200}, "/healthz never moved"
    # From the first 200 on (start-up may answer 503 first): down once, up once.
    since_ready = readiness[readiness.index(200):]
    flips = [b for a, b in itertools.pairwise(since_ready) if a != b]
    assert flips == [503, 200], f"/readyz went 200 then {flips}"


def test_a_broker_memory_alarm_makes_readyz_503_and_then_everything_goes_out(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    """The broker blocks the worker's connection (connection.blocked) while its memory
    alarm lasts: nothing gets published, and /readyz, the gauge and the log say why.
    Once the alarm clears the worker resumes by itself on the same connection: every
    update goes out and /readyz is 200 again."""
    events = event_stream(seed=73, count=300, accounts=3)
    oracle = Oracle.replay(events)
    assert oracle.updates, "a stream that publishes nothing proves nothing"
    bus.publish_events(events)  # before the alarm: it would block the test's publishes too
    wait_for(lambda: bus.ready(bus.topology.events_queue) == len(events), 30,
             "the events in the queue", interval=0.2)
    port = free_port()
    blocked: list[tuple[int, str]] = []
    # The worker starts under the alarm; the alarm ends first (ExitStack.close) while the
    # worker goes on, and is cleared on any failure too.
    with ExitStack() as alarm:
        alarm.enter_context(memory_alarm())
        with worker_on(amqp_url(vhost), tmp_path, port) as worker:
            def readyz_blocked() -> bool:
                status, body = http_get(port, "/readyz")
                if "blocks publishing" not in body:
                    return False
                blocked.append((status, body.strip()))
                return scrape(port).value("inbox_rules_broker_blocked") == 1

            wait_for(readyz_blocked, 30, "/readyz to name the broker alarm", interval=0.2,
                     alive=worker)
            assert bus.ready(bus.updates_queue) == 0, "nothing goes out while blocked"
            assert scrape(port).value("inbox_rules_healthy", check="live") == 1

            alarm.close()  # the watermark as it was: the alarm clears
            wait_for(lambda: http_get(port, "/readyz")[0] == 200, 30,
                     "/readyz to say 200 again", interval=0.2, alive=worker)
            wait_for(bus.drained, 60, "every event acked", interval=0.3, alive=worker)
            wait_for(lambda: scrape(port).value("inbox_rules_broker_blocked") == 0,
                     10 * METRICS_TICK, "the gauge to clear", alive=worker)
            assert worker.stop() == 0, worker.log_tail()

    status, reason = blocked[-1]
    assert status == 503
    assert reason == ("the broker blocks publishing (low on memory): a broker memory or "
                      "disk alarm; updates wait until it clears")
    assert bus.updates() == oracle.updates, "every update out once the alarm cleared"
    log = worker.log()
    assert "the broker blocks publishing on this connection (low on memory" in log
    assert "the broker unblocked this connection" in log
    assert worker.reconnects() == 0, "the connection was never torn down"


def test_json_logs_at_debug_through_a_reconnect_carry_no_password(
        vhost: str, tmp_path: Path) -> None:
    user = f"inbox-rules-{secrets.token_hex(4)}"
    # Characters a URL must escape, and a quote that JSON must escape: a leak hidden
    # by either encoding is still found (the decoded lines are searched too).
    password = f'Pw-{secrets.token_hex(8)}@:/%"'
    leaks = {password, quote(password, safe=""), quote(password), json.dumps(password)[1:-1]}
    events = event_stream(seed=73, count=300, accounts=3)
    port = free_port()
    with vhost_user(vhost, user, password), \
            rig(vhost, tmp_path, url=amqp_url(vhost, user, password),
                settings={**http_settings(port), "log_format": "json"},
                args=("--log-level", "DEBUG")) as r:
        r.publish(events[:150])
        r.broker.send("bad", b"not json")  # a WARNING with an event's context
        wait_for(r.broker.drained, 30, "the first events", interval=0.2, alive=r.worker)
        scrape(port)  # the HTTP server's own DEBUG line
        assert cut_worker_connections(vhost) == 1  # reconnecting logs the URL again
        wait_for(lambda: r.worker.reconnects() >= 1, 30, "a reconnect", alive=r.worker)
        r.publish(events[150:])
        r.settle()
    judge(Oracle.replay(events), r.updates.received, len(events)).assert_clean()

    text = r.worker.log()
    lines = text.splitlines()
    assert lines, "the worker logged nothing"
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"log line {number} is not JSON: {line[:300]!r}") from None
        assert isinstance(record, dict), f"log line {number} is not an object: {line[:300]}"
        missing = {"time", "level", "logger", "message"} - set(record)
        assert not missing, f"log line {number} lacks {missing}: {line[:300]}"
        assert record["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}, line
        records.append(record)
    levels = Counter(record["level"] for record in records)
    loggers = {record["logger"] for record in records}
    assert levels["DEBUG"] and levels["WARNING"], f"DEBUG and WARNING lines expected: {levels}"
    assert any(name.startswith("pika") for name in loggers), "pika's own DEBUG lines"
    assert any(f"{user}:***@" in record["message"] for record in records), \
        "the masked URL names the user"
    # The raw text, and every string decoded (a JSON escape cannot hide a leak).
    for where in (text, *_strings(records)):
        found = [secret for secret in leaks if secret in where]
        assert not found, f"a password reached the log: {where[:300]!r}"


def _strings(value: object) -> Iterator[str]:
    """Every string inside decoded JSON (keys included), unescaped."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
