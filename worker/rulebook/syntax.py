"""Parse rule files into a small condition tree, with the line of every node.

Rule files are YAML *data*: they are composed with PyYAML's safe loader into nodes
(no tags, no object construction, no anchors or aliases) and never executed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from worker.errors import RuleFileError, RuleProblem
from worker.rulebook.facts import (
    ATTRIBUTE_PREFIX,
    ATTRIBUTE_TYPES,
    FACTS,
    FactSpec,
)
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
    SET_OPERATORS,
    WHEN,
    fact_operators,
    value_type,
)

MAX_DEPTH = 32
MAX_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FactTest:
    fact: str
    op: str
    value: object
    line: int


@dataclass(frozen=True)
class AllOf:
    items: tuple[Condition, ...]
    line: int


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Condition, ...]
    line: int


@dataclass(frozen=True)
class Not:
    item: Condition
    line: int


@dataclass(frozen=True)
class Ref:
    kind: str  # "predicate" or "category"
    name: str
    line: int


Condition = FactTest | AllOf | AnyOf | Not | Ref


@dataclass(frozen=True)
class AttributeDeclaration:
    """``attributes: {vip: boolean}``: the type of ``conversation.attributes.vip``."""

    key: str
    kind: str
    file: str
    line: int


@dataclass(frozen=True)
class RuleFile:
    definitions: list[Definition]
    attributes: list[AttributeDeclaration]


@dataclass(frozen=True)
class Definition:
    """A named condition: a category (an output) or a predicate (a reusable helper)."""

    kind: str
    name: str
    description: str
    when: Condition
    file: str
    line: int


class _Reader:
    """Walks one composed YAML document, collecting every problem instead of the first."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[RuleProblem] = []
        self.attributes: list[AttributeDeclaration] = []

    def fail(self, node: yaml.Node | None, reason: str) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.problems.append(RuleProblem(self.file, line, reason))

    @staticmethod
    def line(node: yaml.Node) -> int:
        return int(node.start_mark.line) + 1

    def mapping(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node, yaml.Node]] | None:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, f"{what} must be a mapping")
            return None
        entries: list[tuple[str, yaml.Node, yaml.Node]] = []
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.fail(key_node, f"{what}: keys must be plain strings")
                continue
            if key in seen:
                self.fail(key_node, f"{what}: duplicate key {key!r}")
                continue
            seen.add(key)
            entries.append((key, key_node, value_node))
        return entries

    # -- documents ---------------------------------------------------------
    def document(self, root: yaml.Node | None) -> list[Definition]:
        if root is None:
            self.fail(None, "the file is empty")
            return []
        entries = self.mapping(root, "a rule file")
        if entries is None:
            return []
        definitions: list[Definition] = []
        for key, key_node, value in entries:
            if key == DESCRIPTION:
                continue
            if key == ATTRIBUTES:
                self.declarations(value)
                continue
            if key not in DEFINITION_SECTIONS:
                self.fail(key_node, f"unknown section {key!r}: expected "
                                    f"{', '.join(SECTIONS[:-1])} or {SECTIONS[-1]}")
                continue
            kind = DEFINITION_SECTIONS[key]
            section = self.mapping(value, key)
            for name, name_node, body in section or []:
                definition = self.definition(kind, name, name_node, body)
                if definition is not None:
                    definitions.append(definition)
        return definitions

    def declarations(self, node: yaml.Node) -> None:
        """The ``attributes:`` section: custom attribute keys and their types."""
        entries = self.mapping(node, ATTRIBUTES)
        for key, key_node, value in entries or []:
            kind = _resolve(value) if isinstance(value, yaml.ScalarNode) else None
            if not ID_PATTERN.match(key):
                self.fail(key_node, f"attribute key {key!r} is not an id (letters, digits, "
                                    "'-', '_' and ':', at most 128)")
            elif kind not in ATTRIBUTE_TYPES:
                self.fail(value, f"attribute {key!r}: type must be one of "
                                 f"{', '.join(ATTRIBUTE_TYPES)}; got {kind!r}")
            else:
                self.attributes.append(AttributeDeclaration(key, str(kind), self.file,
                                                            self.line(key_node)))

    def definition(self, kind: str, name: str, name_node: yaml.Node,
                   body: yaml.Node) -> Definition | None:
        if not NAME_PATTERN.match(name):
            self.fail(name_node, f"{kind} name {name!r} must match {NAME_PATTERN.pattern}")
            return None
        entries = self.mapping(body, f"{kind} {name!r}")
        if entries is None:
            return None
        description = ""
        when: Condition | None = None
        for key, key_node, value in entries:
            if key == DESCRIPTION:
                text = _resolve(value) if isinstance(value, yaml.ScalarNode) else None
                if not isinstance(text, str):
                    self.fail(value, f"{kind} {name!r}: description must be text")
                else:
                    description = text
            elif key == WHEN:
                when = self.condition(value, 0)
            else:
                self.fail(key_node, f"{kind} {name!r}: unknown key {key!r}: "
                                    f"expected {' or '.join(DEFINITION_KEYS)}")
        if when is None:
            if not any(key == WHEN for key, _, _ in entries):
                self.fail(body, f"{kind} {name!r} has no 'when' condition")
            return None
        return Definition(kind, name, description, when, self.file, self.line(name_node))

    # -- conditions --------------------------------------------------------
    def condition(self, node: yaml.Node, depth: int) -> Condition | None:
        if depth > MAX_DEPTH:
            self.fail(node, f"condition nested deeper than {MAX_DEPTH} levels")
            return None
        entries = self.mapping(node, "a condition")
        if entries is None:
            return None
        keys = [key for key, _, _ in entries]
        line = self.line(node)
        if keys and keys[0] in GROUPS:
            if len(keys) != 1:
                self.fail(node, f"'{keys[0]}' must be alone in its condition")
                return None
            items_node = entries[0][2]
            if not isinstance(items_node, yaml.SequenceNode) or not items_node.value:
                self.fail(items_node, f"'{keys[0]}' takes a non-empty list of conditions")
                return None
            items = [self.condition(item, depth + 1) for item in items_node.value]
            if any(item is None for item in items):
                return None
            parsed = tuple(item for item in items if item is not None)
            return AllOf(parsed, line) if keys[0] == GROUPS[0] else AnyOf(parsed, line)
        if keys == [NEGATION]:
            inner = self.condition(entries[0][2], depth + 1)
            return Not(inner, line) if inner is not None else None
        if len(keys) == 1 and keys[0] in REFERENCES:
            target = _resolve(entries[0][2]) if isinstance(entries[0][2], yaml.ScalarNode) else None
            if not isinstance(target, str):
                self.fail(entries[0][2], f"'{keys[0]}' takes a name")
                return None
            return Ref(keys[0], target, line)
        if FACT in keys:
            return self.fact_test(node, entries, line)
        self.fail(node, f"a condition is one of: {', '.join((*GROUPS, NEGATION, *REFERENCES))}, "
                        f"or a fact test ({FACT} + one of {', '.join(OPERATORS)}); got "
                        f"{', '.join(keys) or 'nothing'}")
        return None

    def fact_test(self, node: yaml.Node, entries: list[tuple[str, yaml.Node, yaml.Node]],
                  line: int) -> FactTest | None:
        by_key = {key: (key_node, value) for key, key_node, value in entries}
        fact_node = by_key.pop(FACT)[1]
        fact = _resolve(fact_node) if isinstance(fact_node, yaml.ScalarNode) else None
        attribute = isinstance(fact, str) and fact.startswith(ATTRIBUTE_PREFIX)
        if attribute and not ID_PATTERN.match(str(fact).removeprefix(ATTRIBUTE_PREFIX)):
            self.fail(fact_node, f"{fact}: the attribute key is not an id")
            return None
        if not isinstance(fact, str) or (fact not in FACTS and not attribute):
            self.fail(fact_node, f"unknown fact {fact!r}: expected one of {', '.join(FACTS)}, "
                                 f"or {ATTRIBUTE_PREFIX}<key>")
            return None
        unknown = [key for key in by_key if key not in OPERATORS]
        if unknown:
            self.fail(by_key[unknown[0]][0], f"unknown operator {unknown[0]!r}: expected one "
                                             f"of {', '.join(OPERATORS)}")
            return None
        if len(by_key) != 1:
            self.fail(node, f"a fact test needs exactly one operator ({', '.join(OPERATORS)})")
            return None
        op, (_, value_node) = next(iter(by_key.items()))
        if op == PRESENT:
            value = _resolve(value_node) if isinstance(value_node, yaml.ScalarNode) else None
            if not isinstance(value, bool):
                self.fail(value_node, f"'present' takes true or false; {value!r} is not")
                return None
            if not attribute and PRESENT not in fact_operators(FACTS[fact]):
                self.fail(value_node, f"'present' tests an optional fact "
                                      f"(conversation.channel, {ATTRIBUTE_PREFIX}<key>); "
                                      f"{fact} is always there")
                return None
            return FactTest(fact, op, value, line)
        if attribute:
            # Checked against its declared type once every file is read (the
            # declaration may be in another file of the directory).
            raw = self.raw_value(op, value_node)
            return FactTest(fact, op, raw, line) if raw is not None else None
        spec = FACTS[fact]
        if not self.operator_fits(spec, op, value_node):
            return None
        if op in LISTS:
            if not isinstance(value_node, yaml.SequenceNode) or not value_node.value:
                self.fail(value_node, f"'{op}' takes a non-empty list of values")
                return None
            values = [self.typed_value(spec, item) for item in value_node.value]
            if any(v is None for v in values):
                return None
            return FactTest(fact, op, tuple(values), line)
        value = self.typed_value(spec, value_node)
        return FactTest(fact, op, value, line) if value is not None else None

    def operator_fits(self, spec: FactSpec, op: str, node: yaml.Node) -> bool:
        """Whether ``op`` may test ``spec``'s fact at all (its values are checked next)."""
        if op in fact_operators(spec):
            return True
        if spec.kind is frozenset:
            self.fail(node, f"{spec.name} is a set: test it with "
                            f"{', '.join(SET_OPERATORS)}; not {op!r}")
        elif op in SET_OPERATORS:
            self.fail(node, f"'{op}' tests a set (conversation.labels); {spec.name} is a "
                            f"{_kind_name(spec)}")
        else:  # an ordering test of a fact without order
            self.fail(node, f"'{op}' compares numbers or ordered values, but {spec.name} is "
                            f"a {_kind_name(spec)}")
        return False

    def raw_value(self, op: str, node: yaml.Node) -> object:
        """An attribute test's value(s), typed later: a scalar, or a non-empty list."""
        if op in LISTS:
            if not isinstance(node, yaml.SequenceNode) or not node.value:
                self.fail(node, f"'{op}' takes a non-empty list of values")
                return None
            values = [_resolve(v) if isinstance(v, yaml.ScalarNode) else _NotPlain("", "a "
                      "nested value") for v in node.value]
            return tuple(values)
        if not isinstance(node, yaml.ScalarNode):
            self.fail(node, f"'{op}' takes one value")
            return None
        value = _resolve(node)
        if value is None:
            # An absent attribute is tested with present: false, never with a null.
            self.fail(node, f"'{op}' takes a value, not null (an absent attribute: "
                            "'present: false')")
        return value

    def typed_value(self, spec: FactSpec, node: yaml.Node) -> object:
        fact = spec.name
        value = _resolve(node) if isinstance(node, yaml.ScalarNode) else None
        expected = value_type(spec)
        # bool is a subclass of int: check the exact type.
        if type(value) is not expected.kind:
            self.fail(node, f"{fact} is a {_kind_name(spec)}; {value!r} is not"
                      + (" a label" if spec.kind is frozenset else ""))
            return None
        if expected.choices and value not in expected.choices:
            self.fail(node, f"{fact} is one of {', '.join(expected.choices)}; {value!r} is not")
            return None
        if expected.is_id and not ID_PATTERN.match(str(value)):
            self.fail(node, f"{fact}: {value!r} is not an id (letters, digits, '-', '_' and "
                            "':', at most 128)")
            return None
        if expected.maximum is not None and isinstance(value, int) and value > expected.maximum:
            self.fail(node, f"{fact}: {value} is beyond the limit of {expected.maximum} "
                            "seconds (100 years)")
            return None
        return value


