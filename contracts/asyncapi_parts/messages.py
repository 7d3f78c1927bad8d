"""The messages of the AsyncAPI document (``components.messages``): each a pydantic
contract's payload with its examples, but the dead letter, whose body is anything."""

from __future__ import annotations

from typing import Any

from contracts.asyncapi_parts.common import DIRECT_REPLY_TO, message_binding, ref
from contracts.asyncapi_parts.examples import (
    EXAMPLE_EVENTS,
    EXAMPLE_EXPLAIN_REPLY,
    EXAMPLE_EXPLAIN_REQUEST,
    EXAMPLE_REQUEST_TRACE,
    EXAMPLE_SNAPSHOT_REPLY,
    EXAMPLE_SNAPSHOT_REQUESTS,
    EXAMPLE_TRACE,
    EXAMPLE_UPDATE,
    EXAMPLE_VIEWS_CHECK_REPLY,
    EXAMPLE_VIEWS_CHECK_REQUEST,
    example,
)
from contracts.asyncapi_parts.headers import copied_trace, received_trace, sent_trace
from contracts.events import (
    EVENT_ADAPTER,
    MAX_ATTRIBUTE_TEXT,
    MAX_ATTRIBUTES,
    MAX_LABELS,
    MAX_MENTIONS,
)
from contracts.requests import (
    MAX_SNAPSHOT_LIMIT,
    ExplainReply,
    ExplainRequest,
    SnapshotReply,
    SnapshotRequest,
    ViewsCheckReply,
    ViewsCheckRequest,
)
from contracts.schema import CONTRACTS, Contract
from contracts.updates import CategoryUpdate


def messages() -> dict[str, Any]:
    return {
        "event": _event(),
        "categoryUpdate": _category_update(),
        "snapshotRequest": _snapshot_request(),
        "snapshotReply": _snapshot_reply(),
        "explainRequest": _explain_request(),
        "explainReply": _explain_reply(),
        "viewsCheckRequest": _views_check_request(),
        "viewsCheckReply": _views_check_reply(),
        "deadLetter": _dead_letter(),
    }


def _contract(name: str) -> Contract:
    for contract in CONTRACTS:
        if contract.name == name:
            return contract
    raise KeyError(name)


def _json_message(contract_name: str, *, name: str, summary: str, description: str,
                  headers: dict[str, Any], examples: list[dict[str, Any]],
                  message_type: str | None = None, correlated: bool = False,
                  ) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": _contract(contract_name).title,
        "summary": summary,
        "description": description,
        "contentType": "application/json",
    }
    if correlated:
        message["correlationId"] = ref("components", "correlationIds", "requestReply")
    message["headers"] = headers
    message["payload"] = ref("components", "schemas", contract_name)
    message["bindings"] = message_binding(message_type)
    message["examples"] = examples
    return message


def _event() -> dict[str, Any]:
    events = [{"name": raw["type"], "payload": example(EVENT_ADAPTER, raw)}
              for raw in EXAMPLE_EVENTS]
    events[0] = {"name": events[0]["name"], "headers": EXAMPLE_TRACE,
                 "payload": events[0]["payload"]}
    return _json_message(
        "Event", name="event", summary="A conversation event from the platform.",
        description=(
            "One event per message, routing key = the event `type`. Unknown fields "
            "are ignored; invalid JSON, non-UTF-8, unknown types, missing or wrong "
            f"fields, bad ids, details over their limits ({MAX_LABELS} labels, "
            f"{MAX_ATTRIBUTES} attributes, also once a `conversation.updated` is merged, "
            f"{MAX_ATTRIBUTE_TEXT} characters of attribute text, {MAX_MENTIONS} mentions), "
            "an agent whose update routing key "
            "`<account_id>.<agent_id>` would exceed AMQP's 255 bytes, and bodies over "
            "the size limit (64 KiB by default) are dead-lettered. Publish it "
            "persistent (delivery mode 2)."),
        headers=received_trace("every update the event causes and onto its dead letter"),
        examples=events)


def _category_update() -> dict[str, Any]:
    return _json_message(
        "CategoryUpdate", name="categoryUpdate",
        summary="The categories of one conversation for one agent after one event.",
        description=(
            "Persistent, AMQP `message_id` = `update_id` (deterministic: drop "
            "duplicates by it). `seq` numbers the updates of one (account, agent) with "
            "no gaps: a jump means missed updates, resync with a snapshot. Updates "
            "for one conversation arrive in event order. `unread` and `unread_counts` "
            "are the agent's unread marks after the cause, like `categories` and "
            "`counts`."),
        message_type="category.update",
        headers=sent_trace("the event that caused the update (`cause_event_id`)",
                           " Updates of time crossings and rules changes carry none."),
        examples=[{"name": "agent joins", "headers": dict(EXAMPLE_TRACE),
                   "payload": example(CategoryUpdate, EXAMPLE_UPDATE)}])


