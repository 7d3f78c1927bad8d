"""Evaluate compiled rules with durable-rules, behind a cache of fact vectors.

durable-rules costs tens of microseconds per fact; a category decision depends only
on the fact vector (rule files have no side effects, clocks or randomness), so each
distinct vector is evaluated once per rules version and then served from the cache.
Business state never lives in the engine: each evaluation asserts one fact, collects
the categories whose rules fired, and retracts it again.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from durable import engine as durable_engine

from worker.errors import RuleFileError, RuleProblem
from worker.rulebook.compiler import (
    Definitions,
    compile_ruleset,
    fact_key,
    tested_facts,
    time_thresholds,
)
from worker.rulebook.facts import FACT_NAMES, FactVector
from worker.rulebook.syntax import Definition, parse_rule_file, read_rule_bytes

RULE_FILE_SUFFIXES = (".yaml", ".yml")
CACHE_SIZE = 65536
_FACT_KEYS = tuple(fact_key(name) for name in FACT_NAMES)


class _SynchronousHost(durable_engine.Host):  # type: ignore[misc]
    """A durable-rules host whose actions run only inside our own calls.

    The stock host starts timer threads that dispatch queued actions in the
    background; we use neither timers nor queues, and a background dispatch could run
    an action outside the evaluation that asked for it.
    """

    def __init__(self) -> None:
        self._actions: dict[str, Callable[[Any], None]] = {}
        super().__init__()

    def _run(self) -> None:
        return None

    def get_action(self, action_name: str) -> Callable[[Any], None]:
        return self._actions[action_name]


_HOST: _SynchronousHost | None = None
_HOST_LOCK = threading.Lock()
# durable-rules can never register a ruleset name twice in one process.
_RULESET_NUMBERS = itertools.count(1)


def _host() -> _SynchronousHost:
    global _HOST
    if _HOST is None:
        _HOST = _SynchronousHost()
    return _HOST


class CompiledRules:
    """A live rule set: its categories, its version and a cached evaluator."""

    def __init__(self, definitions: Definitions, version: str, source: str,
                 ruleset: dict[str, Any]) -> None:
        self.version = version
        self.source = source
        # Kept for explanations and coverage (worker.rulebook.explain), which read the
        # conditions as written, with their lines; durable-rules still decides.
        self.definitions = definitions
        self.categories: tuple[str, ...] = tuple(definitions.categories)
        self.descriptions: dict[str, str] = {
            name: d.description for name, d in definitions.categories.items()}
        self.ruleset_json = ruleset
        self._fired: list[str] = []
        self._fact_ids = itertools.count(1)
        with _HOST_LOCK:
            self._name = f"inbox_{version}_{next(_RULESET_NUMBERS)}"
            host = _host()
            body: dict[str, Any] = {}
            for rule_name, rule in self.ruleset_json.items():
                action = f"{self._name}:{rule['run']}"
                host._actions[action] = self._recorder(rule["run"])
                body[rule_name] = {**rule, "run": action}
            try:
                host.register_rulesets({self._name: body})
            except Exception as exc:
                raise RuleFileError([RuleProblem(
                    source, None, f"durable-rules rejected the compiled rules: {exc}")]) from exc
        self.evaluate: Callable[[FactVector], frozenset[str]] = lru_cache(maxsize=CACHE_SIZE)(
            self._evaluate_uncached)
        # Per time fact, the values at which a category may change (docs/time.md).
        self.thresholds: dict[str, tuple[int, ...]] = time_thresholds(definitions)
        self.tested_facts: frozenset[str] = tested_facts(definitions)

    def _recorder(self, category: str) -> Callable[[Any], None]:
        def record(_context: Any) -> None:
            self._fired.append(category)
        return record

    def _evaluate_uncached(self, facts: FactVector) -> frozenset[str]:
        fact: dict[str, Any] = dict(zip(_FACT_KEYS, facts, strict=True))
        fact["sid"] = "0"
        with _HOST_LOCK:
            fact["id"] = f"f{next(self._fact_ids)}"
            self._fired.clear()
            host = _host()
            try:
                host.assert_fact(self._name, fact)
            except durable_engine.MessageNotHandledException:
                pass  # no category matched: the empty set
            finally:
                host.retract_fact(self._name, fact)
            return frozenset(self._fired)

    def evaluate_facts(self, facts: dict[str, object]) -> frozenset[str]:
        """Evaluate a named fact mapping (rule tests, tooling); every fact is required."""
        missing = [name for name in FACT_NAMES if name not in facts]
        if missing:
            raise KeyError(f"missing facts: {', '.join(missing)}")
        return self.evaluate(tuple(facts[name] for name in FACT_NAMES))  # type: ignore[misc]


def rule_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix in RULE_FILE_SUFFIXES)


def check_rules(directory: Path) -> tuple[Definitions, str]:
    """Validate every rule file of a directory; return its definitions and version."""
    definitions, version, _ = _check_and_compile(directory)
    return definitions, version


def _check_and_compile(directory: Path) -> tuple[Definitions, str, dict[str, Any]]:
    if not directory.is_dir():
        raise RuleFileError([RuleProblem(str(directory), None, "not a directory")])
    files = rule_files(directory)
    if not files:
        raise RuleFileError([RuleProblem(str(directory), None,
                                         "no rule files (*.yaml) in this directory")])
    definitions: list[Definition] = []
    problems: list[RuleProblem] = []
    digest = hashlib.sha256()
    for path in files:
        display = str(path)
        try:
            # Read once: the version is the hash of exactly the bytes that were parsed.
            data = read_rule_bytes(path, display)
            digest.update(path.name.encode() + b"\0" + data + b"\0")
            definitions.extend(parse_rule_file(data, display))
        except RuleFileError as exc:
            problems.extend(exc.problems)
    if problems:
        raise RuleFileError(problems)
    checked = Definitions(definitions)
    ruleset = compile_ruleset(checked)  # limits of the engine are rule-file errors too
    return checked, digest.hexdigest()[:12], ruleset


def load_rules(directory: Path | None = None) -> CompiledRules:
    """Load, validate and compile a rule directory (the shipped default if None)."""
    directory = directory or default_rules_dir()
    definitions, version, ruleset = _check_and_compile(directory)
    return CompiledRules(definitions, version, str(directory), ruleset)


def default_rules_dir() -> Path:
    import rules

    return Path(rules.__file__).parent
