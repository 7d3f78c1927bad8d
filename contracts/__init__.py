"""The upstream event contract and the downstream update contract (pydantic v2).

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
    parse_event,
    parse_event_object,
)
from contracts.updates import CategoryUpdate

__all__ = [
    "EVENT_TYPES",
    "AccountEvent",
    "AccountUpdated",
    "AgentAssigned",
    "AgentUnassigned",
    "BadEvent",
    "CategoryUpdate",
    "ConversationCreated",
    "ConversationDeleted",
    "ConversationEvent",
    "ConversationReopened",
    "ConversationResolved",
    "ConversationTransferred",
    "Event",
    "MessageCreated",
    "parse_event",
    "parse_event_object",
]
