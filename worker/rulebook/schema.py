"""The JSON Schema (draft-07) of a rule file, made from the rule language's own tables.

The sections, the keys of a definition and of a condition, the facts, the operators
each fact takes and the type of their values are those the reader checks
(:mod:`worker.rulebook.language`, :mod:`worker.rulebook.facts`, the attribute types of
:mod:`worker.rulebook.attributes`): a change to the language changes the schema.
Editors that speak the YAML language server complete and check rule files with it
(docs/rule-authors.md).

``python -m worker.rulebook.schema`` writes ``contracts/schema/rule-file.schema.json``;
``tests/test_rule_schema.py`` fails when the checked-in file differs. It lives here, not
in ``contracts/``, because it is made from the worker's tables and ``contracts`` never
imports the worker.

What one file cannot show is left to ``inbox-rules rules check``: whether references
name a predicate or category of the directory (and make no cycle), whether a custom
attribute is declared and its values are of the declared type (the declaration may be
in another file), duplicate names and keys, anchors and tags, nesting deeper than the
reader's limit and conditions too large for the engine.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from contracts.schema import SCHEMA_DIR, render
from worker.rulebook.attributes import ATTRIBUTE_OPERATORS, MAX_TEXT
from worker.rulebook.facts import ATTRIBUTE_PREFIX, ATTRIBUTE_TYPES, FACTS, FactSpec
from worker.rulebook.language import (
    ATTRIBUTES,
    DEFINITION_KEYS,
    DEFINITION_SECTIONS,
    DESCRIPTION,
    FACT,
    GROUPS,
    ID_PATTERN,
    LISTS,
    NAME_PATTERN,
    NEGATION,
    OPERATORS,
    PRESENT,
    REFERENCES,
    SECTIONS,
    WHEN,
    fact_operators,
    value_type,
)

SCHEMA_FILE = SCHEMA_DIR / "rule-file.schema.json"
REGENERATE = "python -m worker.rulebook.schema"
DRAFT = "http://json-schema.org/draft-07/schema#"

Schema = dict[str, Any]

# What each key says in an editor's hover.
_DOCS = {
    "categories": "Categories: each one is published, in this order.",
    "predicates": "Predicates: reusable named conditions, not published.",
    ATTRIBUTES: "Custom attributes the rules test, each with its type.",
    DESCRIPTION: "What this is, in words.",
    WHEN: "The condition: it holds for an agent and a conversation.",
    "all": "Holds when every condition of the list holds.",
    "any": "Holds when at least one condition of the list holds.",
    NEGATION: "Holds when the condition does not.",
    "predicate": "Holds when the named predicate holds.",
    "category": "Holds when the named category holds.",
    FACT: "The fact tested: one of the vocabulary, or "
          f"{ATTRIBUTE_PREFIX}<key> for a declared custom attribute.",
}
# The JSON type of each Python type a fact's values have.
_JSON_TYPES = {bool: "boolean", int: "integer", str: "string"}
# The values of each type of custom attribute.
_ATTRIBUTE_VALUES: dict[str, Schema] = {
    "string": {"type": "string", "maxLength": MAX_TEXT},
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
}
ATTRIBUTE_FACT_PATTERN = "^" + re.escape(ATTRIBUTE_PREFIX) + ID_PATTERN.pattern.removeprefix("^")


def _ref(name: str) -> Schema:
    return {"$ref": f"#/definitions/{name}"}


def _closed(properties: Schema, required: list[str], description: str) -> Schema:
    return {"type": "object", "description": description, "properties": properties,
            "required": required, "additionalProperties": False}


def _operand(op: str, value: Schema) -> Schema:
    """What ``op`` takes: a boolean (``present``), a non-empty list of values, or one."""
    if op == PRESENT:
        operand: Schema = {"type": "boolean"}
    elif op in LISTS:
        operand = {"type": "array", "minItems": 1, "items": value}
    else:
        operand = dict(value)
    return {"description": OPERATORS[op], **operand}


def _fact_value(spec: FactSpec) -> Schema:
    expected = value_type(spec)
    value: Schema = {"type": _JSON_TYPES[expected.kind]}
    if expected.choices:
        value["enum"] = list(expected.choices)
    if expected.is_id:
        value["pattern"] = ID_PATTERN.pattern
    if expected.maximum is not None:
        value["maximum"] = expected.maximum
    return value


def _attribute_value(op: str) -> Schema:
    """A value ``op`` may compare an attribute with: one of a type it applies to (the
    declared type, checked by ``rules check``, narrows it)."""
    kinds = [kind for kind in ATTRIBUTE_TYPES if op in ATTRIBUTE_OPERATORS[kind]]
    value: Schema = {"type": [_ATTRIBUTE_VALUES[kind]["type"] for kind in kinds]}
    for kind in kinds:  # the other keywords constrain one JSON type each
        value.update({k: v for k, v in _ATTRIBUTE_VALUES[kind].items() if k != "type"})
    return value


def _test_of(fact: Schema, operands: Schema) -> Schema:
    """A fact test's operators and their values, when its fact matches ``fact``."""
    return {"if": {"properties": {FACT: fact}, "required": [FACT]},
            "then": {"properties": {FACT: True, **operands}, "additionalProperties": False}}


