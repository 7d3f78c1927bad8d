"""Downstream can trust the stream: per-agent seq without gaps through SIGKILLs, and a
snapshot at the end that equals the inbox rebuilt from every update."""

from __future__ import annotations

import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import pytest

from contracts.requests import SnapshotReply
from tests.support.harness import Bus, WorkerProcess, amqp_url, wait_for
from tests.support.streams import encode, event_stream

pytestmark = pytest.mark.broker


def _snapshot(vhost: str, account_id: str, agent_id: str, timeout: float = 20.0,
              ) -> SnapshotReply:
    """Ask over direct reply-to, as a downstream service would."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost)))
    try:
        channel = connection.channel()
        replies: list[bytes] = []
        correlation = str(uuid.uuid4())

        def on_reply(_ch: Any, _method: Any, properties: Any, body: bytes) -> None:
            if properties.correlation_id == correlation:
                replies.append(body)

        channel.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)
        channel.basic_publish("inbox.requests", "snapshot", json.dumps(
            {"account_id": account_id, "agent_id": agent_id}).encode(),
            pika.BasicProperties(reply_to="amq.rabbitmq.reply-to",
                                 correlation_id=correlation))
        deadline = time.monotonic() + timeout
        while not replies and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.2)
        assert replies, f"no snapshot reply within {timeout} s"
        return SnapshotReply.model_validate_json(replies[0])
    finally:
        connection.close()


def test_seq_has_no_gaps_through_sigkills_and_a_final_snapshot_matches(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    events = event_stream(seed=31, count=1500, accounts=6)
    worker = WorkerProcess.in_vhost(vhost, tmp_path, batch_size=40)
    rng = random.Random(31)
    bodies = encode(events)
    worker.start()
    try:
        sent = 0
        for _ in range(4):  # publish in slices, SIGKILL the worker in the middle of each
            chunk = bodies[sent:sent + len(bodies) // 4 + 1]
            bus.publish(chunk)
            sent += len(chunk)
            time.sleep(rng.uniform(0.2, 0.6))
            worker.kill()
            worker.start()
        bus.publish(bodies[sent:])
        wait_for(bus.drained, 90, "every event acked", alive=worker)
        updates = bus.updates()
        last: dict[tuple[str, str], dict[str, Any]] = {}
        by_id: dict[str, str] = {}
        seqs: dict[tuple[str, str], list[int]] = {}
        inboxes: dict[tuple[str, str], dict[str, list[str]]] = {}
        for update in updates:
            body = json.dumps(update, sort_keys=True)
            assert by_id.setdefault(update["update_id"], body) == body, "an id reused"
        unique = {u["update_id"]: u for u in updates}  # duplicates dropped by id
        for update in sorted(unique.values(), key=lambda u: u["seq"]):
            key = (update["account_id"], update["agent_id"])
            seqs.setdefault(key, []).append(update["seq"])
            inboxes.setdefault(key, {})[update["conversation_id"]] = update["categories"]
            last[key] = update
        assert worker.kills == 4 and len(seqs) > 5
        for key, numbers in seqs.items():
            assert sorted(numbers) == list(range(1, len(numbers) + 1)), f"gap or reuse: {key}"
        for (account_id, agent_id), inbox in sorted(inboxes.items())[:8]:
            reply = _snapshot(vhost, account_id, agent_id)
            assert reply.seq == max(seqs[(account_id, agent_id)])
            assert reply.conversations == {c: cats for c, cats in sorted(inbox.items())
                                           if cats}
            assert reply.counts == last[(account_id, agent_id)]["counts"]
    finally:
        worker.stop()
