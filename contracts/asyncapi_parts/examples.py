"""The examples of the AsyncAPI document (:mod:`contracts.asyncapi`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

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
)
EXAMPLE_UPDATE: dict[str, Any] = {
    "update_id": "8c4e5bb0f35a4a7c9e0d7b1a2f6c3d90", "account_id": "acc-1",
    "agent_id": "ag-2", "conversation_id": "c-9", "seq": 42,
    "categories": ["all", "mine", "primary"], "added": ["mine", "primary"],
    "removed": ["new"], "counts": {"all": 3, "new": 1, "mine": 1, "primary": 2, "resolved": 7},
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
    "conversations": {"c-4": ["all", "new", "primary"], "c-9": ["all", "mine", "primary"]},
    "next_after": None,
}
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
