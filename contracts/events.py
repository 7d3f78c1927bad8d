"""Conversation events published upstream to ``chat.events`` (docs/contract.md)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from contracts.ids import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_ROUTING_KEY,
    MAX_SEQUENCE,
    EventId,
    Id,
    contract,
    too_large,
    too_large_reason,
)
from contracts.views import PersonalViewsData, SharedViewsData


class BadEvent(ValueError):  # noqa: N818 - named for what it is, not how it is used
    """An input message that can never be processed: it belongs in the dead-letter queue."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason




@contract
class EmptyData:
    pass


@contract
class AccountSnapshot:
    plan: Literal["free", "standard", "pro"]
    agents: list[Id]
    groups: dict[Id, list[Id]] = Field(default_factory=dict)


# The facts inboxes sort by (docs/contract.md, "Conversation details"). Priorities in
# their order: rules compare them (``at_least: high``).
PRIORITIES: tuple[str, ...] = ("none", "low", "medium", "high", "urgent")
Priority = Literal["none", "low", "medium", "high", "urgent"]
MAX_LABELS = 50
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_TEXT = 256
MAX_MENTIONS = 50
# An integer attribute is a signed 64-bit integer, like a sequence. The stores keep a
# conversation's fields as JSON written by orjson, which cannot write an integer of
# 2**64 or more: a larger one would stop the worker when it commits, instead of being
# bad input here.
MIN_ATTRIBUTE_INTEGER, MAX_ATTRIBUTE_INTEGER = -(2**63), 2**63 - 1


def _not_an_integer(value: object) -> object:
    """A JSON integer never becomes a number (float) attribute: one outside the integer
    range would otherwise be rounded into a float silently. (True and false never get
    here: the boolean member of the union takes them first.)"""
    if isinstance(value, int):
        raise ValueError("an integer outside the 64-bit range")
    return value


# An attribute value: text (bounded), an integer, a (finite) number or a boolean. The
# union is tried in this order in strict mode, so true stays a boolean, 3 an integer and
# 3.0 a number.
AttributeValue = (
    bool
    | Annotated[int, Field(ge=MIN_ATTRIBUTE_INTEGER, le=MAX_ATTRIBUTE_INTEGER)]
    | Annotated[float, BeforeValidator(_not_an_integer), Field(allow_inf_nan=False)]
    | Annotated[str, StringConstraints(max_length=MAX_ATTRIBUTE_TEXT)])
Labels = Annotated[list[Id], Field(max_length=MAX_LABELS)]
Attributes = Annotated[dict[Id, AttributeValue], Field(max_length=MAX_ATTRIBUTES)]
# ``conversation.updated``: a null removes the key.
AttributeChanges = Annotated[dict[Id, AttributeValue | None], Field(max_length=MAX_ATTRIBUTES)]

# The schema's words for the details (contracts/schema, contracts/asyncapi.yaml).
_CHANNEL = "The channel the conversation came through (an id), or null for none."
_PRIORITY = "One of none, low, medium, high, urgent (in that order)."
_LABELS = (f"A set of label ids (a repeated id counts once), at most {MAX_LABELS}.")
_ATTRIBUTE_VALUES = (f"each value a string of at most {MAX_ATTRIBUTE_TEXT} characters, an "
                     f"integer (signed 64-bit), a finite number or a boolean")
_ATTRIBUTES = (f"Custom attributes: at most {MAX_ATTRIBUTES} keys, each an id; "
               f"{_ATTRIBUTE_VALUES}.")


@contract
class ConversationCreatedData:
    group_id: Id | None = None
    channel: Id | None = Field(default=None, description=_CHANNEL)
    priority: Priority = Field(default="none", description=_PRIORITY)
    labels: Labels = Field(default_factory=list, description=_LABELS)
    attributes: Attributes = Field(default_factory=dict, description=_ATTRIBUTES)


