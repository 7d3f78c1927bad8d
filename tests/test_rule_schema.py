"""The JSON Schema of rule files (contracts/schema/rule-file.schema.json): made from the
rule language's own tables and checked in fresh, named by every shipped rule file for
editors, and of one mind with the reader: every sample it refuses, ``rules check``
refuses too, and over every fact test of the vocabulary the two agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft7Validator

from contracts.schema import render
from worker.cli import main
from worker.cli_support import EXIT_TROUBLE
from worker.errors import RuleFileError
from worker.rulebook import language
from worker.rulebook.compiler import Definitions
from worker.rulebook.engine import default_rules_dir, rule_files
from worker.rulebook.facts import ATTRIBUTE_PREFIX, ATTRIBUTE_TYPES, FACTS, FactSpec
from worker.rulebook.language import MAX_WAIT_SECONDS, OPERATORS
from worker.rulebook.schema import REGENERATE, SCHEMA_FILE, rule_file_schema
from worker.rulebook.syntax import FactTest, parse_rule_file

RULES = default_rules_dir()
VALIDATOR = Draft7Validator(rule_file_schema())
MODELINE = "# yaml-language-server: $schema="


def schema_errors(document: object) -> list[str]:
    return [error.message for error in VALIDATOR.iter_errors(document)]


def reader_accepts(text: str) -> bool:
    """Whether the reader, and the checks of a directory of this one file, take it."""
    try:
        parsed = parse_rule_file(text.encode(), "rules.yaml")
        Definitions(parsed.definitions, parsed.attributes)
    except RuleFileError:
        return False
    return True


# -- the file ------------------------------------------------------------------------
def test_the_checked_in_schema_is_a_fresh_render() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render(rule_file_schema()), (
        f"{SCHEMA_FILE} is stale: run `{REGENERATE}` and commit the result")


def test_rules_schema_prints_the_checked_in_schema() -> None:
    result = CliRunner().invoke(main, ["rules", "schema"])
    assert result.exit_code == 0, result.output
    assert result.stdout == SCHEMA_FILE.read_text(encoding="utf-8")


def test_the_schema_is_a_draft_07_schema() -> None:
    schema = rule_file_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    Draft7Validator.check_schema(schema)


def shipped_rule_files() -> list[Path]:
    """Every rule file the shipped rule sets load (case files are not rule files)."""
    examples = sorted(path for path in (RULES / "examples").iterdir() if path.is_dir())
    return [path for directory in (RULES, *examples) for path in rule_files(directory)]


def test_the_shipped_rule_files_are_all_found() -> None:
    names = {path.relative_to(RULES).as_posix() for path in shipped_rule_files()}
    assert names >= {"inbox.yaml", "examples/helpdesk/inbox.yaml",
                     "examples/helpdesk/support.yaml", "examples/sla/inbox.yaml",
                     "examples/sla/sla.yaml"}
    assert not any("cases" in name for name in names)


@pytest.mark.parametrize("path", shipped_rule_files(),
                         ids=lambda path: path.relative_to(RULES).as_posix())
def test_every_shipped_rule_file_validates(path: Path) -> None:
    assert schema_errors(yaml.safe_load(path.read_text(encoding="utf-8"))) == []


@pytest.mark.parametrize("path", shipped_rule_files(),
                         ids=lambda path: path.relative_to(RULES).as_posix())
def test_every_shipped_rule_file_names_the_schema_on_its_first_line(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(MODELINE), first
    named = path.parent / first.removeprefix(MODELINE)
    assert named.resolve() == SCHEMA_FILE.resolve(), f"{first} does not name {SCHEMA_FILE}"


# -- what it refuses, rules check refuses ---------------------------------------------
def _category(when: str) -> str:
    return f"categories:\n  c:\n    when: {when}\n"


WHEN = ["categories", "c", "when"]
# name: (rule file, where the schema complains, what `rules check` says).
REFUSED: dict[str, tuple[str, list[str], str]] = {
    "unknown section": (
        "rules:\n  c: {}\n", [], "unknown section 'rules'"),
    "unknown key in a definition": (
        "categories:\n  c:\n    when: {fact: agent.joined, equals: true}\n    order: 1\n",
        ["categories", "c"], "unknown key 'order'"),
    "a definition without when": (
        "categories:\n  c:\n    description: nothing\n", ["categories", "c"],
        "has no 'when' condition"),
    "a description that is no text": (
        "categories:\n  c:\n    when: {fact: agent.joined, equals: true}\n"
        "    description: [a, b]\n", ["categories", "c", "description"],
        "description must be text"),
    "a section that is no mapping": (
        "categories: [c]\n", ["categories"], "categories must be a mapping"),
    "a category name out of pattern": (
        "categories:\n  New:\n    when: {fact: agent.joined, equals: true}\n",
        ["categories"], "must match"),
    "unknown operator": (
        _category("{fact: conversation.status, like: open}"), WHEN,
        "unknown operator 'like'"),
    "two operators": (
        _category("{fact: conversation.status, equals: open, not_equals: resolved}"), WHEN,
        "exactly one operator"),
    "no operator": (
        _category("{fact: conversation.status}"), WHEN, "exactly one operator"),
    "unknown fact": (
        _category("{fact: conversation.colour, equals: red}"), WHEN,
        "unknown fact 'conversation.colour'"),
    "a word for a number": (
        _category("{fact: conversation.joined_count, at_least: x}"), WHEN,
        "conversation.joined_count is a int; 'x' is not"),
    "a number for a boolean": (
        _category("{fact: agent.joined, equals: 1}"), WHEN, "agent.joined is a bool; 1 is not"),
    "equals with a list": (
        _category("{fact: conversation.status, equals: [open]}"), WHEN,
        "conversation.status is a str; None is not"),
    "in with one value": (
        _category("{fact: conversation.status, in: open}"), WHEN,
        "'in' takes a non-empty list of values"),
    "in with an empty list": (
        _category("{fact: conversation.status, in: []}"), WHEN,
        "'in' takes a non-empty list of values"),
    "contains on a fact that is no set": (
        _category("{fact: conversation.channel, contains: email}"), WHEN,
        "'contains' tests a set (conversation.labels)"),
    "equals on the labels": (
        _category("{fact: conversation.labels, equals: billing}"), WHEN,
        "conversation.labels is a set"),
    "an ordering test of an unordered fact": (
        _category("{fact: account.plan, greater_than: free}"), WHEN,
        "'greater_than' compares numbers"),
    "a value outside the choices": (
        _category("{fact: conversation.status, equals: closed}"), WHEN,
        "conversation.status is one of open, snoozed, resolved, deleted"),
    "a label that is no id": (
        _category("{fact: conversation.labels, contains: two words}"), WHEN, "is not an id"),
    "a wait beyond the limit": (
        _category(f"{{fact: conversation.waiting_seconds, at_least: {MAX_WAIT_SECONDS + 1}}}"),
        WHEN, "beyond the limit"),
    "present on a fact that is always there": (
        _category("{fact: agent.joined, present: true}"), WHEN,
        "'present' tests an optional fact"),
    "present with a word": (
        _category("{fact: conversation.channel, present: 'yes'}"), WHEN,
        "'present' takes true or false"),
    "an attribute key that is no id": (
        _category("{fact: 'conversation.attributes.two words', equals: x}"), WHEN,
        "the attribute key is not an id"),
    "a set operator on an attribute": (
        "attributes: {tier: string}\n"
        + _category("{fact: conversation.attributes.tier, contains: gold}"), WHEN,
        "'contains' does not apply"),
    "an ordering test of an attribute with a word": (
        "attributes: {seats: integer}\n"
        + _category("{fact: conversation.attributes.seats, at_least: ten}"), WHEN,
        "is an integer; 'ten' is not"),
    "an attribute text longer than the contract's": (
        "attributes: {tier: string}\n"
        + _category(f"{{fact: conversation.attributes.tier, equals: {'g' * 257}}}"), WHEN,
        "is a string"),
    "a null for an attribute": (
        "attributes: {vip: boolean}\n"
        + _category("{fact: conversation.attributes.vip, equals: null}"), WHEN,
        "'equals' takes a value, not null"),
    "an unknown attribute type": (
        "attributes: {vip: bool}\n" + _category("{fact: agent.joined, equals: true}"),
        ["attributes", "vip"], "type must be one of string, integer, number, boolean"),
    "an attribute key that is no id, declared": (
        "attributes: {'two words': string}\n" + _category("{fact: agent.joined, equals: true}"),
        ["attributes"], "is not an id"),
    "all with another key": (
        _category("{all: [{predicate: p}], any: [{predicate: p}]}"), WHEN,
        "'all' must be alone in its condition"),
    "all with an empty list": (
        _category("{all: []}"), WHEN, "'all' takes a non-empty list of conditions"),
    "not with a list": (
        _category("{not: [{fact: agent.joined, equals: true}]}"), WHEN,
        "a condition must be a mapping"),
    "a reference that is no name": (
        _category("{predicate: [a, b]}"), WHEN, "'predicate' takes a name"),
    "a condition of nothing known": (
        _category("{where: x}"), WHEN, "a condition is one of"),
}


@pytest.mark.parametrize(("text", "where", "reason"), REFUSED.values(), ids=list(REFUSED))
def test_what_the_schema_refuses_rules_check_refuses(
        tmp_path: Path, text: str, where: list[str], reason: str) -> None:
    errors = list(VALIDATOR.iter_errors(yaml.safe_load(text)))
    assert errors, "the schema takes it"
    assert [list(error.absolute_path) for error in errors] == [where], (
        [(list(error.absolute_path), error.message) for error in errors])
    (tmp_path / "rules.yaml").write_text(text, encoding="utf-8")
    result = CliRunner().invoke(main, ["rules", "check", str(tmp_path)])
    assert result.exit_code == EXIT_TROUBLE, result.output
    assert reason in result.stderr, result.stderr


def test_what_rules_check_leaves_to_the_directory_the_schema_takes() -> None:
    """References and attribute declarations are of the directory, not of one file: a
    file that uses another file's predicate or attribute is valid on its own."""
    text = ("categories:\n  c:\n    when:\n      all:\n        - predicate: elsewhere\n"
            "        - {fact: conversation.attributes.vip, equals: true}\n")
    assert schema_errors(yaml.safe_load(text)) == []
    assert not reader_accepts(text)


