"""The operations of the AsyncAPI document, from the worker's point of view: it
receives events and requests, sends updates, replies and dead letters."""

from __future__ import annotations

from typing import Any

from contracts.asyncapi_parts.common import (
    DIRECT_REPLY_TO,
    PERSISTENT,
    operation_binding,
    ref,
)


def _request_operation(kind: str, request: str, reply: str, title: str) -> dict[str, Any]:
    channel = request.removesuffix("Request") + "Requests"  # snapshotRequests ...
    return {
        "action": "receive",
        "title": title,
        "summary": f"Answer each {kind} request on its reply_to.",
        "description": (
            "Requests are acknowledged once answered (or dead-lettered when bad); the reply "
            "carries the request's `correlation_id`."),
        "channel": ref("channels", channel),
        "messages": [ref("channels", channel, "messages", request)],
        "reply": {
            "address": {
                "description": (
                    "The AMQP `reply_to` property of the request (a queue name, or "
                    f"`{DIRECT_REPLY_TO}`); a request without one is dead-lettered."),
                "location": "$message.header#/reply_to",
            },
            "channel": ref("channels", "replies"),
            "messages": [ref("channels", "replies", "messages", reply)],
        },
        "bindings": operation_binding(ack=True),
    }


def operations() -> dict[str, Any]:
    return {
        "receiveEvents": {
            "action": "receive",
            "title": "Consume conversation events",
            "summary": "Categorise conversations per agent from the platform's events.",
            "description": (
                "At-least-once: an event is acknowledged only after its state change is "
                "committed and its updates (or its dead letter) are confirmed by the "
                "broker. A redelivered or re-sent event (same `event_id`) changes nothing."),
            "channel": ref("channels", "chatEvents"),
            "messages": [ref("channels", "chatEvents", "messages", "event")],
            "bindings": operation_binding(ack=True),
        },
        "sendCategoryUpdates": {
            "action": "send",
            "title": "Publish category updates",
            "summary": "One update per (agent, conversation) whose categories changed.",
            "description": ("Persistent, mandatory, published with confirms; `message_id` "
                            "is the `update_id`."),
            "channel": ref("channels", "inboxCategories"),
            "messages": [ref("channels", "inboxCategories", "messages", "categoryUpdate")],
            "bindings": operation_binding(deliveryMode=PERSISTENT, mandatory=True),
        },
        "receiveSnapshotRequests": _request_operation(
            "snapshot", "snapshotRequest", "snapshotReply", "Answer snapshot requests"),
        "receiveExplainRequests": _request_operation(
            "explain", "explainRequest", "explainReply", "Answer explain requests"),
        "receiveViewsCheckRequests": _request_operation(
            "views.check", "viewsCheckRequest", "viewsCheckReply",
            "Answer views.check requests"),
        "sendDeadLetters": {
            "action": "send",
            "title": "Dead-letter bad input",
            "summary": "Set aside a message that can never be processed, with the reason.",
            "description": ("Bad input never stops the worker: the message is dead-lettered "
                            "(persistent, confirmed) and acknowledged; good messages behind "
                            "it keep flowing."),
            "channel": ref("channels", "deadLetters"),
            "messages": [ref("channels", "deadLetters", "messages", "deadLetter")],
            "bindings": operation_binding(deliveryMode=PERSISTENT, mandatory=True),
        },
    }
