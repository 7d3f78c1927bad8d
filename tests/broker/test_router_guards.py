"""The router of the several-workers mode against what an operator or upstream can do
to it: a partition queue deleted under it, headers that fill a whole frame.

Real ``inbox-rules run`` subprocesses in a fresh vhost on a fresh database (both
dropped after), through the fleet of tests/support/several.py."""

from __future__ import annotations

import signal
import time
from contextlib import closing
from pathlib import Path

import pika
import pytest

from tests.reliability.bad_input import FRAME_FILLING_HEADERS
from tests.support.harness import PERSISTENT, Bus, collecting, wait_for
from tests.support.oracle import Oracle, judge
from tests.support.several import (
    Member,
    active_consumer,
    fleet,
    owned_partitions,
    partitioned_topology,
    settled,
)
from tests.support.streams import encode, event_stream
from worker.cluster.partitions import partition_of

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

PARTITIONS = 4


def _no_connection_loss(member: Member) -> None:
    log = member.process.log()
    assert member.process.reconnects() == 0 and "FRAME_ERROR" not in log, (
        f"{member.name} lost its connection: {member.process.log_tail()}")


def test_messages_whose_headers_fill_a_frame_neither_loop_the_router_nor_stop_the_stream(
        vhost: str, database: str, tmp_path: Path) -> None:
    """A good event with such headers is routed without them (its updates arrive), a
    bad one is dead-lettered without them; the worker never loses its connection.
    Copied with the router's own headers added, either went over frame_max: the
    broker closed the connection (FRAME_ERROR) on every attempt."""
    stream = event_stream(seed=42, count=60, accounts=3)
    oracle = Oracle.replay(stream)
    bodies = encode(stream)
    heavy = 30
    bad = b'{"event_id": "bad-headers", not json'
    topology = partitioned_topology(PARTITIONS)
    bus = Bus(vhost, confirm=True)
    with closing(bus), collecting(vhost, bus.updates_queue) as updates, \
            collecting(vhost, topology.dead_letter_queue) as dead, \
            fleet(vhost, database, tmp_path, {"partitions": PARTITIONS}) as workers:
        worker = workers.add("w1")
        workers.wait_dealt(PARTITIONS)
        filling = pika.BasicProperties(headers=FRAME_FILLING_HEADERS, delivery_mode=2)
        for index, (event, body) in enumerate(zip(stream, bodies, strict=True)):
            bus.channel.basic_publish(topology.events_exchange, event["type"], body,
                                      filling if index == heavy else PERSISTENT)
            if index == heavy:
                bus.channel.basic_publish(topology.events_exchange, "conversation.created",
                                          bad, filling)
        wait_for(lambda: len(updates) >= len(oracle.updates) and len(dead) >= 1
                 and settled(bus, topology), 60,
                 "every update and the dead letter", interval=0.5, alive=worker.process)
        _no_connection_loss(worker)
    judge(oracle, updates.received, len(stream)).assert_clean()
    [dead_letter] = dead.received
    headers = dead_letter.properties.headers or {}
    assert dead_letter.body == bad and "trace" not in headers
    assert headers.get("x-original-headers-dropped") == "1 header(s), too large"
    assert str(headers.get("x-error")).startswith("invalid JSON")


def test_events_routed_to_a_deleted_partition_queue_wait_for_it_instead_of_being_lost(
        vhost: str, database: str, tmp_path: Path) -> None:
    """An operator deletes a partition queue while its owner is hung (SIGSTOP: it
    cannot declare the queue again yet). The router's copies come back unroutable; it
    keeps the events and routes them again until the owner, resumed, reconnects and
    declares its queue: every update arrives, nothing is dead-lettered."""
    topology = partitioned_topology(PARTITIONS)
    bus = Bus(vhost, confirm=True)
    with closing(bus), collecting(vhost, bus.updates_queue) as updates, \
            collecting(vhost, topology.dead_letter_queue) as dead, \
            fleet(vhost, database, tmp_path, {"partitions": PARTITIONS}) as workers:
        for name in ("w1", "w2"):
            workers.add(name)
        shares = workers.wait_dealt(PARTITIONS)
        members = workers.running()
        router = active_consumer(vhost, topology.events_queue, members)
        assert router is not None, "no active router"
        owner = next(m for m in members if m is not router)
        partition = min(shares[owner.name])
        assert partition in owned_partitions(owner.metrics())
        stream = [e for e in event_stream(seed=43, count=400, accounts=12)
                  if partition_of(e["account_id"], PARTITIONS) == partition]
        assert len(stream) >= 20, "the seed gives the owner's partition some events"
        oracle = Oracle.replay(stream)
        owner.process.pause()
        try:
            bus.channel.queue_delete(topology.partition_queue(partition))
            bus.publish_events(stream)
            wait_for(lambda: bus.ready(topology.events_queue) == 0, 30,
                     "the router to take the events")
            time.sleep(2.0)  # several rounds of routing, returned and retried
        finally:
            owner.process.resume()
        wait_for(lambda: len(updates) >= len(oracle.updates) and settled(bus, topology), 60,
                 "every update of the deleted partition's events", interval=0.5,
                 alive=router.process)
        assert "unroutable" in router.process.log()
        assert owner.process.stop(signal.SIGTERM) == 0
    judge(oracle, updates.received, len(stream)).assert_clean()
    assert not dead.received
