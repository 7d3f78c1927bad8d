"""Views: conditions that accounts and agents define, checked against a rule set.

A views body is ``{"views": [VIEW, ...]}`` (and ``agent_id`` for an agent's personal
views); a VIEW is ``{"view_id": ..., "name": ..., "when": CONDITION}``, where CONDITION
is the rule files' language: fact tests, ``all``/``any``/``not``, and references to the
rule set's categories and predicates (not to other views). Every problem is reported
with its path in the body (``views[2].when.all[1].fact: unknown fact ...``), and a body
with any problem changes nothing. Fact tests are read by the rule files' own reader,
so a view and a rule file accept exactly the same tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import yaml

from worker.domain.facts import comparison, detail_results
from worker.domain.state import Conversation
from worker.domain.views import VIEW_PREFIX
from worker.rulebook.attributes import check_attribute_tests
from worker.rulebook.compiler import (
    PRIORITY,
    Definitions,
    DetailTest,
    is_detail,
    referenced_tests,
    time_thresholds,
)
from worker.rulebook.facts import (
    ATTRIBUTE_PREFIX,
    FACT_NAMES,
    PRIORITY_RANK,
    UNREAD_FACTS,
    WAITING_SECONDS,
    FactVector,
)
from worker.rulebook.language import ID_PATTERN
from worker.rulebook.syntax import (
    AllOf,
    AnyOf,
    Condition,
    FactTest,
    Not,
    Ref,
    _Reader,
)

MAX_SHARED_VIEWS = 50
MAX_PERSONAL_VIEWS = 20
MAX_CONDITION_NODES = 64
MAX_NAME = 128
MAX_DEPTH = 16


@dataclass(frozen=True)
class View:
    view_id: str
    name: str
    when: Condition

    @property
    def category(self) -> str:
        """The name it is published under."""
        return f"{VIEW_PREFIX}{self.view_id}"


@dataclass(frozen=True)
class ViewProblem:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class _Checker:
    """Walks one views body, collecting every problem with its path."""

    def __init__(self, definitions: Definitions) -> None:
        self.definitions = definitions
        self.problems: list[ViewProblem] = []
        # Fact tests of custom attributes, by a number standing for their path (their
        # types are checked together, as in rule files).
        self.attribute_tests: list[tuple[FactTest, str]] = []  # (test, its path)
        self.nodes = 0

    def fail(self, path: str, reason: str) -> None:
        self.problems.append(ViewProblem(path, reason))

    def body(self, raw: object, personal: bool) -> list[View]:
        if not isinstance(raw, dict):
            self.fail("(body)", "must be a JSON object with a list under 'views'")
            return []
        views = raw.get("views")
        agent = raw.get("agent_id")
        if personal and (not isinstance(agent, str) or not ID_PATTERN.match(agent)):
            self.fail("agent_id", "must be the agent's id")
        if not isinstance(views, list):
            self.fail("views", "must be a list of views")
            return []
        limit = MAX_PERSONAL_VIEWS if personal else MAX_SHARED_VIEWS
        if len(views) > limit:
            kind = "personal views per agent" if personal else "shared views per account"
            self.fail("views", f"{len(views)} views: at most {limit} {kind}")
        out: list[View] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(views):
            view = self.view(f"views[{index}]", item)
            if view is None:
                continue
            if view.view_id in seen:
                self.fail(f"views[{index}].view_id", f"{view.view_id!r} is also "
                                                     f"views[{seen[view.view_id]}]'s id")
                continue
            seen[view.view_id] = index
            out.append(view)
        by_path = {str(i): path for i, (_, path) in enumerate(self.attribute_tests)}
        for problem in check_attribute_tests(
                [(test, str(i)) for i, (test, _) in enumerate(self.attribute_tests)],
                self.definitions.attributes):
            self.fail(by_path[problem.file], problem.reason)
        return out

    def view(self, path: str, raw: object) -> View | None:
        if not isinstance(raw, dict):
            self.fail(path, "a view must be an object with view_id, name and when")
            return None
        view_id, name = raw.get("view_id"), raw.get("name", "")
        ok = True
        if not isinstance(view_id, str) or not ID_PATTERN.match(view_id):
            self.fail(f"{path}.view_id", "must be an id (letters, digits, '-', '_' and ':', "
                                         "at most 128)")
            ok = False
        if not isinstance(name, str) or len(name) > MAX_NAME:
            self.fail(f"{path}.name", f"must be text of at most {MAX_NAME} characters")
            ok = False
        if "when" not in raw:
            self.fail(f"{path}.when", "a view needs a condition")
            return None
        self.nodes = 0
        when = self.condition(f"{path}.when", raw["when"], 0)
        if self.nodes > MAX_CONDITION_NODES:
            self.fail(f"{path}.when", f"{self.nodes} condition nodes: at most "
                                      f"{MAX_CONDITION_NODES} per view")
            ok = False
        if when is None or not ok:
            return None
        return View(str(view_id), str(name), when)

    def condition(self, path: str, raw: object, depth: int) -> Condition | None:
        self.nodes += 1
        if depth > MAX_DEPTH:
            self.fail(path, f"nested deeper than {MAX_DEPTH} levels")
            return None
        if not isinstance(raw, dict) or not raw:
            self.fail(path, "a condition is an object: all, any, not, category, predicate "
                            "or a fact test")
            return None
        keys = list(raw)
        if keys in (["all"], ["any"]):
            items = raw[keys[0]]
            if not isinstance(items, list) or not items:
                self.fail(f"{path}.{keys[0]}", "takes a non-empty list of conditions")
                return None
            parsed = [self.condition(f"{path}.{keys[0]}[{i}]", item, depth + 1)
                      for i, item in enumerate(items)]
            if any(p is None for p in parsed):
                return None
            conditions = tuple(p for p in parsed if p is not None)
            return AllOf(conditions, 0) if keys == ["all"] else AnyOf(conditions, 0)
        if keys == ["not"]:
            inner = self.condition(f"{path}.not", raw["not"], depth + 1)
            return Not(inner, 0) if inner is not None else None
        if keys in (["category"], ["predicate"]):
            return self.reference(path, keys[0], raw[keys[0]])
        if "fact" in raw:
            return self.fact_test(path, raw)
        self.fail(path, f"unknown condition ({', '.join(map(str, keys))}): expected all, any, "
                        "not, category, predicate or a fact test")
        return None

    def reference(self, path: str, kind: str, name: object) -> Ref | None:
        table = (self.definitions.categories if kind == "category"
                 else self.definitions.predicates)
        if not isinstance(name, str) or name not in table:
            known = ", ".join(table) or "none"
            plural = "categories" if kind == "category" else "predicates"
            self.fail(f"{path}.{kind}", f"unknown {kind} {name!r} (the rules' {plural}: "
                                        f"{known})")
            return None
        return Ref(kind, name, 0)

    def fact_test(self, path: str, raw: dict[str, Any]) -> FactTest | None:
        """The rule files' reader on this one test (JSON is YAML): the same checks."""
        try:
            text = json.dumps(raw)
        except (TypeError, ValueError) as exc:
            self.fail(path, f"not a fact test: {exc}")
            return None
        read = _FACT_TESTS.get(text)
        if read is None:
            if len(_FACT_TESTS) >= MAX_FACT_TESTS:
                _FACT_TESTS.clear()
            read = _FACT_TESTS[text] = _read_fact_test(text)
        test, reasons, composed = read
        for reason in reasons:
            self.fail(f"{path}.{_field(reason, raw)}" if composed else path, reason)
        if test is not None and test.fact.startswith(ATTRIBUTE_PREFIX):
            self.attribute_tests.append((test, f"{path}.{test.op}"))
        return test


