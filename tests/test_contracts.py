"""The event and update contracts: what is accepted, what is bad input and why."""

import json
from datetime import UTC, datetime
from typing import get_args

import pytest
from pydantic import ValidationError

from contracts import (
    AgentAssigned,
    BadEvent,
    BadRequest,
    CategoryUpdate,
    ConversationCreated,
    ConversationRead,
    ConversationSnoozed,
    ConversationTransferred,
    ConversationUnsnoozed,
    ConversationUpdated,
    MessageCreated,
    SnapshotReply,
    agent_ids,
    parse_event,
    parse_request,
)
from contracts.asyncapi_parts.examples import EXAMPLE_SNAPSHOT_REPLY, EXAMPLE_UPDATE
from contracts.asyncapi_parts.messages import messages
from contracts.events import EVENT_TYPES, PRIORITIES, Priority
from contracts.ids import TruncatedBody
from contracts.schema import SCHEMA_DIR, render, schemas
from worker.observability import reason_family

ASSIGNED = {"event_id": "e-123", "type": "conversation.assigned", "account_id": "acc-1",
            "occurred_at": "2026-11-24T10:00:00Z", "conversation_id": "c-9", "sequence": 4,
            "data": {"agent_id": "ag-2"}}


def body(**changes: object) -> bytes:
    event = {**ASSIGNED, **changes}
    return json.dumps({k: v for k, v in event.items() if v is not None}).encode()


def test_spec_example_parses_and_unknown_fields_are_ignored() -> None:
    event = parse_event(body(extra_field={"x": 1}))
    assert isinstance(event, AgentAssigned)
    assert (event.event_id, event.account_id, event.conversation_id, event.sequence) == (
        "e-123", "acc-1", "c-9", 4)
    assert event.data.agent_id == "ag-2"


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{nope", "invalid JSON"),
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b"[1, 2]", "(event)"),
    (body(type="conversation.exploded"), "unknown event type 'conversation.exploded'"),
    (body(type=None), "type: Field required"),
    (body(event_id=None), "event_id: Field required"),
    (body(conversation_id=None), "conversation_id: Field required"),
    (body(sequence="4"), "sequence: Input should be a valid integer"),
    (body(sequence=-1), "sequence: Input should be greater than or equal to 0"),
    (body(sequence=10**30), "sequence"),
    (body(account_id="acc.1"), "account_id: String should match pattern"),
    (body(account_id="acc*"), "account_id"),
    (body(account_id="x" * 129), "account_id"),
    (body(data={"agent_id": "ag#2"}), "data.agent_id"),
    (body(data={}), "data.agent_id: Field required"),
    (body(occurred_at="yesterday"), "occurred_at"),
    (b"[" * 5000 + b"]" * 5000, "invalid JSON"),
])
def test_bad_input_names_what_is_wrong(raw: bytes, reason: str) -> None:
    with pytest.raises(BadEvent) as caught:
        parse_event(raw)
    assert reason in caught.value.reason


def test_size_limit_is_checked_before_parsing() -> None:
    oversized = b"{" + b" " * 70_000 + b"}"  # would be invalid JSON too: size wins
    expected = "message too large: 70002 bytes exceeds the limit of 65536"
    with pytest.raises(BadEvent, match=expected):
        parse_event(oversized)
    assert parse_event(body(), max_bytes=len(body())).event_id == "e-123"


def test_a_truncated_body_is_refused_as_too_large_whatever_it_holds() -> None:
    """What a receiver kept of a body over the limit: never parsed (a valid event cut
    short could even parse), refused naming the declared size and the cut, with the
    same words for events and requests."""
    kept = TruncatedBody(body(), 5_000_000)
    expected = (f"message too large: 5000000 bytes exceeds the limit of 65536; the body "
                f"was not kept: this message carries only its first {len(body())} bytes")
    with pytest.raises(BadEvent) as event:
        parse_event(kept)
    with pytest.raises(BadRequest) as request:
        parse_request(kept, "no-such-kind")
    assert event.value.reason == request.value.reason == expected
    assert reason_family(expected) == "too_large"


