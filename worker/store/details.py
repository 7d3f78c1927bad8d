"""A conversation's details as both stores keep them: the fields inboxes sort by and the
unread facts (``Conversation.channel`` to ``Conversation.mentioned``, :data:`DETAILS`).

They share one nullable column, ``details``: compact JSON holding only the fields that
differ from their defaults, NULL when none does. A store adds no column per field (no
migration per new one), and a conversation that uses none of them costs one NULL.

The encoding is exact, and the same output for the same conversation: sets are sorted
lists, attributes an object sorted by key whose values keep their JSON type (a bool
stays ``true``, an int ``1``, a float ``1.0``), ``snoozed_until`` ISO text with its
offset (as ``waiting_since``). :func:`details_json` writes it (both stores, every
written conversation: cached for the frequent values), :func:`details_of` reads it
(:func:`worker.store.state_from_rows`, every loaded conversation).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import orjson

from worker.domain.state import NO_ATTRIBUTES, NO_PERSONAL, AttributeValue, Conversation

# The fields kept in ``details``, in the order of the conversation (it ends with them)
# and of the JSON object.
DETAILS: tuple[str, ...] = ("channel", "priority", "labels", "attributes", "snoozed_until",
                            "visitor_wrote", "readers", "mentioned", "personal")
if Conversation._fields[10:] != DETAILS:
    # A field added to (or moved in) Conversation must be kept here too, or no store
    # would keep it.
    raise ImportError(f"worker.store.details keeps {DETAILS}, the conversation's fields "
                      f"from the eleventh are {Conversation._fields[10:]}")
Details = tuple[str | None, str, frozenset[str], Mapping[str, AttributeValue], datetime | None,
                bool, frozenset[str], frozenset[str], Mapping[str, frozenset[str]]]
# What a NULL ``details`` reads as: every field at its default.
NO_DETAILS: Details = (None, "none", frozenset(), NO_ATTRIBUTES, None, False, frozenset(),
                       frozenset(), NO_PERSONAL)
_KNOWN = frozenset(DETAILS)


def details_json(conversation: Conversation) -> str | None:
    """The ``details`` column of ``conversation``: None when every detail is at its
    default. The details without attributes or a snooze time (the frequent case:
    ``visitor_wrote`` and ``readers`` follow every message) are encoded once per
    distinct value."""
    # A slice, not eight attribute reads: half the cost (checked at import: the
    # conversation ends with these fields).
    (channel, priority, labels, attributes, until, visitor_wrote, readers,
     mentioned, personal) = conversation[10:]
    if attributes or until is not None or personal:
        return _encode(_object(channel, priority, labels, attributes, until, visitor_wrote,
                               readers, mentioned, personal))
    if channel is None and priority == "none" and not (
            visitor_wrote or labels or readers or mentioned):
        return None
    return _plain_json(channel, priority, labels, visitor_wrote, readers, mentioned)


# Texts and sets of texts only: arguments the cache holds equal encode alike (no number,
# where 1 == 1.0 == True, and no datetime, whose equal instants may differ in offset).
@lru_cache(maxsize=4096)
def _plain_json(channel: str | None, priority: str, labels: frozenset[str], visitor_wrote: bool,
                readers: frozenset[str], mentioned: frozenset[str]) -> str:
    return _encode(_object(channel, priority, labels, NO_ATTRIBUTES, None, visitor_wrote,
                           readers, mentioned, NO_PERSONAL))


def _object(channel: str | None, priority: str, labels: frozenset[str],
            attributes: Mapping[str, AttributeValue], until: datetime | None,
            visitor_wrote: bool, readers: frozenset[str], mentioned: frozenset[str],
            personal: Mapping[str, frozenset[str]]) -> dict[str, object]:
    fields: dict[str, object] = {}
    if channel is not None:
        fields["channel"] = channel
    if priority != "none":
        fields["priority"] = priority
    if labels:
        fields["labels"] = sorted(labels)
    if attributes:
        fields["attributes"] = {key: attributes[key] for key in sorted(attributes)}
    if until is not None:
        fields["snoozed_until"] = until.isoformat()
    if visitor_wrote:
        fields["visitor_wrote"] = True
    if readers:
        fields["readers"] = sorted(readers)
    if mentioned:
        fields["mentioned"] = sorted(mentioned)
    if personal:
        fields["personal"] = {agent: sorted(personal[agent]) for agent in sorted(personal)}
    return fields


def _encode(fields: dict[str, object]) -> str:
    try:
        return orjson.dumps(fields).decode()
    except TypeError:
        # An attribute integer past 64 bits (the event contract refuses them; state
        # written otherwise is kept exact): orjson refuses it, the json module writes it.
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def details_of(text: str | None) -> Details:
    """The details a ``details`` column holds (None: all default). Raises ValueError
    for a value this version did not write."""
    if text is None:
        return NO_DETAILS
    if '"attributes"' in text or '"personal"' in text:
        # Mostly one of a kind: not cached. The json module: orjson reads an integer
        # past 64 bits as a float.
        return _decode(text, json.loads(text))
    return _plain_details(text)


@lru_cache(maxsize=1024)
def _plain_details(text: str) -> Details:
    """Few distinct values (who read it, a channel ...): decoded once each, and the
    loaded conversations share them (every part is immutable)."""
    return _decode(text, orjson.loads(text))


def _decode(text: str, fields: Any) -> Details:
    if not isinstance(fields, dict) or not fields.keys() <= _KNOWN:
        raise ValueError(f"conversation details {text[:200]!r} are not an object of "
                         f"{', '.join(DETAILS)}")
    get = fields.get
    attributes = get("attributes")
    until = get("snoozed_until")
    personal = get("personal")
    return (get("channel"), get("priority", "none"), frozenset(get("labels", ())),
            MappingProxyType(attributes) if attributes else NO_ATTRIBUTES,
            None if until is None else datetime.fromisoformat(until),
            bool(get("visitor_wrote", False)), frozenset(get("readers", ())),
            frozenset(get("mentioned", ())),
            MappingProxyType({agent: frozenset(views) for agent, views in personal.items()})
            if personal else NO_PERSONAL)
