"""Rule files: validation with file:line, compilation, and behaviour as data."""

import operator
import shutil
import tempfile
import time
from collections.abc import Callable
from itertools import product
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from contracts import parse_event_object
from worker.cli import main
from worker.domain.inbox import Inbox
from worker.errors import RuleFileError
from worker.rulebook import FACT_NAMES, FACTS, load_rules
from worker.rulebook.compiler import Definitions
from worker.rulebook.engine import check_rules, default_rules_dir
from worker.rulebook.syntax import AllOf, AnyOf, Condition, FactTest, Not, Ref

DEFAULT_RULES = load_rules()


def write_rules(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def problems(directory: Path) -> list[str]:
    with pytest.raises(RuleFileError) as caught:
        load_rules(directory)
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("categories:\n  all:\n    when: {fact: conversation.colour, equals: red}\n",
     3, "unknown fact 'conversation.colour'"),
    ("categories:\n  all:\n    when: {fact: conversation.status, equals: closed}\n",
     3, "conversation.status is one of open, snoozed, resolved, deleted; 'closed' is not"),
    ("categories:\n  all:\n    when:\n      fact: agent.joined\n      equals: 1\n",
     5, "agent.joined is a bool; 1 is not"),
    ("categories:\n  all:\n    when: {fact: account.plan, greater_than: 2}\n",
     3, "'greater_than' compares numbers"),
    ("categories:\n  all:\n    when: {fact: account.plan, like: pro}\n",
     3, "unknown operator 'like'"),
    ("categories:\n  all:\n    when:\n      all: []\n", 4, "non-empty list"),
    ("categories:\n  all:\n    when: {predicate: nowhere}\n", 3, "unknown predicate 'nowhere'"),
    ("categories:\n  a:\n    when: {category: b}\n  b:\n    when: {category: a}\n",
     5, "circular reference: a -> b -> a"),
    ("categories:\n  all:\n    description: x\n", 3, "has no 'when' condition"),
    ("categories:\n  All:\n    when: {fact: agent.joined, equals: true}\n", 2, "must match"),
    ("categories:\n  all:\n    when: {fact: agent.joined, equals: true\n", 4, "invalid YAML"),
    ("rules:\n  all: {}\n", 1, "unknown section 'rules'"),
    ("categories:\n  all:\n    when: {fact: agent.joined, equals: true}\n"
     "predicates:\n  all:\n    when: {fact: agent.joined, equals: true}\n",
     5, "already defined as a category"),
])
def test_invalid_rule_files_fail_with_file_line_and_reason(
        tmp_path: Path, text: str, line: int, reason: str) -> None:
    found = problems(write_rules(tmp_path, text))
    assert any(p.startswith(f"{tmp_path / 'rules.yaml'}:{line}: ") and reason in p
               for p in found), found


def test_python_tags_in_rule_files_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = ("categories:\n  all:\n    when:\n      fact: conversation.status\n"
            f"      equals: !!python/object/apply:os.system ['touch {marker}']\n")
    found = problems(write_rules(tmp_path, text))
    assert found and not marker.exists()


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    text = ("categories:\n  a:\n    when: {fact: nope, equals: 1}\n"
            "  b:\n    when: {fact: agent.joined, equals: yes please}\n")
    assert len(problems(write_rules(tmp_path, text))) == 2


def test_default_rules_validate_and_declare_the_spec_categories() -> None:
    definitions, version = check_rules(default_rules_dir())
    assert list(definitions.categories) == ["all", "new", "mine", "primary", "resolved"]
    assert DEFAULT_RULES.version == version and len(version) == 12


def test_rules_version_changes_with_the_files(tmp_path: Path) -> None:
    shutil.copytree(default_rules_dir(), tmp_path / "r", ignore=shutil.ignore_patterns("*.py"))
    before = load_rules(tmp_path / "r").version
    with (tmp_path / "r" / "inbox.yaml").open("a") as handle:
        handle.write("\n# a comment is a change too\n")
    assert load_rules(tmp_path / "r").version != before


