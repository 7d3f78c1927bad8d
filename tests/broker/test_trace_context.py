"""Trace context through a running worker (docs/contract.md#trace-context): events and
requests published with and without a W3C ``traceparent``; every update an event
causes carries its trace context, a dead letter and a reply theirs, an invalid one is
not copied, and the JSON log line about a dead-lettered event names its trace id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.support.harness import rig
from tests.support.streams import event_stream

pytestmark = pytest.mark.broker

PARENT_ID = "00f067aa0ba902b7"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


def traceparent(n: int) -> str:
    return f"00-{n + 1:032x}-{PARENT_ID}-01"


def properties(headers: dict[str, Any] | None, **fields: Any) -> pika.BasicProperties:
    return pika.BasicProperties(delivery_mode=2, headers=headers, **fields)


@pytest.mark.parametrize("intake", [True, False], ids=["intake", "pika"])
def test_events_and_requests_pass_their_trace_context_on(vhost: str, tmp_path: Path,
                                                         intake: bool) -> None:
    """On both roads a delivery takes in (the intake, or pika's own with
    INBOX_RULES_AMQP_INTAKE=false)."""
    events = event_stream(seed=97, count=60, accounts=2)
    sent: dict[str, dict[str, Any]] = {}
    for n, event in enumerate(events):
        if n % 3 == 0:
            sent[event["event_id"]] = {"traceparent": traceparent(n), "tracestate": TRACESTATE}
        elif n % 3 == 1:  # uppercase: not valid, so not copied
            sent[event["event_id"]] = {"traceparent": traceparent(n).upper()}
    bad_traced = {"traceparent": traceparent(1000), "tracestate": TRACESTATE, "hop": 3}
    with rig(vhost, tmp_path, settings={"log_format": "json", "amqp_intake": intake}) as r:
        channel = r.broker.channel
        replies = channel.queue_declare("", exclusive=True).method.queue
        for event in events:
            r.broker.send(event["type"], json.dumps(event).encode(),
                          properties(sent.get(event["event_id"])))
        r.broker.send("event", b"{traced, not json", properties(bad_traced))
        r.broker.send("event", b"{untraced, not json", properties({"hop": 4}))
        ask = json.dumps({"account_id": events[0]["account_id"], "agent_id": "ag-1"}).encode()
        for correlation_id, headers in (("traced", {"traceparent": traceparent(2000)}),
                                        ("untraced", None)):
            channel.basic_publish(r.broker.topology.requests_exchange, "snapshot", ask,
                                  properties(headers, reply_to=replies,
                                             correlation_id=correlation_id))
        r.settle()
        answered = {p.correlation_id: p.headers for _m, p, _b in r.broker.drain(replies)}

    traced = 0
    for update in r.updates.received:
        cause = json.loads(update.body)["cause_event_id"]
        if cause in sent and sent[cause]["traceparent"].islower():
            assert update.properties.headers == sent[cause], cause
            traced += 1
        else:
            assert not update.properties.headers, cause
    assert traced >= 10 and traced < len(r.updates.received)

    dead = {d.body: d.properties.headers for d in r.dead.received}
    assert {k: v for k, v in dead[b"{traced, not json"].items() if k != "x-error"} == bad_traced
    assert "traceparent" not in dead[b"{untraced, not json"]
    assert answered == {"traced": {"traceparent": traceparent(2000)}, "untraced": None}

    lines = [json.loads(line) for line in r.worker.log().splitlines()]
    dead_lettering = [line["context"].get("trace_id") for line in lines
                      if line["message"].startswith("dead-lettering")]
    assert dead_lettering == [traceparent(1000)[3:35], None]