def _given_or_not(schema: dict[str, Any]) -> None:
    # A field left out of ``conversation.updated`` keeps its value: no default to show.
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class ConversationChanges(BaseModel):
    """What ``conversation.updated`` changes: only the fields given, each replacing the
    old value (``channel`` null: no channel; ``labels``: the whole set), but
    ``attributes``, which merges key by key: a value sets that key, null removes it.
    A field left out keeps its value."""

    # A model, not a dataclass, because "not given" and "null" differ here: the worker
    # reads ``model_fields_set``.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True,
                              json_schema_extra=_given_or_not)

    channel: Id | None = Field(default=None, description=_CHANNEL)
    priority: Priority = Field(default="none", description=_PRIORITY)
    labels: Labels = Field(default_factory=list, description=_LABELS)
    attributes: AttributeChanges = Field(
        default_factory=dict,
        description=(f"Merged into the custom attributes key by key: {_ATTRIBUTE_VALUES}, "
                     f"or null to remove that key. At most {MAX_ATTRIBUTES} keys, and at "
                     f"most {MAX_ATTRIBUTES} once merged."))


@contract
class SnoozeData:
    # Until when (with its offset); none: until an agent or the visitor wakes it.
    until: Annotated[AwareDatetime, Field(strict=False)] | None = Field(
        default=None,
        description=("When the snooze ends by itself: a date-time with a timezone (Z or an "
                     "offset). Null or left out: only an event wakes it."))


@contract
class VisitorMessageData:
    author: Literal["visitor"]
    agent_id: Id | None = None  # ignored: the visitor wrote it


@contract
class AgentMessageData:
    author: Literal["agent"]
    agent_id: Id
    # Agents the message mentions (an internal note): unread for them until they read.
    mentions: Annotated[list[Id], Field(max_length=MAX_MENTIONS)] = Field(
        default_factory=list,
        description=(f"Agents an internal note mentions (ids), at most {MAX_MENTIONS}: "
                     f"the conversation is unread for each until they read it."))


# Told apart by ``author``: "agent_id is required from an agent" is then part of the
# schema (JSON Schema users see it too), and checked without a Python validator, which
# cost a third of parsing the most common event.
MessageCreatedData = Annotated[VisitorMessageData | AgentMessageData,
                               Field(discriminator="author")]


@contract
class AgentData:
    agent_id: Id


@contract
class TransferData:
    to_agent_id: Id | None = None
    to_group_id: Id | None = None

    @model_validator(mode="after")
    def _exactly_one_target(self) -> TransferData:
        if (self.to_agent_id is None) == (self.to_group_id is None):
            raise ValueError("exactly one of to_agent_id or to_group_id is required")
        return self