# -- every fact test, both ways --------------------------------------------------------
ATTRIBUTE = ATTRIBUTE_PREFIX + "key"
# Values of every type and of none, each fact's choices, ids and text that is none, the
# bounds (the longest wait, the longest attribute text, the longest id), and lists.
VALUES: list[object] = [
    True, None, 5, -3, 2.5, MAX_WAIT_SECONDS, MAX_WAIT_SECONDS + 1,
    "open", "high", "pro", "visitor", "email", "two words", "g" * 200, "g" * 257,
    [], ["open", "snoozed"], ["low", "high"], [1, 2], [2.5], [True],
    ["billing", "invoice"], ["two words"], [None], [["nested"]], {"a": 1},
]
_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _fact_test(fact: str, op: str, value: object) -> dict[str, Any]:
    return {"categories": {"c": {"when": {"fact": fact, op: value}}}}


def _reader_verdict(document: dict[str, Any], fact: str) -> bool:
    """The reader's; a custom attribute's test is valid when it is under some type."""
    declarations = ([{"attributes": {fact.removeprefix(ATTRIBUTE_PREFIX): kind}}
                     for kind in ATTRIBUTE_TYPES] if fact == ATTRIBUTE else [{}])
    return any(reader_accepts(yaml.dump({**document, **declared}, Dumper=_DUMPER))
               for declared in declarations)


