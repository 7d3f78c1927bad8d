"""The AsyncAPI 3.0 document of the worker's messaging, generated and checked in.

``python -m contracts.asyncapi`` writes ``contracts/asyncapi.yaml``;
``python -m contracts.asyncapi --check`` exits 1 when the file is stale. The tests run
the check and validate the file with the official parser (``contracts/asyncapi-check``).

Every payload is the JSON Schema of a pydantic model, taken from
:data:`contracts.schema.CONTRACTS` (the same source as ``contracts/schema/*.json``),
never written by hand: a field added to a model reaches the document on the next run.
Two adaptations make a pydantic schema an AsyncAPI Schema Object, which is JSON Schema
draft-07 plus a few keywords:

- nested definitions move from ``$defs`` to ``components.schemas`` (a ``$ref`` inside
  an embedded schema resolves against the whole document, not the schema);
- pydantic's OpenAPI-style ``discriminator`` object is dropped: AsyncAPI's
  ``discriminator`` is a property *name* whose values name schemas, which ours do not,
  and every branch of the event union already fixes ``type`` with a ``const``.

The document is written from the worker's point of view: it receives events and
requests, sends updates, replies and dead letters. Exchange and queue names are the
defaults of the settings (``INBOX_RULES_*``), which an operator may change.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from contracts.events import EVENT_ADAPTER, EVENT_TYPES
from contracts.requests import (
    MAX_SNAPSHOT_LIMIT,
    ExplainReply,
    ExplainRequest,
    SnapshotReply,
    SnapshotRequest,
)
from contracts.schema import CONTRACTS, Contract
from contracts.updates import CategoryUpdate

ASYNCAPI_PATH = Path(__file__).parent / "asyncapi.yaml"
# The version of the messaging API this document describes (info.version): bump it
# when a contract changes in a way a producer or consumer must know about.
API_VERSION = "1.0.0"
REF_TEMPLATE = "#/components/schemas/{model}"
AMQP_BINDING_VERSION = "0.3.0"

# Default names (worker/settings.py); contracts must not import the worker.
EVENTS_EXCHANGE = "chat.events"
EVENTS_QUEUE = "inbox-rules.events"
UPDATES_EXCHANGE = "inbox.categories"
REQUESTS_EXCHANGE = "inbox.requests"
DEAD_LETTER_QUEUE = "chat.events.dlq"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

PERSISTENT = 2

# Examples are the contract's examples validated by the models, so they are valid by
# construction; fields a model does not (yet) have are dropped, and one it gains
# without a value here makes generation fail loudly rather than publish a bad example.
_EXAMPLE_RULES_VERSION = "5f1d0c9a7b2e"
_EXAMPLE_EVENTS: tuple[dict[str, Any], ...] = (
    {"event_id": "e-123", "type": "conversation.assigned", "account_id": "acc-1",
     "occurred_at": "2026-11-24T10:00:00Z", "conversation_id": "c-9", "sequence": 4,
     "data": {"agent_id": "ag-2"}},
    {"event_id": "e-100", "type": "account.updated", "account_id": "acc-1",
     "occurred_at": "2026-11-24T09:59:00Z", "sequence": 1,
     "data": {"plan": "pro", "agents": ["ag-1", "ag-2"], "groups": {"g-sales": ["ag-1"]}}},
)
_EXAMPLE_UPDATE: dict[str, Any] = {
    "update_id": "8c4e5bb0f35a4a7c9e0d7b1a2f6c3d90", "account_id": "acc-1",
    "agent_id": "ag-2", "conversation_id": "c-9", "seq": 42,
    "categories": ["all", "mine", "primary"], "added": ["mine", "primary"],
    "removed": ["new"], "counts": {"all": 3, "new": 1, "mine": 1, "primary": 2, "resolved": 7},
    "cause_event_id": "e-123", "rules_version": _EXAMPLE_RULES_VERSION,
    "occurred_at": "2026-11-24T10:00:00Z",
}
_EXAMPLE_SNAPSHOT_REQUESTS: tuple[dict[str, Any], ...] = (
    {"account_id": "acc-1", "agent_id": "ag-2"},
    {"account_id": "acc-1", "agent_id": "ag-2", "categories": ["new", "mine"],
     "after": "c-4", "limit": 500},
)
_EXAMPLE_SNAPSHOT_REPLY: dict[str, Any] = {
    "account_id": "acc-1", "agent_id": "ag-2", "seq": 42,
    "rules_version": _EXAMPLE_RULES_VERSION,
    "counts": {"all": 3, "new": 1, "mine": 1, "primary": 2, "resolved": 7},
    "conversations": {"c-4": ["all", "new", "primary"], "c-9": ["all", "mine", "primary"]},
    "next_after": None,
}
_EXAMPLE_EXPLAIN_REQUEST: dict[str, Any] = {
    "account_id": "acc-1", "agent_id": "ag-2", "conversation_id": "c-9"}
_EXAMPLE_EXPLAIN_REPLY: dict[str, Any] = {
    "account_id": "acc-1", "agent_id": "ag-2", "conversation_id": "c-9",
    "rules_version": _EXAMPLE_RULES_VERSION,
    "facts": {"conversation.status": "open", "conversation.has_group": False,
              "conversation.joined_count": 1, "agent.joined": True, "agent.in_group": False,
              "account.plan": "pro", "account.agent_count": 2, "account.group_count": 1},
    "categories": ["all", "mine", "primary"],
    # Abbreviated: a reply explains every category of the rule set.
    "explanations": [
        {"name": "all", "holds": True, "conditions": [
            {"file": "inbox.yaml", "line": 60, "condition": "predicate open", "holds": True,
             "depth": 0},
            {"file": "inbox.yaml", "line": 23, "condition": "conversation.status equals open",
             "holds": True, "depth": 1}]},
        {"name": "new", "holds": False, "conditions": [
            {"file": "inbox.yaml", "line": 67, "condition": "all of 2", "holds": False,
             "depth": 0},
            {"file": "inbox.yaml", "line": 68, "condition": "predicate waiting",
             "holds": False, "depth": 1},
            {"file": "inbox.yaml", "line": 28, "condition": "all of 2", "holds": False,
             "depth": 2},
            {"file": "inbox.yaml", "line": 30, "condition": "conversation.joined_count equals 0",
             "holds": False, "depth": 3}]},
    ],
}


def _example(model: Any, raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` as the model sees it: validated, then dumped as JSON values. Fields the
    example leaves out stay out (a request example shows what a client sends, not the
    defaults it gets)."""
    fields = getattr(model, "model_fields", None)
    if fields is not None:  # a model class: keep only the fields it has
        raw = {key: value for key, value in raw.items() if key in fields}
        validated = model.model_validate(raw)
        dumped: dict[str, Any] = validated.model_dump(mode="json", exclude_unset=True)
        return dumped
    # Through JSON, as a message arrives (events are strict dataclasses).
    union_dump: dict[str, Any] = model.dump_python(model.validate_json(json.dumps(raw)),
                                                   mode="json", exclude_unset=True)
    return union_dump


