"""Requests downstream services send to ``inbox.requests``, and the worker's replies.

AMQP request/reply (docs/contract.md, "Requests"): a request is published to the direct
exchange ``inbox.requests`` with routing key ``snapshot`` or ``explain``, a ``reply_to``
(the requester's queue, or RabbitMQ's direct reply-to ``amq.rabbitmq.reply-to``) and a
``correlation_id``; the reply goes to ``reply_to`` with the same ``correlation_id``.
``reply_to`` and ``correlation_id`` are AMQP properties, not part of the body, so the
worker checks them itself; this module only judges the body.

A bad request is dead-lettered like a bad event, which is why :class:`BadRequest` is a
:class:`~contracts.events.BadEvent`: the worker's one dead-letter path serves both.
"""

from __future__ import annotations

from typing import Annotated, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from contracts.events import BadEvent
from contracts.ids import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_SEQUENCE,
    Id,
    too_large,
    too_large_reason,
)
from contracts.views import View

RequestKind = Literal["snapshot", "explain", "views.check"]
# The routing keys of ``inbox.requests``, one per kind of request.
REQUEST_KINDS: tuple[RequestKind, ...] = ("snapshot", "explain", "views.check")
# A preview lists at most this many conversations per view and agent (counts are exact).
MAX_PREVIEW_CONVERSATIONS = 20

# A snapshot page holds at most this many conversations unless the request asks for
# fewer: big enough that most inboxes fit in one reply, small enough that a reply stays
# a few MiB at most (10,000 x (128-character id + category names)).
DEFAULT_SNAPSHOT_LIMIT = 1000
MAX_SNAPSHOT_LIMIT = 10_000
# A filter naming more categories than any rule set has is a mistake, not a request.
MAX_FILTER_CATEGORIES = 64

# The rule compiler's category-name rule (worker/rulebook/syntax.py NAME_PATTERN),
# repeated here because contracts must not import the worker: a name outside it can
# never be a category, so asking for it is a bad request rather than an empty answer.
# An account's views are categories too: ``view:<view_id>``.
CATEGORY_PATTERN = r"^([a-z][a-z0-9_]{0,63}|view:[A-Za-z0-9_:\-]{1,128})$"
CategoryName = Annotated[str, StringConstraints(pattern=CATEGORY_PATTERN)]

Seq = Annotated[int, Field(ge=0, le=MAX_SEQUENCE)]
FactValue = bool | int | float | str | list[str] | None


class BadRequest(BadEvent):
    """A request body that can never be answered: it belongs in the dead-letter queue.

    A subclass of :class:`BadEvent` so that ``except BadEvent`` (the worker's
    dead-letter path) also takes it; ``reason`` is the text for the ``x-error`` header.
    """


class _Request(BaseModel):
    # Like events: unknown fields are ignored (a newer requester may send more), and
    # types are strict so that "4" is not silently taken for 4.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class _Reply(BaseModel):
    # Replies are ours: an unknown field in one is a bug, never forward compatibility.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SnapshotRequest(_Request):
    """Ask for one agent's current inbox (routing key ``snapshot``).

    ``categories`` (optional) keeps only the conversations in at least one of the named
    categories; omit it (or send null) for every conversation with a non-empty
    category set. An empty list is a bad request: it could only ever answer nothing.

    Paging keeps a reply bounded for an agent with very many conversations. A page
    holds the conversations whose id is greater than ``after`` (all of them when
    ``after`` is omitted), in ascending id order (code-point order, which for the ASCII
    ids is byte order), at most ``limit`` of them. The reply's ``next_after`` is the
    ``after`` of the next request, or null when the inbox is complete.
    """

    account_id: Id
    agent_id: Id
    categories: Annotated[
        list[CategoryName], Field(min_length=1, max_length=MAX_FILTER_CATEGORIES)
    ] | None = None
    after: Id | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_SNAPSHOT_LIMIT)] = DEFAULT_SNAPSHOT_LIMIT


class SnapshotReply(_Reply):
    """One agent's inbox after exactly the updates up to and including ``seq``.

    ``conversations`` maps each conversation of this page to its full, sorted category
    set (the same list an update's ``categories`` carries, even when the request named
    a filter), in ascending id order; conversations with an empty set are never
    listed. ``counts`` are the agent's badge counts over the whole inbox at ``seq``,
    whatever the filter or page. An unknown account or agent gets an empty inbox with
    ``seq`` 0.

    ``unread_counts`` count, per category, the conversations in it that are unread for
    the agent (over the whole inbox, like ``counts``); ``unread`` lists the conversations
    of this page that are.

    ``next_after`` is null when this page ends the inbox; otherwise it is the greatest
    conversation id in this page, to send as ``after`` for the next one.

    Pages are taken at different moments, so their ``seq`` may differ. A consumer
    stays exact by this rule: a conversation belongs to the page whose id range
    (``after``, ``next_after``] covers it, and an update applies to it only if the
    update's ``seq`` is greater than that page's ``seq``. Counts come from the page with
    the greatest ``seq``, then from any update with a greater ``seq``.
    """

    account_id: Id
    agent_id: Id
    seq: Seq
    rules_version: str
    counts: dict[str, int]
    unread_counts: dict[str, int] = Field(default_factory=dict, description=(
        "Per category, how many of the agent's conversations in it are unread, over the "
        "whole inbox at `seq` (like `counts`); a category not listed has none."))
    conversations: dict[Id, list[str]]
    unread: list[Id] = Field(default_factory=list, description=(
        "The conversations of this page that are unread for the agent."))
    next_after: Id | None = None


