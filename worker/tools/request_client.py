"""Ask the running worker one question over ``inbox.requests`` and wait for its answer.

The contract's requests (docs/contract.md): publish to the direct exchange with the
kind as routing key, a ``correlation_id`` and RabbitMQ's direct reply-to as
``reply_to``; the reply comes back on the same channel. The publish is
``mandatory``: with no worker's queue bound, the broker returns the request at once
instead of leaving us to time out.

``inbox-rules explain --live`` uses it; ``watch`` keeps a queue of updates and pages
through snapshots, which :class:`contracts.client.InboxMirror` does for it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pika
import pika.exceptions
from pydantic import BaseModel, ValidationError

from contracts.requests import describe_request_error
from worker.amqp.connection import connection_parameters
from worker.amqp.io import blocking_connection
from worker.amqp.topology import Topology
from worker.errors import InboxRulesError
from worker.settings import Settings

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

ReplyModel = TypeVar("ReplyModel", bound=BaseModel)


class RequestError(InboxRulesError):
    """No answer: no broker, no worker bound, no reply in time, or a reply we cannot read."""


class _Call:
    """One request on its way: where it goes, and its answer as it comes (the reply
    body, or why the broker returned the request)."""

    def __init__(self, kind: str, exchange: str, where: str) -> None:
        self.kind, self.exchange, self.where = kind, exchange, where
        self.correlation_id = uuid.uuid4().hex
        self.answer: list[bytes] = []
        self.returned: list[str] = []

    def on_reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        if properties.correlation_id == self.correlation_id:  # not a late one to someone else
            self.answer.append(body)

    def on_return(self, _channel: Any, method: Any, _properties: Any, _body: bytes) -> None:
        self.returned.append(str(method.reply_text))


def ask(settings: Settings, kind: str, request: BaseModel, reply_model: type[ReplyModel], *,
        timeout: float = 10.0,
        connect: Callable[[pika.URLParameters], Any] = blocking_connection,
        ) -> ReplyModel:
    """Publish ``request`` as a ``kind`` request and return the worker's reply.

    Raises :class:`RequestError` saying what to check when nothing usable comes back
    within ``timeout`` seconds.
    """
    exchange = Topology.from_settings(settings).requests_exchange
    where = settings.safe_amqp_url
    call = _Call(kind, exchange, where)
    try:
        connection = connect(connection_parameters(settings, f"inbox-rules {kind}"))
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise RequestError(f"cannot connect to {where}: {exc!r}") from exc
    try:
        channel = _publish(connection, call, request)
        _wait(connection, channel, call, timeout)
    except pika.exceptions.ChannelClosedByBroker as exc:
        hint = (f": the worker declares {exchange!r}; is one running?"
                if exc.reply_code == 404 else "")
        raise RequestError(f"the broker refused the request: {exc.reply_text}{hint}") from exc
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise RequestError(f"lost the connection to {where}: {exc!r}") from exc
    finally:
        if connection.is_open:
            # The answer (or the error) is what matters, not how the connection ends.
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()
    try:
        return reply_model.model_validate_json(call.answer[0])
    except ValidationError as exc:
        raise RequestError(f"the worker's {kind} reply is not a {reply_model.__name__}: "
                           f"{describe_request_error(exc)}") from exc


def _publish(connection: Any, call: _Call, request: BaseModel) -> Any:
    """A channel that hears the reply and returns, with the request published on it."""
    channel = connection.channel()
    # The worker declares the requests exchange: without it nobody could answer.
    channel.exchange_declare(call.exchange, passive=True)
    # RabbitMQ: consume the direct reply-to, no-ack, before publishing with it.
    channel.basic_consume(DIRECT_REPLY_TO, call.on_reply, auto_ack=True)
    channel.add_on_return_callback(call.on_return)
    channel.basic_publish(
        call.exchange, call.kind, request.model_dump_json(exclude_none=True).encode(),
        pika.BasicProperties(reply_to=DIRECT_REPLY_TO, correlation_id=call.correlation_id,
                             content_type="application/json"),
        mandatory=True)
    return channel


def _wait(connection: Any, channel: Any, call: _Call, timeout: float) -> None:
    """Until the answer is in; :class:`RequestError` when the broker returned the
    request, closed the channel, or nothing came within ``timeout`` seconds."""
    exchange, kind, where = call.exchange, call.kind, call.where
    deadline = time.monotonic() + timeout
    while not call.answer:
        if call.returned:
            raise RequestError(
                f"no worker is bound to {exchange!r} with routing key {kind!r} "
                f"({call.returned[0]}): is a worker (inbox-rules run) running on {where}?")
        if time.monotonic() > deadline:
            raise RequestError(
                f"no {kind} reply within {timeout:g} s: is a worker (inbox-rules run) "
                f"answering {exchange!r} on {where}? A request it cannot read goes to "
                "its dead-letter queue with the reason")
        connection.process_data_events(time_limit=0.05)
        if channel.is_closed:  # a blocking channel the broker closed says so only here
            raise RequestError("the broker closed the request channel (its log says why)")
