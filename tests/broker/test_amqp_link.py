"""The broker link against RabbitMQ: returns reach the handler before their confirm,
a channel or connection the broker closes never raises out of the ioloop and is
reported once, an existing queue with other arguments gets one clear error, and the
write-coalescing hook carries every frame, in order, in one write per ioloop pass."""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pika
import pytest
from pika.adapters.select_connection import IOLoop

from contracts.trace import trace_context
from tests.amqp_doubles import RecordingHandler
from tests.support.harness import amqp_url, blocking, close_connections, wait_for
from worker.amqp.connection import CoalescingConnection
from worker.amqp.link import TAG_BITS, AmqpLink
from worker.amqp.topology import Topology
from worker.link import Outgoing, Returned
from worker.settings import Settings

pytestmark = pytest.mark.broker

T = TypeVar("T")
WAIT = 15.0


class RecordingConnection(CoalescingConnection):
    """The worker's connection, keeping every chunk it hands to the transport."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.emitted: list[bytes] = []
        super().__init__(*args, **kwargs)
        CONNECTIONS.append(self)

    def _adapter_emit_data(self, data: bytes) -> None:
        self.emitted.append(data)
        super()._adapter_emit_data(data)


CONNECTIONS: list[RecordingConnection] = []


class LinkRunner:
    """An AmqpLink on its own ioloop thread, as the worker runs it."""

    def __init__(self, vhost: str, tmp_path: Path, handler: RecordingHandler,
                 **settings: Any) -> None:
        self.settings = Settings(AMQP_URL=amqp_url(vhost), state_path=tmp_path / "unused",
                                 reconnect_max_delay=0.3, heartbeat=4, **settings)
        self.topology = Topology.from_settings(self.settings)
        self.handler = handler
        self.ioloop = IOLoop()
        self.link = AmqpLink(self.settings, self.topology, handler, self.ioloop,
                             connection_factory=RecordingConnection)
        self.thread = threading.Thread(target=self._run, name="link", daemon=True)

    def _run(self) -> None:
        self.link.start()
        try:
            self.ioloop.start()
        finally:
            self.ioloop.close()

    def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the link's thread and return its result."""
        done = threading.Event()
        box: list[T] = []

        def run() -> None:
            box.append(function())
            done.set()

        self.ioloop.add_callback_threadsafe(run)
        assert done.wait(WAIT), "the ioloop did not run the call"
        return box[0]

    def stop(self) -> None:
        if self.thread.is_alive():
            self.ioloop.add_callback_threadsafe(self.link.close)
            self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the link did not stop"


@contextmanager
def running(vhost: str, tmp_path: Path, handler: RecordingHandler,
            **settings: Any) -> Iterator[LinkRunner]:
    CONNECTIONS.clear()
    runner = LinkRunner(vhost, tmp_path, handler, **settings)
    runner.thread.start()
    try:
        yield runner
    finally:
        runner.stop()


def dead_letter(n: int, **fields: Any) -> Outgoing:
    """A message to the dead-letter exchange, which routes to the DLQ."""
    return Outgoing("chat.events.dlq.exchange", "event", b"dead letter %d" % n,
                    message_id=f"dead-{n}", **fields)


def update_nobody_wants(n: int) -> Outgoing:
    """An update no queue is bound for: the broker returns it."""
    return Outgoing("inbox.categories", "acc-1.ag-1", b"update %d" % n, message_id=f"u-{n}")


def confirmed_through(handler: RecordingHandler, sequence: int) -> bool:
    return any(kind == "confirm" and payload[0] >= sequence and payload[2]
               for kind, payload in handler.events)


def frames(chunk: bytes) -> list[tuple[int, bytes]]:
    """The AMQP frames of a chunk as (type, payload); the chunk must hold whole frames."""
    if chunk.startswith(b"AMQP"):
        chunk = chunk[8:]
    found: list[tuple[int, bytes]] = []
    while chunk:
        kind, _channel, size = struct.unpack(">BHI", chunk[:7])
        assert chunk[7 + size] == 0xCE, "frame end marker"
        found.append((kind, chunk[7:7 + size]))
        chunk = chunk[8 + size:]
    return found


