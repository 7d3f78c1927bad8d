"""Turn validated definitions into durable-rules JSON rulesets.

References to predicates and categories are inlined (with cycle detection), negations
are pushed down to the fact tests (durable-rules has no general ``not``), and every
category becomes one rule whose action records the category name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from worker.errors import RuleFileError, RuleProblem
from worker.rulebook.syntax import AllOf, AnyOf, Condition, Definition, FactTest, Not, Ref

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

    def __init__(self, definitions: Iterable[Definition]) -> None:
        self.categories: dict[str, Definition] = {}
        self.predicates: dict[str, Definition] = {}
        problems: list[RuleProblem] = []
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


def to_durable(condition: Condition) -> dict[str, Any]:
    """durable-rules expression for a condition in negation normal form."""
    if isinstance(condition, AllOf):
        return {"$and": [to_durable(i) for i in condition.items]}
    if isinstance(condition, AnyOf):
        return {"$or": [to_durable(i) for i in condition.items]}
    if not isinstance(condition, FactTest):
        raise TypeError(f"not in negation normal form: {condition!r}")
    key = fact_key(condition.fact)
    if condition.op == "equals":
        return {key: condition.value}
    if condition.op == "in":
        return {"$or": [{key: v} for v in condition.value]}  # type: ignore[attr-defined]
    if condition.op == "not_in":
        return {"$and": [{"$neq": {key: v}} for v in condition.value]}  # type: ignore[attr-defined]
    return {_DURABLE_OPS[condition.op]: {key: condition.value}}


def compile_ruleset(definitions: Definitions) -> dict[str, Any]:
    """The durable-rules ruleset body: one rule per category, its action named after it."""
    rules: dict[str, Any] = {}
    for name, definition in definitions.categories.items():
        expression = to_durable(negation_normal_form(definitions.expand(definition.when)))
        rules[f"category_{name}"] = {"all": [{"m": expression}], "run": name}
    return rules
