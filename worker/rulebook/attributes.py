"""Custom attributes in rule files: ``conversation.attributes.<key>`` is tested against
the type a rule file's ``attributes:`` section declares for the key. The declaration may
be in any file of the directory, so these checks run once every file is read."""

from __future__ import annotations

from math import isfinite

from worker.errors import RuleProblem
from worker.rulebook.facts import ATTRIBUTE_PREFIX
from worker.rulebook.language import ORDERING
from worker.rulebook.syntax import FactTest

# What each attribute type may be tested with (besides ``present``).
ATTRIBUTE_OPERATORS = {
    "string": ("equals", "not_equals", "in", "not_in"),
    "integer": ("equals", "not_equals", "in", "not_in", *ORDERING),
    "number": ("equals", "not_equals", "in", "not_in", *ORDERING),
    "boolean": ("equals", "not_equals"),
}
MAX_TEXT = 256  # an attribute's text, as the event contract bounds it


def check_attribute_tests(tests: list[tuple[FactTest, str]],
                          declared: dict[str, str]) -> list[RuleProblem]:
    """Every test of a custom attribute (with the file it is in) against the declared
    types: the key must be declared, the operator fit the type, every value be of it."""
    problems: list[RuleProblem] = []
    for test, file in tests:
        key = test.fact.removeprefix(ATTRIBUTE_PREFIX)
        kind = declared.get(key)
        if kind is None:
            known = ", ".join(sorted(declared)) or "none"
            problems.append(RuleProblem(file, test.line, f"{test.fact}: attribute {key!r} is "
                                        f"not declared in an attributes: section (declared: "
                                        f"{known})"))
            continue
        if test.op == "present":
            continue
        if test.op not in ATTRIBUTE_OPERATORS[kind]:
            problems.append(RuleProblem(file, test.line, f"{test.fact} is {_a(kind)}: "
                                        f"'{test.op}' does not apply (use "
                                        f"{', '.join(ATTRIBUTE_OPERATORS[kind])} or present)"))
            continue
        values = test.value if isinstance(test.value, tuple) else (test.value,)
        wrong = [v for v in values if not _of_type(v, kind)]
        if wrong:
            problems.append(RuleProblem(file, test.line, f"{test.fact} is {_a(kind)}; "
                                        f"{wrong[0]!r} is not"))
    return problems


def _of_type(value: object, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    if kind == "string":
        return isinstance(value, str) and len(value) <= MAX_TEXT
    if kind == "integer":
        return isinstance(value, int)
    if kind == "number":
        return isinstance(value, int | float) and isfinite(value)
    return False


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
