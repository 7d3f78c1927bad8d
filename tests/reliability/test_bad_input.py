"""Bad input never stops the worker: fuzzed bad messages between good events.

Every bad message lands in the dead-letter queue with an ``x-error`` reason and its
body byte for byte; every good event is processed (checked against the offline
replay); the worker process stays up; good events behind bad ones are not held back.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from contracts import parse_event
from tests.broker.bus import wait_for
from tests.broker.streams import event_stream
from tests.reliability.bad_input import MAX_BYTES, BadMessage, bad_message, is_bad, template
from tests.reliability.conftest import Size
from tests.reliability.harness import (
    Broker,
    Collector,
    Oracle,
    Received,
    WorkerProcess,
    judge,
    rig,
)
from worker.domain.inbox import Inbox
from worker.rulebook import load_rules

FUZZ_ID = "fuzz-id"
# A good event behind bad ones must come out within this (seconds, a loaded CI box).
HELD_BACK = 15.0


@dataclass
class FuzzRun:
    """One worker, many rounds of bad messages interleaved with good events."""

    broker: Broker
    worker: WorkerProcess
    updates: Collector
    dead: Collector
    oracle: Inbox = field(default_factory=lambda: Inbox(load_rules(None)))
    good: list[dict[str, Any]] = field(default_factory=list)
    expected_updates: list[dict[str, Any]] = field(default_factory=list)
    bad: dict[str, BadMessage] = field(default_factory=dict)
    kinds: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    rounds: int = 0

    def round(self, bad: list[BadMessage]) -> None:
        """Publish ``bad`` shuffled among as many good events; wait until every bad
        one is dead-lettered and every good one's updates are out."""
        self.rounds += 1
        number = self.rounds
        good = event_stream(seed=100_000 + number, count=max(2, len(bad)), accounts=2)
        rng = random.Random(number)
        slots: list[dict[str, Any] | BadMessage] = [*good, *bad]
        order = sorted(range(len(slots)), key=lambda i: rng.random())
        # Good events keep their relative order (one conversation's events are ordered).
        good_iter = iter(good)
        mixed = [slots[i] if isinstance(slots[i], BadMessage) else next(good_iter) for i in order]
        for event in good:
            for update in self.oracle.handle(parse_event(json.dumps(event).encode())):
                self.expected_updates.append(json.loads(update.model_dump_json()))
        self.good.extend(good)
        channel, exchange = self.broker.channel, self.broker.topology.events_exchange
        started = time.monotonic()
        for index, item in enumerate(mixed):
            if isinstance(item, BadMessage):
                fuzz_id = f"{number}-{index}"
                self.bad[fuzz_id] = item
                self.kinds[item.kind.split("/")[0]] += 1
                channel.basic_publish(exchange, item.routing_key, item.body, pika.BasicProperties(
                    content_type=item.content_type, content_encoding=item.content_encoding,
                    headers={**item.headers, FUZZ_ID: fuzz_id}, delivery_mode=2))
            else:
                channel.basic_publish(exchange, item["type"], json.dumps(item).encode(),
                                      pika.BasicProperties(delivery_mode=2))

        def through() -> bool:
            assert self.worker.alive(), f"worker died: {self.worker.log_tail()}"
            return (len(self.dead) >= len(self.bad)
                    and len(self.updates) >= len(self.expected_updates))

        wait_for(through, HELD_BACK, f"round {number}: {len(bad)} bad and {len(good)} good "
                 f"message(s) through the worker; log: {self.worker.log_tail(5)[-2000:]}")
        self.latencies.append(time.monotonic() - started)


def check_dead_letters(sent: dict[str, BadMessage], dead: list[Received]) -> list[str]:
    """Each bad message exactly once, body untouched, its headers kept, a reason added."""
    problems = []
    seen: Counter[str] = Counter()
    for message in dead:
        headers = message.properties.headers or {}
        fuzz_id = headers.get(FUZZ_ID)
        if fuzz_id not in sent:
            problems.append(f"a good event was dead-lettered: {message.body[:200]!r} "
                            f"({headers.get('x-error')!r}, x-death {headers.get('x-death')})")
            continue
        seen[fuzz_id] += 1
        original = sent[fuzz_id]
        reason = headers.get("x-error")
        if message.body != original.body:
            problems.append(f"{fuzz_id} ({original.kind}): body changed")
        if not isinstance(reason, str) or not reason:
            problems.append(f"{fuzz_id} ({original.kind}): no x-error reason: {headers}")
        elif reason.startswith("worker error"):
            problems.append(f"{fuzz_id} ({original.kind}): handled as a worker bug: {reason}")
        kept = {k: headers.get(k) for k in original.headers}
        if kept != original.headers:
            problems.append(f"{fuzz_id}: headers {original.headers} came back as {kept}")
        if message.properties.content_type != original.content_type:
            problems.append(f"{fuzz_id}: content type {message.properties.content_type}")
    missing = sorted(set(sent) - set(seen))
    if missing:
        problems.append(f"{len(missing)} bad message(s) not dead-lettered, e.g. "
                        f"{[(m, sent[m].kind) for m in missing[:5]]}")
    twice = [m for m, n in seen.items() if n > 1]
    if twice:
        problems.append(f"dead-lettered more than once: {twice[:5]}")
    return problems