def test_message_author_agent_needs_agent_id() -> None:
    with pytest.raises(BadEvent, match=r"data.agent_id: Field required \(author is .agent.\)"):
        parse_event(body(type="message.created", data={"author": "agent"}))
    event = parse_event(body(type="message.created", data={"author": "visitor"}))
    assert isinstance(event, MessageCreated)
    assert event.data.agent_id is None


def test_transfer_needs_exactly_one_target() -> None:
    with pytest.raises(BadEvent, match="exactly one"):
        parse_event(body(type="conversation.transferred", data={}))
    with pytest.raises(BadEvent, match="exactly one"):
        parse_event(body(type="conversation.transferred",
                         data={"to_agent_id": "a", "to_group_id": "g"}))
    event = parse_event(body(type="conversation.transferred", data={"to_group_id": "g-1"}))
    assert isinstance(event, ConversationTransferred)
    assert event.data.to_group_id == "g-1"


def test_empty_data_events_need_no_data_field() -> None:
    event = parse_event(body(type="conversation.resolved", data=None))
    assert event.type == "conversation.resolved"


def test_account_updated_needs_a_valid_plan() -> None:
    raw = {**ASSIGNED, "type": "account.updated", "data": {"plan": "gold", "agents": []}}
    raw.pop("conversation_id")
    with pytest.raises(BadEvent, match=r"data\.plan"):
        parse_event(json.dumps(raw).encode())


# The contract allows ids of 128 characters, but an update's routing key is
# "<account_id>.<agent_id>" and AMQP carries at most 255 bytes of it.
LONG_ACCOUNT, LONG_AGENT = "a" * 128, "g" * 128


@pytest.mark.parametrize("event", [
    {"data": {"agent_id": LONG_AGENT}},
    {"type": "message.created", "data": {"author": "agent", "agent_id": LONG_AGENT}},
    {"type": "conversation.transferred", "data": {"to_agent_id": LONG_AGENT}},
    {"type": "account.updated", "conversation_id": None,
     "data": {"plan": "pro", "agents": ["ag-1", LONG_AGENT], "groups": {}}},
    {"type": "account.updated", "conversation_id": None,
     "data": {"plan": "pro", "agents": ["ag-1"], "groups": {"g-1": [LONG_AGENT]}}},
    {"type": "message.created",
     "data": {"author": "agent", "agent_id": "ag-1", "mentions": ["ag-2", LONG_AGENT]}},
    {"type": "conversation.read", "data": {"agent_id": LONG_AGENT}},
], ids=["assigned", "agent message", "transfer", "snapshot agent", "group member", "mention",
        "reader"])
def test_an_agent_whose_routing_key_amqp_cannot_carry_is_bad_input(
        event: dict[str, object]) -> None:
    with pytest.raises(BadEvent, match="longer than AMQP's 255 bytes"):
        parse_event(body(account_id=LONG_ACCOUNT, **event))


def test_routing_keys_up_to_255_bytes_pass() -> None:
    # 126 + "." + 128 = 255; a visitor's agent_id is ignored, so it names no agent.
    assert parse_event(body(account_id="a" * 126, data={"agent_id": LONG_AGENT}))
    assert parse_event(body(account_id=LONG_ACCOUNT, type="message.created",
                            data={"author": "visitor", "agent_id": LONG_AGENT}))
    assert parse_event(body(account_id=LONG_ACCOUNT, data={"agent_id": "g" * 126}))


def test_checked_in_json_schemas_are_up_to_date() -> None:
    for name, schema in schemas().items():
        path = SCHEMA_DIR / name
        assert path.read_text(encoding="utf-8") == render(schema), (
            f"{path} is stale: run `python -m contracts.schema`")


