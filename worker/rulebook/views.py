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
from dataclasses import dataclass
from typing import Any

import yaml

from worker.rulebook.attributes import check_attribute_tests
from worker.rulebook.compiler import Definitions
from worker.rulebook.facts import ATTRIBUTE_PREFIX
from worker.rulebook.syntax import (
    ID_PATTERN,
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
        return f"view:{self.view_id}"


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
        reader = _Reader(path)
        try:
            node = yaml.compose(json.dumps(raw), Loader=yaml.SafeLoader)
        except (TypeError, ValueError, yaml.YAMLError) as exc:
            self.fail(path, f"not a fact test: {exc}")
            return None
        entries = reader.mapping(node, "a fact test") if node is not None else None
        test = reader.fact_test(node, entries, 0) if node is not None and entries else None
        for problem in reader.problems:
            self.fail(f"{path}.{_field(problem.reason, raw)}", problem.reason)
        if test is not None and test.fact.startswith(ATTRIBUTE_PREFIX):
            self.attribute_tests.append((test, f"{path}.{test.op}"))
        return test if not reader.problems else None


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