BASIC_PUBLISH = struct.pack(">HH", 60, 40)


def test_a_return_reaches_the_handler_before_the_confirm_of_its_publish(
        vhost: str, tmp_path: Path) -> None:
    handler = RecordingHandler()
    sequences: list[int | None] = []

    def publish_three() -> None:
        sequences.extend(runner.link.publish(message) for message in (
            dead_letter(1), update_nobody_wants(2),
            dead_letter(3, persistent=False, type="snapshot.reply", correlation_id="c-3",
                        headers={"x-error": "bad"}, content_type="text/plain")))

    handler.on_ready_do.append(publish_three)
    with running(vhost, tmp_path, handler) as runner:
        handler.wait(lambda: confirmed_through(handler, 3), WAIT, "three confirms")
    assert sequences == [1, 2, 3]

    returns = [i for i, (kind, _) in enumerate(handler.events) if kind == "returned"]
    assert [handler.events[i][1] for i in returns] == [
        Returned("inbox.categories", "acc-1.ag-1", "u-2", "NO_ROUTE")]
    confirm_of_2 = next(i for i, (kind, payload) in enumerate(handler.events)
                        if kind == "confirm" and payload[0] >= 2)
    assert returns[0] < confirm_of_2, handler.events

    with blocking(vhost) as channel:
        got = [channel.basic_get("chat.events.dlq", auto_ack=True) for _ in range(2)]
    (_m1, first, body1), (_m2, second, body2) = got
    assert (body1, body2) == (b"dead letter 1", b"dead letter 3")
    assert (first.delivery_mode, first.message_id, first.app_id, first.content_type) == \
        (2, "dead-1", "inbox-rules", "application/json")
    assert (second.delivery_mode, second.type, second.correlation_id, second.headers,
            second.content_type) == (None, "snapshot.reply", "c-3", {"x-error": "bad"},
                                     "text/plain")


def test_a_channel_the_broker_closes_is_never_published_on(vhost: str,
                                                           tmp_path: Path) -> None:
    """A publish to a missing exchange makes the broker close the channel. Publishes
    and acks keep coming on a timer (as a driver's would): they return None / do
    nothing while the link is down, nothing raises, the loss is reported once, and
    the link comes back."""
    handler = RecordingHandler()
    results: list[int | None] = []

    def tick() -> None:
        results.append(runner.link.publish(dead_letter(len(results))))
        runner.link.ack(1 << TAG_BITS | 1, multiple=True)
        if handler.count("ready") < 2:
            runner.link.call_later(0.002, tick)

    def first_ready() -> None:
        if handler.count("ready") == 1:
            results.append(runner.link.publish(Outgoing("no-such-exchange", "k", b"x",
                                                        message_id="lost")))
            tick()

    handler.on_ready_do.append(first_ready)
    with running(vhost, tmp_path, handler) as runner:
        handler.wait(lambda: handler.count("ready") == 2, WAIT, "the link to come back")
        assert runner.thread.is_alive()
        after = runner.call(lambda: runner.link.publish(dead_letter(99)))

    kinds = [kind for kind in handler.kinds() if kind in ("ready", "lost")]
    assert kinds[:3] == ["ready", "lost", "ready"]
    assert results[0] == 1 and None in results
    down = results.index(None)
    assert all(isinstance(r, int) for r in results[:down])
    assert all(r is None for r in results[down:-1]), "down until the link is back"
    assert after is not None and after <= 2, "confirm numbers restart with the channel"