def test_the_event_schema_describes_every_event_type() -> None:
    """Each type has its own definition in event.schema.json, like the others, and the
    AsyncAPI document an example of each type the contract grew with."""
    schema = schemas()["event.schema.json"]
    mapping = schema["discriminator"]["mapping"]
    assert set(mapping) == set(EVENT_TYPES)
    for kind, ref in mapping.items():
        definition = schema["$defs"][ref.removeprefix("#/$defs/")]
        assert definition["properties"]["type"]["const"] == kind
    examples = {example["name"] for example in messages()["event"]["examples"]}
    assert {"conversation.created", "conversation.updated", "conversation.snoozed",
            "conversation.unsnoozed", "conversation.read", "message.created"} <= examples


def test_the_schema_of_an_update_shows_no_defaults_and_closes_id_maps() -> None:
    """A field left out of conversation.updated keeps its value, so the schema shows no
    default for it; a map keyed by ids refuses other keys, as the models do."""
    definitions = schemas()["event.schema.json"]["$defs"]
    changes = definitions["ConversationChanges"]["properties"]
    assert set(changes) == {"channel", "priority", "labels", "attributes"}
    assert not [name for name, field in changes.items() if "default" in field]
    for attributes in (changes["attributes"],
                       definitions["ConversationCreatedData"]["properties"]["attributes"]):
        assert attributes["maxProperties"] == 32
        assert attributes["additionalProperties"] is False
    assert definitions["ConversationCreatedData"]["properties"]["priority"]["enum"] == [
        "none", "low", "medium", "high", "urgent"]


CREATED = {**ASSIGNED, "type": "conversation.created", "data": {}}


def created(**data: object) -> bytes:
    return json.dumps({**CREATED, "data": data}).encode()


def test_attribute_values_keep_their_json_types() -> None:
    """An integer stays an integer, a number with a fraction or an exponent a float
    (3.0 too), a boolean a boolean, text text: rules compare them as given."""
    raw = (b'{"event_id": "e-1", "type": "conversation.created", "account_id": "acc-1", '
           b'"occurred_at": "2026-11-24T10:00:00Z", "conversation_id": "c-9", "data": '
           b'{"attributes": {"int": 3, "float": 3.0, "exp": 1e3, "neg": -0.5, "yes": true, '
           b'"no": false, "zero": 0, "one": 1, "text": "3", "empty": "", '
           b'"max": 9223372036854775807, "min": -9223372036854775808}}}')
    event = parse_event(raw)
    assert isinstance(event, ConversationCreated)
    attributes = event.data.attributes
    typed = {key: (type(value), value) for key, value in attributes.items()}
    assert typed == {
        "int": (int, 3), "float": (float, 3.0), "exp": (float, 1000.0),
        "neg": (float, -0.5), "yes": (bool, True), "no": (bool, False), "zero": (int, 0),
        "one": (int, 1), "text": (str, "3"), "empty": (str, ""),
        "max": (int, 2**63 - 1), "min": (int, -(2**63))}


@pytest.mark.parametrize("value", [b"9223372036854775808", b"-9223372036854775809",
                                   b"18446744073709551616", b"1" + b"0" * 40])
def test_an_integer_attribute_beyond_64_bits_is_bad_input_not_a_float(value: bytes) -> None:
    raw = created(attributes={"n": 0}).replace(b'"n": 0', b'"n": ' + value)
    with pytest.raises(BadEvent) as caught:
        parse_event(raw)
    assert caught.value.reason == (
        "data.attributes.n: must be an integer from -9223372036854775808 to "
        f"9223372036854775807 (signed 64-bit), got {'a smaller' if b'-' in value else 'a larger'}"
        " one")


ATTRIBUTE_VALUES = ("must be a string of at most 256 characters, an integer, a number or a "
                    "boolean")