@pytest.mark.broker
def test_fuzzed_bad_messages_are_dead_lettered_and_good_ones_flow(
        vhost: str, tmp_path: Path, size: Size) -> None:
    with rig(vhost, tmp_path, settings={"max_message_bytes": MAX_BYTES}) as r:
        run = FuzzRun(r.broker, r.worker, r.updates, r.dead)

        @settings(max_examples=size.fuzz_rounds, derandomize=True, database=None,
                  deadline=None, phases=[Phase.generate], print_blob=False,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(bad_message(), min_size=8, max_size=30))
        def one_round(bad: list[BadMessage]) -> None:
            run.round(bad)

        one_round()
        r.settle()
        assert r.worker.starts == 1
    total = len(run.bad)
    print(f"{total} bad messages in {run.rounds} rounds between {len(run.good)} good events: "
          f"{dict(run.kinds)}; slowest round {max(run.latencies):.2f} s")
    assert total >= size.fuzz_rounds * 8, "hypothesis generated too little"
    assert set(run.kinds) >= {"invalid-json", "wrong-type", "missing", "unknown-type", "bad-id",
                              "encoding", "oversized", "nested", "huge-number", "content"}
    problems = check_dead_letters(run.bad, r.dead.received)
    assert not problems, "\n".join(problems[:20])
    verdict = judge(Oracle(run.expected_updates, run.oracle.state), r.updates.received,
                    len(run.good), r.state)
    verdict.assert_clean()
    log = r.worker.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:3000]


def test_the_bad_messages_are_bad_by_the_contract() -> None:
    """The strategies' own check, without a broker: a sample of each family."""
    @settings(max_examples=300, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(bad_message())
    def bad(message: BadMessage) -> None:
        assert is_bad(message.body)
        assert len(message.body) <= MAX_BYTES or message.kind == "oversized" \
            or message.kind.startswith("nested")

    bad()


@pytest.mark.broker
def test_a_bad_event_with_thousands_of_wrong_fields_does_not_take_good_ones_down(
        vhost: str, tmp_path: Path) -> None:
    """Found by this suite: the reason names every wrong field, so 20,000 bad agent ids
    make a 1.5 MB ``x-error`` header; the dead letter's header frame then exceeds the
    broker's frame_max (128 KiB), the broker closes the connection, the batch comes back,
    and so on until the queue's delivery limit dead-letters the good events of the
    batch too (reason delivery_limit, never processed)."""
    bad = template("account.updated")
    bad["data"]["agents"] = [""] * 20_000
    body = json.dumps(bad, separators=(",", ":")).encode()
    assert len(body) <= MAX_BYTES and is_bad(body)
    good = event_stream(seed=77, count=40, accounts=2)
    oracle = Oracle.replay(good)
    with rig(vhost, tmp_path) as r:
        r.publish(good[:20])
        r.broker.channel.basic_publish("chat.events", "account.updated", body)
        r.publish(good[20:])
        wait_for(lambda: len(r.dead) >= 1 and len(r.updates) >= len(oracle.updates), HELD_BACK,
                 "the bad event dead-lettered and the good ones through; log: "
                 + r.worker.log_tail(3)[-600:])
        r.settle()
    received, dead_letters = r.updates.received, r.dead.received
    frame_errors = r.worker.log().count("FRAME_ERROR")
    good_dead = [(m.body[:60], [d.get("reason") for d in (m.properties.headers or {})
                                .get("x-death", [])]) for m in dead_letters if m.body != body]
    assert not good_dead, (f"{len(good_dead)} good event(s) dead-lettered, e.g. {good_dead[:2]};"
                           f" the worker's connection was closed {frame_errors} time(s) with "
                           "FRAME_ERROR")
    assert [m.body for m in dead_letters] == [body]
    reason = (dead_letters[0].properties.headers or {}).get("x-error")
    assert isinstance(reason, str) and reason.startswith("data.agents.0")
    judge(oracle, received, len(good)).assert_clean()
    assert frame_errors == 0
