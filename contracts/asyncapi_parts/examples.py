"""The examples of the AsyncAPI document (:mod:`contracts.asyncapi`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from contracts.trace import trace_context

# Examples are the contract's examples validated by the models, so they are valid by
# construction; fields a model does not (yet) have are dropped, and one it gains
# without a value here makes generation fail loudly rather than publish a bad example.
EXAMPLE_RULES_VERSION = "5f1d0c9a7b2e"
EXAMPLE_EVENTS: tuple[dict[str, Any], ...] = (
    {"event_id": "e-123", "type": "conversation.assigned", "account_id": "acc-1",
     "occurred_at": "2026-11-24T10:00:00Z", "conversation_id": "c-9", "sequence": 4,
     "data": {"agent_id": "ag-2"}},
    {"event_id": "e-100", "type": "account.updated", "account_id": "acc-1",
     "occurred_at": "2026-11-24T09:59:00Z", "sequence": 1,
     "data": {"plan": "pro", "agents": ["ag-1", "ag-2"], "groups": {"g-sales": ["ag-1"]}}},
    {"event_id": "e-110", "type": "account.views_updated", "account_id": "acc-1",
     "occurred_at": "2026-11-24T10:05:00Z", "sequence": 2,
     "data": {"views": [
         {"view_id": "vip-waiting", "name": "VIP waiting",
          "when": {"all": [{"category": "new"},
                           {"fact": "conversation.labels", "contains": "vip"}]}},
         {"view_id": "urgent-email", "name": "Urgent email",
          "when": {"all": [{"fact": "conversation.channel", "equals": "email"},
                           {"fact": "conversation.priority", "at_least": "high"}]}}]}},
    {"event_id": "e-111", "type": "agent.views_updated", "account_id": "acc-1",
     "occurred_at": "2026-11-24T10:06:00Z", "sequence": 3,
     "data": {"agent_id": "ag-2", "views": [
         {"view_id": "my-unread", "name": "My unread",
          "when": {"all": [{"category": "mine"},
                           {"fact": "agent.unread", "equals": True}]}}]}},
    *({"event_id": event_id, "type": kind, "account_id": "acc-1", "occurred_at": at,
       "conversation_id": "c-9", "sequence": sequence, "data": data}
      for event_id, kind, at, sequence, data in (
          ("e-101", "conversation.created", "2026-11-24T09:59:30Z", 1,
           {"group_id": "g-sales", "channel": "web", "priority": "high",
            "labels": ["vip", "billing"],
            "attributes": {"order_id": "A-1042", "items": 3, "cart_total": 129.5,
                           "returning": True}}),
          # An internal note by ag-2 mentioning ag-1.
          ("e-102", "message.created", "2026-11-24T10:01:00Z", 5,
           {"author": "agent", "agent_id": "ag-2", "mentions": ["ag-1"]}),
          ("e-103", "conversation.updated", "2026-11-24T10:02:00Z", 6,
           {"priority": "urgent", "attributes": {"items": 4, "returning": None}}),
          ("e-104", "conversation.read", "2026-11-24T10:03:00Z", 7, {"agent_id": "ag-1"}),
          ("e-105", "conversation.snoozed", "2026-11-24T10:04:00Z", 8,
           {"until": "2026-11-24T12:00:00Z"}),
          ("e-106", "conversation.unsnoozed", "2026-11-24T11:00:00Z", 9, {}),
      )),
)
EXAMPLE_UPDATE: dict[str, Any] = {
    "update_id": "8c4e5bb0f35a4a7c9e0d7b1a2f6c3d90", "account_id": "acc-1",
    "agent_id": "ag-2", "conversation_id": "c-9", "seq": 42,
    "categories": ["all", "mine", "primary"], "added": ["mine", "primary"],
    "removed": ["new"], "counts": {"all": 3, "new": 1, "mine": 1, "primary": 2, "resolved": 7},
    "unread": True, "unread_counts": {"all": 2, "new": 1, "mine": 1, "primary": 2},
    "cause_event_id": "e-123", "rules_version": EXAMPLE_RULES_VERSION,
    "occurred_at": "2026-11-24T10:00:00Z",
}
EXAMPLE_SNAPSHOT_REQUESTS: tuple[dict[str, Any], ...] = (
    {"account_id": "acc-1", "agent_id": "ag-2"},
    {"account_id": "acc-1", "agent_id": "ag-2", "categories": ["new", "mine"],
     "after": "c-4", "limit": 500},
)
EXAMPLE_SNAPSHOT_REPLY: dict[str, Any] = {
    "account_id": "acc-1", "agent_id": "ag-2", "seq": 42,
    "rules_version": EXAMPLE_RULES_VERSION,
    "counts": {"all": 3, "new": 1, "mine": 1, "primary": 2, "resolved": 7},
    "unread_counts": {"all": 2, "new": 1, "mine": 1, "primary": 2},
    "conversations": {"c-4": ["all", "new", "primary"], "c-9": ["all", "mine", "primary"]},
    "unread": ["c-4", "c-9"],
    "next_after": None,
}
EXAMPLE_VIEWS_CHECK_REQUEST: dict[str, Any] = {
    "account_id": "acc-1",
    "views": [{"view_id": "vip-waiting", "name": "VIP waiting",
               "when": {"all": [{"category": "new"},
                                {"fact": "conversation.labels", "contains": "vip"}]}}]}
EXAMPLE_VIEWS_CHECK_REPLY: dict[str, Any] = {
    "problems": [],
    "preview": {"vip-waiting": {"ag-1": {"count": 2, "conversations": ["c-4", "c-9"]},
                                "ag-2": {"count": 2, "conversations": ["c-4", "c-9"]}}}}
EXAMPLE_EXPLAIN_REQUEST: dict[str, Any] = {
    "account_id": "acc-1", "agent_id": "ag-2", "conversation_id": "c-9"}
EXAMPLE_EXPLAIN_REPLY: dict[str, Any] = {
    "account_id": "acc-1", "agent_id": "ag-2", "conversation_id": "c-9",
    "rules_version": EXAMPLE_RULES_VERSION,
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


def trace_example(raw: Mapping[str, Any]) -> dict[str, str]:
    """Trace headers as the worker copies them (a failure here if they are not valid)."""
    trace = trace_context(raw)
    if trace is None:
        raise ValueError(f"not a valid trace context: {raw}")
    return trace.headers()


# W3C's own example: on the event e-123 and on the update it caused.
EXAMPLE_TRACE = trace_example({
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"})
# On a snapshot request and its reply.
EXAMPLE_REQUEST_TRACE = trace_example({
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})


def example(model: Any, raw: Mapping[str, Any]) -> dict[str, Any]:
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