@pytest.mark.parametrize(("value", "reason"), [
    ({"nested": 1}, ATTRIBUTE_VALUES),
    ([1, 2], ATTRIBUTE_VALUES),
    ([], ATTRIBUTE_VALUES),
    (None, f"{ATTRIBUTE_VALUES} (null only removes an attribute, in conversation.updated)"),
    ("x" * 257, "must be a string of at most 256 characters, got 257 characters"),
], ids=["object", "array", "empty array", "null", "257 characters"])
def test_a_bad_attribute_value_is_one_clear_line(value: object, reason: str) -> None:
    with pytest.raises(BadEvent) as caught:
        parse_event(created(attributes={"ok": "fine", "a": value}))
    assert caught.value.reason == f"data.attributes.a: {reason}"


def test_a_bad_attribute_value_in_an_update_says_null_removes() -> None:
    raw = body(type="conversation.updated", data={"attributes": {"a": {"x": 1}, "b": None}})
    with pytest.raises(BadEvent) as caught:
        parse_event(raw)
    assert caught.value.reason == f"data.attributes.a: {ATTRIBUTE_VALUES}, or null to remove it"


@pytest.mark.parametrize(("literal", "spelled"), [
    (b"NaN", "NaN"), (b"Infinity", "Infinity"), (b"-Infinity", "-Infinity"),
    (b"1e400", "Infinity"), (b"-1e400", "-Infinity"),
])
def test_nan_and_infinity_are_bad_input(literal: bytes, spelled: str) -> None:
    """The JSON parser takes NaN and Infinity (not JSON, but common) and numbers too
    large for a float: none of them is a finite number."""
    raw = created(attributes={"n": 0}).replace(b'"n": 0', b'"n": ' + literal)
    with pytest.raises(BadEvent) as caught:
        parse_event(raw)
    assert caught.value.reason == f"data.attributes.n: must be a finite number, got {spelled}"


def test_attribute_keys_named_like_authors_are_named_in_full() -> None:
    """The author tag of message.created is dropped from paths; an attribute key that
    happens to be "agent" or "visitor" is not that tag."""
    with pytest.raises(BadEvent) as caught:
        parse_event(created(attributes={"visitor": "x" * 300, "agent": [1]}))
    assert caught.value.reason == (
        "data.attributes.visitor: must be a string of at most 256 characters, got 300 "
        f"characters; data.attributes.agent: {ATTRIBUTE_VALUES}")



# -- the conversation's details, snooze, reads and mentions ----------------------------

def test_conversation_created_carries_its_details() -> None:
    event = parse_event(created(group_id="g-1", channel="web", priority="urgent",
                                labels=["vip", "billing"],
                                attributes={"order": "A-1", "items": 2, "vip": True}))
    assert isinstance(event, ConversationCreated)
    data = event.data
    assert (data.group_id, data.channel, data.priority) == ("g-1", "web", "urgent")
    assert data.labels == ["vip", "billing"]
    assert data.attributes == {"order": "A-1", "items": 2, "vip": True}


def test_conversation_created_details_are_optional() -> None:
    for raw in (created(), created(channel=None), body(type="conversation.created", data=None)):
        event = parse_event(raw)
        assert isinstance(event, ConversationCreated)
        data = event.data
        assert (data.channel, data.priority, data.labels, data.attributes) == (
            None, "none", [], {})


def test_priorities_are_the_contract_order() -> None:
    assert PRIORITIES == get_args(Priority) == ("none", "low", "medium", "high", "urgent")
    for priority in PRIORITIES:
        event = parse_event(created(priority=priority))
        assert isinstance(event, ConversationCreated)
        assert event.data.priority == priority


def test_conversation_updated_changes_only_the_fields_given() -> None:
    """Left out: unchanged (not in model_fields_set); channel null: no channel; an
    attribute null: removed (kept as None for the worker to merge)."""
    event = parse_event(body(type="conversation.updated",
                             data={"channel": None, "labels": [],
                                   "attributes": {"items": 4, "gone": None, "ratio": 0.5}}))
    assert isinstance(event, ConversationUpdated)
    data = event.data
    assert data.model_fields_set == {"channel", "labels", "attributes"}
    assert (data.channel, data.labels) == (None, [])
    assert data.attributes == {"items": 4, "gone": None, "ratio": 0.5}
    nothing = parse_event(body(type="conversation.updated", data={}))
    assert isinstance(nothing, ConversationUpdated)
    assert nothing.data.model_fields_set == set()
    priority = parse_event(body(type="conversation.updated", data={"priority": "low"}))
    assert isinstance(priority, ConversationUpdated)
    assert (priority.data.model_fields_set, priority.data.priority) == ({"priority"}, "low")


