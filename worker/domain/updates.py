"""Category updates as the domain produces them, and their JSON, built in pieces.

A fan-out gives hundreds of updates that differ only in agent, counts and ``seq``: the
parts they share (the category lists of one (before, after) pair, the cause, the rules
version, the time) are encoded once per event and joined per agent. The result is the
JSON of :class:`contracts.CategoryUpdate` (a test holds the two together); ids are
restricted to characters that need no escaping, everything else goes through orjson.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import orjson

from contracts import CategoryUpdate


def update_id_for(rules_version: str, account_id: str, cause_event_id: str, agent_id: str,
                  conversation_id: str) -> str:
    """Deterministic per (cause, agent, conversation) under one rule set: downstream
    drops duplicates by it. Never reused for other content: rule adoptions carry a
    generation in their cause, and the rules version is part of the name, so an event
    evaluated again under other rules (a retry after a rules change) gets other ids."""
    name = "\x1f".join((rules_version, account_id, cause_event_id, agent_id, conversation_id))
    # blake2b is ~10x cheaper than uuid5 and just as deterministic; 128 bits, hex.
    return hashlib.blake2b(name.encode(), digest_size=16, person=_PERSON).hexdigest()


_PERSON = b"inbox-rules-upd"


class RulesStamp:
    """What every update made under one rule set shares, computed once per rules: the
    version as text and as JSON, and the update-id hash state after "version\x1f"
    (each cause continues from a copy: a copy costs a quarter of a new hash)."""

    __slots__ = ("json", "seed", "version")

    def __init__(self, version: str) -> None:
        self.version = version
        self.json = orjson.dumps(version)
        self.seed: Any = hashlib.blake2b(f"{version}\x1f".encode(), digest_size=16,
                                         person=_PERSON)


def format_time(moment: datetime) -> str:
    """The same text pydantic writes for a datetime (UTC as ``Z``)."""
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class Cause:
    """What one event (or rules adoption) shares across all of its updates."""

    __slots__ = ("_hash", "_stamp", "_tail", "account_id", "cause_id", "head", "occurred_at")

    def __init__(self, account_id: str, cause_id: str, stamp: RulesStamp,
                 occurred_at: datetime) -> None:
        self.account_id = account_id
        self.cause_id = cause_id
        self._stamp = stamp
        self.occurred_at = occurred_at
        self._tail: bytes | None = None
        self._hash: Any = None
        # What follows the update id and precedes the agent id (ids need no escaping:
        # their pattern allows letters, digits, '-', '_' and ':').
        self.head = b'","account_id":"' + account_id.encode() + b'","agent_id":"'

    def update_id(self, agent_id: str, conversation_id: str) -> str:
        """:func:`update_id_for`, from the cause's hash state (built on first use)."""
        base = self._hash
        if base is None:
            base = self._hash = self._stamp.seed.copy()
            base.update(f"{self.account_id}\x1f{self.cause_id}\x1f".encode())
        digest = base.copy()
        digest.update(f"{agent_id}\x1f{conversation_id}".encode())
        hexdigest: str = digest.hexdigest()
        return hexdigest

    @property
    def rules_version(self) -> str:
        return self._stamp.version

    @property
    def tail(self) -> bytes:
        tail = self._tail
        if tail is None:
            tail = self._tail = (
                b',"cause_event_id":' + orjson.dumps(self.cause_id)
                + b',"rules_version":' + self._stamp.json
                + b',"occurred_at":' + orjson.dumps(self.occurred_at, option=orjson.OPT_UTC_Z)
                + b"}")
        return tail


class Pair:
    """One (before, after) category change, sorted and encoded once per event."""

    __slots__ = ("added", "categories", "fragment", "moved", "removed")

    def __init__(self, before: frozenset[str], after: frozenset[str]) -> None:
        self.categories = sorted(after)
        self.added = sorted(after - before)
        self.removed = sorted(before - after)
        self.moved = bool(self.added or self.removed)  # else only the unread flag changed
        self.fragment = (b',"categories":' + orjson.dumps(self.categories)
                         + b',"added":' + orjson.dumps(self.added)
                         + b',"removed":' + orjson.dumps(self.removed) + b',"counts":')