def test_a_connection_the_broker_closes_is_reported_once_and_comes_back(
        vhost: str, tmp_path: Path) -> None:
    handler = RecordingHandler()
    while_down: list[int | None] = []
    with running(vhost, tmp_path, handler) as runner:
        handler.on_lost_do.append(lambda: while_down.append(
            runner.link.publish(dead_letter(1))))
        handler.wait(lambda: handler.count("ready") == 1, WAIT, "the link")
        assert close_connections(vhost) == 1
        handler.wait(lambda: handler.count("ready") == 2, WAIT, "the link to come back")
        assert runner.call(lambda: runner.link.publish(dead_letter(2))) == 1
    # The second loss is the link's own close at the end.
    assert [k for k in handler.kinds() if k in ("ready", "lost")] == \
        ["ready", "lost", "ready", "lost"]
    assert while_down == [None, None]


def test_an_events_queue_with_the_old_limit_gets_one_clear_error(
        vhost: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Declared by an older worker with x-delivery-limit 20: one error naming the queue,
    both values and the fixes, quiet retries; once the queue is deleted the link gets
    through and declares it with the new limit."""
    caplog.set_level(logging.INFO, logger="worker.amqp")
    old = Topology.from_settings(Settings(AMQP_URL=amqp_url(vhost), state_path=tmp_path,
                                          delivery_limit=20))
    with blocking(vhost) as channel:
        for method, kwargs in old.steps():  # what an older worker declared: no requests
            if kwargs.get("queue") != old.requests_queue and kwargs.get(
                    "exchange") != old.requests_exchange:
                getattr(channel, method)(**kwargs)
    handler = RecordingHandler()
    with running(vhost, tmp_path, handler) as runner:
        wait_for(lambda: runner.link.reconnects >= 3, WAIT, "three attempts")
        assert handler.kinds() == []
        ours = [r for r in caplog.records if r.name == "worker.amqp"]
        errors = [r.getMessage() for r in ours if r.levelno >= logging.ERROR]
        assert [r for r in ours if r.levelno == logging.WARNING] == []
        assert len(errors) == 1, errors
        for needed in (f"queue 'inbox-rules.events' in vhost '{vhost}'",
                       "x-delivery-limit = 20", "x-delivery-limit = 100000",
                       "INBOX_RULES_DELIVERY_LIMIT=20",
                       f"rabbitmqctl delete_queue --vhost {vhost} inbox-rules.events",
                       "docs/delivery-limit.md"):
            assert needed in errors[0]

        with blocking(vhost) as channel:
            channel.queue_delete(old.events_queue)
        handler.wait(lambda: handler.count("ready") == 1, WAIT, "the link after the fix")
    with blocking(vhost) as channel:
        channel.queue_declare(runner.topology.events_queue, durable=True,
                              arguments=runner.topology.events_queue_arguments())


def test_the_publishes_of_one_pass_leave_in_one_write_in_order(vhost: str,
                                                               tmp_path: Path) -> None:
    """The hook on a live connection: 20 publishes made in one callback reach the
    transport as one chunk holding their 60 frames in order, and every byte pika
    counted as sent went through the emitter."""
    handler = RecordingHandler()
    marks: list[int] = []

    def publish_twenty() -> None:
        marks.append(len(CONNECTIONS[-1].emitted))
        for n in range(20):
            runner.link.publish(dead_letter(n))

    handler.on_ready_do.append(publish_twenty)
    with running(vhost, tmp_path, handler) as runner:
        handler.wait(lambda: confirmed_through(handler, 20), WAIT, "20 confirms")
        connection = CONNECTIONS[-1]
        sent, emitted = runner.call(lambda: (connection.bytes_sent,
                                             b"".join(connection.emitted)))
    assert len(CONNECTIONS) == 1
    assert sent == len(emitted), "every frame went through the hook, none stayed behind"

    chunk = connection.emitted[marks[0]]
    parsed = frames(chunk)
    assert [kind for kind, _ in parsed] == [1, 2, 3] * 20
    assert all(payload.startswith(BASIC_PUBLISH) for kind, payload in parsed if kind == 1)
    assert [payload for kind, payload in parsed if kind == 3] == \
        [b"dead letter %d" % n for n in range(20)]
    for other in connection.emitted:
        frames(other)  # every chunk holds whole frames


def test_frames_sent_as_the_link_closes_are_not_lost(vhost: str, tmp_path: Path) -> None:
    """Publishes queued in the same pass as the close still leave before it."""
    handler = RecordingHandler()

    def publish_and_close() -> None:
        for n in range(10):
            runner.link.publish(dead_letter(n))
        runner.link.close()

    handler.on_ready_do.append(publish_and_close)
    with running(vhost, tmp_path, handler) as runner:
        runner.thread.join(WAIT)
        assert not runner.thread.is_alive(), "the link closed and stopped its ioloop"
    assert handler.kinds() == ["ready", "lost"]
    with blocking(vhost) as channel:
        queued = channel.queue_declare("chat.events.dlq", passive=True).method.message_count
    assert queued == 10


@pytest.mark.parametrize("intake", [True, False], ids=["intake", "pika"])
def test_deliveries_reach_the_handler_whole_and_in_order(vhost: str, tmp_path: Path,
                                                         intake: bool) -> None:
    """Every delivery on a live connection comes past pika's frame objects
    (worker/amqp/intake.py), with its body (one over three body frames), headers (a
    trace context among them) and routing key, in queue order, while confirms and
    heartbeats still reach pika; with the intake turned off, pika delivers the same."""
    bodies = [b"event %d" % n for n in range(200)]
    bodies[7] = bytes(range(256)) * 1200  # 300 KiB: three body frames at frame_max 128K
    bodies[9] = b""  # no body frame at all
    headers = [{"n": n} if n % 2 else
               {"n": n, "traceparent": f"00-{n + 1:032x}-00f067aa0ba902b7-01",
                "tracestate": f"rojo=t{n},congo={'c' * n}"} for n in range(len(bodies))]
    handler = RecordingHandler()
    # A size limit above the 300 KiB body: it is kept whole (past the limit it is cut,
    # tests/test_amqp_intake.py).
    with running(vhost, tmp_path, handler, amqp_intake=intake,
                 max_message_bytes=len(bodies[7])) as runner:
        handler.wait(lambda: handler.count("ready") == 1, WAIT, "the link")
        runner.call(lambda: runner.link.consume([runner.topology.events_queue]))
        with blocking(vhost) as channel:
            channel.confirm_delivery()  # unconfirmed, a publish may be lost as we close
            for n, body in enumerate(bodies):
                channel.basic_publish(
                    runner.topology.events_exchange, f"acc-{n % 3}.event", body,
                    pika.BasicProperties(message_id=f"m-{n}", headers=headers[n]))
        handler.wait(lambda: handler.count("delivery") == len(bodies), WAIT,
                     "every delivery")
        runner.call(lambda: runner.link.publish(dead_letter(1)))  # a confirm: pika's
        handler.wait(lambda: confirmed_through(handler, 1), WAIT, "the confirm")
        taken = runner.call(lambda: runner.link.frames_taken)
    deliveries = [payload for kind, payload in handler.events if kind == "delivery"]
    assert [d.body for d in deliveries] == bodies
    assert [d.headers for d in deliveries] == headers
    assert sum(trace_context(d.headers) is not None for d in deliveries) == len(bodies) // 2
    assert [d.properties.message_id for d in deliveries] == [f"m-{n}" for n in
                                                           range(len(bodies))]
    assert [d.routing_key for d in deliveries] == [f"acc-{n % 3}.event"
                                                   for n in range(len(bodies))]
    assert {d.queue for d in deliveries} == {runner.topology.events_queue}
    assert not any(d.redelivered for d in deliveries)
    tags = [d.tag & ((1 << TAG_BITS) - 1) for d in deliveries]
    assert tags == list(range(1, len(bodies) + 1))
    if intake:  # method + header + body frames each; 3 extra body frames, 1 missing
        assert taken == 3 * len(bodies) + 2 - 1, "every delivery came through the intake"
    else:
        assert taken == 0