def test_conversation_updated_needs_data() -> None:
    with pytest.raises(BadEvent, match=r"^data: Field required$"):
        parse_event(body(type="conversation.updated", data=None))


@pytest.mark.parametrize(("until", "expected"), [
    ("2026-11-24T12:00:00Z", datetime(2026, 11, 24, 12, tzinfo=UTC)),
    ("2026-11-24T14:00:00+02:00", datetime(2026, 11, 24, 12, tzinfo=UTC)),
    ("2026-11-24T12:00:00.250000Z", datetime(2026, 11, 24, 12, 0, 0, 250000, tzinfo=UTC)),
])
def test_conversation_snoozed_until_a_moment_with_a_timezone(
        until: str, expected: datetime) -> None:
    event = parse_event(body(type="conversation.snoozed", data={"until": until}))
    assert isinstance(event, ConversationSnoozed)
    assert event.data.until == expected
    assert event.data.until is not None and event.data.until.utcoffset() is not None


@pytest.mark.parametrize("data", [None, {}, {"until": None}],
                         ids=["no data", "empty data", "until null"])
def test_conversation_snoozed_without_until_waits_for_an_event(
        data: dict[str, object] | None) -> None:
    event = parse_event(body(type="conversation.snoozed", data=data))
    assert isinstance(event, ConversationSnoozed)
    assert event.data.until is None


@pytest.mark.parametrize("data", [None, {}], ids=["no data", "empty data"])
def test_conversation_unsnoozed_needs_nothing(data: dict[str, object] | None) -> None:
    event = parse_event(body(type="conversation.unsnoozed", data=data))
    assert isinstance(event, ConversationUnsnoozed)


def test_conversation_read_names_the_reader() -> None:
    event = parse_event(body(type="conversation.read", data={"agent_id": "ag-7"}))
    assert isinstance(event, ConversationRead)
    assert event.data.agent_id == "ag-7"
    assert agent_ids(event) == ["ag-7"]


def test_an_agent_message_mentions_agents() -> None:
    event = parse_event(body(type="message.created",
                             data={"author": "agent", "agent_id": "ag-1",
                                   "mentions": ["ag-2", "ag-3"]}))
    assert isinstance(event, MessageCreated)
    assert event.data.author == "agent" and event.data.mentions == ["ag-2", "ag-3"]
    assert agent_ids(event) == ["ag-1", "ag-2", "ag-3"]
    plain = parse_event(body(type="message.created", data={"author": "agent", "agent_id": "ag-1"}))
    assert isinstance(plain, MessageCreated)
    assert plain.data.author == "agent" and plain.data.mentions == []
    assert agent_ids(plain) == ["ag-1"]


def test_a_visitor_message_mentions_nobody() -> None:
    """Only an agent's internal note mentions: a visitor's mentions are ignored like any
    unknown field, and name no agent."""
    event = parse_event(body(type="message.created",
                             data={"author": "visitor", "mentions": ["ag-2"]}))
    assert isinstance(event, MessageCreated)
    assert agent_ids(event) == []


def test_every_limit_holds_at_its_bound() -> None:
    assert parse_event(created(labels=[f"l-{i}" for i in range(50)],
                               attributes={f"k-{i}": "x" * 256 for i in range(32)}))
    assert parse_event(body(type="conversation.updated",
                            data={"attributes": {f"k-{i}": None for i in range(32)}}))
    assert parse_event(body(type="message.created",
                            data={"author": "agent", "agent_id": "ag-1",
                                  "mentions": [f"ag-{i}" for i in range(50)]}))


AGENT_NOTE = {"author": "agent", "agent_id": "ag-1"}