def _kind_name(spec: FactSpec) -> str:
    if spec.kind is frozenset:
        return "set of labels"
    if spec.ordered:
        return "priority (" + " < ".join(spec.choices) + ")"
    if spec.kind is str and not spec.choices:
        return "text id"
    return spec.kind.__name__


# libyaml's composer where PyYAML was built with it (same nodes and marks, much faster).
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
ALIASES_NOT_ALLOWED = "YAML aliases/anchors are not allowed in rule files"


class YamlAliasError(yaml.YAMLError):
    """An anchor or alias in a rule or case file (``line``: 1-based). Refused outright:
    a list of aliases to a list of aliases multiplies the work at each level (18 levels
    of a 1 KB file never finish)."""

    def __init__(self, line: int | None) -> None:
        super().__init__(ALIASES_NOT_ALLOWED)
        self.line = line


def is_alias_or_anchor(event: yaml.Event) -> bool:
    """An alias (``*name``), or a node that names itself for one (``&name``)."""
    return isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None


def reject_aliases(text: str, loader: type[yaml.SafeLoader]) -> None:
    """Raise :class:`YamlAliasError` at the first anchor or alias of ``text``, reading
    its parse events only (one pass, nothing expanded). Text with neither ``&`` nor
    ``*`` has none and costs no parse."""
    if "&" not in text and "*" not in text:
        return
    for event in yaml.parse(text, Loader=loader):
        if is_alias_or_anchor(event):
            mark = event.start_mark
            raise YamlAliasError(mark.line + 1 if mark is not None else None)