def _fact_test() -> Schema:
    tests = [_test_of({"const": name},
                      {op: _operand(op, _fact_value(spec)) for op in fact_operators(spec)})
             for name, spec in FACTS.items()]
    attribute_ops = [op for op in OPERATORS if op == PRESENT
                     or any(op in ops for ops in ATTRIBUTE_OPERATORS.values())]
    tests.append(_test_of({"type": "string", "pattern": ATTRIBUTE_FACT_PATTERN},
                          {op: _operand(op, _attribute_value(op)) for op in attribute_ops}))
    names = [{"const": name, "description": spec.doc} for name, spec in FACTS.items()]
    names.append({"pattern": ATTRIBUTE_FACT_PATTERN,
                  "description": "a custom attribute, declared in an attributes: section"})
    properties: Schema = {FACT: {"type": "string", "description": _DOCS[FACT],
                                 "anyOf": names}}
    properties.update({op: {"description": doc} for op, doc in OPERATORS.items()})
    test = _closed(properties, [FACT], "A fact test: the fact and exactly one operator.")
    return {**test, "minProperties": 2, "maxProperties": 2, "allOf": tests}


def _definitions() -> Schema:
    name = {"type": "string", "pattern": NAME_PATTERN.pattern}
    conditions = {"type": "array", "minItems": 1, "items": _ref("condition")}
    shapes: Schema = {
        **{group: _closed({group: {**conditions, "description": _DOCS[group]}}, [group],
                          _DOCS[group]) for group in GROUPS},
        NEGATION: _closed({NEGATION: {**_ref("condition"), "description": _DOCS[NEGATION]}},
                          [NEGATION], _DOCS[NEGATION]),
        **{ref: _closed({ref: {**name, "description": _DOCS[ref]}}, [ref], _DOCS[ref])
           for ref in REFERENCES},
        "fact_test": _fact_test(),
    }
    values = {WHEN: _ref("condition"), DESCRIPTION: {"type": "string"}}
    keys = {key: {**values[key], "description": _DOCS[key]} for key in DEFINITION_KEYS}
    return {
        "definition": _closed(keys, [WHEN], "A named condition."),
        "condition": {"description": "A condition: "
                                     + ", ".join((*GROUPS, NEGATION, *REFERENCES))
                                     + ", or a fact test.",
                      "oneOf": [_ref(shape) for shape in shapes]},
        **shapes,
    }


def rule_file_schema() -> Schema:
    """The JSON Schema of one rule file."""
    contents: Schema = {
        section: {"type": "object", "propertyNames": {"pattern": NAME_PATTERN.pattern},
                  "additionalProperties": _ref("definition")}
        for section in DEFINITION_SECTIONS}
    contents[ATTRIBUTES] = {"type": "object", "propertyNames": {"pattern": ID_PATTERN.pattern},
                            "additionalProperties": {"enum": list(ATTRIBUTE_TYPES)}}
    # The reader takes any description of a file (it is for people, never read).
    contents[DESCRIPTION] = {}
    sections = {section: {**contents[section], "description": _DOCS[section]}
                for section in SECTIONS}
    return {
        "$schema": DRAFT,
        "title": "inbox-rules rule file",
        "description": "Categories, predicates and custom attributes of inbox-rules "
                       "(docs/rules.md). `inbox-rules rules check` checks what a schema "
                       "cannot: references, attribute types, duplicates.",
        "type": "object",
        "properties": sections,
        "additionalProperties": False,
        "definitions": _definitions(),
    }


def main() -> int:
    SCHEMA_FILE.write_text(render(rule_file_schema()), encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