@pytest.mark.parametrize(("event", "reason"), [
    (created(labels=[f"l-{i}" for i in range(51)]),
     "data.labels: List should have at most 50 items after validation, not 51"),
    (body(type="conversation.updated", data={"labels": [f"l-{i}" for i in range(51)]}),
     "data.labels: List should have at most 50 items after validation, not 51"),
    (created(labels=["vip", "not.an.id"]),
     "data.labels.1: String should match pattern '^[A-Za-z0-9_:\\-]{1,128}$'"),
    (created(labels="vip"), "data.labels: Input should be a valid array"),
    (created(attributes={f"k-{i}": i for i in range(33)}),
     "data.attributes: Dictionary should have at most 32 items after validation"),
    (body(type="conversation.updated", data={"attributes": {f"k-{i}": None for i in range(33)}}),
     "data.attributes: Dictionary should have at most 32 items after validation"),
    (created(attributes={"bad key": 1}), "data.attributes.bad key.[key]: String should match"),
    (created(attributes={"a": "x" * 257}),
     "data.attributes.a: must be a string of at most 256 characters, got 257 characters"),
    (created(attributes={"a": {"b": 1}}), f"data.attributes.a: {ATTRIBUTE_VALUES}"),
    (created(attributes=[["a", 1]]), "data.attributes: Input should be an object"),
    (created(priority="critical"),
     "data.priority: Input should be 'none', 'low', 'medium', 'high' or 'urgent'"),
    (created(priority=None), "data.priority: Input should be 'none', 'low'"),
    (body(type="conversation.updated", data={"priority": "HIGH"}),
     "data.priority: Input should be 'none', 'low'"),
    (created(channel="web.site"), "data.channel: String should match pattern"),
    (body(type="conversation.snoozed", data={"until": "2026-11-24T12:00:00"}),
     "data.until: Input should have timezone info"),
    (body(type="conversation.snoozed", data={"until": "tomorrow"}),
     "data.until: Input should be a valid datetime"),
    (body(type="message.created",
          data={**AGENT_NOTE, "mentions": [f"ag-{i}" for i in range(51)]}),
     "data.mentions: List should have at most 50 items after validation, not 51 "
     "(author is 'agent')"),
    (body(type="message.created", data={**AGENT_NOTE, "mentions": ["ag 2"]}),
     "data.mentions.0: String should match pattern"),
    (body(type="conversation.read", data={}), "data.agent_id: Field required"),
    (body(type="conversation.read", data=None), "data: Field required"),
    (body(type="conversation.read", data={"agent_id": None}),
     "data.agent_id: Input should be a valid string"),
], ids=["51 labels", "51 labels changed", "bad label id", "labels not a list",
        "33 attributes", "33 attribute changes", "bad attribute key", "257 characters",
        "nested value", "attributes not an object", "unknown priority", "null priority",
        "priority in capitals", "bad channel", "until without timezone", "until not a date",
        "51 mentions", "bad mention", "read without agent_id", "read without data",
        "read by null"])
def test_every_limit_is_bad_input_with_a_clear_reason(event: bytes, reason: str) -> None:
    with pytest.raises(BadEvent) as caught:
        parse_event(event)
    assert caught.value.reason.startswith(reason), caught.value.reason


def test_updates_and_snapshot_replies_carry_unread_marks() -> None:
    update = CategoryUpdate.model_validate(EXAMPLE_UPDATE)
    assert (update.unread, update.unread_counts["all"]) == (True, 2)
    for missing in ("unread", "unread_counts"):
        with pytest.raises(ValidationError, match=missing):
            CategoryUpdate.model_validate(
                {k: v for k, v in EXAMPLE_UPDATE.items() if k != missing})
    reply = SnapshotReply.model_validate(EXAMPLE_SNAPSHOT_REPLY)
    assert (reply.unread, reply.unread_counts["primary"]) == (["c-4", "c-9"], 2)
    assert set(reply.unread) <= set(reply.conversations)
