"""Properties spliced from a pre-encoded shape are exactly what pika would send."""

from __future__ import annotations

import pika
import pytest
from pika import frame

from worker.amqp_properties import SplicedProperties, outgoing_properties
from worker.link import Outgoing


def stock(message: Outgoing) -> pika.BasicProperties:
    """The same properties built the plain way, for comparison."""
    return pika.BasicProperties(
        content_type=message.content_type, delivery_mode=2 if message.persistent else None,
        message_id=message.message_id, headers=message.headers, type=message.type,
        correlation_id=message.correlation_id, reply_to=message.reply_to,
        content_encoding=message.content_encoding, timestamp=message.timestamp,
        app_id=message.app_id or "inbox-rules")


SHAPES = [
    # A category update (the hot path).
    Outgoing("inbox.categories", "acc-1.ag-1", b"{}", "8c4e5bb0f35a4a7c9e0d7b1a2f6c3d90",
             type="category.update"),
    # A reply to a request.
    Outgoing("", "amq.rabbitmq.reply-to.x", b"{}", "r-1", persistent=False,
             type="snapshot.reply", correlation_id="corr-7"),
    # Every optional field at once, and ids of every length a short string holds.
    Outgoing("x", "k", b"", "m", content_type="text/plain", type="t", correlation_id="c",
             reply_to="r", content_encoding="gzip", timestamp=1_700_000_000, app_id="up"),
    Outgoing("x", "k", b"", "i" * 255, type="category.update"),
    Outgoing("x", "k", b"", "", type="category.update"),
    Outgoing("x", "k", b"", "é-ü", type="category.update"),
]


@pytest.mark.parametrize("message", SHAPES, ids=range(len(SHAPES)))
def test_the_spliced_encoding_is_pikas_own(message: Outgoing) -> None:
    properties = outgoing_properties(message)
    assert isinstance(properties, SplicedProperties)
    expected = stock(message)
    assert b"".join(properties.encode()) == b"".join(expected.encode())
    # What pika compares and prints is the same too, and so is the whole header frame.
    assert properties == expected and repr(properties) == repr(expected)
    assert frame.Header(1, 42, properties).marshal() == frame.Header(1, 42, expected).marshal()


def test_each_message_gets_its_own_id_on_a_shared_shape() -> None:
    first, second = (outgoing_properties(SHAPES[0]._replace(message_id=m)) for m in ("a", "bb"))
    assert (first.message_id, second.message_id) == ("a", "bb")
    assert b"".join(first.encode()) == b"".join(stock(SHAPES[0]._replace(message_id="a")).encode())
    assert b"".join(second.encode()) == b"".join(
        stock(SHAPES[0]._replace(message_id="bb")).encode())


@pytest.mark.parametrize("message", [
    SHAPES[0]._replace(headers={"x-error": "bad"}),  # a dead letter: headers vary
    SHAPES[0]._replace(message_id=None),
    SHAPES[0]._replace(message_id="i" * 256),  # pika refuses it, as before
    SHAPES[0]._replace(type="\x01inbox-rules:message-id\x01"),  # the marker itself
], ids=["headers", "no id", "id too long", "marker in a field"])
def test_other_messages_take_pikas_encoder(message: Outgoing) -> None:
    properties = outgoing_properties(message)
    assert not isinstance(properties, SplicedProperties)
    assert properties == stock(message)