def _run(rules_dir: Path | None, events: list[dict[str, object]]) -> Inbox:
    inbox = Inbox(load_rules(rules_dir))
    for number, event in enumerate(events):
        inbox.handle(parse_event_object({"event_id": f"e{number}", "account_id": "acc-1",
                                         "occurred_at": "2026-11-24T10:00:00Z", **event}))
    return inbox


PRO_GROUP_CHAT: list[dict[str, object]] = [
    {"type": "account.updated",
     "data": {"plan": "pro", "agents": ["ag-1", "ag-2"], "groups": {"g-sales": ["ag-1"]}}},
    {"type": "conversation.created", "conversation_id": "c-1", "data": {"group_id": "g-sales"}},
]


def test_editing_a_rule_file_changes_behaviour_without_python(tmp_path: Path) -> None:
    """Make `new` ignore groups and add an `unassigned` category: rule edits only."""
    custom = tmp_path / "custom"
    shutil.copytree(default_rules_dir(), custom, ignore=shutil.ignore_patterns("*.py", "cases"))
    text = (custom / "inbox.yaml").read_text()
    text = text.replace("            - predicate: routed_to_agent\n",
                        "            - predicate: open\n")
    text += ("  unassigned:\n    description: Nobody has joined it.\n"
             "    when: {predicate: waiting}\n")
    (custom / "inbox.yaml").write_text(text)

    default = _run(None, PRO_GROUP_CHAT)
    edited = _run(custom, PRO_GROUP_CHAT)
    assert default.categories_of("acc-1", "c-1", "ag-2") == {"all"}
    assert edited.categories_of("acc-1", "c-1", "ag-2") == {
        "all", "new", "primary", "unassigned"}
    assert edited.rules.categories[-1] == "unassigned"


# -- durable-rules agrees with a direct reading of the conditions -----------------------

def _reference(definitions: Definitions, condition: Condition, facts: dict[str, object]) -> bool:
    if isinstance(condition, AllOf):
        return all(_reference(definitions, c, facts) for c in condition.items)
    if isinstance(condition, AnyOf):
        return any(_reference(definitions, c, facts) for c in condition.items)
    if isinstance(condition, Not):
        return not _reference(definitions, condition.item, facts)
    if isinstance(condition, Ref):
        table = definitions.categories if condition.kind == "category" else definitions.predicates
        return _reference(definitions, table[condition.name].when, facts)
    assert isinstance(condition, FactTest)
    value: Any = facts[condition.fact]
    expected: Any = condition.value
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "equals": operator.eq, "not_equals": operator.ne,
        "in": lambda v, e: v in e, "not_in": lambda v, e: v not in e,
        "greater_than": operator.gt, "at_least": operator.ge,
        "less_than": operator.lt, "at_most": operator.le,
    }
    return compare[condition.op](value, expected)


def _fact_strategy(name: str) -> st.SearchStrategy[object]:
    spec = FACTS[name]
    if spec.choices:
        return st.sampled_from(spec.choices)
    if spec.kind is bool:
        return st.booleans()
    return st.integers(min_value=0, max_value=4)


FACT_VECTORS = st.fixed_dictionaries({name: _fact_strategy(name) for name in FACT_NAMES})


def _variant_rules_dir() -> Path:
    """The default rules with groups in effect on standard too, written with `in`."""
    directory = Path(tempfile.mkdtemp(prefix="rules-variant-"))
    text = (default_rules_dir() / "inbox.yaml").read_text()
    old = "        - {fact: account.plan, equals: pro}\n"
    assert old in text
    (directory / "inbox.yaml").write_text(
        text.replace(old, "        - {fact: account.plan, in: [pro, standard]}\n"))
    return directory


VARIANT_DIR = _variant_rules_dir()
VARIANT_RULES = load_rules(VARIANT_DIR)


@pytest.mark.parametrize("rules_dir", [default_rules_dir(), VARIANT_DIR],
                         ids=["default", "in-operator-variant"])
@given(facts=FACT_VECTORS)
def test_durable_rules_agrees_with_a_direct_reading_of_the_rules(
        rules_dir: Path, facts: dict[str, object]) -> None:
    definitions, _ = check_rules(rules_dir)
    compiled = DEFAULT_RULES if rules_dir == default_rules_dir() else VARIANT_RULES
    expected = {name for name, d in definitions.categories.items()
                if _reference(definitions, d.when, facts)}
    assert compiled.evaluate_facts(facts) == expected