_YAML_TAG = "tag:yaml.org,2002:"
# The scalars a rule file may hold: bool, int, float (attributes) or str.
_PLAIN_TAGS = frozenset(_YAML_TAG + kind for kind in ("str", "int", "float", "bool", "null"))


@dataclass(frozen=True)
class _NotPlain:
    """A scalar that is no plain value (a date, an explicit tag, ``!!int xx``): of no
    fact's type, so the checks that follow report it at its line like any wrong value."""

    text: str
    why: str

    def __repr__(self) -> str:
        return f"{self.text!r} ({self.why})"


def _resolve(node: yaml.ScalarNode) -> object:
    """Construct a plain scalar safely (bool/int/float/null/str), never an object."""
    tag = str(node.tag)
    if tag not in _PLAIN_TAGS:
        short = tag.removeprefix(_YAML_TAG)
        return _NotPlain(str(node.value), "a date" if short == "timestamp" else f"tagged {short}")
    # A constructor of its own per call: cheap (a loader per scalar was most of the
    # cost of loading rules), and no state shared between threads.
    constructor = yaml.constructor.SafeConstructor()
    try:
        return constructor.construct_object(node, deep=True)
    except (ValueError, KeyError):  # an explicit !!int or !!bool on other text
        return _NotPlain(str(node.value), f"not a valid {tag.removeprefix(_YAML_TAG)}")


