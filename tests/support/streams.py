"""Upstream event streams for every test and benchmark.

A stream is a sequence of ops: a :class:`Step` (something happens upstream: an account
snapshot, a chat is created, an agent joins, ...) or a :class:`Resend` (upstream sends an
earlier event again). One :class:`Emitter` gives each op its envelope: the event id, the
sequence number per conversation (per account for account events) and the timestamp.
Two sources of ops share that model:

- :func:`event_stream`: seeded (``random.Random(seed)``), shaped by :class:`Knobs`, with
  named profiles (:data:`PROFILES`): ``mixed`` (the default: broker tests), ``chaos``
  (reliability: stale re-sends, events without a sequence), ``steady`` (a fixed working
  set, for memory), ``light`` and ``heavy`` (the benchmarks' realistic chat lifecycles);
- :func:`event_streams`: the hypothesis strategy of the property tests: the same ops over
  a tiny universe where ids collide, agents come and go, events arrive for chats never
  created, sequences go missing or stale and events are re-sent; hypothesis shrinks a
  failing stream op by op.

:class:`Events` builds single parsed events for unit tests with the same envelope;
:func:`by_agent` and :func:`categories` key the updates of one event.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar

from hypothesis import strategies as st

from contracts import Event, parse_event_object

TIME = "2026-11-24T10:00:00Z"
START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
PLANS = ("free", "standard", "pro")
Sequencing = Literal["next", "none", "stale"]


# -- the envelope -----------------------------------------------------------------------
def envelope(kind: str, account_id: str, data: dict[str, Any], *, event_id: str,
             occurred_at: str = TIME, conversation_id: str | None = None,
             sequence: int | None = None) -> dict[str, Any]:
    """An upstream event as its JSON carries it (docs/contract.md, "Events")."""
    event: dict[str, Any] = {"event_id": event_id, "type": kind, "account_id": account_id,
                             "occurred_at": occurred_at, "data": data}
    if conversation_id is not None:
        event["conversation_id"] = conversation_id
    if sequence is not None:
        event["sequence"] = sequence
    return event


def iso(moment: datetime) -> str:
    """``2026-11-24T10:00:05Z`` (milliseconds only when there are some)."""
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class Step:
    """Something happens upstream; ``sequence``: numbered next in its scope, left
    without a number, or numbered below the last one of its scope (stale)."""

    kind: str
    account_id: str
    data: dict[str, Any] = field(default_factory=dict)
    conversation_id: str | None = None
    sequence: Sequencing = "next"


@dataclass(frozen=True)
class Resend:
    """Upstream sends event number ``pick`` (modulo the events so far) again: the same
    event, or with ``stale`` its content under a new id (older than what followed it)."""

    pick: int
    stale: bool = False


Op = Step | Resend


class Emitter:
    """Turns ops into events: ids ``<prefix>-e<n>``, one sequence counter per
    conversation (per account for account events), one tick of ``step`` seconds per
    event from ``start``."""

    def __init__(self, prefix: str = "e", start: datetime = START, step: float = 1.0) -> None:
        self.prefix = prefix
        self.start = start
        self.step = step
        self.events: list[dict[str, Any]] = []
        self._sequences: dict[tuple[str, str], int] = {}

    def __call__(self, op: Op) -> dict[str, Any]:
        number = len(self.events)
        if isinstance(op, Resend):
            event = copy.deepcopy(self.events[op.pick % number])
            if op.stale and "sequence" in event:
                event["event_id"] = f"{event['event_id']}-stale-{number}"
        else:
            event = envelope(
                op.kind, op.account_id, copy.deepcopy(op.data),
                event_id=f"{self.prefix}-e{number}",
                occurred_at=iso(self.start + timedelta(seconds=number * self.step)),
                conversation_id=op.conversation_id, sequence=self._sequence(op))
        self.events.append(event)
        return event

    def _sequence(self, op: Step) -> int | None:
        scope = (op.account_id, op.conversation_id or "")
        last = self._sequences.get(scope, 0)
        if op.sequence == "next":
            self._sequences[scope] = last + 1
            return last + 1
        if op.sequence == "stale" and last > 1:
            return last - 1
        return None


def conversation_steps(agent: str, group: str) -> list[tuple[str, dict[str, Any]]]:
    """What can happen to a live chat (kind, data), weighted by repetition."""
    return [
        ("message.created", {"author": "visitor"}),
        ("message.created", {"author": "agent", "agent_id": agent}),
        ("conversation.assigned", {"agent_id": agent}),
        ("conversation.assigned", {"agent_id": agent}),
        ("conversation.unassigned", {"agent_id": agent}),
        ("conversation.transferred", {"to_agent_id": agent}),
        ("conversation.transferred", {"to_group_id": group}),
        ("conversation.resolved", {}),
        ("conversation.resolved", {}),
        ("conversation.reopened", {}),
    ]


# -- the seeded generator ---------------------------------------------------------------
@dataclass(frozen=True)
class Knobs:
    """What a seeded stream looks like. Rates are per event."""

    seed: int = 0
    count: int | None = 1000  # events; None: as many as the lifecycles make
    accounts: int = 4  # named acc-<seed>-<n>
    # "walk": random steps over the live chats; "lifecycles": scripted, realistic chats
    # (created, messages, maybe a transfer or a join and leave, resolved), 64 at a time.
    traffic: Literal["walk", "lifecycles"] = "walk"
    # Agents per account: a fixed PRO team ag-<a>-<i> with a group per 5 agents. None:
    # each snapshot draws a team of 1-4 from a pool of `pool` agents, with `groups`.
    agents: int | None = None
    pool: int = 6
    groups: tuple[str, ...] = ("g-sales", "g-support")
    # lifecycles: the chats in the stream; walk: chats created up front per account.
    conversations: int = 0
    routed: bool = True  # lifecycles: every chat routed to a group (else none is)
    revisit: bool = False  # lifecycles: then every chat again until twice as long
    snapshots: float = 0.03  # walk: account.updated (a new team and plan)
    creates: float = 0.15  # walk: new chats
    deletes: float = 0.01  # walk: share of chat steps that delete it
    duplicates: float = 0.02  # re-sent events (same event id)
    recent: int | None = None  # re-send only among the last `recent` events
    stale: float = 0.0  # walk: older events again under a new id
    unsequenced: float = 0.0  # walk: events without a sequence
    start: datetime = START
    step: float = 1.0  # seconds between events
    prefix: str | None = None  # of event ids; default s<seed>


_LIFECYCLES = Knobs(seed=7, count=None, traffic="lifecycles", agents=2, conversations=2000,
                    duplicates=0.01)
PROFILES: dict[str, Knobs] = {
    # snapshots, chats, joins, transfers, resolves, reopens, a few deletes and re-sends.
    "mixed": Knobs(),
    # Also stale re-sends and events without a sequence; fewer later snapshots (each
    # re-categorises the whole account: a plan or team change is rarer than a chat).
    "chaos": Knobs(snapshots=0.006, stale=0.03, unsequenced=0.02),
    # A fixed working set created first, then steps on it over and over: memory should
    # stop growing once all of it is known.
    "steady": Knobs(accounts=10, conversations=100, snapshots=0.002, creates=0.0,
                    deletes=0.0, duplicates=0.01, recent=50),
    # Benchmarks: PRO accounts; every chat routed to a group of 5 (few agents concerned)...
    "light": _LIFECYCLES,
    # ...or to none (each new chat, join and resolve changes every agent's inbox).
    "heavy": replace(_LIFECYCLES, routed=False),
}


def event_stream(seed: int | None = None, count: int | None = None,
                 accounts: int | None = None, *, profile: str = "mixed",
                 **knobs: Any) -> list[dict[str, Any]]:
    """A seeded, valid stream: ``profile`` with any :class:`Knobs` field overridden."""
    given = {"seed": seed, "count": count, "accounts": accounts}
    chosen: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    return generate(replace(PROFILES[profile], **chosen, **knobs))


def generate(knobs: Knobs) -> list[dict[str, Any]]:
    """The stream ``knobs`` describe (the same knobs, the same stream)."""
    rng = random.Random(knobs.seed)
    emit = Emitter(knobs.prefix or f"s{knobs.seed}", knobs.start, knobs.step)
    ops = _walk(rng, knobs) if knobs.traffic == "walk" else _lifecycles(rng, knobs)
    for op in ops:
        if knobs.count is not None and len(emit.events) >= knobs.count:
            break
        emit(op)
    return emit.events


def soak_stream(conversations: int, seed: int = 11) -> tuple[list[dict[str, Any]], int]:
    """The light stream, then its chats written into, answered and resolved again (new
    event ids) until about twice as long: after the first part the state stops growing.
    Also a dedup window every account fills in the first part (the window is per
    account: sized to the whole first part, it would keep growing through the second)."""
    first = event_stream(seed, profile="light", conversations=conversations)
    per_account = Counter(str(event["account_id"]) for event in first)
    return (event_stream(seed, profile="light", conversations=conversations, revisit=True),
            min(per_account.values()))


def _team(account: int, size: int) -> tuple[list[str], dict[str, list[str]]]:
    """A fixed team of ``size`` agents and a group per 5 of them."""
    agents = [f"ag-{account}-{i}" for i in range(size)]
    groups = {f"g-{account}-{g}": agents[g * 5 % size:][:5] or agents[:5]
              for g in range(max(1, size // 5))}
    return agents, groups


def _walk(rng: random.Random, k: Knobs) -> Iterator[Op]:
    accounts = [f"acc-{k.seed}-{n}" for n in range(k.accounts)]
    pool = [f"ag-{n}" for n in range(1, k.pool + 1)]
    teams = [_team(a, k.agents) for a in range(k.accounts)] if k.agents else []
    live: dict[str, list[str]] = {account: [] for account in accounts}

    def snapshot(a: int) -> Step:
        if teams:
            agents, groups = teams[a]
            plan = "pro"
        else:
            agents = sorted(rng.sample(pool, rng.randint(1, min(4, len(pool)))))
            groups = {g: sorted(rng.sample(agents, rng.randint(1, len(agents))))
                      for g in k.groups if rng.random() < 0.7}
            plan = rng.choice(("free", "standard", "pro", "pro"))
        return Step("account.updated", accounts[a],
                    {"plan": plan, "agents": agents, "groups": groups})

    def group_names(a: int) -> tuple[str, ...]:
        return tuple(teams[a][1]) if teams else k.groups

    def create(a: int) -> Step:
        known = live[accounts[a]]
        known.append(f"c-{len(known)}")
        return Step("conversation.created", accounts[a],
                    {"group_id": rng.choice((None, *group_names(a)))}, known[-1])

    def chat_step(a: int, conversation: str) -> Step:
        agent = rng.choice(teams[a][0] if teams else pool)
        kind, data = rng.choice(conversation_steps(agent, rng.choice(group_names(a))))
        if rng.random() < k.deletes:
            kind, data = "conversation.deleted", {}
        unsequenced = k.unsequenced and rng.random() < k.unsequenced
        return Step(kind, accounts[a], data, conversation, "none" if unsequenced else "next")

    emitted = 0
    for a in range(k.accounts):
        yield snapshot(a)
        emitted += 1
        for _ in range(k.conversations):
            yield create(a)
            emitted += 1
    resend_below, stale_below, snapshot_below, create_below = itertools.accumulate(
        (k.duplicates, k.stale, k.snapshots, k.creates))
    while True:
        a = rng.randrange(k.accounts)
        roll = rng.random()
        op: Op
        if roll < stale_below and emitted > 1:
            if k.recent is None:
                pick = rng.randrange(emitted)
            else:
                pick = emitted - rng.randint(1, min(k.recent, emitted))
            op = Resend(pick, stale=roll >= resend_below)
        elif roll < snapshot_below:
            op = snapshot(a)
        elif roll < create_below or not live[accounts[a]]:
            op = create(a)
        else:
            op = chat_step(a, rng.choice(live[accounts[a]]))
        yield op
        emitted += 1


def _lifecycles(rng: random.Random, k: Knobs) -> Iterator[Op]:
    accounts = [f"acc-{k.seed}-{n}" for n in range(k.accounts)]
    teams = [_team(a, k.agents or 2) for a in range(k.accounts)]
    for account, (agents, groups) in zip(accounts, teams, strict=True):
        yield Step("account.updated", account,
                   {"plan": "pro", "agents": agents, "groups": groups})
    chats: list[tuple[str, str, list[tuple[str, dict[str, Any]]]]] = []
    for c in range(k.conversations):
        agents, groups = teams[c % k.accounts]
        agent, other = rng.choice(agents), rng.choice(agents)
        group = rng.choice(list(groups)) if k.routed else None
        visitor: tuple[str, dict[str, Any]] = ("message.created", {"author": "visitor"})
        answer = ("message.created", {"author": "agent", "agent_id": agent})
        steps = [("conversation.created", {"group_id": group}), visitor, visitor, answer,
                 visitor, answer]
        if rng.random() < 0.3:
            steps.append(("conversation.transferred", {"to_agent_id": other}))
        if rng.random() < 0.2:
            steps += [("conversation.assigned", {"agent_id": agent}),
                      ("conversation.unassigned", {"agent_id": agent})]
        steps.append(("conversation.resolved", {}))
        if rng.random() < 0.1:
            steps.append(visitor)
        chats.append((accounts[c % k.accounts], f"c-{c}", steps))
    emitted = len(accounts)
    # Interleave the chats like real traffic: a window of 64 active at a time.
    cursors = [0] * len(chats)
    pending = list(range(len(chats)))
    appeared: list[int] = []
    while pending:
        index = rng.choice(pending[:64])
        account, conversation, steps = chats[index]
        if cursors[index] == 0:
            appeared.append(index)
        kind, data = steps[cursors[index]]
        cursors[index] += 1
        yield Step(kind, account, data, conversation)
        emitted += 1
        if cursors[index] == len(steps):
            pending.remove(index)
    for pick in rng.sample(range(emitted), int(emitted * k.duplicates)):
        yield Resend(pick)
    if k.revisit and chats:
        first = emitted + int(emitted * k.duplicates)
        for _ in range(max(1, -(-first // (3 * len(chats))))):
            for index in appeared:
                account, conversation, _steps = chats[index]
                agent = teams[index % k.accounts][0][0]
                yield Step("message.created", account, {"author": "visitor"}, conversation)
                yield Step("message.created", account, {"author": "agent", "agent_id": agent},
                           conversation)
                yield Step("conversation.resolved", account, {}, conversation)


# -- the hypothesis strategy ------------------------------------------------------------
TINY_ACCOUNTS = ("acc-1", "acc-2")
TINY_CONVERSATIONS = ("c-1", "c-2", "c-3")
TINY_AGENTS = ("ag-1", "ag-2", "ag-3")
TINY_GROUPS = ("g-1", "g-2")
# Chats and their steps dominate real traffic; snapshots and deletes are rarer.
_FAMILIES = ("snapshot",) * 2 + ("created",) * 5 + ("deleted",) * 2 + ("step",) * 18
_SEQUENCING: tuple[Sequencing, ...] = ("next", "next", "next", "none", "stale")


@st.composite
def tiny_steps(draw: st.DrawFn) -> Step:
    """One step in the tiny universe: snapshots may name no agent, or group members
    who are not agents; any step may concern a chat never created."""
    account = draw(st.sampled_from(TINY_ACCOUNTS))
    family = draw(st.sampled_from(_FAMILIES))
    sequence = draw(st.sampled_from(_SEQUENCING))
    agent = st.sampled_from(TINY_AGENTS)
    group = st.sampled_from(TINY_GROUPS)
    if family == "snapshot":
        return Step("account.updated", account, {
            "plan": draw(st.sampled_from(PLANS)),
            "agents": draw(st.lists(agent, unique=True, max_size=3)),
            "groups": draw(st.dictionaries(group, st.lists(agent, unique=True, max_size=3),
                                           max_size=2))}, sequence=sequence)
    conversation = draw(st.sampled_from(TINY_CONVERSATIONS))
    if family == "created":
        kind, data = "conversation.created", {"group_id": draw(st.one_of(st.none(), group))}
    elif family == "deleted":
        kind, data = "conversation.deleted", {}
    else:
        kind, data = draw(st.sampled_from(conversation_steps(draw(agent), draw(group))))
    return Step(kind, account, data, conversation, sequence)


@st.composite
def event_streams(draw: st.DrawFn, max_size: int = 40) -> list[dict[str, Any]]:
    """Valid streams of up to ``max_size`` steps in the tiny universe; after about one
    step in ten, an earlier event is re-sent (same id)."""
    emit = Emitter("h")
    for step in draw(st.lists(tiny_steps(), min_size=1, max_size=max_size)):
        emit(step)
        if draw(st.integers(0, 9)) == 0:
            emit(Resend(draw(st.integers(0, len(emit.events) - 1))))
    return emit.events


# -- encoding and single events ---------------------------------------------------------
def encode(events: Iterable[dict[str, Any]]) -> list[bytes]:
    """One message body (a JSON line) per event."""
    return [json.dumps(event).encode() for event in events]


as_lines = encode  # the benchmarks' name for it


def type_counts(events: Iterable[dict[str, Any]]) -> Counter[str]:
    return Counter(str(event["type"]) for event in events)


class Events:
    """Makes valid events with fresh ids: ``ev("conversation.assigned", "c-1", agent_id="ag-1")``.

    Every event is built as the JSON object upstream would send and parsed by
    :func:`contracts.parse_event_object`, so tests go through the contract.
    """

    def __init__(self, account_id: str = "acc-1") -> None:
        self.account_id = account_id
        self._ids = itertools.count(1)

    def __call__(self, type_: str, conversation_id: str | None = None, *,
                 event_id: str | None = None, sequence: int | None = None,
                 account_id: str | None = None, occurred_at: str = TIME,
                 **data: Any) -> Event:
        return parse_event_object(envelope(
            type_, account_id or self.account_id, data,
            event_id=event_id or f"e-{next(self._ids)}", occurred_at=occurred_at,
            conversation_id=conversation_id, sequence=sequence))

    def account(self, plan: str, agents: list[str], groups: dict[str, list[str]] | None = None,
                **fields: Any) -> Event:
        """An ``account.updated`` snapshot; ``fields``: envelope fields (``sequence``...)."""
        return self("account.updated", plan=plan, agents=agents, groups=groups or {},
                    **fields)


class _Keyed(Protocol):
    """What the unit tests read of an update (the contract's or the domain's)."""

    @property
    def agent_id(self) -> str: ...
    @property
    def conversation_id(self) -> str: ...
    @property
    def categories(self) -> list[str]: ...


U = TypeVar("U", bound=_Keyed)


def by_agent(updates: Sequence[U]) -> dict[str, U]:
    """The updates of one event for one conversation, keyed by agent (no agent twice)."""
    keyed = {u.agent_id: u for u in updates}
    assert len(keyed) == len(updates), f"several updates for one agent: {updates}"
    return keyed


def categories(updates: Sequence[_Keyed]) -> dict[tuple[str, str], list[str]]:
    """(agent, conversation) -> categories, for every update of one event."""
    keyed = {(u.agent_id, u.conversation_id): u.categories for u in updates}
    assert len(keyed) == len(updates), f"several updates for one (agent, conversation): {updates}"
    return keyed