def test_conditions_too_big_for_one_durable_rule_are_split(tmp_path: Path) -> None:
    """durable-rules allows 32 expression steps per rule; DNF splitting keeps under it."""
    alternatives = "\n".join(
        f"          - all: [{{fact: account.agent_count, at_least: {n}}}, "
        f"{{fact: account.group_count, at_most: {n}}}, {{fact: agent.joined, equals: true}}]"
        for n in range(20))
    text = f"categories:\n  big:\n    when:\n      all:\n        - any:\n{alternatives}\n" \
           "        - {fact: conversation.status, in: [open, resolved]}\n"
    rules = load_rules(write_rules(tmp_path, text))
    facts = {name: False for name in FACT_NAMES} | {
        "conversation.priority": "none",
        "conversation.status": "resolved", "conversation.joined_count": 1,
        "account.plan": "free", "account.agent_count": 3, "account.group_count": 2,
        "agent.joined": True}
    assert rules.evaluate_facts(facts) == {"big"}
    assert rules.evaluate_facts(facts | {"agent.joined": False}) == set()


def test_a_condition_that_explodes_is_a_rule_file_error(tmp_path: Path) -> None:
    pairs = "\n".join(
        f"        - any: [{{fact: account.agent_count, at_least: {n}}}, "
        f"{{fact: account.group_count, at_least: {n}}}]" for n in range(12))
    text = f"categories:\n  huge:\n    when:\n      all:\n{pairs}\n"
    found = problems(write_rules(tmp_path, text))
    assert any(":2: category 'huge' is too complex" in p for p in found), found


def test_not_and_any_compile_with_de_morgan(tmp_path: Path) -> None:
    text = ("categories:\n  odd:\n    when:\n      not:\n        any:\n"
            "          - {fact: account.agent_count, at_most: 1}\n"
            "          - not: {fact: account.plan, in: [pro, standard]}\n")
    rules = load_rules(write_rules(tmp_path, text))
    definitions, _ = check_rules(tmp_path)
    for count, plan in product(range(4), ("free", "standard", "pro")):
        facts = {name: False for name in FACT_NAMES} | {
            "conversation.priority": "none", "conversation.status": "open",
            "conversation.joined_count": 0,
            "account.group_count": 0, "account.agent_count": count, "account.plan": plan}
        expected = {"odd"} if count > 1 and plan in ("pro", "standard") else set()
        assert rules.evaluate_facts(facts) == expected
        assert _reference(definitions, definitions.categories["odd"].when, facts) == bool(expected)


# -- anchors and aliases, and scalars that are no plain value -------------------------


def _laughs(levels: int = 18, fan: int = 10) -> str:
    """The "billion laughs" shape as rule conditions: each predicate's condition is a
    list of ``fan`` aliases to the one before, ``fan ** levels`` conditions expanded."""
    lines = ["predicates:", "  p0: {when: &a0 {fact: account.plan, equals: pro}}"]
    for level in range(1, levels):
        aliases = ", ".join([f"*a{level - 1}"] * fan)
        lines.append(f"  p{level}: {{when: &a{level} {{any: [{aliases}]}}}}")
    lines += ["categories:", f"  c: {{when: {{predicate: p{levels - 1}}}}}"]
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(5)  # an expansion would run for hours: fail instead
def test_yaml_aliases_in_a_rule_file_are_refused_before_any_expansion(tmp_path: Path) -> None:
    text = _laughs()
    assert len(text.encode()) < 1500
    write_rules(tmp_path, text)
    started = time.monotonic()
    result = CliRunner().invoke(main, ["rules", "check", str(tmp_path)])
    assert time.monotonic() - started < 1.0
    assert result.exit_code == 2  # invalid rule files: trouble, in every command
    assert result.stderr == (f"{tmp_path / 'rules.yaml'}:2: YAML aliases/anchors are not "
                             "allowed in rule files\n")


