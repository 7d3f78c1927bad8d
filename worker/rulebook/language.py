"""The rule language's tables: the keys of a rule file, the operators of a fact test,
which operators each fact takes and what its values must be.

Data, not code paths: the reader (:mod:`worker.rulebook.syntax`) checks rule files
against them, and the rule files' JSON Schema (:mod:`worker.rulebook.schema`) is made
from them, so a change here changes both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.rulebook.facts import TIME_FACTS, FactSpec

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Channel ids, labels and attribute keys are ids of the event contract.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_:\-]{1,128}$")

# A rule file's sections: those of named definitions (with the kind each one holds),
# the attribute declarations and a description.
DEFINITION_SECTIONS = {"categories": "category", "predicates": "predicate"}
ATTRIBUTES = "attributes"
DESCRIPTION = "description"
SECTIONS = (*DEFINITION_SECTIONS, ATTRIBUTES, DESCRIPTION)
# A definition's keys: its condition (required) and a description.
WHEN = "when"
DEFINITION_KEYS = (WHEN, DESCRIPTION)
# A condition: a group of conditions, a negation, a reference, or a fact test.
GROUPS = ("all", "any")
NEGATION = "not"
REFERENCES = ("predicate", "category")
FACT = "fact"

# The operators of a fact test, with what each one holds for.
OPERATORS = {
    "equals": "the fact is this value",
    "not_equals": "the fact is not this value (or is absent)",
    "in": "the fact is one of these values",
    "not_in": "the fact is none of these values (or is absent)",
    "greater_than": "the fact is greater than this value",
    "at_least": "the fact is this value or greater",
    "less_than": "the fact is less than this value",
    "at_most": "the fact is this value or less",
    "contains": "the set has this label",
    "not_contains": "the set does not have this label",
    "contains_any": "the set has at least one of these labels",
    "contains_all": "the set has every one of these labels",
    "present": "true: the optional fact is there; false: it is absent",
}
ORDERING = ("greater_than", "at_least", "less_than", "at_most")
LISTS = ("in", "not_in", "contains_any", "contains_all")  # take a non-empty list
SET_OPERATORS = ("contains", "not_contains", "contains_any", "contains_all")
PRESENT = "present"  # takes true or false, on an optional fact only

# The longest wait a rule may compare with. A due time is the wait's start plus a
# threshold: one far beyond any real wait only risks the calendar's end (year 9999).
MAX_WAIT_SECONDS = 100 * 31_557_600  # 100 years of 365.25 days


def fact_operators(spec: FactSpec) -> tuple[str, ...]:
    """The operators that may test ``spec``'s fact, in :data:`OPERATORS`' order: a set
    takes the set operators; another fact the comparisons, the ordering ones if it is
    a number or ordered; an optional one ``present`` too."""
    allowed: tuple[str, ...]
    if spec.kind is frozenset:
        allowed = SET_OPERATORS
    else:
        ordered = spec.kind is int or spec.ordered
        allowed = tuple(op for op in OPERATORS if op not in SET_OPERATORS and op != PRESENT
                        and (ordered or op not in ORDERING))
    return (*allowed, PRESENT) if spec.optional else allowed


@dataclass(frozen=True)
class ValueType:
    """What each value of a test of a fact must be (of a set: each label)."""

    kind: type  # bool, int or str, exactly: a boolean is no number
    choices: tuple[str, ...] = ()  # one of these, if any
    is_id: bool = False  # text matching ID_PATTERN
    maximum: int | None = None


def value_type(spec: FactSpec) -> ValueType:
    kind = str if spec.kind is frozenset else spec.kind
    return ValueType(kind, spec.choices, kind is str and not spec.choices,
                     MAX_WAIT_SECONDS if spec.name in TIME_FACTS else None)