def _asyncapi_schema(node: Any) -> Any:
    """A pydantic JSON Schema made an AsyncAPI Schema Object (see the module docstring)."""
    if isinstance(node, dict):
        return {key: _asyncapi_schema(value) for key, value in node.items()
                if not (key == "discriminator" and isinstance(value, dict))}
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    return node


def component_schemas() -> dict[str, Any]:
    """Every contract's schema and every definition nested in one, by name.

    Two models may share a nested definition (the same class); two different
    definitions under one name would make a ``$ref`` ambiguous, so that fails here.
    """
    found: dict[str, Any] = {}

    def add(name: str, schema: dict[str, Any], owner: Contract) -> None:
        if name in found and found[name] != schema:
            raise ValueError(f"schema name {name!r} of {owner.file} clashes with another one")
        found[name] = schema

    for contract in CONTRACTS:
        schema = _asyncapi_schema(contract.schema(ref_template=REF_TEMPLATE))
        for name, definition in schema.pop("$defs", {}).items():
            add(name, definition, contract)
        add(contract.name, schema, contract)
    return dict(sorted(found.items()))


def _contract(name: str) -> Contract:
    for contract in CONTRACTS:
        if contract.name == name:
            return contract
    raise KeyError(name)


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(path)}


def _exchange_binding(name: str, kind: str) -> dict[str, Any]:
    return {"amqp": {"is": "routingKey",
                     "exchange": {"name": name, "type": kind, "durable": True,
                                  "autoDelete": False},
                     "bindingVersion": AMQP_BINDING_VERSION}}