def _utc_if_naive(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@contract
class _Envelope:
    event_id: EventId
    account_id: Id
    # JSON has no datetime type: an ISO 8601 string is the strict form here; one
    # without an offset is UTC (an account's events are compared in time).
    occurred_at: Annotated[datetime, Field(strict=False), AfterValidator(_utc_if_naive)]
    sequence: Annotated[int, Field(ge=0, le=MAX_SEQUENCE)] | None = None


@contract
class AccountEvent(_Envelope):
    """An event about the account as a whole; ``sequence`` counts per account."""


@contract
class ConversationEvent(_Envelope):
    """An event about one conversation; ``sequence`` counts per conversation."""

    conversation_id: Id


@contract
class AccountUpdated(AccountEvent):
    type: Literal["account.updated"]
    data: AccountSnapshot


@contract
class AccountViewsUpdated(AccountEvent):
    type: Literal["account.views_updated"]
    data: SharedViewsData


@contract
class AgentViewsUpdated(AccountEvent):
    type: Literal["agent.views_updated"]
    data: PersonalViewsData


@contract
class ConversationCreated(ConversationEvent):
    type: Literal["conversation.created"]
    data: ConversationCreatedData = Field(default_factory=ConversationCreatedData)


@contract
class MessageCreated(ConversationEvent):
    type: Literal["message.created"]
    data: MessageCreatedData


@contract
class AgentAssigned(ConversationEvent):
    type: Literal["conversation.assigned"]
    data: AgentData


@contract
class AgentUnassigned(ConversationEvent):
    type: Literal["conversation.unassigned"]
    data: AgentData


@contract
class ConversationTransferred(ConversationEvent):
    type: Literal["conversation.transferred"]
    data: TransferData


@contract
class ConversationResolved(ConversationEvent):
    type: Literal["conversation.resolved"]
    data: EmptyData = Field(default_factory=EmptyData)


@contract
class ConversationReopened(ConversationEvent):
    type: Literal["conversation.reopened"]
    data: EmptyData = Field(default_factory=EmptyData)


@contract
class ConversationDeleted(ConversationEvent):
    type: Literal["conversation.deleted"]
    data: EmptyData = Field(default_factory=EmptyData)


@contract
class ConversationUpdated(ConversationEvent):
    type: Literal["conversation.updated"]
    data: ConversationChanges


@contract
class ConversationSnoozed(ConversationEvent):
    type: Literal["conversation.snoozed"]
    data: SnoozeData = Field(default_factory=SnoozeData)


@contract
class ConversationUnsnoozed(ConversationEvent):
    type: Literal["conversation.unsnoozed"]
    data: EmptyData = Field(default_factory=EmptyData)


@contract
class ConversationRead(ConversationEvent):
    type: Literal["conversation.read"]
    data: AgentData


Event = Annotated[
    AccountUpdated
    | AccountViewsUpdated
    | AgentViewsUpdated
    | ConversationCreated
    | MessageCreated
    | AgentAssigned
    | AgentUnassigned
    | ConversationTransferred
    | ConversationResolved
    | ConversationReopened
    | ConversationDeleted
    | ConversationUpdated
    | ConversationSnoozed
    | ConversationUnsnoozed
    | ConversationRead,
    Field(discriminator="type"),
]

EVENT_TYPES: tuple[str, ...] = (
    "account.updated",
    "conversation.created",
    "message.created",
    "conversation.assigned",
    "conversation.unassigned",
    "conversation.transferred",
    "conversation.resolved",
    "conversation.reopened",
    "conversation.deleted",
    "conversation.updated",
    "conversation.snoozed",
    "conversation.unsnoozed",
    "conversation.read",
    "account.views_updated",
    "agent.views_updated",
)

AUTHORS = ("visitor", "agent")

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
# The core validator, called directly on the hot path: TypeAdapter.validate_json adds a
# Python-level wrapper per call (about a tenth of a replayed event's parsing cost).
_validate_event_json = EVENT_ADAPTER.validator.validate_json


def describe_validation_error(error: ValidationError) -> str:
    """One line naming every wrong field and why, e.g. ``data.agent_id: Field required``."""
    parts: list[str] = []
    for item in error.errors(include_url=False):
        kind = item["type"]
        # The discriminated unions add their tag as a path step: drop it for readability
        # (an author tag is said at the end instead: it tells why a field is needed).
        loc = [str(p) for p in item["loc"] if str(p) not in EVENT_TYPES]
        author = loc[1] if len(loc) > 1 and loc[0] == "data" and loc[1] in AUTHORS else None
        field = ".".join(p for p in loc if p != author) or "(event)"
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            ctx = item.get("ctx", {})
            discriminator = str(ctx.get("discriminator", "")).strip("'")
            where = f"{field}.{discriminator}" if loc else discriminator
            tag = str(ctx.get("tag", ""))[:64]
            if kind == "union_tag_not_found":
                parts.append(f"{where}: Field required")
            elif not loc:
                expected = ", ".join(EVENT_TYPES)
                parts.append(f"type: unknown event type {tag!r}; expected one of {expected}")
            else:
                parts.append(f"{where}: {tag!r} is not one of {ctx.get('expected_tags', '')}")
            continue
        if kind == "json_invalid":
            parts.append(f"invalid JSON: {item.get('ctx', {}).get('error', item['msg'])}")
            continue
        if kind == "model_type" and not item["loc"]:
            parts.append(f"event must be a JSON object, got {type(item['input']).__name__}")
            continue
        if len(loc) == 4 and loc[:2] == ["data", "attributes"] and loc[3] != "[key]":
            # One error per member of the value union (data.attributes.<key>.<member>):
            # one line for the value instead.
            field = ".".join(loc[:3])
            removable = bool(item["loc"]) and item["loc"][0] == "conversation.updated"
            said = f"{field}: {_attribute_value_problem(item['input'], removable)}"
            if said not in parts:
                parts.append(said)
            continue
        because = f" (author is {author!r})" if author else ""
        parts.append(f"{field}: {item['msg']}{because}")
    return "; ".join(parts)


def _attribute_value_problem(value: object, removable: bool) -> str:
    """Why a custom attribute's value is refused: the one rule it broke, if it is of a
    type attributes take, or else which values are allowed."""
    if isinstance(value, str):
        return (f"must be a string of at most {MAX_ATTRIBUTE_TEXT} characters, "
                f"got {len(value)} characters")
    if isinstance(value, float) and not math.isfinite(value):
        spelled = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
        return f"must be a finite number, got {spelled}"
    if isinstance(value, int) and not isinstance(value, bool):
        return (f"must be an integer from {MIN_ATTRIBUTE_INTEGER} to "
                f"{MAX_ATTRIBUTE_INTEGER} (signed 64-bit), got "
                f"{'a larger' if value > 0 else 'a smaller'} one")
    allowed = (f"must be a string of at most {MAX_ATTRIBUTE_TEXT} characters, an integer, "
               f"a number or a boolean")
    if removable:
        return f"{allowed}, or null to remove it"
    if value is None:
        return f"{allowed} (null only removes an attribute, in conversation.updated)"
    return allowed


def parse_event(body: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Event:
    """Decode one AMQP body into an event, or raise :class:`BadEvent` saying why.

    The size limit is checked before any parsing so an oversized body costs nothing.
    """
    if too_large(body, max_bytes):
        raise BadEvent(too_large_reason(body, max_bytes))
    try:
        event: Event = _validate_event_json(body)
    except ValidationError as exc:
        # The JSON parser refuses invalid UTF-8 anywhere in the body; say it plainly.
        # (Checked only on failure: decoding every good body first cost a copy each.)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise BadEvent(f"message is not valid UTF-8: byte {bad.start}: {bad.reason}",
                           ) from bad
        raise BadEvent(describe_validation_error(exc)) from exc
    if len(event.account_id) >= _ROUTING_KEY_CHECK_FROM:  # ids are ASCII: 1 char, 1 byte
        _check_routing_keys(event)
    return event


# An account id this long may leave no room in a routing key for an agent id of 128.
_ROUTING_KEY_CHECK_FROM = MAX_ROUTING_KEY - 128
_ONE_AGENT = (AgentData, AgentMessageData, PersonalViewsData)


def agent_ids(event: AccountEvent | ConversationEvent) -> list[str]:
    """Every agent id an event names (snapshot agents and group members, an assignee, a
    transfer target, an agent author and whom they mention, a reader)."""
    data: object = getattr(event, "data", None)  # every concrete event type has data
    if isinstance(data, AccountSnapshot):
        return [*data.agents, *(agent for members in data.groups.values() for agent in members)]
    if isinstance(data, AgentMessageData) and data.mentions:
        return [data.agent_id, *data.mentions]
    if isinstance(data, _ONE_AGENT):
        return [data.agent_id]
    if isinstance(data, TransferData) and data.to_agent_id is not None:
        return [data.to_agent_id]
    return []


def _check_routing_keys(event: Event) -> None:
    """Each agent's updates go out with routing key ``<account_id>.<agent_id>``: one
    that AMQP cannot carry would stop the worker at publish time, so the event is bad
    input instead (the contract allows two ids of 128 characters; their key would be 257)."""
    for agent_id in agent_ids(event):
        if len(event.account_id) + 1 + len(agent_id) > MAX_ROUTING_KEY:
            raise BadEvent(
                f"account_id ({len(event.account_id)} characters) and agent id "
                f"{agent_id[:20]!r}... ({len(agent_id)} characters) make a routing key "
                f"longer than AMQP's {MAX_ROUTING_KEY} bytes: updates for that agent "
                f"could not be published")


def parse_event_object(raw: Any) -> Event:
    """Validate an already decoded value (a rule test case, a generated event) as an
    event, exactly as if it had come over the wire: it is encoded as JSON first (strict
    validation of Python objects would want the dataclasses themselves)."""
    try:
        body = orjson.dumps(raw)
    except TypeError as exc:
        raise BadEvent(f"not a JSON value: {exc}") from exc
    return parse_event(body, max_bytes=max(DEFAULT_MAX_MESSAGE_BYTES, len(body)))
