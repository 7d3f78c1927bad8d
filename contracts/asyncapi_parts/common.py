"""What the parts of the AsyncAPI document share: the default names, references, and
the AMQP bindings."""

from __future__ import annotations

from typing import Any

AMQP_BINDING_VERSION = "0.3.0"

# Default names (worker/settings.py); contracts must not import the worker.
EVENTS_EXCHANGE = "chat.events"
EVENTS_QUEUE = "inbox-rules.events"
UPDATES_EXCHANGE = "inbox.categories"
REQUESTS_EXCHANGE = "inbox.requests"
DEAD_LETTER_QUEUE = "chat.events.dlq"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

PERSISTENT = 2


def ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(path)}


def exchange_binding(name: str, kind: str) -> dict[str, Any]:
    return {"amqp": {"is": "routingKey",
                     "exchange": {"name": name, "type": kind, "durable": True,
                                  "autoDelete": False},
                     "bindingVersion": AMQP_BINDING_VERSION}}


def message_binding(message_type: str | None = None) -> dict[str, Any]:
    binding: dict[str, Any] = {"bindingVersion": AMQP_BINDING_VERSION}
    if message_type is not None:
        binding["messageType"] = message_type
    return {"amqp": binding}


def operation_binding(**fields: Any) -> dict[str, Any]:
    return {"amqp": {**fields, "bindingVersion": AMQP_BINDING_VERSION}}
