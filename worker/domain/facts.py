"""The fact vocabulary: everything a rule condition may test, and what each test means.

A fact vector describes one agent's relation to one conversation. The Python side
computes these values from state and knows nothing of what they mean for categories;
the rule files give them meaning.

Two kinds of fact reach the engine differently. *Scalar* facts (:data:`FACT_NAMES`) are
given to it as they are (a priority as its rank, so ``at_least: high`` is a number
comparison). *Detail* facts - the channel, the labels, custom attributes - may be
absent or hold sets; a test on one is given to the engine as a boolean computed by
:func:`test_holds`, the one definition of what every test means, which explanations use
too. Absent values follow one rule: every test on them is false except ``not_equals``,
``not_in`` and ``present: false``, the negations.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contracts.events import PRIORITIES


@dataclass(frozen=True)
class FactSpec:
    name: str
    kind: type  # bool, int, str or frozenset (a set of ids)
    doc: str
    choices: tuple[str, ...] = ()
    # The choices are in order: the ordering tests compare their ranks.
    ordered: bool = False
    # May be absent (a ``present`` test tells): given to the engine as test results.
    optional: bool = False


_SPECS = (
    FactSpec("conversation.status", str, "open, snoozed, resolved or deleted",
             ("open", "snoozed", "resolved", "deleted")),
    FactSpec("conversation.has_group", bool, "the conversation is routed to a group"),
    FactSpec("conversation.joined_count", int, "how many agents have joined it"),
    FactSpec("agent.joined", bool, "this agent has joined the conversation"),
    FactSpec("agent.in_group", bool,
             "this agent is a member of the conversation's group (per the account snapshot)"),
    FactSpec("account.plan", str, "the account's plan", ("free", "standard", "pro")),
    FactSpec("account.agent_count", int, "how many agents the account has"),
    FactSpec("account.group_count", int, "how many groups the account has"),
    # Time facts (docs/time.md): computed from the events' occurred_at.
    FactSpec("conversation.waiting_seconds", int,
             "seconds since the conversation began waiting for an agent (created, reopened, "
             "woken from a snooze, or the first visitor message after the last agent "
             "message); 0 while not waiting"),
    FactSpec("conversation.last_message_by", str, "who wrote the last message",
             ("visitor", "agent", "none")),
    FactSpec("conversation.priority", str, "its priority, in this order", PRIORITIES,
             ordered=True),
    FactSpec("agent.unread", bool, "a visitor message came after this agent last read it"),
    FactSpec("agent.mentioned", bool, "a message mentioned this agent after they last read it"),
)
# Detail facts: tested through test_holds, never given to the engine as values.
_DETAILS = (
    FactSpec("conversation.channel", str, "where the chat came from (web, email, ...); "
             "absent when none", optional=True),
    FactSpec("conversation.labels", frozenset, "its labels"),
)

# Custom attributes: ``conversation.attributes.<key>``, declared with one of these
# types in a rule file's ``attributes:`` section.
ATTRIBUTE_PREFIX = "conversation.attributes."
ATTRIBUTE_TYPES = ("string", "integer", "number", "boolean")

FACTS: dict[str, FactSpec] = {spec.name: spec for spec in (*_SPECS, *_DETAILS)}
# Fact vectors are tuples in this order (then one boolean per detail test of the rules):
# cheap to build, hash and cache.
FACT_NAMES: tuple[str, ...] = tuple(spec.name for spec in _SPECS)
DETAIL_FACTS: tuple[str, ...] = tuple(spec.name for spec in _DETAILS)
FactValue = str | bool | int | float
FactVector = tuple[str | bool | int, ...]
# Facts whose value changes as time passes, with no event: the rules' thresholds on
# them decide when a conversation is looked at again.
WAITING_SECONDS = "conversation.waiting_seconds"
TIME_FACTS: tuple[str, ...] = (WAITING_SECONDS,)
# Facts of the agent's relation to the conversation beyond joined / in its group: the
# categoriser tells agents apart by them only under rules that test them.
UNREAD_FACTS: tuple[str, ...] = ("agent.unread", "agent.mentioned")
PRIORITY_RANK: dict[str, int] = {name: rank for rank, name in enumerate(PRIORITIES)}


def attribute_spec(name: str, declared: Mapping[str, str]) -> FactSpec | None:
    """The spec of ``conversation.attributes.<key>`` under the declared types (None:
    not an attribute fact, or not declared)."""
    if not name.startswith(ATTRIBUTE_PREFIX):
        return None
    kind = declared.get(name.removeprefix(ATTRIBUTE_PREFIX))
    if kind is None:
        return None
    python = {"string": str, "integer": int, "number": float, "boolean": bool}[kind]
    return FactSpec(name, python, f"custom attribute ({kind})", optional=True)


def typed_attribute(value: object, kind: str) -> object:
    """An attribute's value as a fact of the declared type; None (absent) for a value
    of another type. An integer is a number too; a boolean is neither."""
    if value is None or isinstance(value, bool) is not (kind == "boolean"):
        return None
    if kind == "string":
        return value if isinstance(value, str) else None
    if kind == "integer":
        return value if isinstance(value, int) else None
    if kind == "number":
        return value if isinstance(value, int | float) else None
    return value  # boolean


def detail_value(fact: str, channel: str | None, labels: frozenset[str],
                 attributes: Mapping[str, object], declared: Mapping[str, str]) -> object:
    """A detail fact's value for one conversation (None: absent)."""
    if fact == "conversation.channel":
        return channel
    if fact == "conversation.labels":
        return labels
    key = fact.removeprefix(ATTRIBUTE_PREFIX)
    return typed_attribute(attributes.get(key), declared[key])


