"""RabbitMQ 3.x counts a return caused by a lost consumer connection towards a quorum
queue's ``x-delivery-limit``: an event the worker holds across ``limit + 1`` reconnects
is dead-lettered although nothing is wrong with it. These tests show it on the broker
at hand, and that the worker's own queue (declared from its default settings) keeps an
event across far more reconnects than a storm would bring."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.support.harness import amqp_url, blocking, close_connections
from worker.amqp.topology import Topology
from worker.settings import Settings

RECONNECTS = 25  # well past the old default limit of 20
DELIVERY_WAIT = 2.0  # seconds a consumer waits for the message before calling it gone

pytestmark = pytest.mark.broker


def hold_and_drop(vhost: str, queue: str, cut: bool) -> dict[str, Any] | None:
    """Consume one message without acking it, then lose the connection: the broker
    cuts it (``cut``) or the client closes it; either way the unacked message goes
    back to the queue. The message's headers, or None if none came."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost)))
    try:
        channel = connection.channel()
        received: list[dict[str, Any]] = []
        channel.basic_consume(queue, lambda _ch, _m, properties, _b: received.append(
            dict(properties.headers or {})), auto_ack=False)
        deadline = time.monotonic() + DELIVERY_WAIT
        while not received and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.05)
        if received and cut:
            assert close_connections(vhost) == 1
            with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
                connection.process_data_events(time_limit=DELIVERY_WAIT)
        return received[0] if received else None
    finally:
        if connection.is_open:
            connection.close()


def depth(vhost: str, queue: str) -> int:
    with blocking(vhost) as channel:
        return int(channel.queue_declare(queue, passive=True).method.message_count)


def reconnect_until_gone(vhost: str, queue: str, times: int, cut: bool = False,
                         ) -> list[int]:
    """Deliver the queue's one message to ``times`` consumers in turn, each losing
    its connection; the ``x-delivery-count`` each saw (0 for the first delivery),
    stopping early once the message no longer comes."""
    counts: list[int] = []
    for _ in range(times):
        headers = hold_and_drop(vhost, queue, cut)
        if headers is None:
            break
        counts.append(int(headers.get("x-delivery-count", 0)))
    return counts


@pytest.mark.parametrize(("limit", "cut"), [(3, True), (20, False)],
                         ids=["limit-3-cut-by-broker", "limit-20-closed-by-client"])
def test_lost_connections_count_towards_the_delivery_limit(vhost: str, limit: int,
                                                           cut: bool) -> None:
    """A good message, never rejected, is dead-lettered after ``limit + 1`` lost
    consumer connections, whether the broker cut them or the client closed them
    (20 was the worker's default)."""
    with blocking(vhost) as channel:
        channel.exchange_declare("dlx", "fanout", durable=True)
        channel.queue_declare("dead", durable=True)
        channel.queue_bind("dead", "dlx")
        channel.queue_declare("limited", durable=True, arguments={
            "x-queue-type": "quorum", "x-delivery-limit": limit,
            "x-dead-letter-exchange": "dlx"})
        channel.basic_publish("", "limited", b"a good event",
                              pika.BasicProperties(delivery_mode=2))

    counts = reconnect_until_gone(vhost, "limited", limit + 2, cut)

    assert counts == list(range(limit + 1)), "delivered limit+1 times, then gone"
    assert depth(vhost, "limited") == 0
    with blocking(vhost) as channel:
        method, properties, body = channel.basic_get("dead", auto_ack=True)
    assert method is not None and body == b"a good event"
    deaths = (properties.headers or {}).get("x-death", [])
    assert [death["reason"] for death in deaths] == ["delivery_limit"]


def test_the_worker_queue_keeps_an_event_across_reconnects(vhost: str,
                                                           tmp_path: Path) -> None:
    """The worker's topology, from its default settings, in the test vhost: the same
    event survives RECONNECTS lost connections and is still there to process."""
    settings = Settings(AMQP_URL=amqp_url(vhost), state_path=tmp_path / "unused")
    topology = Topology.from_settings(settings)
    assert topology.delivery_limit > 1000
    with blocking(vhost) as channel:
        topology.declare_blocking(channel)
        channel.basic_publish(topology.events_exchange, "conversation.created",
                              b"a good event", pika.BasicProperties(delivery_mode=2))

    started = time.monotonic()
    counts = reconnect_until_gone(vhost, topology.events_queue, RECONNECTS)
    elapsed = time.monotonic() - started

    assert counts == list(range(RECONNECTS)), "delivered every time, counted every time"
    assert depth(vhost, topology.events_queue) == 1
    assert depth(vhost, topology.dead_letter_queue) == 0
    assert elapsed < 15, f"{RECONNECTS} reconnects took {elapsed:.1f} s"
