"""Properties spliced from a pre-encoded shape are exactly what pika would send."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from worker.amqp.properties import _shape, encoded_properties, outgoing_properties, text_table
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
    # An update with its event's trace context (docs/contract.md#trace-context).
    Outgoing("inbox.categories", "acc-1.ag-1", b"{}", "8c4e5bb0f35a4a7c9e0d7b1a2f6c3d90",
             {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
              "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"},
             type="category.update"),
    # Text headers of every size, names and values beyond ASCII; none at all.
    Outgoing("x", "k", b"", "m", {"x-error": "bad \u20ac" * 300, "\u00e9": "", "k" * 255: "v"},
             content_type="text/plain", type="t", correlation_id="c", reply_to="r",
             content_encoding="gzip", timestamp=1_700_000_000, app_id="up"),
    Outgoing("x", "k", b"", "m", {}, persistent=False),
]


@pytest.mark.parametrize("message", SHAPES, ids=range(len(SHAPES)))
def test_the_spliced_encoding_is_pikas_own(message: Outgoing) -> None:
    assert _spliced(message)
    expected = stock(message)
    assert encoded_properties(message) == b"".join(expected.encode())
    # Decoded, they are the properties pika would have sent.
    decoded = pika.BasicProperties()
    decoded.decode(encoded_properties(message))
    assert decoded == expected and repr(decoded) == repr(expected)
    assert outgoing_properties(message) == expected


def test_each_message_gets_its_own_id_on_a_shared_shape() -> None:
    first, second = (SHAPES[0]._replace(message_id=m) for m in ("a", "bb"))
    assert encoded_properties(first) == b"".join(stock(first).encode())
    assert encoded_properties(second) == b"".join(stock(second).encode())


@pytest.mark.parametrize("message", [
    SHAPES[0]._replace(headers={"x-error": "bad", "hop": 3}),  # not all text
    SHAPES[0]._replace(headers={"x-death": [{"count": 1}]}),
    SHAPES[0]._replace(headers={"raw": b"bytes"}),
    SHAPES[0]._replace(message_id=None),
    SHAPES[-3]._replace(message_id=None),  # a reply: no id, with a trace context
    SHAPES[0]._replace(type="\x01inbox-rules:message-id\x01"),  # the marker itself
], ids=["headers", "a list", "bytes", "no id", "no id, headers", "marker in a field"])
def test_other_messages_take_pikas_encoder(message: Outgoing) -> None:
    assert not _spliced(message)
    assert encoded_properties(message) == b"".join(stock(message).encode())


def test_an_id_no_short_string_holds_is_refused_as_pika_refuses_it() -> None:
    with pytest.raises(pika.exceptions.ShortStringTooLong):
        encoded_properties(SHAPES[0]._replace(message_id="i" * 256))


def _spliced(message: Outgoing) -> bool:
    """Whether ``message`` takes the spliced road (its shape could be encoded)."""
    headers = message.headers
    text = headers is None or text_table(headers) is not None
    return text and message.message_id is not None and _shape(
        message.content_type, message.persistent, message.type, message.correlation_id,
        message.reply_to, message.content_encoding, message.timestamp,
        message.app_id or "inbox-rules", headers is not None) is not None
