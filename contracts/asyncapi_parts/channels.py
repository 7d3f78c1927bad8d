"""The channels of the AsyncAPI document: the exchanges and the queue the worker's
messages travel through, under their default names."""

from __future__ import annotations

from typing import Any

from contracts.asyncapi_parts.common import (
    AMQP_BINDING_VERSION,
    DEAD_LETTER_QUEUE,
    DIRECT_REPLY_TO,
    EVENTS_EXCHANGE,
    EVENTS_QUEUE,
    REQUESTS_EXCHANGE,
    UPDATES_EXCHANGE,
    exchange_binding,
    ref,
)
from contracts.events import EVENT_TYPES


def channels() -> dict[str, Any]:
    return {
        "chatEvents": _chat_events(),
        "inboxCategories": _inbox_categories(),
        "snapshotRequests": _requests("snapshot", "snapshotRequest"),
        "explainRequests": _requests("explain", "explainRequest"),
        "viewsCheckRequests": _requests("views.check", "viewsCheckRequest"),
        "replies": _replies(),
        "deadLetters": _dead_letters(),
    }


def _chat_events() -> dict[str, Any]:
    return {
        "address": "{eventType}",
        "title": EVENTS_EXCHANGE,
        "description": (
            f"The topic exchange `{EVENTS_EXCHANGE}` the platform publishes to, routing "
            "key = the event `type`. The worker consumes it through its quorum queue "
            f"`{EVENTS_QUEUE}` bound with `#` (single active consumer, delivery limit, "
            f"dead-lettering to `{DEAD_LETTER_QUEUE}`)."),
        "parameters": {"eventType": {
            "description": "The event type.",
            "enum": list(EVENT_TYPES),
            "location": "$message.payload#/type",
        }},
        "messages": {"event": ref("components", "messages", "event")},
        "bindings": exchange_binding(EVENTS_EXCHANGE, "topic"),
    }


def _inbox_categories() -> dict[str, Any]:
    return {
        "address": "{accountId}.{agentId}",
        "title": UPDATES_EXCHANGE,
        "description": (
            f"The topic exchange `{UPDATES_EXCHANGE}`, routing key "
            "`<account_id>.<agent_id>`. A downstream service binds its own queue: "
            "`acc-1.*` for every inbox of one account, `acc-1.ag-2` for one agent, `#` "
            "for everything."),
        "parameters": {
            "accountId": {"description": "The account's id.",
                          "location": "$message.payload#/account_id"},
            "agentId": {"description": "The agent's id.",
                        "location": "$message.payload#/agent_id"},
        },
        "messages": {"categoryUpdate": ref("components", "messages", "categoryUpdate")},
        "bindings": exchange_binding(UPDATES_EXCHANGE, "topic"),
    }


def _requests(kind: str, message: str) -> dict[str, Any]:
    """The requests exchange, as seen by the requests of one ``kind`` (routing key)."""
    return {
        "address": kind,
        "title": f"{REQUESTS_EXCHANGE} ({kind})",
        "description": (
            f"The direct exchange `{REQUESTS_EXCHANGE}` (declared by the worker), "
            f"routing key `{kind}`."),
        "messages": {message: ref("components", "messages", message)},
        "bindings": exchange_binding(REQUESTS_EXCHANGE, "direct"),
    }


def _replies() -> dict[str, Any]:
    return {
        "address": None,
        "title": "reply_to",
        "description": (
            "Wherever the request's `reply_to` says: a replier publishes to the default "
            "exchange with routing key = `reply_to`, which is the requester's queue or "
            f"RabbitMQ's direct reply-to `{DIRECT_REPLY_TO}` (then the requester must "
            "consume from it, no-ack, on the channel it publishes the request on)."),
        "messages": {
            "snapshotReply": ref("components", "messages", "snapshotReply"),
            "explainReply": ref("components", "messages", "explainReply"),
            "viewsCheckReply": ref("components", "messages", "viewsCheckReply"),
        },
        "bindings": {"amqp": {"is": "routingKey",
                              "exchange": {"name": "", "type": "default"},
                              "bindingVersion": AMQP_BINDING_VERSION}},
    }


def _dead_letters() -> dict[str, Any]:
    return {
        "address": DEAD_LETTER_QUEUE,
        "title": DEAD_LETTER_QUEUE,
        "description": (
            f"The durable queue `{DEAD_LETTER_QUEUE}`: bad events, bad requests and "
            "events over the delivery limit. The worker publishes to it through the "
            f"fanout exchange `{DEAD_LETTER_QUEUE}.exchange` with the original routing "
            "key; operators read it."),
        "messages": {"deadLetter": ref("components", "messages", "deadLetter")},
        "bindings": {"amqp": {"is": "queue",
                              "queue": {"name": DEAD_LETTER_QUEUE, "durable": True,
                                        "exclusive": False, "autoDelete": False},
                              "bindingVersion": AMQP_BINDING_VERSION}},
    }
