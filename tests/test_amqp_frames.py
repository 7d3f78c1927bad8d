"""A publish marshalled in one piece is, byte for byte, what pika's own frame objects
marshal for it (``pika.frame`` Method, Header and Body, split as
``Connection._send_message`` splits a body) - on every kind of message the worker
sends, across body frame boundaries, and on any channel."""

from __future__ import annotations

import math

import pika
import pytest
from pika import frame, spec

from worker.amqp.frames import FRAME_OVERHEAD, PublishFrames, short_string
from worker.amqp.properties import encoded_properties, outgoing_properties
from worker.link import Outgoing

FRAME_MAX = 131_072  # RabbitMQ's default
BODY_MAX = FRAME_MAX - FRAME_OVERHEAD

MESSAGES = [
    # A category update (the hot path).
    Outgoing("inbox.categories", "acc-1.ag-1", b'{"update_id":"u"}',
             "8c4e5bb0f35a4a7c9e0d7b1a2f6c3d90", type="category.update"),
    # A dead letter: headers, the original's properties, a body of its own.
    Outgoing("chat.events.dlx", "conversation.created", b"\x00not json\xff",
             "m-1", headers={"x-error": "unreadable: ...", "n": 7}, content_type=None,
             timestamp=1_700_000_000, app_id="upstream"),
    # A reply: transient, to the default exchange.
    Outgoing("", "amq.rabbitmq.reply-to.g2dkAA", b"{}", None, persistent=False,
             type="snapshot.reply", correlation_id="corr-7"),
    # An empty body (a tick): no body frame at all.
    Outgoing("", "inbox-rules.events", b"", None, headers={"x-inbox-rules-tick": 1},
             persistent=False, content_type=None, type="inbox-rules.tick"),
    # Bodies at, just over and well over one frame.
    Outgoing("x", "k", b"a" * BODY_MAX, "exact"),
    Outgoing("x", "k", b"b" * (BODY_MAX + 1), "one more"),
    Outgoing("x", "k", bytes(range(256)) * 1500, "several frames"),
    # Names in UTF-8.
    Outgoing("échange", "clé.ü", "ö".encode(), "é"),
]


def pikas_frames(channel: int, message: Outgoing, mandatory: bool = True) -> bytes:
    """What ``Channel.basic_publish`` makes pika marshal for ``message``."""
    method = spec.Basic.Publish(exchange=message.exchange, routing_key=message.routing_key,
                                mandatory=mandatory)
    body = message.body
    parts = [frame.Method(channel, method).marshal(),
             frame.Header(channel, len(body), outgoing_properties(message)).marshal()]
    for chunk in range(math.ceil(len(body) / BODY_MAX)):
        parts.append(frame.Body(channel, body[chunk * BODY_MAX:(chunk + 1) * BODY_MAX])
                     .marshal())
    return b"".join(parts)


@pytest.mark.parametrize("channel", [1, 7, 65_535])
@pytest.mark.parametrize("message", MESSAGES, ids=range(len(MESSAGES)))
def test_the_frames_are_pikas_own(channel: int, message: Outgoing) -> None:
    data, count = PublishFrames().encode(channel, message.exchange, message.routing_key,
                                         encoded_properties(message), message.body, BODY_MAX)
    assert data == pikas_frames(channel, message)
    assert count == 2 + math.ceil(len(message.body) / BODY_MAX)


def test_a_kept_method_frame_serves_only_its_own_key() -> None:
    frames = PublishFrames()
    first, second = MESSAGES[0], MESSAGES[0]._replace(routing_key="acc-1.ag-2")
    for message in (first, second, first, second):
        data, _ = frames.encode(1, message.exchange, message.routing_key,
                                encoded_properties(message), message.body, BODY_MAX)
        assert data == pikas_frames(1, message)
    data, _ = frames.encode(1, first.exchange, first.routing_key,
                            encoded_properties(first), first.body, BODY_MAX, mandatory=False)
    assert data == pikas_frames(1, first, mandatory=False)


def test_the_frame_overhead_is_pikas() -> None:
    assert FRAME_OVERHEAD == spec.FRAME_HEADER_SIZE + spec.FRAME_END_SIZE


def test_names_no_short_string_holds_are_refused() -> None:
    with pytest.raises(ValueError, match="longer than an AMQP short string"):
        short_string("k" * 256)
    with pytest.raises(pika.exceptions.ShortStringTooLong):
        pikas_frames(1, MESSAGES[0]._replace(routing_key="k" * 256))
