"""The upstream event contract, the downstream update contract and the request/reply
contract of ``inbox.requests`` (pydantic v2).

Nothing here knows about RabbitMQ: the worker and the offline replay share it.
"""

from contracts.events import (
    EVENT_TYPES,
    AccountEvent,
    AccountUpdated,
    AgentAssigned,
    AgentUnassigned,
    BadEvent,
    ConversationCreated,
    ConversationDeleted,
    ConversationEvent,
    ConversationReopened,
    ConversationResolved,
    ConversationTransferred,
    Event,
    MessageCreated,
    agent_ids,
    parse_event,
    parse_event_object,
)
from contracts.requests import (
    REQUEST_KINDS,
    BadRequest,
    CategoryExplanation,
    ConditionExplanation,
    ExplainReply,
    ExplainRequest,
    Request,
    RequestKind,
    SnapshotReply,
    SnapshotRequest,
    parse_request,
)
from contracts.updates import CategoryUpdate

__all__ = [
    "EVENT_TYPES",
    "REQUEST_KINDS",
    "AccountEvent",
    "AccountUpdated",
    "AgentAssigned",
    "AgentUnassigned",
    "BadEvent",
    "BadRequest",
    "CategoryExplanation",
    "CategoryUpdate",
    "ConditionExplanation",
    "ConversationCreated",
    "ConversationDeleted",
    "ConversationEvent",
    "ConversationReopened",
    "ConversationResolved",
    "ConversationTransferred",
    "Event",
    "ExplainReply",
    "ExplainRequest",
    "MessageCreated",
    "Request",
    "RequestKind",
    "SnapshotReply",
    "SnapshotRequest",
    "agent_ids",
    "parse_event",
    "parse_event_object",
    "parse_request",
]
