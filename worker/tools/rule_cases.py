"""Rule test cases: data files beside the rules (given events -> expected categories).

A case file ``cases/*.yaml`` holds a list under ``cases``; each case names its events
(envelope fields may be left out and get defaults) and what an agent should see: a
conversation's ``categories`` and whether it is ``unread``, the badge ``counts`` and the
``unread_counts``.

Time: an event may say when it happens with ``at:`` (seconds after the case's start,
``2026-01-01T00:00:00Z``, or an ISO timestamp; an event without one happens when the
one before it did), and an expectation at what time to look with ``look_at:`` (the same
forms): every threshold crossing due by then is made first, as ``inbox-rules replay
--until`` does. Expectations are checked in order; time never goes back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from contracts import BadEvent, parse_event_object
from worker.domain.inbox import Inbox
from worker.domain.reading import is_unread
from worker.errors import RuleFileError, RuleProblem
from worker.rulebook.engine import CompiledRules
from worker.rulebook.syntax import YamlAliasError, alias_problem, is_alias_or_anchor

DEFAULT_ACCOUNT = "acc-1"
DEFAULT_TIME = "2026-01-01T00:00:00Z"
START = datetime(2026, 1, 1, tzinfo=UTC)
LINE_KEY = "__line__"
MOMENT_FORMS = ("must be seconds after the case's start (a finite number, landing within "
                "years 1-9999) or an ISO timestamp")


class _LineLoader(yaml.SafeLoader):
    """Safe loader that notes the line of every mapping, for precise messages, and
    refuses anchors and aliases before composing them (nothing is ever expanded)."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if is_alias_or_anchor(event):
            mark = event.start_mark
            raise YamlAliasError(mark.line + 1 if mark is not None else None)
        return super().compose_node(parent, index)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A scalar whose text its type cannot hold (``2026-13-01``, ``!!bool xx``) is a
        problem at its line: PyYAML's scalar constructors raise these bare."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, KeyError, AttributeError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} is not a valid {node.tag.rsplit(':', 1)[-1]}",
                node.start_mark) from exc


def _mapping_with_line(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping[LINE_KEY] = node.start_mark.line + 1
    return mapping  # type: ignore[return-value]


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_with_line)


@dataclass
class CaseResult:
    file: str
    line: int
    name: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def _strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items() if k != LINE_KEY}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


def case_files(rules_dir: Path) -> list[Path]:
    folder = rules_dir / "cases"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))