def detail_results(tests: Sequence[tuple[str, str, Any]], channel: str | None,
                   labels: frozenset[str], attributes: Mapping[str, object],
                   declared: Mapping[str, str]) -> tuple[bool, ...]:
    """The results of detail tests (fact, operator, value) for one conversation's
    details, in order: what the engine (or a view set) is given after the scalar facts."""
    return tuple(test_holds(op, detail_value(fact, channel, labels, attributes, declared),
                            value)
                 for fact, op, value in tests)


def test_holds(op: str, actual: Any, expected: Any, ordered: bool = False) -> bool:
    """Whether a fact test holds: the meaning of every operator of the rule language.

    ``actual`` None is an absent value: only the negations (``not_equals``, ``not_in``)
    and ``present: false`` hold for it. ``ordered``: the values are priorities, compared
    by rank.
    """
    if op == "present":
        return (actual is not None) is expected
    if actual is None:
        return op in ("not_equals", "not_in")
    if ordered:
        actual = PRIORITY_RANK[actual]
        expected = (tuple(PRIORITY_RANK[v] for v in expected) if isinstance(expected, tuple)
                    else PRIORITY_RANK[expected])
    test = _OPERATORS.get(op)
    if test is None:
        raise ValueError(f"unknown operator {op!r}")
    return test(actual, expected)


def comparison(op: str) -> Callable[[Any, Any], bool]:
    """What ``op`` does with a present value, as :func:`test_holds` does it: for a test
    on a fact that is never absent (a scalar fact), decided once (``present`` is not
    one: it tests absence)."""
    return _OPERATORS[op]


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "equals": operator.eq, "not_equals": operator.ne,
    "in": lambda value, values: value in values,
    "not_in": lambda value, values: value not in values,
    "contains": lambda labels, label: label in labels,
    "not_contains": lambda labels, label: label not in labels,
    "contains_any": lambda labels, wanted: not labels.isdisjoint(wanted),
    "contains_all": lambda labels, wanted: labels.issuperset(wanted),
    "greater_than": operator.gt, "at_least": operator.ge,
    "less_than": operator.lt, "at_most": operator.le,
}
