"""The request/reply contract of ``inbox.requests``: what is a request, what is bad and why."""

import json
from collections.abc import Mapping

import pytest

from contracts import (
    BadEvent,
    BadRequest,
    ExplainReply,
    ExplainRequest,
    SnapshotReply,
    SnapshotRequest,
    parse_request,
)
from contracts.requests import DEFAULT_SNAPSHOT_LIMIT, MAX_SNAPSHOT_LIMIT

SNAPSHOT = {"account_id": "acc-1", "agent_id": "ag-2"}
EXPLAIN = {"account_id": "acc-1", "agent_id": "ag-2", "conversation_id": "c-9"}


def body(base: Mapping[str, object], **changes: object) -> bytes:
    merged = {**base, **changes}
    return json.dumps({k: v for k, v in merged.items() if v is not None}).encode()


def test_spec_snapshot_request_parses_with_defaults() -> None:
    request = parse_request(body(SNAPSHOT, extra={"x": 1}), "snapshot")
    assert isinstance(request, SnapshotRequest)
    assert (request.account_id, request.agent_id) == ("acc-1", "ag-2")
    assert (request.categories, request.after, request.limit) == (
        None, None, DEFAULT_SNAPSHOT_LIMIT)


def test_snapshot_request_with_filter_and_page() -> None:
    request = parse_request(
        body(SNAPSHOT, categories=["new", "mine"], after="c-4", limit=MAX_SNAPSHOT_LIMIT),
        "snapshot")
    assert (request.categories, request.after, request.limit) == (
        ["new", "mine"], "c-4", MAX_SNAPSHOT_LIMIT)


def test_explain_request_parses() -> None:
    request = parse_request(body(EXPLAIN), "explain")
    assert isinstance(request, ExplainRequest)
    assert request.conversation_id == "c-9"


@pytest.mark.parametrize(("raw", "kind", "reason"), [
    (b"{nope", "snapshot", "invalid JSON"),
    (b"\xff\xfe{}", "snapshot", "not valid UTF-8"),
    (b"[1, 2]", "snapshot", "request must be a JSON object, got list"),
    (body(SNAPSHOT, agent_id=None), "snapshot", "agent_id: Field required"),
    (body(SNAPSHOT, account_id="acc.1"), "snapshot", "account_id: String should match pattern"),
    (body(SNAPSHOT, agent_id="ag#2"), "snapshot", "agent_id"),
    (body(SNAPSHOT, categories=[]), "snapshot", "categories: List should have at least 1"),
    (body(SNAPSHOT, categories=["New"]), "snapshot", "categories.0: String should match"),
    (body(SNAPSHOT, categories="new"), "snapshot", "categories: Input should be a valid array"),
    (body(SNAPSHOT, limit=0), "snapshot", "limit: Input should be greater than or equal to 1"),
    (body(SNAPSHOT, limit=MAX_SNAPSHOT_LIMIT + 1), "snapshot", "limit: Input should be less"),
    (body(SNAPSHOT, limit="5"), "snapshot", "limit: Input should be a valid integer"),
    (body(SNAPSHOT, after="c*"), "snapshot", "after: String should match pattern"),
    (body(SNAPSHOT), "explain", "conversation_id: Field required"),
    (body(SNAPSHOT), "snapshots", "unknown request 'snapshots'; expected one of snapshot, explain"),
])
def test_bad_requests_name_what_is_wrong(raw: bytes, kind: str, reason: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request(raw, kind)
    assert reason in caught.value.reason


def test_bad_request_is_dead_lettered_like_a_bad_event() -> None:
    with pytest.raises(BadEvent):
        parse_request(b"{}", "explain")


def test_size_limit_is_checked_before_parsing() -> None:
    with pytest.raises(BadRequest, match="message too large: 70002 bytes exceeds the limit"):
        parse_request(b"{" + b" " * 70_000 + b"}", "snapshot")
    raw = body(SNAPSHOT)
    assert parse_request(raw, "snapshot", max_bytes=len(raw)).agent_id == "ag-2"


def test_spec_snapshot_reply_round_trips() -> None:
    reply = SnapshotReply(
        account_id="acc-1", agent_id="ag-2", seq=42, rules_version="abc",
        counts={"all": 3, "new": 1, "mine": 1, "primary": 2, "resolved": 7},
        conversations={"c-4": ["all", "new", "primary"], "c-9": ["all", "mine", "primary"]})
    raw = json.loads(reply.model_dump_json())
    assert raw["next_after"] is None
    assert list(raw["conversations"]) == ["c-4", "c-9"]
    assert SnapshotReply.model_validate_json(reply.model_dump_json()) == reply


def test_explain_reply_keeps_fact_types() -> None:
    reply = ExplainReply.model_validate_json(json.dumps({
        "account_id": "acc-1", "agent_id": "ag-2", "conversation_id": "c-9",
        "rules_version": "abc",
        "facts": {"agent.joined": True, "conversation.joined_count": 1,
                  "account.plan": "pro"},
        "categories": ["all", "mine"],
        "explanations": [{"name": "mine", "holds": True, "conditions": [
            {"file": "inbox.yaml", "line": 3, "condition": "agent.joined", "holds": True}]}],
    }))
    assert reply.facts == {"agent.joined": True, "conversation.joined_count": 1,
                           "account.plan": "pro"}
    assert type(reply.facts["agent.joined"]) is bool
    assert type(reply.facts["conversation.joined_count"]) is int
    assert reply.explanations[0].conditions[0].line == 3