class ExplainRequest(_Request):
    """Ask why one conversation is in the categories it is in for one agent (routing
    key ``explain``): the live counterpart of ``inbox-rules explain``."""

    account_id: Id
    agent_id: Id
    conversation_id: Id


class ConditionExplanation(_Reply):
    """One condition of a category rule, where it is written, and whether it held.

    ``depth`` places it in the tree of deciding conditions: 0 is the category's own
    ``when``, and each condition is followed by the ones one level deeper that decided
    it (the items of an ``all``/``any``/``not``, the condition of a referenced
    predicate or category), depth first.
    """

    file: str
    line: Annotated[int, Field(ge=1)] | None = Field(description=(
        "Its line in the file; null for the conditions of a view (``file`` then names "
        "the views: they came in an event, not a file)."))
    condition: str
    holds: bool
    depth: Annotated[int, Field(ge=0)] = 0


class CategoryExplanation(_Reply):
    """One category of the rule set: whether it holds, and the conditions that decided."""

    name: str
    holds: bool
    conditions: list[ConditionExplanation]


class ExplainReply(_Reply):
    """The facts of one (agent, conversation) and how every category was decided.

    ``categories`` lists the categories that hold, sorted: the same key and meaning as
    ``inbox-rules explain --json`` (docs/contract.md), so one model serves the CLI and the
    request. ``explanations`` covers every category of the rule set, held or not, with
    file:line for each condition. ``facts`` maps fact names (``conversation.status``,
    ``agent.joined`` ...) to their values. A pair the worker decides nothing for (an
    unknown account or conversation, a deleted conversation, or an agent who is not one
    of the account's) has no facts, no categories and no explanations: the worker
    publishes nothing for it.

    The explanation is of the worker's live rules. While a new rule set rolls out, an
    account not yet re-categorised under it (the sweep has not reached it) may be
    shown categories its inbox will have only once it has.
    """

    account_id: Id
    agent_id: Id
    conversation_id: Id
    rules_version: str
    facts: dict[str, FactValue]
    categories: list[str]
    explanations: list[CategoryExplanation]


class ViewsCheckRequest(_Request):
    """Check candidate views against the live rules without changing anything (routing
    key ``views.check``): the body of a views event, ``views`` (an agent's personal
    views when ``agent_id`` is given, else the account's shared views). With an
    ``account_id``, valid views are also previewed against that account's current
    state: per view and agent (``agent_id`` alone, or every agent of the account), how
    many of its conversations the view would hold now, and which."""

    views: list[View]
    account_id: Id | None = None
    agent_id: Id | None = None


class ViewPreview(_Reply):
    count: int = Field(description="How many conversations the view holds for the agent.")
    conversations: list[Id] = Field(description=(
        f"The first of them by id, at most {MAX_PREVIEW_CONVERSATIONS}."))


class ViewsCheckReply(_Reply):
    """Every problem of the candidate views (``views[2].when.all[1].fact: unknown fact
    conversation.colour``), none when they are valid; with an ``account_id`` and no
    problem, ``preview``: view id -> agent id -> what it would hold now."""

    problems: list[str]
    preview: dict[Id, dict[Id, ViewPreview]] | None = None


Request = SnapshotRequest | ExplainRequest | ViewsCheckRequest
# Keyed by plain str: the key is looked up with a routing key, which may be anything.
_MODELS: dict[str, type[SnapshotRequest] | type[ExplainRequest] | type[ViewsCheckRequest]] = {
    "snapshot": SnapshotRequest,
    "explain": ExplainRequest,
    "views.check": ViewsCheckRequest,
}


def describe_request_error(error: ValidationError) -> str:
    """One line naming every wrong field and why, e.g. ``agent_id: Field required``."""
    parts = []
    for item in error.errors(include_url=False):
        kind = item["type"]
        if kind == "json_invalid":
            parts.append(f"invalid JSON: {item.get('ctx', {}).get('error', item['msg'])}")
        elif kind == "model_type" and not item["loc"]:
            parts.append(f"request must be a JSON object, got {type(item['input']).__name__}")
        else:
            field = ".".join(str(p) for p in item["loc"]) or "(request)"
            parts.append(f"{field}: {item['msg']}")
    return "; ".join(parts)


@overload
def parse_request(body: bytes, kind: Literal["snapshot"], *,
                  max_bytes: int = ...) -> SnapshotRequest: ...
@overload
def parse_request(body: bytes, kind: Literal["explain"], *,
                  max_bytes: int = ...) -> ExplainRequest: ...
@overload
def parse_request(body: bytes, kind: Literal["views.check"], *,
                  max_bytes: int = ...) -> ViewsCheckRequest: ...
@overload
def parse_request(body: bytes, kind: str, *, max_bytes: int = ...) -> Request: ...


def parse_request(body: bytes, kind: str, *,
                  max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Request:
    """Decode one AMQP body as a request of ``kind`` (its routing key), or raise
    :class:`BadRequest` saying why.

    ``kind`` is a plain ``str`` as well as the literal because it comes straight from a
    routing key: an unknown one is a bad request, not a crash. The size limit is checked
    first, so an oversized body costs nothing and a truncated one is refused as too
    large whatever its kind.
    """
    if too_large(body, max_bytes):
        raise BadRequest(too_large_reason(body, max_bytes))
    model = _MODELS.get(kind)
    if model is None:
        raise BadRequest(f"unknown request {kind[:64]!r}; expected one of "
                         f"{', '.join(REQUEST_KINDS)}")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"message is not valid UTF-8: byte {exc.start}: {exc.reason}") from exc
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequest(describe_request_error(exc)) from exc