# A fact test's JSON text -> what the reader made of it: (the test, or None; the
# reasons of its problems; whether it was composed: else the one reason is the text's).
_Read = tuple[FactTest | None, tuple[str, ...], bool]
# Read fact tests kept (emptied when full): the reading is a function of the text
# alone, and the same tests come back in every views event and every compiled set
# (yaml.compose is most of what checking a view costs).
_FACT_TESTS: dict[str, _Read] = {}
MAX_FACT_TESTS = 4096


def _read_fact_test(text: str) -> _Read:
    reader = _Reader("(view)")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (TypeError, ValueError, yaml.YAMLError) as exc:
        return None, (f"not a fact test: {exc}",), False
    entries = reader.mapping(node, "a fact test") if node is not None else None
    test = reader.fact_test(node, entries, 0) if node is not None and entries else None
    reasons = tuple(problem.reason for problem in reader.problems)
    return (None if reasons else test), reasons, True


def _field(reason: str, raw: dict[str, Any]) -> str:
    """Which key of a fact test a problem is about: the fact, or its operator."""
    if reason.startswith(("unknown fact", "conversation.attributes")) and "fact" in raw:
        return "fact"
    operators = [key for key in raw if key != "fact"]
    return operators[0] if len(operators) == 1 else "fact"


def check_views(raw: object, definitions: Definitions, *, personal: bool | None = None,
                ) -> tuple[list[View], list[ViewProblem]]:
    """The views of a body and every problem with its path; views only when there are
    no problems (a body with one changes nothing). ``personal``: the body is an agent's
    (the default: it names an ``agent_id``)."""
    if personal is None:
        personal = isinstance(raw, dict) and "agent_id" in raw
    checker = _Checker(definitions)
    views = checker.body(raw, personal)
    if checker.problems:
        return [], checker.problems
    return views, []


def canonical_views(raw: object) -> str:
    """The views of a checked body as kept in force: each view's id, name and
    condition (other keys are ignored, as in every event), as JSON with sorted keys, so
    equal sets are equal texts."""
    views = raw.get("views", []) if isinstance(raw, dict) else []
    if not views:
        return ""
    kept = [{"view_id": v["view_id"], "name": v.get("name", ""), "when": v["when"]}
            for v in views]
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS).decode()