@pytest.mark.parametrize(("text", "line"), [
    ("categories:\n  all:\n    when: &w {fact: agent.joined, equals: true}\n", 3),
    ("description: &d x\ncategories:\n  all:\n    when: {fact: agent.joined, equals: true}\n",
     1),
    ("x: 1\ncategories:\n  all:\n    when: {fact: agent.joined, equals: *nowhere}\n", 4),
])
def test_a_lone_anchor_or_alias_is_refused_too(tmp_path: Path, text: str, line: int) -> None:
    assert problems(write_rules(tmp_path, text)) == [
        f"{tmp_path / 'rules.yaml'}:{line}: YAML aliases/anchors are not allowed in rule files"]


def test_ampersands_and_stars_in_text_are_no_anchors(tmp_path: Path) -> None:
    text = ("description: '*starred* & quoted'\ncategories:\n  all:\n"
            "    description: R&D *only*\n    when: {fact: agent.joined, equals: true}\n")
    assert load_rules(write_rules(tmp_path, text)).categories == ("all",)


@pytest.mark.parametrize(("value", "shown"), [
    ("2026-13-01", "'2026-13-01' (a date)"),
    ("2026-01-01", "'2026-01-01' (a date)"),
    ("!!bool maybe", "'maybe' (not a valid bool)"),
    ("!!int many", "'many' (not a valid int)"),
    ("!!timestamp soon", "'soon' (a date)"),
    ("!local pro", "'pro' (tagged !local)"),
])
def test_a_scalar_that_is_no_plain_value_is_a_problem_at_its_line(
        tmp_path: Path, value: str, shown: str) -> None:
    text = f"categories:\n  all:\n    when:\n      fact: account.plan\n      equals: {value}\n"
    assert problems(write_rules(tmp_path, text)) == [
        f"{tmp_path / 'rules.yaml'}:5: account.plan is a str; {shown} is not"]


# -- rule test-case files --------------------------------------------------------------


def _case_dir(tmp_path: Path, data: bytes) -> Path:
    shutil.copy(default_rules_dir() / "inbox.yaml", tmp_path / "inbox.yaml")
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "cases.yaml").write_bytes(data)
    return tmp_path


def _rules_test(directory: Path) -> Result:
    return CliRunner().invoke(main, ["rules", "test", str(directory)])


CASE = (b"cases:\n  - name: one\n    events:\n"
        b"      - {type: conversation.created, conversation_id: c-1, at: %s}\n"
        b"    expect:\n      - {agent: ag-1, conversation: c-1, categories: []}\n")


@pytest.mark.timeout(5)  # an expansion would run for hours: fail instead
def test_yaml_aliases_in_a_case_file_are_refused_before_any_expansion(tmp_path: Path) -> None:
    lines = [b"a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [b"a%d: &a%d [%s]" % (n, n, b", ".join([b"*a%d" % (n - 1)] * 10))
              for n in range(1, 18)]
    lines += [b"cases:", b"  - {name: laughs, events: *a17, expect: *a17}"]
    directory = _case_dir(tmp_path, b"\n".join(lines) + b"\n")
    started = time.monotonic()
    result = _rules_test(directory)
    assert time.monotonic() - started < 1.0
    assert result.exit_code == 2  # a case file that cannot be read: trouble
    assert result.stderr == (f"{directory / 'cases' / 'cases.yaml'}:1: YAML aliases/anchors "
                             "are not allowed in rule files\n")


@pytest.mark.parametrize(("data", "problem"), [
    (CASE % b"&t 5", ":4: YAML aliases/anchors are not allowed in rule files"),
    (CASE % b"2026-13-01", ":4: invalid YAML: '2026-13-01' is not a valid timestamp"),
    (CASE % b"!!bool maybe", ":4: invalid YAML: 'maybe' is not a valid bool"),
    (CASE.replace(b"one", b"\xff\xfe"), ": not valid UTF-8"),
])
def test_a_case_file_that_cannot_be_read_is_one_line_naming_it(
        tmp_path: Path, data: bytes, problem: str) -> None:
    result = _rules_test(_case_dir(tmp_path, data))
    assert result.exit_code == 2
    assert result.stderr == f"{tmp_path / 'cases' / 'cases.yaml'}{problem}\n"
    assert result.exception is None or isinstance(result.exception, SystemExit)