def _message_binding(message_type: str | None = None) -> dict[str, Any]:
    binding: dict[str, Any] = {"bindingVersion": AMQP_BINDING_VERSION}
    if message_type is not None:
        binding["messageType"] = message_type
    return {"amqp": binding}


def _json_message(contract_name: str, *, name: str, summary: str, description: str,
                  examples: list[dict[str, Any]], message_type: str | None = None,
                  correlated: bool = False) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": _contract(contract_name).title,
        "summary": summary,
        "description": description,
        "contentType": "application/json",
    }
    if correlated:
        message["correlationId"] = _ref("components", "correlationIds", "requestReply")
    message["payload"] = _ref("components", "schemas", contract_name)
    message["bindings"] = _message_binding(message_type)
    message["examples"] = examples
    return message


def _messages() -> dict[str, Any]:
    events = [{"name": example["type"], "payload": _example(EVENT_ADAPTER, example)}
              for example in _EXAMPLE_EVENTS]
    snapshot_requests = [
        {"name": "whole inbox",
         "payload": _example(SnapshotRequest, _EXAMPLE_SNAPSHOT_REQUESTS[0])},
        {"name": "filtered, next page",
         "payload": _example(SnapshotRequest, _EXAMPLE_SNAPSHOT_REQUESTS[1])},
    ]
    return {
        "event": _json_message(
            "Event", name="event", summary="A conversation event from the platform.",
            description=(
                "One event per message, routing key = the event `type`. Unknown fields "
                "are ignored; invalid JSON, non-UTF-8, unknown types, missing or wrong "
                "fields, bad ids, an agent whose update routing key "
                "`<account_id>.<agent_id>` would exceed AMQP's 255 bytes, and bodies over "
                "the size limit (64 KiB by default) are dead-lettered. Publish it "
                "persistent (delivery mode 2)."),
            examples=events),
        "categoryUpdate": _json_message(
            "CategoryUpdate", name="categoryUpdate",
            summary="The categories of one conversation for one agent after one event.",
            description=(
                "Persistent, AMQP `message_id` = `update_id` (deterministic: drop "
                "duplicates by it). `seq` numbers the updates of one (account, agent) with "
                "no gaps: a jump means missed updates, resync with a snapshot. Updates "
                "for one conversation arrive in event order."),
            message_type="category.update",
            examples=[{"name": "agent joins",
                       "payload": _example(CategoryUpdate, _EXAMPLE_UPDATE)}]),
        "snapshotRequest": _json_message(
            "SnapshotRequest", name="snapshotRequest",
            summary="Ask for one agent's current inbox.",
            description=(
                "Needs the AMQP properties `reply_to` (a queue, or "
                f"`{DIRECT_REPLY_TO}`) and `correlation_id`. Optional `categories` filter; "
                f"paging by `after` (a conversation id) and `limit` (at most "
                f"{MAX_SNAPSHOT_LIMIT}). A bad request (not JSON, bad ids, no `reply_to`) "
                "is dead-lettered to `chat.events.dlq` with its reason."),
            correlated=True, examples=snapshot_requests),
        "snapshotReply": _json_message(
            "SnapshotReply", name="snapshotReply",
            summary="One agent's inbox after exactly the updates up to `seq`.",
            description=(
                "Sent to the request's `reply_to` with its `correlation_id`. Take it as the "
                "baseline and apply only updates with a greater `seq`; `next_after` not "
                "null means ask for the next page with `after` = `next_after`."),
            message_type="snapshot.reply", correlated=True,
            examples=[{"name": "complete inbox",
                       "payload": _example(SnapshotReply, _EXAMPLE_SNAPSHOT_REPLY)}]),
        "explainRequest": _json_message(
            "ExplainRequest", name="explainRequest",
            summary="Ask why a conversation is in its categories for one agent.",
            description=(
                "Needs the AMQP properties `reply_to` and `correlation_id`, like a "
                "snapshot request; a bad one is dead-lettered the same way."),
            correlated=True,
            examples=[{"name": "one conversation",
                       "payload": _example(ExplainRequest, _EXAMPLE_EXPLAIN_REQUEST)}]),
        "explainReply": _json_message(
            "ExplainReply", name="explainReply",
            summary="Facts and the conditions (file:line) that decided every category.",
            description="Sent to the request's `reply_to` with its `correlation_id`.",
            message_type="explain.reply", correlated=True,
            examples=[{"name": "an agent who joined",
                       "payload": _example(ExplainReply, _EXAMPLE_EXPLAIN_REPLY)}]),
        "deadLetter": {
            "name": "deadLetter",
            "title": "Dead letter (chat.events.dlq)",
            "summary": "A message the worker could not take, body untouched up to the size limit.",
            "description": (
                "The original body byte for byte (it may be invalid JSON or not UTF-8), "
                "except a body over the size limit: the worker keeps no more of it, so its "
                "dead letter carries only its first limit bytes and `x-error` says so. "
                "With the original's content type, message id, type and headers (dropped "
                "when too large to copy, noted in `x-original-headers-dropped`). Bad events "
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
                },
            },
            "payload": {"description": "The original message body, unchanged."},
            "bindings": _message_binding(),
        },
    }


