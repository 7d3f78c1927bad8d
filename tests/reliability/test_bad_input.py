"""Bad input never stops the worker: fuzzed bad messages between good events.

Every bad message lands in the dead-letter queue with an ``x-error`` reason and its
body byte for byte (up to the size limit: the worker keeps no more); every good event
is processed (checked against the offline replay); the worker process stays up; good
events behind bad ones are not held back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pika
import pytest
from hypothesis import HealthCheck, given, settings

from tests.reliability.bad_input import (
    FRAME_FILLING_HEADERS,
    MAX_BYTES,
    BadMessage,
    bad_message,
    is_bad,
    template,
)
from tests.reliability.scenarios import HELD_BACK, Size, fuzz_run
from tests.support.harness import rig, wait_for
from tests.support.oracle import Oracle, judge
from tests.support.streams import event_stream


@pytest.mark.broker
def test_fuzzed_bad_messages_are_dead_lettered_and_good_ones_flow(
        vhost: str, tmp_path: Path, size: Size) -> None:
    run = fuzz_run(vhost, tmp_path, rounds=size.fuzz_rounds)
    print(run.summary())
    assert run.starts == 1, "the worker process stayed up"
    assert len(run.bad) >= size.fuzz_rounds * 8, "hypothesis generated too little"
    assert set(run.kinds) >= {"invalid-json", "wrong-type", "missing", "unknown-type", "bad-id",
                              "encoding", "oversized", "nested", "huge-number", "content"}
    assert not run.problems, "\n".join(run.problems[:20])
    assert run.verdict is not None
    run.verdict.assert_clean()
    assert "Traceback" not in run.log, run.log[run.log.index("Traceback") - 500:][:3000]


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


@pytest.mark.broker
def test_a_bad_event_whose_headers_fill_a_frame_is_dead_lettered_without_a_reconnect_loop(
        vhost: str, tmp_path: Path) -> None:
    """Found on the issue tracker: the dead letter copied those headers and added
    x-error, its content header no longer fitted the broker's frame_max, the broker
    closed the connection (FRAME_ERROR frame_too_large) and the worker met the same
    message again: 210 reconnects in 20 s, the stream stalled behind it."""
    body = b'{"event_id": "bad-headers", not json'
    good = event_stream(seed=78, count=40, accounts=2)
    oracle = Oracle.replay(good)
    with rig(vhost, tmp_path) as r:
        r.publish(good[:20])
        r.broker.channel.basic_publish("chat.events", "conversation.created", body,
                                       pika.BasicProperties(headers=FRAME_FILLING_HEADERS,
                                                            delivery_mode=2))
        r.publish(good[20:])
        wait_for(lambda: len(r.dead) >= 1 and len(r.updates) >= len(oracle.updates), HELD_BACK,
                 "the bad event dead-lettered and the good ones through; log: "
                 + r.worker.log_tail(3)[-600:])
        r.settle()
    log = r.worker.log()
    assert r.worker.reconnects() == 0 and "FRAME_ERROR" not in log, r.worker.log_tail()
    [dead] = r.dead.received
    headers = dead.properties.headers or {}
    assert dead.body == body and "trace" not in headers
    assert headers.get("x-original-headers-dropped") == "1 header(s), too large"
    assert str(headers.get("x-error")).startswith("invalid JSON")
    judge(oracle, r.updates.received, len(good)).assert_clean()
