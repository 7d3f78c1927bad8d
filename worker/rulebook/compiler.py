"""Turn validated definitions into durable-rules JSON rulesets.

References to predicates and categories are inlined (with cycle detection), negations
are pushed down to the fact tests (durable-rules has no general ``not``), and every
category becomes one rule whose action records the category name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from worker.errors import RuleFileError, RuleProblem
from worker.rulebook.attributes import check_attribute_tests
from worker.rulebook.facts import ATTRIBUTE_PREFIX, DETAIL_FACTS, PRIORITY_RANK, TIME_FACTS
from worker.rulebook.syntax import (
    AllOf,
    AnyOf,
    AttributeDeclaration,
    Condition,
    Definition,
    FactTest,
    Not,
    Ref,
)

PRIORITY = "conversation.priority"
# A detail test (fact, op, value): given to the engine as a boolean fact of its own.
DetailTest = tuple[str, str, object]

_NEGATED = {
    "equals": "not_equals", "not_equals": "equals", "in": "not_in", "not_in": "in",
    "greater_than": "at_most", "at_most": "greater_than",
    "less_than": "at_least", "at_least": "less_than",
}
_DURABLE_OPS = {"not_equals": "$neq", "greater_than": "$gt", "at_least": "$gte",
                "less_than": "$lt", "at_most": "$lte"}


def fact_key(fact: str) -> str:
    """durable-rules field name for a fact (dots would read as nesting)."""
    return fact.replace(".", "__")


class Definitions:
    """All definitions of one rule directory, checked as a whole."""

    def __init__(self, definitions: Iterable[Definition],
                 attributes: Iterable[AttributeDeclaration] = ()) -> None:
        self.categories: dict[str, Definition] = {}
        self.predicates: dict[str, Definition] = {}
        problems: list[RuleProblem] = []
        # Custom attribute key -> declared type (string, integer, number, boolean).
        self.attributes: dict[str, str] = {}
        first: dict[str, AttributeDeclaration] = {}
        for declaration in attributes:
            earlier = first.setdefault(declaration.key, declaration)
            if earlier.kind != declaration.kind:
                problems.append(RuleProblem(
                    declaration.file, declaration.line,
                    f"attribute {declaration.key!r} is declared {declaration.kind} here and "
                    f"{earlier.kind} at {earlier.file}:{earlier.line}"))
            self.attributes[declaration.key] = earlier.kind
        for definition in definitions:
            other = self.categories.get(definition.name) or self.predicates.get(definition.name)
            if other is not None:
                problems.append(RuleProblem(
                    definition.file, definition.line,
                    f"{definition.kind} {definition.name!r} is already defined as a "
                    f"{other.kind} at {other.file}:{other.line}"))
                continue
            table = self.categories if definition.kind == "category" else self.predicates
            table[definition.name] = definition
        if not self.categories and not problems:
            problems.append(RuleProblem("(rules)", None, "no category is defined"))
        problems.extend(check_attribute_tests(
            [(test, d.file) for d in [*self.categories.values(), *self.predicates.values()]
             for test in _fact_tests(d.when) if test.fact.startswith(ATTRIBUTE_PREFIX)],
            self.attributes))
        reported: set[tuple[str, int | None]] = set()
        for definition in [*self.categories.values(), *self.predicates.values()]:
            for problem in self._check_refs(definition, definition.when, (definition.name,)):
                # A cycle is found from each of its members: report each place once.
                if (problem.file, problem.line) not in reported:
                    reported.add((problem.file, problem.line))
                    problems.append(problem)
        if problems:
            raise RuleFileError(problems)

    def _check_refs(self, owner: Definition, condition: Condition,
                    chain: tuple[str, ...]) -> list[RuleProblem]:
        if isinstance(condition, FactTest):
            return []
        if isinstance(condition, Not):
            return self._check_refs(owner, condition.item, chain)
        if isinstance(condition, AllOf | AnyOf):
            return [p for item in condition.items for p in self._check_refs(owner, item, chain)]
        table = self.categories if condition.kind == "category" else self.predicates
        target = table.get(condition.name)
        if target is None:
            known = ", ".join(table) or "none"
            return [RuleProblem(owner.file, condition.line,
                                f"unknown {condition.kind} {condition.name!r} (known: {known})")]
        if condition.name in chain:
            cycle = " -> ".join((*chain, condition.name))
            return [RuleProblem(owner.file, condition.line, f"circular reference: {cycle}")]
        return self._check_refs(target, target.when, (*chain, condition.name))

    def expand(self, condition: Condition) -> Condition:
        """Replace every reference by the condition it names."""
        if isinstance(condition, Ref):
            table = self.categories if condition.kind == "category" else self.predicates
            return self.expand(table[condition.name].when)
        if isinstance(condition, Not):
            return Not(self.expand(condition.item), condition.line)
        if isinstance(condition, AllOf):
            return AllOf(tuple(self.expand(i) for i in condition.items), condition.line)
        if isinstance(condition, AnyOf):
            return AnyOf(tuple(self.expand(i) for i in condition.items), condition.line)
        return condition


def _fact_tests(condition: Condition) -> Iterable[FactTest]:
    """The fact tests written in one condition (references not followed)."""
    if isinstance(condition, FactTest):
        yield condition
    elif isinstance(condition, Not):
        yield from _fact_tests(condition.item)
    elif isinstance(condition, AllOf | AnyOf):
        for item in condition.items:
            yield from _fact_tests(item)


def is_detail(fact: str) -> bool:
    """A fact the engine is given as test results, not as a value (see
    :mod:`worker.domain.facts`)."""
    return fact in DETAIL_FACTS or fact.startswith(ATTRIBUTE_PREFIX)


def detail_key(index: int) -> str:
    """The name of the engine fact that holds the result of detail test ``index``."""
    return f"detail.{index}"


def detail_tests(definitions: Definitions) -> tuple[DetailTest, ...]:
    """Every distinct detail test the categories make, in a stable order: the engine is
    given one boolean per test, in this order, after the scalar facts."""
    return tuple(dict.fromkeys((t.fact, t.op, t.value) for t in category_tests(definitions)
                               if is_detail(t.fact)))


def lower(condition: Condition, details: dict[DetailTest, int]) -> Condition:
    """The condition as the engine evaluates it: a detail test becomes ``detail.N
    equals true`` (its negation then ``not_equals true``, whatever the operator: an
    absent value makes a test and its flipped operator both false), and priorities
    become their ranks (compared as numbers). Needs expanded input."""
    if isinstance(condition, FactTest):
        if is_detail(condition.fact):
            index = details[(condition.fact, condition.op, condition.value)]
            return FactTest(detail_key(index), "equals", True, condition.line)
        if condition.fact == PRIORITY:
            value = condition.value
            ranked = (tuple(PRIORITY_RANK[str(v)] for v in value) if isinstance(value, tuple)
                      else PRIORITY_RANK[str(value)])
            return FactTest(condition.fact, condition.op, ranked, condition.line)
        return condition
    if isinstance(condition, Not):
        return Not(lower(condition.item, details), condition.line)
    if isinstance(condition, AllOf):
        return AllOf(tuple(lower(i, details) for i in condition.items), condition.line)
    if isinstance(condition, AnyOf):
        return AnyOf(tuple(lower(i, details) for i in condition.items), condition.line)
    raise TypeError(f"unexpanded reference {condition!r}")


def negation_normal_form(condition: Condition, negate: bool = False) -> Condition:
    """Push every ``not`` down to the fact tests (De Morgan); needs expanded input."""
    if isinstance(condition, FactTest):
        if not negate:
            return condition
        return FactTest(condition.fact, _NEGATED[condition.op], condition.value, condition.line)
    if isinstance(condition, Not):
        return negation_normal_form(condition.item, not negate)
    if isinstance(condition, AllOf | AnyOf):
        items = tuple(negation_normal_form(i, negate) for i in condition.items)
        flip = isinstance(condition, AllOf) == negate
        return AnyOf(items, condition.line) if flip else AllOf(items, condition.line)
    raise TypeError(f"unexpanded reference {condition!r}")


# durable-rules keeps at most 32 expression steps per rule (ERR_EXPRESSION_LIMIT_EXCEEDED,
# error 113): a whole category inlined into one expression overflows it. So each
# category is compiled to disjunctive normal form, one small rule per conjunction,
# all with the same action; the category holds when any of them fires.
MAX_CONJUNCTIONS = 512
MAX_TESTS_PER_CONJUNCTION = 12

Conjunction = frozenset[tuple[str, str, object]]  # (fact, op, value)


def disjunctive_normal_form(condition: Condition) -> list[Conjunction]:
    """The conjunctions (of single-value fact tests) whose union is ``condition``.

    Needs negation normal form. ``in``/``not_in`` expand to equalities; contradictory
    conjunctions (a fact equal to two values, or equal and not equal to one) are dropped.
    """
    terms = list(dict.fromkeys(t for t in _dnf(condition) if not _contradictory(t)))
    # Absorption: a conjunction that contains another one adds nothing.
    return [t for t in terms if not any(other < t for other in terms)]


def _dnf(condition: Condition) -> list[Conjunction]:
    if isinstance(condition, FactTest):
        if condition.op == "in":
            return [frozenset({(condition.fact, "equals", v)})
                    for v in condition.value]  # type: ignore[attr-defined]
        if condition.op == "not_in":
            return [frozenset((condition.fact, "not_equals", v)
                              for v in condition.value)]  # type: ignore[attr-defined]
        return [frozenset({(condition.fact, condition.op, condition.value)})]
    if isinstance(condition, AnyOf):
        return [term for item in condition.items for term in _dnf(item)]
    if isinstance(condition, AllOf):
        terms: list[Conjunction] = [frozenset()]
        for item in condition.items:
            terms = [left | right for left in terms for right in _dnf(item)
                     if not _contradictory(left | right)]
            if len(terms) > MAX_CONJUNCTIONS:
                break
        return terms
    raise TypeError(f"not in negation normal form: {condition!r}")


def _contradictory(term: Conjunction) -> bool:
    equal: dict[str, object] = {}
    for fact, op, value in term:
        if op == "equals":
            if fact in equal and equal[fact] != value:
                return True
            equal[fact] = value
    return any(op == "not_equals" and equal.get(fact, _MISSING) == value
               for fact, op, value in term)


_MISSING = object()


def _test_to_durable(fact: str, op: str, value: object) -> dict[str, Any]:
    key = fact_key(fact)
    if op == "equals":
        return {key: value}
    return {_DURABLE_OPS[op]: {key: value}}


def conjunction_to_durable(term: Conjunction) -> dict[str, Any]:
    tests = [_test_to_durable(*test) for test in sorted(term, key=repr)]
    if not tests:
        # An always-true conjunction: every fact vector has a status.
        return {"$neq": {fact_key("conversation.status"): ""}}
    return tests[0] if len(tests) == 1 else {"$and": tests}


def compile_ruleset(definitions: Definitions) -> dict[str, Any]:
    """The durable-rules ruleset body: per category, one rule per DNF conjunction.

    Every rule's action is named after its category. A category whose condition can
    never hold compiles to no rule at all.
    """
    rules: dict[str, Any] = {}
    problems: list[RuleProblem] = []
    details = {test: index for index, test in enumerate(detail_tests(definitions))}
    for name, definition in definitions.categories.items():
        terms = disjunctive_normal_form(
            negation_normal_form(lower(definitions.expand(definition.when), details)))
        too_long = [t for t in terms if len(t) > MAX_TESTS_PER_CONJUNCTION]
        if len(terms) > MAX_CONJUNCTIONS or too_long:
            problems.append(RuleProblem(
                definition.file, definition.line,
                f"category {name!r} is too complex for the engine: simplify its condition "
                f"(at most {MAX_CONJUNCTIONS} alternatives of {MAX_TESTS_PER_CONJUNCTION} "
                "fact tests each once expanded)"))
            continue
        for number, term in enumerate(terms):
            rules[f"category_{name}_{number}"] = {
                "all": [{"m": conjunction_to_durable(term)}], "run": name}
    if problems:
        raise RuleFileError(problems)
    return rules



def category_tests(definitions: Definitions) -> list[FactTest]:
    """Every fact test some category's condition makes, through the predicates and
    categories it refers to (each definition read once)."""
    tests: list[FactTest] = []
    seen: set[tuple[str, str]] = set()
    for name, definition in definitions.categories.items():
        if ("category", name) not in seen:
            seen.add(("category", name))
            tests.extend(referenced_tests(definition.when, definitions, seen))
    return tests


_REFERENCES = ("category", "predicate")


def referenced_tests(condition: Condition, definitions: Definitions,
                     seen: set[tuple[str, str]], follow: tuple[str, ...] = _REFERENCES,
                     ) -> list[FactTest]:
    """The fact tests ``condition`` makes, through the definitions of the kinds in
    ``follow`` it refers to, each read once (``seen``: (kind, name) already read)."""
    tests: list[FactTest] = []

    def visit(condition: Condition) -> None:
        if isinstance(condition, FactTest):
            tests.append(condition)
        elif isinstance(condition, Not):
            visit(condition.item)
        elif isinstance(condition, AllOf | AnyOf):
            for item in condition.items:
                visit(item)
        elif condition.kind in follow and (condition.kind, condition.name) not in seen:
            seen.add((condition.kind, condition.name))
            table = (definitions.categories if condition.kind == "category"
                     else definitions.predicates)
            visit(table[condition.name].when)

    visit(condition)
    return tests


def time_thresholds(tests: list[FactTest]) -> dict[str, tuple[int, ...]]:
    """Per time fact, every value of it at which some category's condition may change
    (``tests``: :func:`category_tests`).

    A test ``at_least 300`` (or its negation ``less_than 300``) changes at 300 seconds;
    ``greater_than 299`` (``at_most 299``) changes at 300 too, the values being whole
    seconds; ``equals 300`` (``in``, ``not_equals``, ``not_in``) at 300 and at 301. Between
    two consecutive thresholds every test on the fact keeps its truth, so the fact's
    value can be given to the engine as the largest threshold at or below it (the
    cache sees a few values, not every second), and a conversation needs looking at
    again only when its value reaches the next threshold. Thresholds at or below 0
    are never crossed (the facts start at 0) and are left out. Facts with no
    threshold are absent.
    """
    found: dict[str, set[int]] = {}
    for test in tests:
        if test.fact in TIME_FACTS:
            values = test.value if test.op in ("in", "not_in") else (test.value,)
            points = found.setdefault(test.fact, set())
            for value in values:  # type: ignore[attr-defined]
                points.update(p for p in _boundaries(test.op, int(value)) if p > 0)
    return {fact: tuple(sorted(points)) for fact, points in sorted(found.items()) if points}


def _boundaries(op: str, value: int) -> tuple[int, ...]:
    if op in ("at_least", "less_than"):
        return (value,)
    if op in ("greater_than", "at_most"):
        return (value + 1,)
    return (value, value + 1)  # equals, not_equals, in, not_in
