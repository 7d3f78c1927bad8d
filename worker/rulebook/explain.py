"""Why a category holds: the rule files' conditions read again in Python, with file:line.

durable-rules stays the evaluator of record: it decides what the worker publishes. To
say *why*, this module evaluates the same definitions as written (before inlining and
normal forms, so every condition keeps the line the author wrote it on) and keeps, for
each condition, the conditions under it that decided it:

* ``all`` that holds: every item; ``all`` that fails: the items that failed (each one
  alone is enough to fail it);
* ``any`` that holds: the items that held; ``any`` that fails: every item;
* ``not``: its item; a ``predicate``/``category`` reference: the referenced
  definition's condition, so an explanation goes through references to the facts.

``tests/test_explain.py`` holds the two evaluators together: over every fact vector of
the vocabulary, a category holds here exactly when durable-rules says so.

Rule files are data: nothing here executes anything from them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from contracts.requests import (
    CategoryExplanation,
    ConditionExplanation,
    ExplainReply,
)
from worker.domain.account import AccountState
from worker.domain.reading import facts_of
from worker.domain.views import UNRESOLVED, AccountViews
from worker.rulebook.compiler import Definitions
from worker.rulebook.engine import CompiledRules
from worker.rulebook.facts import FACTS, test_holds
from worker.rulebook.syntax import AllOf, AnyOf, Condition, Definition, FactTest, Not, Ref

# A named fact's value: labels as a frozenset, an absent channel or attribute as None.
FactValue = str | bool | int | float | frozenset[str] | None


def _holds(test: FactTest, facts: Mapping[str, FactValue]) -> bool:
    """A fact test read as written: the meaning of every operator is
    :func:`worker.domain.facts.test_holds`, the same the engine's inputs are made by."""
    spec = FACTS.get(test.fact)
    return test_holds(test.op, facts[test.fact], test.value,
                      ordered=spec is not None and spec.ordered)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One condition as evaluated for one fact mapping.

    ``because`` are the conditions under it that decided it (see the module docstring);
    a fact test has none. ``value`` is the fact's value, for fact tests only.
    """

    file: str
    line: int
    text: str
    holds: bool
    because: tuple[Verdict, ...] = ()
    value: FactValue = None

    def walk(self, depth: int = 0) -> Iterator[tuple[int, Verdict]]:
        """This verdict and every deciding one under it, depth first, with depths."""
        yield depth, self
        for item in self.because:
            yield from item.walk(depth + 1)


@dataclass(frozen=True, slots=True)
class CategoryVerdict:
    """Whether a category holds, where it is defined, and the evaluation of its condition."""

    name: str
    file: str
    line: int
    holds: bool
    reason: Verdict

    def conditions(self) -> list[ConditionExplanation]:
        """The deciding conditions as the contract carries them: depth first, with the
        depth under the category (0: its own ``when``)."""
        return [ConditionExplanation(file=v.file, line=v.line or None, condition=v.text,
                                     holds=v.holds, depth=depth)
                for depth, v in self.reason.walk()]

    def model(self) -> CategoryExplanation:
        return CategoryExplanation(name=self.name, holds=self.holds,
                                   conditions=self.conditions())


def describe(condition: Condition) -> str:
    """A condition in a line, as a rule author would recognise it."""
    if isinstance(condition, FactTest):
        return f"{condition.fact} {condition.op} {_yaml_value(condition.value)}"
    if isinstance(condition, AllOf):
        return f"all of {len(condition.items)}"
    if isinstance(condition, AnyOf):
        return f"any of {len(condition.items)}"
    if isinstance(condition, Not):
        return "not"
    return f"{condition.kind} {condition.name}"


def _yaml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


class _Evaluator:
    """Evaluates conditions for one fact mapping; each definition once (a predicate
    referenced by several categories is explained the same way each time)."""

    def __init__(self, definitions: Definitions, facts: Mapping[str, FactValue]) -> None:
        self.definitions = definitions
        self.facts = facts
        self._done: dict[tuple[str, str], Verdict] = {}

    def definition(self, definition: Definition) -> Verdict:
        key = (definition.kind, definition.name)
        verdict = self._done.get(key)
        if verdict is None:
            verdict = self._done[key] = self.condition(definition.when, definition.file)
        return verdict

    def condition(self, condition: Condition, file: str) -> Verdict:
        text = describe(condition)
        if isinstance(condition, FactTest):
            holds = _holds(condition, self.facts)
            return Verdict(file, condition.line, text, holds, value=self.facts[condition.fact])
        if isinstance(condition, Not):
            inner = self.condition(condition.item, file)
            return Verdict(file, condition.line, text, not inner.holds, (inner,))
        if isinstance(condition, AllOf | AnyOf):
            items = [self.condition(item, file) for item in condition.items]
            want = isinstance(condition, AllOf)  # all: decided by failures; any: by successes
            holds = all(i.holds for i in items) if want else any(i.holds for i in items)
            deciding = items if holds == want else [i for i in items if i.holds != want]
            return Verdict(file, condition.line, text, holds, tuple(deciding))
        target = self.target(condition)
        inner = self.definition(target)
        return Verdict(file, condition.line, text, inner.holds, (inner,))

    def target(self, ref: Ref) -> Definition:
        table = (self.definitions.categories if ref.kind == "category"
                 else self.definitions.predicates)
        return table[ref.name]


def explain(definitions: Definitions, facts: Mapping[str, FactValue]) -> list[CategoryVerdict]:
    """Every category of the rule set, in the rules' order: whether it holds for these
    facts and why. ``facts`` names every fact of the vocabulary (a missing one is a
    ``KeyError``, as for :meth:`CompiledRules.evaluate_facts`)."""
    evaluator = _Evaluator(definitions, facts)
    verdicts = []
    for name, definition in definitions.categories.items():
        reason = evaluator.definition(definition)
        verdicts.append(CategoryVerdict(name, definition.file, definition.line, reason.holds,
                                        reason))
    return verdicts


def all_verdicts(definitions: Definitions,
                 facts: Mapping[str, FactValue]) -> list[tuple[Definition, Condition, bool]]:
    """Every condition of every definition (categories, then predicates), each with the
    definition it is written in and whether it held: none is left out for not deciding
    (rule coverage asks of each condition whether any evaluation made it true, and any
    made it false)."""
    evaluator = _Evaluator(definitions, facts)
    out: list[tuple[Definition, Condition, bool]] = []

    def visit(owner: Definition, condition: Condition) -> bool:
        if isinstance(condition, FactTest):
            holds = _holds(condition, facts)
        elif isinstance(condition, Not):
            holds = not visit(owner, condition.item)
        elif isinstance(condition, AllOf | AnyOf):
            items = [visit(owner, item) for item in condition.items]  # no short cut
            holds = all(items) if isinstance(condition, AllOf) else any(items)
        else:
            holds = evaluator.definition(evaluator.target(condition)).holds
        out.append((owner, condition, holds))
        return holds

    for definition in [*definitions.categories.values(), *definitions.predicates.values()]:
        visit(definition, definition.when)
    return out


def explain_views(rules: CompiledRules, views: AccountViews, agent_id: str,
                  facts: Mapping[str, FactValue]) -> list[CategoryVerdict]:
    """The agent's views in force (shared, then its own), each as a category: whether
    it holds for these facts and why. A view's conditions have no line (they came in an
    event); a view holds for unresolved conversations only, which is said first."""
    verdicts = []
    status = facts["conversation.status"]
    for owner, text in (("shared views", views.shared),
                        (f"{agent_id}'s views", views.personal_of(agent_id))):
        if not text:
            continue
        for view in rules.compile_views(text).views:
            reason = _Evaluator(rules.definitions, facts).condition(view.when, owner)
            if status not in UNRESOLVED:
                reason = Verdict(owner, 0, "conversation.status in [open, snoozed] (views "
                                 "hold for unresolved conversations only)", False, value=status)
            verdicts.append(CategoryVerdict(view.category, owner, 0, reason.holds, reason))
    return verdicts


def explain_pair(rules: CompiledRules, state: AccountState | None, account_id: str,
                 agent_id: str, conversation_id: str) -> ExplainReply:
    """The explanation of one (agent, conversation) of an account's state, as the
    ``explain`` reply and ``inbox-rules explain --json`` carry it.

    The facts are the categoriser's own (:func:`worker.domain.categoriser.facts_of`).
    When the worker decides nothing for the pair (unknown account or conversation, a
    deleted conversation, or an agent who is not one of the account's: the worker
    publishes nothing for any of them), the reply has no facts, no categories and no
    explanations. Facts of an empty conversation would not do: they would put it in
    ``all`` and contradict the empty inbox the agent sees.
    """
    facts = (facts_of(state, conversation_id, agent_id, rules.attributes)
             if state is not None else {})
    verdicts = explain(rules.definitions, facts) if facts else []
    if facts and state is not None:
        verdicts.extend(explain_views(rules, state.account.views, agent_id, facts))
    return ExplainReply(
        account_id=account_id, agent_id=agent_id, conversation_id=conversation_id,
        rules_version=rules.version,
        facts={name: sorted(value) if isinstance(value, frozenset) else value
               for name, value in facts.items()},
        categories=sorted({v.name for v in verdicts if v.holds}),
        explanations=[v.model() for v in verdicts])
