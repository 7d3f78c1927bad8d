"""Events in, updates out; bad input dead-lettered while good input keeps flowing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support.harness import Bus, ThreadWorker, settings_for, wait_drained, wait_for
from tests.support.oracle import replay
from tests.support.streams import encode, event_stream
from worker.settings import Settings

pytestmark = pytest.mark.broker

LIMIT = Settings.model_fields["max_message_bytes"].default


def test_events_in_give_the_replayed_updates_out(vhost: str, bus: Bus, tmp_path: Path) -> None:
    events = event_stream(seed=1, count=400)
    expected = replay(events)
    bus.publish_events(events)
    with ThreadWorker(settings_for(vhost, tmp_path / "state.sqlite3")) as worker:
        wait_for(lambda: worker.stats.acked >= len(events), 30, "all events acked")
        wait_drained(bus, bus.topology.events_queue)
        assert worker.link.reconnects == 0, "heartbeats kept the connection up"
    messages = bus.drain("test.updates")
    assert [json.loads(body) for _m, _p, body in messages] == expected
    for method, properties, body in messages:
        update = json.loads(body)
        assert method.routing_key == f"{update['account_id']}.{update['agent_id']}"
        assert properties.message_id == update["update_id"]
        assert properties.content_type == "application/json"
        assert properties.delivery_mode == 2
    assert bus.ready(bus.topology.dead_letter_queue) == 0


def test_bad_messages_go_to_the_dlq_with_the_reason_and_good_ones_flow(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    good = event_stream(seed=2, count=60)
    bad = {
        b"{not json": "invalid JSON",
        b"\xff\xfe not utf-8": "UTF-8",
        json.dumps({**good[1], "event_id": "big", "pad": "x" * 70_000}).encode(): "65536",
        json.dumps({**good[1], "event_id": "odd", "type": "conversation.exploded"}).encode():
            "type",
        json.dumps({k: v for k, v in good[1].items() if k != "account_id"}).encode():
            "account_id",
        json.dumps({**good[1], "event_id": "dot", "account_id": "acc.1"}).encode():
            "account_id",
    }
    bodies = encode(good[:30]) + list(bad) + encode(good[30:])
    bus.publish(bodies)
    with ThreadWorker(settings_for(vhost, tmp_path / "state.sqlite3")) as worker:
        wait_for(lambda: worker.stats.acked >= len(bodies), 30, "all messages acked")
        wait_drained(bus, bus.topology.events_queue)
        dead = bus.drain(bus.topology.dead_letter_queue)
        assert worker.link.ready, "the worker kept running"
    # A body over the limit is not kept whole: its dead letter carries its first bytes.
    assert [body for _m, _p, body in dead] == [body[:LIMIT] for body in bad]
    for (_method, properties, body), fragment in zip(dead, bad.values(), strict=True):
        reason = properties.headers["x-error"]
        assert fragment in reason, (body[:40], reason)
    assert bus.updates() == replay(good)


@pytest.mark.parametrize("intake", [True, False], ids=["intake", "pika"])
def test_a_5_mb_message_is_dead_lettered_cut_to_the_limit_and_good_events_flow(
        vhost: str, bus: Bus, tmp_path: Path, intake: bool) -> None:
    """The worker keeps no more of a body than INBOX_RULES_MAX_MESSAGE_BYTES (on pika's
    own road too, INBOX_RULES_AMQP_INTAKE=false): the dead letter says how large the
    message was and that it carries only its first bytes; the events behind it go on."""
    good = event_stream(seed=3, count=80)
    huge = json.dumps({**good[0], "event_id": "huge", "pad": "x" * 5_000_000}).encode()
    bodies = [*encode(good[:40]), huge, *encode(good[40:])]
    bus.publish(bodies)
    settings = settings_for(vhost, tmp_path / "state.sqlite3", amqp_intake=intake)
    with ThreadWorker(settings) as worker:
        wait_for(lambda: worker.stats.acked >= len(bodies), 60, "all messages acked")
        wait_drained(bus, bus.topology.events_queue)
        assert worker.link.ready and worker.link.reconnects == 0, "the worker kept running"
    [(_method, properties, body)] = bus.drain(bus.topology.dead_letter_queue)
    assert body == huge[:LIMIT]
    assert properties.headers["x-error"] == (
        f"message too large: {len(huge)} bytes exceeds the limit of {LIMIT}; the body was "
        f"not kept: this message carries only its first {LIMIT} bytes")
    assert bus.updates() == replay(good)


def test_a_stop_at_any_point_of_start_up_ends_cleanly(vhost: str, tmp_path: Path) -> None:
    for delay in (0.0, 0.002, 0.005, 0.01, 0.03):
        runner = ThreadWorker(settings_for(vhost, tmp_path / "state.sqlite3"))
        runner.thread.start()
        time.sleep(delay)
        runner.__exit__(None, None, None)  # asserts the thread ended