@pytest.mark.parametrize("fact", [*FACTS, ATTRIBUTE])
def test_the_schema_and_the_reader_agree_on_every_fact_test(fact: str) -> None:
    """Every operator with values of every type, lists included: the schema takes a
    fact test exactly when the reader does."""
    accepted = 0
    disagree = []
    for op in OPERATORS:
        for value in VALUES:
            document = _fact_test(fact, op, value)
            reader = _reader_verdict(document, fact)
            accepted += reader
            if reader != VALIDATOR.is_valid(document):
                disagree.append(f"{op}: {value!r} ({'reader' if reader else 'schema'} takes it)")
    assert not disagree, disagree
    assert accepted, f"no test of {fact} was valid: the values miss its type"


# -- made from the tables --------------------------------------------------------------
def test_a_new_operator_is_in_the_schema_and_the_reader_alike(
        monkeypatch: pytest.MonkeyPatch) -> None:
    test = _fact_test("conversation.joined_count", "around", 3)
    assert schema_errors(test) and not reader_accepts(yaml.safe_dump(test))
    monkeypatch.setitem(language.OPERATORS, "around", "the fact is about this value")
    assert Draft7Validator(rule_file_schema()).is_valid(test)
    when = parse_rule_file(yaml.safe_dump(test).encode(), "rules.yaml").definitions[0].when
    assert isinstance(when, FactTest) and (when.op, when.value) == ("around", 3)


def test_a_new_fact_is_in_the_schema_with_its_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FACTS, "agent.away", FactSpec("agent.away", bool, "is away"))
    schema = Draft7Validator(rule_file_schema())
    assert schema.is_valid(_fact_test("agent.away", "equals", True))
    assert not schema.is_valid(_fact_test("agent.away", "equals", "yes"))
    assert not schema.is_valid(_fact_test("agent.away", "at_least", True))
