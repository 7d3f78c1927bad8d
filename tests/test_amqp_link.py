"""The broker link's state machine without a broker: a hand-driven connection double
(tests/amqp_doubles.py) plays pika's part, so every transition is deterministic.
What pika itself does on the wire is tested against RabbitMQ in
tests/broker/test_amqp_link.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pika
import pika.exceptions
import pytest
from pika.adapters.select_connection import IOLoop

from contracts.ids import TruncatedBody
from tests.amqp_doubles import FakeBroker, FakeChannel, RecordingHandler
from worker.amqp.link import TAG_BITS, AmqpLink
from worker.amqp.properties import outgoing_properties
from worker.amqp.topology import Topology
from worker.link import Delivery, Link, LinkHandler, Outgoing, Returned
from worker.settings import Settings

OLD_LIMIT_REFUSAL = (
    406, "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue "
         "'inbox-rules.events' in vhost 'prod': received '100000' but current is '20'")


QUEUES = ("inbox-rules.events", "inbox-rules.requests")

def update(n: int = 1) -> Outgoing:
    return Outgoing("inbox.categories", "acc-1.ag-1", b'{"n": %d}' % n, message_id=f"u-{n}")


@pytest.fixture
def ioloop() -> Iterator[IOLoop]:
    loop = IOLoop()
    yield loop
    loop.close()


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def link(ioloop: IOLoop, broker: FakeBroker, handler: RecordingHandler,
         tmp_path: Path) -> AmqpLink:
    settings = Settings(AMQP_URL="amqp://guest:guest@127.0.0.1:1/prod",
                        state_path=tmp_path / "unused", reconnect_max_delay=0.001)
    return AmqpLink(settings, Topology.from_settings(settings), handler, ioloop,
                    connection_factory=broker.connect)


def run_due_timers(ioloop: IOLoop) -> None:
    """Run what the link scheduled (reconnects use a tiny backoff here)."""
    time.sleep(0.005)
    ioloop.process_timeouts()


def ready_channel(link: AmqpLink, broker: FakeBroker) -> FakeChannel:
    """Connect (or let the scheduled reconnect run) and open: the link is up."""
    if not broker.connections:
        link.start()
    elif broker.connection.is_closed:
        run_due_timers(link.ioloop)
    return broker.connection.open()


def deliver(channel: FakeChannel, tag: int, headers: dict[str, object] | None = None,
            redelivered: bool = False) -> None:
    assert channel.deliver is not None
    method = SimpleNamespace(delivery_tag=tag, routing_key="conversation.created",
                             redelivered=redelivered, consumer_tag="ctag-1")
    channel.deliver(channel, method, pika.BasicProperties(headers=headers), b"{}")


def test_the_link_and_the_recorder_satisfy_the_seam(link: AmqpLink,
                                                    handler: RecordingHandler) -> None:
    as_link: Link = link
    as_handler: LinkHandler = handler
    assert as_link is link and as_handler is handler


def test_a_link_that_is_not_up_does_nothing_and_says_so(link: AmqpLink, broker: FakeBroker,
                                                         handler: RecordingHandler) -> None:
    link.start()
    assert link.publish(update()) is None
    link.ack(1, multiple=True)
    link.consume(QUEUES)
    link.cancel()
    assert handler.kinds() == ["cancelled"]
    channel = broker.connection.open()
    assert handler.kinds() == ["cancelled", "ready"]
    assert channel.acks == [] and channel.consuming == [] and channel.published == []


def test_a_publish_after_the_broker_closed_the_channel_returns_none(
        link: AmqpLink, broker: FakeBroker, handler: RecordingHandler) -> None:
    """The defect: the channel was never cleared, so a publish already scheduled
    raised ChannelWrongStateError out of the ioloop."""
    channel = ready_channel(link, broker)
    assert link.publish(update(1)) == 1
    channel.close_by_broker(404, "NOT_FOUND - no exchange 'gone' in vhost 'prod'")

    assert link.publish(update(2)) is None
    link.ack(1 << TAG_BITS | 1, multiple=False)
    assert channel.acks == [] and len(channel.published) == 1
    assert broker.connection.is_closing, "a closed channel takes its connection down"
    assert "lost" not in handler.kinds(), "reported when the connection has closed"

    broker.connection.closed(pika.exceptions.ConnectionClosedByClient(200, "Normal shutdown"))
    assert handler.kinds() == ["ready", "lost"]
    assert link.publish(update(3)) is None

    channel = ready_channel(link, broker)
    assert handler.kinds() == ["ready", "lost", "ready"]
    assert link.publish(update(4)) == 1, "confirm numbers restart with the channel"


def test_a_channel_closing_in_pika_before_its_callback_is_not_published_on(
        link: AmqpLink, broker: FakeBroker) -> None:
    channel = ready_channel(link, broker)
    channel.is_open = False  # pika's state changes before the close callback runs
    assert link.publish(update()) is None
    link.ack(1 << TAG_BITS | 1, multiple=True)
    assert channel.published == [] and channel.acks == []


def test_a_lost_connection_is_reported_once(link: AmqpLink, broker: FakeBroker,
                                            handler: RecordingHandler,
                                            caplog: pytest.LogCaptureFixture) -> None:
    ready_channel(link, broker)
    broker.connection.closed(pika.exceptions.StreamLostError("Transport indicated EOF"))
    assert handler.kinds() == ["ready", "lost"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "lost the connection" in caplog.text and "StreamLostError" in caplog.text
    assert link.reconnects == 1


def test_deliveries_carry_headers_properties_and_redelivered(
        link: AmqpLink, broker: FakeBroker, handler: RecordingHandler) -> None:
    channel = ready_channel(link, broker)
    link.consume(QUEUES)
    link.consume(QUEUES)  # queues already consumed are left as they are
    assert channel.consuming == ["inbox-rules.events", "inbox-rules.requests"]
    deliver(channel, 7, headers=None)
    deliver(channel, 8, headers={"x-delivery-count": 2}, redelivered=True)

    first, second = (payload for kind, payload in handler.events if kind == "delivery")
    assert isinstance(first, Delivery) and isinstance(second, Delivery)
    assert (first.headers, first.redelivered, first.body) == ({}, False, b"{}")
    assert first.routing_key == "conversation.created"
    assert (second.headers, second.redelivered) == ({"x-delivery-count": 2}, True)
    assert isinstance(second.properties, pika.BasicProperties)
    assert first.tag < second.tag

    link.ack(second.tag, multiple=True)
    assert channel.acks == [(8, True)]


def test_a_body_over_the_limit_is_kept_only_to_the_limit_on_pikas_road(
        link: AmqpLink, broker: FakeBroker, handler: RecordingHandler) -> None:
    """With the intake off pika hands the body over whole; the link keeps only what
    the intake would have, so the driver's buffers stay bounded either way."""
    channel = ready_channel(link, broker)
    link.consume(QUEUES)
    limit = link.settings.max_message_bytes
    assert channel.deliver is not None
    method = SimpleNamespace(delivery_tag=1, routing_key="conversation.created",
                             redelivered=False, consumer_tag="ctag-1")
    whole = bytes(range(256)) * (limit // 256 * 3)
    channel.deliver(channel, method, pika.BasicProperties(), whole)
    deliver(channel, 2)

    big, small = (payload for kind, payload in handler.events if kind == "delivery")
    assert isinstance(big.body, TruncatedBody)
    assert (big.body, big.body.size) == (whole[:limit], len(whole))
    assert small.body == b"{}" and not isinstance(small.body, TruncatedBody)
    assert link.max_body_bytes == limit, "the intake keeps the same"


def test_an_ack_from_a_lost_channel_never_acks_a_message_of_the_next(
        link: AmqpLink, broker: FakeBroker, handler: RecordingHandler) -> None:
    """Broker tags restart at 1 on every channel: a tag kept across a reconnect would
    ack some other message. The link's tags carry their channel."""
    old = ready_channel(link, broker)
    link.consume(QUEUES)
    deliver(old, 1)
    broker.connection.closed(pika.exceptions.StreamLostError("cut"))
    new = ready_channel(link, broker)
    link.consume(QUEUES)
    deliver(new, 1)
    stale, fresh = (payload.tag for kind, payload in handler.events if kind == "delivery")

    link.ack(stale, multiple=True)
    assert new.acks == []
    link.ack(fresh, multiple=False)
    assert new.acks == [(1, False)]
    assert fresh > stale


def test_every_return_reaches_the_handler(link: AmqpLink, broker: FakeBroker,
                                          handler: RecordingHandler) -> None:
    channel = ready_channel(link, broker)
    method = SimpleNamespace(exchange="chat.events.dlq.exchange", routing_key="event",
                             reply_code=312, reply_text="NO_ROUTE")
    for callback in channel.on_return:
        callback(channel, method, pika.BasicProperties(message_id="dead-1"), b"{}")
    assert handler.events[-1] == ("returned", Returned(
        "chat.events.dlq.exchange", "event", "dead-1", "NO_ROUTE"))


def test_confirms_are_passed_on_with_their_kind(link: AmqpLink, broker: FakeBroker,
                                                handler: RecordingHandler) -> None:
    channel = ready_channel(link, broker)
    assert channel.on_ack_nack is not None
    channel.on_ack_nack(SimpleNamespace(method=pika.spec.Basic.Ack(3, multiple=True)))
    channel.on_ack_nack(SimpleNamespace(method=pika.spec.Basic.Nack(4)))
    assert handler.events[-2:] == [("confirm", (3, True, True)),
                                   ("confirm", (4, False, False))]


def test_outgoing_becomes_pika_properties() -> None:
    persistent = outgoing_properties(Outgoing(
        "inbox.categories", "acc-1.ag-1", b"{}", message_id="u-1", headers={"h": 1},
        type="category.update", correlation_id="c-1"))
    assert (persistent.delivery_mode, persistent.message_id, persistent.headers,
            persistent.content_type, persistent.type, persistent.correlation_id,
            persistent.app_id) == (2, "u-1", {"h": 1}, "application/json",
                                   "category.update", "c-1", "inbox-rules")
    transient = outgoing_properties(Outgoing("", "amq.rabbitmq.reply-to", b"{}",
                                             message_id="r-1", persistent=False))
    assert transient.delivery_mode is None and transient.headers is None


def test_publish_sets_mandatory_and_the_properties(link: AmqpLink,
                                                   broker: FakeBroker) -> None:
    channel = ready_channel(link, broker)
    assert [link.publish(update(1)), link.publish(update(2))] == [1, 2]
    exchange, key, body, properties, mandatory = channel.published[1]
    assert (exchange, key, body, mandatory) == ("inbox.categories", "acc-1.ag-1",
                                                b'{"n": 2}', True)
    assert properties.message_id == "u-2" and properties.delivery_mode == 2


def test_a_refused_declaration_is_logged_once_with_its_fix(
        link: AmqpLink, broker: FakeBroker, handler: RecordingHandler,
        caplog: pytest.LogCaptureFixture) -> None:
    """An events queue declared by an older version with x-delivery-limit 20: one
    clear error naming the queue, both values and the fixes; retries stay quiet."""
    caplog.set_level(logging.DEBUG, logger="worker.amqp")
    broker.refuse["inbox-rules.events"] = OLD_LIMIT_REFUSAL
    link.start()
    for _attempt in range(4):
        broker.connection.open()
        assert broker.connection.is_closing
        broker.connection.closed(pika.exceptions.ConnectionClosedByClient(200, "ok"))
        run_due_timers(link.ioloop)
    assert len(broker.connections) == 5 and link.reconnects == 4
    assert "ready" not in handler.kinds() and "lost" not in handler.kinds()

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert warnings == []
    text = errors[0].getMessage()
    for needed in ("'inbox-rules.events'", "x-delivery-limit = 20", "= 100000",
                   "INBOX_RULES_DELIVERY_LIMIT=20", "rabbitmqctl delete_queue --vhost prod "
                   "inbox-rules.events", "policy", "docs/delivery-limit.md"):
        assert needed in text

    # The operator deleted the old queue: the next attempt gets through.
    del broker.refuse["inbox-rules.events"]
    broker.connection.open()
    assert handler.kinds() == ["ready"]
    # ... and a later refusal is news again.
    broker.refuse["inbox-rules.events"] = OLD_LIMIT_REFUSAL
    broker.connection.closed(pika.exceptions.StreamLostError("cut"))
    run_due_timers(link.ioloop)
    broker.connection.open()
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 2


def test_close_while_up_closes_the_connection_then_stops(
        link: AmqpLink, broker: FakeBroker, handler: RecordingHandler,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ready_channel(link, broker)
    stopped: list[bool] = []
    monkeypatch.setattr(link.ioloop, "stop", lambda: stopped.append(True))
    link.close()
    assert broker.connection.is_closing and stopped == []
    broker.connection.closed(pika.exceptions.ConnectionClosedByClient(200, "Normal shutdown"))
    assert stopped == [True]
    assert handler.kinds() == ["ready", "lost"]
    run_due_timers(link.ioloop)
    assert len(broker.connections) == 1, "no reconnect after close()"


def test_a_broker_alarm_is_reported_while_it_lasts_and_nothing_is_torn_down(
        link: AmqpLink, broker: FakeBroker, handler: RecordingHandler,
        caplog: pytest.LogCaptureFixture) -> None:
    """connection.blocked: the link says why (readiness and the gauge read it), logs
    each transition once, keeps the connection and keeps publishing (the broker holds
    what comes, the driver's window bounds it); connection.unblocked clears it."""
    caplog.set_level(logging.INFO, logger="worker.amqp")
    channel = ready_channel(link, broker)
    assert link.blocked is None
    broker.connection.block("low on memory")
    broker.connection.block("low on memory")  # told again: still one transition
    assert link.blocked == "low on memory"
    assert link.publish(update(1)) == 1 and len(channel.published) == 1
    assert link.ready and not broker.connection.is_closing

    broker.connection.unblock()
    assert link.blocked is None
    broker.connection.unblock()  # nothing to clear
    transitions = [r.getMessage() for r in caplog.records if "blocks" in r.getMessage()
                   or "unblocked" in r.getMessage()]
    assert len(transitions) == 2, transitions
    assert "low on memory" in transitions[0] and "alarm" in transitions[0]
    assert "unblocked" in transitions[1]
    assert handler.kinds() == ["ready"], "nothing lost, nothing to reconnect"


def test_a_blocked_connection_that_closes_takes_its_block_along(
        link: AmqpLink, broker: FakeBroker) -> None:
    ready_channel(link, broker)
    old = broker.connection
    old.block("low on disk")
    old.closed(pika.exceptions.StreamLostError("cut"))
    assert link.blocked is None, "a new connection is blocked only when the broker says so"
    ready_channel(link, broker)
    old.block("low on disk")  # a late word about the old one changes nothing
    assert link.blocked is None
    broker.connection.block("low on disk")
    assert link.blocked == "low on disk"