def _read_views(text: str, definitions: Definitions) -> tuple[list[View], list[ViewProblem]]:
    """The views of a set in force that still check under ``definitions``, and the
    problems of those that do not (each view checked alone, at its index)."""
    views: list[View] = []
    problems: list[ViewProblem] = []
    for index, item in enumerate(orjson.loads(text) if text else []):
        checked, found = check_views({"views": [item]}, definitions, personal=False)
        views.extend(checked)
        problems.extend(ViewProblem(p.path.replace("views[0]", f"views[{index}]", 1),
                                    p.reason) for p in found)
    return views, problems


# One agent's facts, then the set's detail test results, and their categories under
# the rules -> whether a view holds.
_Test = Callable[[FactVector, frozenset[str]], bool]
_FACT_INDEX = {name: index for index, name in enumerate(FACT_NAMES)}


class CompiledViews:
    """One set of views under one rule set, evaluated in Python.

    durable-rules decides the rules' categories; a view is a condition over the same
    facts and over those categories, so it is evaluated here on the same fact vector
    (scalar facts, then this set's detail test results) with the categories durable-rules
    gave: each fact test as :func:`~worker.domain.facts.test_holds` means it, the
    meaning the engine's own inputs are made with (a detail test by it, a scalar fact's
    by its comparison, decided when compiling). ``tests/test_view_properties.py`` holds
    it to durable-rules over generated views and fact vectors (each view made a category
    of the rule set). A view that no longer checks under the rules
    (a category it names is gone) is left out, and named in :attr:`problems`.
    """

    def __init__(self, text: str, definitions: Definitions) -> None:
        self.text = text
        views, self.problems = _read_views(text, definitions)
        self.categories: tuple[str, ...] = tuple(dict.fromkeys(v.category for v in views))
        self._definitions = definitions
        # The categories a view names are inputs (decided by the rules): only the
        # predicates it names are read through.
        tests = [test for view in views
                 for test in referenced_tests(view.when, definitions, set(), ("predicate",))]
        self.details: tuple[DetailTest, ...] = tuple(dict.fromkeys(
            (t.fact, t.op, t.value) for t in tests if is_detail(t.fact)))
        self.thresholds: tuple[int, ...] = time_thresholds(tests).get(WAITING_SECONDS, ())
        self.wide = any(t.fact in UNREAD_FACTS for t in tests)
        self._declared = dict(definitions.attributes)
        detail_index = {test: len(FACT_NAMES) + i for i, test in enumerate(self.details)}
        self._tests: list[tuple[str, _Test]] = [
            (view.category, self._compile(view.when, detail_index)) for view in views]

    @property
    def views(self) -> list[View]:
        """The views in force, read again from :attr:`text` (tools and tests): a worker
        keeps up to ``INBOX_RULES_VIEW_SETS`` compiled sets, and their conditions are
        not needed to evaluate them."""
        return _read_views(self.text, self._definitions)[0]

    def _compile(self, condition: Condition, details: dict[DetailTest, int]) -> _Test:
        if isinstance(condition, FactTest):
            key = (condition.fact, condition.op, condition.value)
            if key in details:
                index = details[key]
                return lambda facts, _categories: bool(facts[index])
            index = _FACT_INDEX[condition.fact]
            op, value = condition.op, condition.value
            if condition.fact == PRIORITY:  # the vector holds ranks
                value = (tuple(PRIORITY_RANK[str(v)] for v in value)
                         if isinstance(value, tuple) else PRIORITY_RANK[str(value)])
            # A scalar fact is never absent: test_holds comes down to its comparison.
            compare = comparison(op)
            return lambda facts, _categories: compare(facts[index], value)
        if isinstance(condition, Not):
            inner = self._compile(condition.item, details)
            return lambda facts, categories: not inner(facts, categories)
        if isinstance(condition, AllOf | AnyOf):
            items = [self._compile(item, details) for item in condition.items]
            return _all_of(items) if isinstance(condition, AllOf) else _any_of(items)
        if condition.kind == "category":
            name = condition.name
            return lambda _facts, categories: name in categories
        return self._compile(self._definitions.predicates[condition.name].when, details)

    def detail_results(self, conversation: Conversation) -> tuple[bool, ...]:
        return detail_results(self.details, conversation.channel, conversation.labels,
                              conversation.attributes, self._declared)

    def evaluate(self, facts: FactVector, categories: frozenset[str]) -> frozenset[str]:
        return frozenset([name for name, holds in self._tests if holds(facts, categories)])


# all() and any() of a generator cost a frame per evaluation: items are chained with
# and/or instead, each pair a call.
def _all_of(items: list[_Test]) -> _Test:
    first, rest = items[0], items[1:]
    if not rest:
        return first
    then = _all_of(rest)
    return lambda facts, categories: first(facts, categories) and then(facts, categories)


def _any_of(items: list[_Test]) -> _Test:
    first, rest = items[0], items[1:]
    if not rest:
        return first
    then = _any_of(rest)
    return lambda facts, categories: first(facts, categories) or then(facts, categories)