def _channels() -> dict[str, Any]:
    return {
        "chatEvents": {
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
            "messages": {"event": _ref("components", "messages", "event")},
            "bindings": _exchange_binding(EVENTS_EXCHANGE, "topic"),
        },
        "inboxCategories": {
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
            "messages": {"categoryUpdate": _ref("components", "messages", "categoryUpdate")},
            "bindings": _exchange_binding(UPDATES_EXCHANGE, "topic"),
        },
        "snapshotRequests": {
            "address": "snapshot",
            "title": f"{REQUESTS_EXCHANGE} (snapshot)",
            "description": (
                f"The direct exchange `{REQUESTS_EXCHANGE}` (declared by the worker), "
                "routing key `snapshot`."),
            "messages": {"snapshotRequest": _ref("components", "messages", "snapshotRequest")},
            "bindings": _exchange_binding(REQUESTS_EXCHANGE, "direct"),
        },
        "explainRequests": {
            "address": "explain",
            "title": f"{REQUESTS_EXCHANGE} (explain)",
            "description": (
                f"The direct exchange `{REQUESTS_EXCHANGE}` (declared by the worker), "
                "routing key `explain`."),
            "messages": {"explainRequest": _ref("components", "messages", "explainRequest")},
            "bindings": _exchange_binding(REQUESTS_EXCHANGE, "direct"),
        },
        "replies": {
            "address": None,
            "title": "reply_to",
            "description": (
                "Wherever the request's `reply_to` says: a replier publishes to the default "
                "exchange with routing key = `reply_to`, which is the requester's queue or "
                f"RabbitMQ's direct reply-to `{DIRECT_REPLY_TO}` (then the requester must "
                "consume from it, no-ack, on the channel it publishes the request on)."),
            "messages": {
                "snapshotReply": _ref("components", "messages", "snapshotReply"),
                "explainReply": _ref("components", "messages", "explainReply"),
            },
            "bindings": {"amqp": {"is": "routingKey",
                                  "exchange": {"name": "", "type": "default"},
                                  "bindingVersion": AMQP_BINDING_VERSION}},
        },
        "deadLetters": {
            "address": DEAD_LETTER_QUEUE,
            "title": DEAD_LETTER_QUEUE,
            "description": (
                f"The durable queue `{DEAD_LETTER_QUEUE}`: bad events, bad requests and "
                "events over the delivery limit. The worker publishes to it through the "
                f"fanout exchange `{DEAD_LETTER_QUEUE}.exchange` with the original routing "
                "key; operators read it."),
            "messages": {"deadLetter": _ref("components", "messages", "deadLetter")},
            "bindings": {"amqp": {"is": "queue",
                                  "queue": {"name": DEAD_LETTER_QUEUE, "durable": True,
                                            "exclusive": False, "autoDelete": False},
                                  "bindingVersion": AMQP_BINDING_VERSION}},
        },
    }


def _operation_binding(**fields: Any) -> dict[str, Any]:
    return {"amqp": {**fields, "bindingVersion": AMQP_BINDING_VERSION}}


def _request_operation(kind: str, request: str, reply: str, title: str) -> dict[str, Any]:
    channel = f"{kind}Requests"
    return {
        "action": "receive",
        "title": title,
        "summary": f"Answer each {kind} request on its reply_to.",
        "description": (
            "Requests are acknowledged once answered (or dead-lettered when bad); the reply "
            "carries the request's `correlation_id`."),
        "channel": _ref("channels", channel),
        "messages": [_ref("channels", channel, "messages", request)],
        "reply": {
            "address": {
                "description": (
                    "The AMQP `reply_to` property of the request (a queue name, or "
                    f"`{DIRECT_REPLY_TO}`); a request without one is dead-lettered."),
                "location": "$message.header#/reply_to",
            },
            "channel": _ref("channels", "replies"),
            "messages": [_ref("channels", "replies", "messages", reply)],
        },
        "bindings": _operation_binding(ack=True),
    }