class Update:
    """One published category update; ``body`` is its JSON (docs/contract.md)."""

    __slots__ = ("_cause", "_counts_json", "_pair", "agent_id", "body", "conversation_id",
                 "seq", "unread", "update_id")

    def __init__(self, cause: Cause, pair: Pair, agent_id: str, conversation_id: str,
                 seq: int, counts_json: bytes, unread: bool = False) -> None:
        """``counts_json``: the badge counts' JSON, then ``,"unread_counts":`` and
        theirs (one piece per agent and event)."""
        self._cause = cause
        self._pair = pair
        self.agent_id = agent_id
        self.conversation_id = conversation_id
        self.seq = seq
        self.unread = unread
        self._counts_json = counts_json
        self.update_id = update_id = cause.update_id(agent_id, conversation_id)
        # Built at once: every update is published (or printed), so laziness only cost
        # a check per read.
        self.body: bytes = b"".join((
            b'{"update_id":"', update_id.encode(), cause.head, agent_id.encode(),
            b'","conversation_id":"', conversation_id.encode(), b'","seq":%d' % seq,
            pair.fragment, counts_json, _UNREAD if unread else _READ, cause.tail))

    account_id = property(lambda self: self._cause.account_id)
    cause_event_id = property(lambda self: self._cause.cause_id)
    rules_version = property(lambda self: self._cause.rules_version)
    occurred_at = property(lambda self: self._cause.occurred_at)
    categories = property(lambda self: self._pair.categories)
    added = property(lambda self: self._pair.added)
    removed = property(lambda self: self._pair.removed)

    @property
    def counts(self) -> dict[str, int]:
        """The agent's badge counts after the event (tools and tests; decoded)."""
        counts: dict[str, int] = orjson.loads(b'{"counts":' + self._counts_json + b"}")["counts"]
        return counts

    @property
    def unread_counts(self) -> dict[str, int]:
        """Per category, the agent's unread conversations in it after the event."""
        counts: dict[str, int] = orjson.loads(
            b'{"counts":' + self._counts_json + b"}")["unread_counts"]
        return counts

    @property
    def routing_key(self) -> str:
        return f"{self._cause.account_id}.{self.agent_id}"

    def model(self) -> CategoryUpdate:
        """The contract model (tests and tools; the hot path never builds it)."""
        return CategoryUpdate.model_validate_json(self.body)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Update) and other.body == self.body

    def __hash__(self) -> int:
        return hash(self.body)

    def __repr__(self) -> str:
        return f"Update({self.body.decode()})"


_UNREAD = b',"unread":true'
_READ = b',"unread":false'


class CountsEncoder:
    """Badge counts and unread counts in the rules' category order, as the JSON an
    update carries between ``"counts":`` and its unread flag, without a dict dump."""

    __slots__ = ("_names", "_template", "_zeros")

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._zeros = (0,) * len(names)  # each name's default, for map()
        # Category names are validated identifiers in rule files: no escaping needed,
        # but go through orjson anyway so a future name with a quote stays valid JSON.
        parts = [orjson.dumps(name) + b":%d" for name in names]
        counts = b"{" + b",".join(parts) + b"}"
        self._template = counts + b',"unread_counts":' + counts

    def encode(self, counts: dict[str, int], unread: dict[str, int]) -> bytes:
        """One formatting of both (one per agent and event). The lookups go through
        map(), not a comprehension: under views an agent has dozens of categories, and
        this runs for nearly every update."""
        names, zeros = self._names, self._zeros
        return self._template % (*map(counts.get, names, zeros),
                                 *map(unread.get, names, zeros))