def load_cases(path: Path) -> list[dict[str, Any]]:
    """The cases of one file; :class:`RuleFileError` (file:line) if it cannot be read."""
    display = str(path)
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)  # noqa: S506
    except OSError as exc:
        raise RuleFileError([RuleProblem(display, None, f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise RuleFileError([RuleProblem(display, None, "not valid UTF-8")]) from exc
    except YamlAliasError as exc:
        raise RuleFileError([alias_problem(display, exc)]) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise RuleFileError([RuleProblem(display, mark.line + 1 if mark else None,
                                         f"invalid YAML: {exc.problem}")]) from exc
    if not isinstance(document, dict) or not isinstance(document.get("cases"), list):
        raise RuleFileError([RuleProblem(display, 1, "a case file needs a list under 'cases'")])
    cases: list[dict[str, Any]] = document["cases"]
    return cases


def run_case(rules: CompiledRules, case: dict[str, Any], file: str,
             new_inbox: Callable[[CompiledRules], Inbox] = Inbox) -> CaseResult:
    """Run one case in an inbox of its own; ``new_inbox`` makes it (rule coverage
    passes one that records every decision the case shows)."""
    line = int(case.get(LINE_KEY, 0)) if isinstance(case, dict) else 0
    if not isinstance(case, dict):
        return CaseResult(file, line, "?", ["a case must be a mapping"])
    result = CaseResult(file, line, str(case.get("name", f"case at line {line}")))
    events, expectations = case.get("events"), case.get("expect")
    if not isinstance(events, list) or not isinstance(expectations, list) or not expectations:
        result.failures.append("a case needs a list of 'events' and a non-empty list 'expect'")
        return result
    inbox = new_inbox(rules)
    now: datetime | str = DEFAULT_TIME
    for number, raw in enumerate(events, start=1):
        if not isinstance(raw, dict):
            result.failures.append(f"event {number}: must be a mapping")
            return result
        at = raw.get(LINE_KEY, line)
        fields = _strip_lines(raw)
        if "at" in fields:
            moment = _moment(fields.pop("at"))
            if moment is None:
                result.failures.append(f"line {at}: event {number}: 'at' {MOMENT_FORMS}")
                return result
            now = moment
        event = {"event_id": f"case-{line}-{number}", "account_id": DEFAULT_ACCOUNT,
                 "occurred_at": now, **fields}
        try:
            parsed = parse_event_object(event)
        except BadEvent as exc:
            result.failures.append(f"line {at}: event {number} is invalid: {exc.reason}")
            return result
        inbox.handle(parsed)
        now = parsed.occurred_at
    looked = now if isinstance(now, datetime) else None
    for expectation in expectations:
        if isinstance(expectation, dict) and "look_at" in expectation:
            moment = _moment(expectation["look_at"])
            where = expectation.get(LINE_KEY, line)
            if moment is None:
                result.failures.append(f"line {where}: 'look_at' {MOMENT_FORMS}")
                continue
            if looked is not None and moment < looked:
                result.failures.append(f"line {where}: 'look_at' goes back in time, before "
                                       "the last event or the look before it "
                                       f"({moment.isoformat()} < {looked.isoformat()})")
                continue
            looked = moment
            inbox.cross_until(moment)
        result.failures.extend(_check(inbox, expectation, line))
    return result


def _moment(value: Any) -> datetime | None:
    """``at``/``look_at``: seconds after the case's start, or an ISO timestamp (YAML
    reads an unquoted one as a datetime; one without an offset is UTC)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return START + timedelta(seconds=value)
        except (OverflowError, ValueError):  # past year 9999, before year 1, or NaN
            return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return None


def _check(inbox: Inbox, expectation: Any, case_line: int) -> list[str]:
    if not isinstance(expectation, dict) or "agent" not in expectation:
        return [f"line {case_line}: each expectation needs an 'agent'"]
    at = expectation.get(LINE_KEY, case_line)
    account = str(expectation.get("account", DEFAULT_ACCOUNT))
    agent = str(expectation["agent"])
    failures = []
    if "conversation" in expectation:
        conversation = str(expectation["conversation"])
        expected = expectation.get("categories")
        if "unread" in expectation:
            unread = is_unread(inbox.account(account), conversation, agent)
            if expectation["unread"] is not unread:
                failures.append(f"line {at}: {agent} / {conversation}: expected unread "
                                f"{expectation['unread']}, got {unread}")
            if expected is None:
                return failures
        if not isinstance(expected, list):
            return [f"line {at}: 'categories' must be a list"]
        got = sorted(inbox.categories_of(account, conversation, agent))
        if sorted(map(str, expected)) != got:
            failures.append(f"line {at}: {agent} / {conversation}: expected "
                            f"{sorted(map(str, expected))}, got {got}")
    for key, what in (("counts", "count"), ("unread_counts", "unread count")):
        if key in expectation:
            state = inbox.account(account)
            counts = state.counts_of(agent) if key == "counts" else state.unread_counts_of(agent)
            for name, value in _strip_lines(expectation[key]).items():
                if counts.get(name, 0) != value:
                    failures.append(f"line {at}: {agent} {what} of {name!r}: expected "
                                    f"{value}, got {counts.get(name, 0)}")
    return failures


def run_cases(rules: CompiledRules, rules_dir: Path,
              new_inbox: Callable[[CompiledRules], Inbox] = Inbox) -> list[CaseResult]:
    results: list[CaseResult] = []
    for path in case_files(rules_dir):
        for case in load_cases(path):
            results.append(run_case(rules, case, str(path), new_inbox))
    return results
