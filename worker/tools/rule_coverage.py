"""Rule coverage: which conditions of the rule files no test case made true, and which
none made false (``inbox-rules rules test --coverage``).

While the cases run, every decision the worker would make is recorded: after each
event (and each time crossing), the facts of every (agent, conversation) pair of the
case's accounts, the same facts the categoriser decides on
(:func:`worker.domain.categoriser.facts_of`). Recording pairs, not the engine's calls,
matters: the categoriser also evaluates relations no agent has (a member of a group
that has no members, say), and counting those would call a condition exercised that
no case ever showed to an agent. The engine's cache does not hide anything either:
the recorded facts are evaluated again, condition by condition, with the explanation
machinery (:func:`worker.rulebook.explain.all_verdicts`), which looks at every
condition, deciding or not.

A condition never made true (or never made false) is not a failure: it is a place
where a rule can change without any case noticing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts import Event
from worker.domain.facts import ATTRIBUTE_PREFIX, FACTS
from worker.domain.inbox import Inbox
from worker.domain.reading import facts_of
from worker.domain.updates import Update
from worker.rulebook.engine import CompiledRules
from worker.rulebook.explain import FactValue, all_verdicts, describe
from worker.tools.rule_cases import CaseResult, run_cases

# A decision's named facts, as sorted (name, value) pairs: hashable, so each distinct
# one is evaluated once.
Vector = tuple[tuple[str, FactValue], ...]


class Recorder:
    """Collects the distinct fact vectors of every (agent, conversation) decision of
    the inboxes it is shown."""

    def __init__(self) -> None:
        self.vectors: set[Vector] = set()

    def inbox(self, rules: CompiledRules) -> Inbox:
        """An inbox for one case that shows itself to this recorder (for
        :func:`worker.tools.rule_cases.run_cases`)."""
        return _ObservedInbox(rules, self)

    def record(self, inbox: Inbox) -> None:
        for state in inbox.accounts.values():
            agents = sorted(state.account.agents)
            for conversation_id in state.conversations:
                for agent_id in agents:
                    facts = facts_of(state, conversation_id, agent_id,
                                     inbox.rules.attributes)
                    if facts:
                        self.vectors.add(tuple(sorted(facts.items())))


class _ObservedInbox(Inbox):
    """Shows itself to a recorder after every event, and whenever a case's expectation
    reads it: by then every time crossing the expectation asked for is made, so the
    decisions time changed are recorded too."""

    def __init__(self, rules: CompiledRules, recorder: Recorder) -> None:
        super().__init__(rules)
        self._recorder = recorder

    def handle(self, event: Event) -> list[Update]:
        updates = super().handle(event)
        self._recorder.record(self)
        return updates

    def categories_of(self, account_id: str, conversation_id: str,
                      agent_id: str) -> frozenset[str]:
        self._recorder.record(self)
        return super().categories_of(account_id, conversation_id, agent_id)


def run_with_coverage(rules: CompiledRules, rules_dir: Path,
                      ) -> tuple[list[CaseResult], Coverage]:
    """Run the rule test cases of ``rules_dir`` and measure their coverage of ``rules``."""
    recorder = Recorder()
    results = run_cases(rules, rules_dir, recorder.inbox)
    return results, coverage(rules, recorder.vectors)


@dataclass(frozen=True)
class ConditionCoverage:
    """One condition of a rule file and whether any recorded decision made it true,
    and false. ``owner`` is the definition it is written in (``category new``)."""

    file: str
    line: int
    condition: str
    owner: str
    made_true: bool
    made_false: bool

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "condition": self.condition,
                "in": self.owner}


@dataclass(frozen=True)
class Coverage:
    vectors: int  # distinct fact vectors the cases produced
    conditions: tuple[ConditionCoverage, ...]

    @property
    def never_true(self) -> list[ConditionCoverage]:
        return [c for c in self.conditions if not c.made_true]

    @property
    def never_false(self) -> list[ConditionCoverage]:
        return [c for c in self.conditions if not c.made_false]

    def to_json(self) -> dict[str, Any]:
        return {"conditions": len(self.conditions), "fact_vectors": self.vectors,
                "never_true": [c.to_json() for c in self.never_true],
                "never_false": [c.to_json() for c in self.never_false]}


def coverage(rules: CompiledRules, vectors: Iterable[Vector]) -> Coverage:
    """Every condition of ``rules`` (categories and predicates, in file and line order)
    with whether any of ``vectors`` made it true, and false."""
    definitions = rules.definitions
    # (file, line, text, owner) -> [made true, made false]: every condition listed,
    # even when no vector was recorded at all.
    seen: dict[tuple[str, int, str, str], list[bool]] = {}
    for owner, condition, _ in all_verdicts(definitions, _some_facts(rules)):
        seen[(owner.file, condition.line, describe(condition),
              f"{owner.kind} {owner.name}")] = [False, False]
    count = 0
    for vector in vectors:
        count += 1
        facts = dict(vector)
        for owner, condition, holds in all_verdicts(definitions, facts):
            key = (owner.file, condition.line, describe(condition), f"{owner.kind} {owner.name}")
            seen[key][0 if holds else 1] = True
    return Coverage(count, tuple(
        ConditionCoverage(file, line, text, owner, marks[0], marks[1])
        for (file, line, text, owner), marks in sorted(seen.items(),
                                                       key=lambda item: item[0][:2])))


def _some_facts(rules: CompiledRules) -> dict[str, FactValue]:
    """Any valid facts: to list the conditions before anything is recorded."""
    facts: dict[str, FactValue] = {name: (spec.choices[0] if spec.choices else spec.kind())
                                   for name, spec in FACTS.items()}
    facts.update({ATTRIBUTE_PREFIX + key: None for key in rules.attributes})
    return facts