def read_rule_bytes(path: Path, display: str) -> bytes:
    """A rule file's bytes, bounded in size; :class:`RuleFileError` if unreadable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RuleFileError([RuleProblem(display, None, f"cannot read: {exc.strerror}")]) from exc
    if len(data) > MAX_FILE_BYTES:
        raise RuleFileError([RuleProblem(display, None,
                                         f"file larger than {MAX_FILE_BYTES} bytes")])
    return data


def alias_problem(display: str, exc: YamlAliasError) -> RuleProblem:
    """The one-line complaint for an anchor or alias, at its line."""
    return RuleProblem(display, exc.line, ALIASES_NOT_ALLOWED)


def parse_rule_file(data: bytes, display: str) -> RuleFile:
    """Parse one rule file; raise :class:`RuleFileError` with file:line on any problem."""
    reader = _Reader(display)
    try:
        text = data.decode("utf-8")
        reject_aliases(text, _SAFE_LOADER)
        root = yaml.compose(text, Loader=_SAFE_LOADER)
    except UnicodeDecodeError as exc:
        raise RuleFileError([RuleProblem(display, None, "not valid UTF-8")]) from exc
    except YamlAliasError as exc:
        raise RuleFileError([alias_problem(display, exc)]) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise RuleFileError([RuleProblem(display, line, f"invalid YAML: {exc.problem}")]) from exc
    except yaml.YAMLError as exc:
        raise RuleFileError([RuleProblem(display, None, f"invalid YAML: {exc}")]) from exc
    definitions = reader.document(root)
    if reader.problems:
        raise RuleFileError(reader.problems)
    return RuleFile(definitions, reader.attributes)