def _snapshot_request() -> dict[str, Any]:
    snapshot_requests = [
        {"name": "whole inbox", "headers": EXAMPLE_REQUEST_TRACE,
         "payload": example(SnapshotRequest, EXAMPLE_SNAPSHOT_REQUESTS[0])},
        {"name": "filtered, next page",
         "payload": example(SnapshotRequest, EXAMPLE_SNAPSHOT_REQUESTS[1])},
    ]
    return _json_message(
        "SnapshotRequest", name="snapshotRequest",
        summary="Ask for one agent's current inbox.",
        description=(
            "Needs the AMQP properties `reply_to` (a queue, or "
            f"`{DIRECT_REPLY_TO}`) and `correlation_id`. Optional `categories` filter; "
            f"paging by `after` (a conversation id) and `limit` (at most "
            f"{MAX_SNAPSHOT_LIMIT}). A bad request (not JSON, bad ids, no `reply_to`) "
            "is dead-lettered to `chat.events.dlq` with its reason."),
        headers=received_trace("its reply and onto its dead letter"),
        correlated=True, examples=snapshot_requests)


def _snapshot_reply() -> dict[str, Any]:
    return _json_message(
        "SnapshotReply", name="snapshotReply",
        summary="One agent's inbox after exactly the updates up to `seq`.",
        description=(
            "Sent to the request's `reply_to` with its `correlation_id`. Take it as the "
            "baseline and apply only updates with a greater `seq`; `next_after` not "
            "null means ask for the next page with `after` = `next_after`."),
        message_type="snapshot.reply", correlated=True, headers=sent_trace("the request"),
        examples=[{"name": "complete inbox", "headers": dict(EXAMPLE_REQUEST_TRACE),
                   "payload": example(SnapshotReply, EXAMPLE_SNAPSHOT_REPLY)}])


def _explain_request() -> dict[str, Any]:
    return _json_message(
        "ExplainRequest", name="explainRequest",
        summary="Ask why a conversation is in its categories for one agent.",
        description=(
            "Needs the AMQP properties `reply_to` and `correlation_id`, like a "
            "snapshot request; a bad one is dead-lettered the same way."),
        headers=received_trace("its reply and onto its dead letter"), correlated=True,
        examples=[{"name": "one conversation",
                   "payload": example(ExplainRequest, EXAMPLE_EXPLAIN_REQUEST)}])


def _explain_reply() -> dict[str, Any]:
    return _json_message(
        "ExplainReply", name="explainReply",
        summary="Facts and the conditions (file:line) that decided every category.",
        description="Sent to the request's `reply_to` with its `correlation_id`.",
        message_type="explain.reply", correlated=True, headers=sent_trace("the request"),
        examples=[{"name": "an agent who joined",
                   "payload": example(ExplainReply, EXAMPLE_EXPLAIN_REPLY)}])


def _dead_letter() -> dict[str, Any]:
    return {
        "name": "deadLetter",
        "title": "Dead letter (chat.events.dlq)",
        "summary": "A message the worker could not take, body untouched up to the size limit.",
        "description": (
            "The original body byte for byte (it may be invalid JSON or not UTF-8), "
            "except a body over the size limit: the worker keeps no more of it, so its "
            "dead letter carries only its first limit bytes and `x-error` says so. "
            "With the original's content type, message id, type and headers (dropped "
            "when too large to copy, noted in `x-original-headers-dropped`; its trace "
            "context only when valid, and kept even then). Bad events "
            "and bad requests carry `x-error`; an event that reached the input queue's "
            "delivery limit is dead-lettered by the broker with `x-death` instead."),
        "headers": {
            "type": "object",
            "properties": {
                "x-error": {
                    "type": "string",
                    "description": ("Why the message is bad, naming the field, e.g. "
                                    "`data.agent_id: Field required`; reasons over 1,000 "
                                    "characters are cut and say how much was cut."),
                },
                "x-original-headers-dropped": {"type": "string"},
                "x-death": {
                    "type": "array",
                    "description": "Set by the broker when it dead-letters the message.",
                },
                **copied_trace("the original message",
                               " Copied also when its other headers are dropped."),
            },
        },
        "payload": {"description": "The original message body, unchanged."},
        "bindings": message_binding(),
    }


def _views_check_request() -> dict[str, Any]:
    return _json_message(
        "ViewsCheckRequest", name="viewsCheckRequest",
        summary="Check candidate views against the live rules, and preview them.",
        description=(
            "The body of a views event (`agent_id`: an agent's personal views). With an "
            "`account_id`, valid views are previewed against that account's state. Needs "
            "`reply_to` and `correlation_id`, like a snapshot request; nothing changes."),
        headers=received_trace("its reply and onto its dead letter"), correlated=True,
        examples=[{"name": "a shared view, previewed",
                   "payload": example(ViewsCheckRequest, EXAMPLE_VIEWS_CHECK_REQUEST)}])


def _views_check_reply() -> dict[str, Any]:
    return _json_message(
        "ViewsCheckReply", name="viewsCheckReply",
        summary="Every problem with its path; with an account, what each view would hold.",
        description="Sent to the request's `reply_to` with its `correlation_id`.",
        message_type="views.check.reply", correlated=True,
        headers=sent_trace("the request"),
        examples=[{"name": "valid, previewed",
                   "payload": example(ViewsCheckReply, EXAMPLE_VIEWS_CHECK_REPLY)}])