def _operations() -> dict[str, Any]:
    return {
        "receiveEvents": {
            "action": "receive",
            "title": "Consume conversation events",
            "summary": "Categorise conversations per agent from the platform's events.",
            "description": (
                "At-least-once: an event is acknowledged only after its state change is "
                "committed and its updates (or its dead letter) are confirmed by the "
                "broker. A redelivered or re-sent event (same `event_id`) changes nothing."),
            "channel": _ref("channels", "chatEvents"),
            "messages": [_ref("channels", "chatEvents", "messages", "event")],
            "bindings": _operation_binding(ack=True),
        },
        "sendCategoryUpdates": {
            "action": "send",
            "title": "Publish category updates",
            "summary": "One update per (agent, conversation) whose categories changed.",
            "description": ("Persistent, mandatory, published with confirms; `message_id` "
                            "is the `update_id`."),
            "channel": _ref("channels", "inboxCategories"),
            "messages": [_ref("channels", "inboxCategories", "messages", "categoryUpdate")],
            "bindings": _operation_binding(deliveryMode=PERSISTENT, mandatory=True),
        },
        "receiveSnapshotRequests": _request_operation(
            "snapshot", "snapshotRequest", "snapshotReply", "Answer snapshot requests"),
        "receiveExplainRequests": _request_operation(
            "explain", "explainRequest", "explainReply", "Answer explain requests"),
        "sendDeadLetters": {
            "action": "send",
            "title": "Dead-letter bad input",
            "summary": "Set aside a message that can never be processed, with the reason.",
            "description": ("Bad input never stops the worker: the message is dead-lettered "
                            "(persistent, confirmed) and acknowledged; good messages behind "
                            "it keep flowing."),
            "channel": _ref("channels", "deadLetters"),
            "messages": [_ref("channels", "deadLetters", "messages", "deadLetter")],
            "bindings": _operation_binding(deliveryMode=PERSISTENT, mandatory=True),
        },
    }


def document() -> dict[str, Any]:
    """The whole AsyncAPI document as plain data, keys in reading order."""
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "inbox-rules",
            "version": API_VERSION,
            "description": (
                "Rules microservice for live-chat inboxes: consumes conversation events, "
                "sorts every conversation into inbox categories per agent with declarative "
                "rule files, publishes category updates with badge counts, and answers "
                "snapshot and explain requests. Generated by `python -m contracts.asyncapi` "
                "from the pydantic models in `contracts/`; do not edit by hand."),
            "license": {"name": "MIT"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "pathname": "/",
                "description": ("The broker named by `AMQP_URL` (default "
                                "`amqp://guest:guest@localhost:5672/%2F`); `amqps://` with "
                                "the `INBOX_RULES_TLS_*` settings."),
            },
        },
        "channels": _channels(),
        "operations": _operations(),
        "components": {
            "schemas": component_schemas(),
            "messages": _messages(),
            "correlationIds": {
                "requestReply": {
                    "description": ("The AMQP `correlation_id` property: the reply repeats "
                                    "the request's."),
                    "location": "$message.header#/correlation_id",
                },
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block scalars for multi-line text, so the file reads and diffs well."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    header = ("# Generated by `python -m contracts.asyncapi` from the models in contracts/.\n"
              "# Do not edit: change the models and regenerate.\n")
    body = yaml.dump(document(), Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     width=100, default_flow_style=False)
    return header + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contracts.asyncapi",
                                     description="Write or check contracts/asyncapi.yaml.")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file differs from what would be written")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = ASYNCAPI_PATH.read_text(encoding="utf-8") if ASYNCAPI_PATH.exists() else ""
        if current != text:
            print(f"{ASYNCAPI_PATH} is stale: run `python -m contracts.asyncapi`",
                  file=sys.stderr)
            return 1
        print(f"{ASYNCAPI_PATH} is current")
        return 0
    ASYNCAPI_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {ASYNCAPI_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
