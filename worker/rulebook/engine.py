"""Evaluate compiled rules with durable-rules, behind a cache of fact vectors.

durable-rules costs tens of microseconds per fact; a category decision depends only
on the fact vector (rule files have no side effects, clocks or randomness), so each
distinct vector is evaluated once per rules version and then served from the cache.
Business state never lives in the engine: each evaluation asserts one fact, collects
the categories whose rules fired, and retracts it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import threading
import weakref
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import durable_rules_engine  # type: ignore[import-not-found]
from durable import engine as durable_engine

from worker.domain.facts import detail_results
from worker.domain.state import Conversation
from worker.errors import RuleFileError, RuleProblem
from worker.rulebook.compiler import (
    PRIORITY,
    Definitions,
    category_tests,
    compile_ruleset,
    detail_key,
    detail_tests,
    fact_key,
    time_thresholds,
)
from worker.rulebook.facts import (
    FACT_NAMES,
    PRIORITY_RANK,
    FactVector,
    test_holds,
)
from worker.rulebook.syntax import (
    MAX_FILE_BYTES,
    AttributeDeclaration,
    Definition,
    parse_rule_file,
    read_rule_bytes,
)
from worker.rulebook.views import CompiledViews, canonical_views, check_views

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


# durable-rules keeps its rulesets in one process-wide C handle table: one caller at a
# time. Reentrant: the collector may release a dropped rule set (_release) inside a
# block that holds the lock, on the same thread.
_ENGINE_LOCK = threading.RLock()
# Names stay unique in the process (a host refuses a name it has seen).
_RULESET_NUMBERS = itertools.count(1)


def _release(host: _SynchronousHost, name: str, handle: int) -> None:
    """Free what one rule set holds in durable-rules once nothing can evaluate with it.

    A host never unregisters a ruleset, and the C side (the rete tree, the session of
    sid "0" with its frame pools) is freed only by ``delete_state`` and
    ``delete_ruleset``, which the Python host never calls: with one process-wide host,
    every rule version ever loaded stayed (about 1 MiB each; benchmarks/rules_churn.py).
    So each :class:`CompiledRules` has a host of its own, and this runs when it is
    collected.
    """
    with _ENGINE_LOCK:
        host._ruleset_directory.pop(name, None)
        host._ruleset_list.clear()
        host._actions.clear()
        with contextlib.suppress(Exception):  # never evaluated: no session to delete
            durable_rules_engine.delete_state(handle, "0")
        with contextlib.suppress(Exception):
            durable_rules_engine.delete_ruleset(handle)


# A rule no fact of ours matches (no fact has this key), fired once at creation: see
# _prime.
_PRIME = "inbox_prime"


def _prime(host: _SynchronousHost, name: str) -> None:
    """Create the session (sid "0") and run one action in it, so that its action
    context is initialised: durable-rules leaves it uninitialised until an action has
    run, and ``delete_state`` frees what it finds there (a rule set whose first fact
    matched no category crashed in :func:`_release`: "free(): invalid pointer")."""
    fact = {"sid": "0", "id": _PRIME, _PRIME: 1}
    host.assert_fact(name, fact)
    host.retract_fact(name, fact)


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
        # Nothing below refers back to this object, so it is freed as soon as the last
        # user drops it, and the finalizer frees the engine's side with it.
        fired: list[str] = []
        name = f"inbox_{version}_{next(_RULESET_NUMBERS)}"
        host = _SynchronousHost()
        body: dict[str, Any] = {}
        for rule_name, rule in self.ruleset_json.items():
            action = f"{name}:{rule['run']}"
            host._actions[action] = _recorder(fired, rule["run"])
            body[rule_name] = {**rule, "run": action}
        body[_PRIME] = {"all": [{"m": {_PRIME: 1}}], "run": f"{name}:{_PRIME}"}
        host._actions[f"{name}:{_PRIME}"] = _recorder([], _PRIME)
        with _ENGINE_LOCK:
            try:
                host.register_rulesets({name: body})
            except Exception as exc:
                raise RuleFileError([RuleProblem(
                    source, None, f"durable-rules rejected the compiled rules: {exc}")]) from exc
            handle: int = host._ruleset_directory[name]._handle
            _prime(host, name)
        finalizer = weakref.finalize(self, _release, host, name, handle)
        finalizer.atexit = False  # the process is going: nothing to give back
        # The tests of channel, labels and attributes the categories make: the engine is
        # given each one's result, after the scalar facts (worker.domain.facts).
        self.details = detail_tests(definitions)
        self.attributes: dict[str, str] = dict(definitions.attributes)
        keys = _FACT_KEYS + tuple(fact_key(detail_key(i)) for i in range(len(self.details)))
        self.evaluate: Callable[[FactVector], frozenset[str]] = lru_cache(maxsize=CACHE_SIZE)(
            _evaluator(host, name, fired, keys))
        # Per time fact, the values at which a category may change (docs/time.md), and
        # every fact a category tests.
        tests = category_tests(definitions)
        self.thresholds: dict[str, tuple[int, ...]] = time_thresholds(tests)
        self.tested_facts: frozenset[str] = frozenset(test.fact for test in tests)

    def detail_results(self, conversation: Conversation) -> tuple[bool, ...]:
        """The results of :attr:`details` for one conversation, in order."""
        return detail_results(self.details, conversation.channel, conversation.labels,
                              conversation.attributes, self.attributes)

    def check_views(self, body: object, personal: bool) -> tuple[str, list[str]]:
        """A views event's body checked against these rules: the views as kept in
        force (canonical JSON, ``""`` for none), or every problem with its path."""
        _, problems = check_views(body, self.definitions, personal=personal)
        if problems:
            return "", [str(p) for p in problems]
        return canonical_views(body), []

    def compile_views(self, text: str) -> CompiledViews:
        """A set of views in force, compiled under these rules."""
        return CompiledViews(text, self.definitions)

    def evaluate_facts(self, facts: dict[str, object]) -> frozenset[str]:
        """Evaluate a named fact mapping (rule tests, tooling), as explanations name
        facts (priorities by name, details by value, an absent one as None); every
        scalar fact, and every detail fact a test names, is required."""
        missing = [name for name in FACT_NAMES if name not in facts]
        missing.extend(fact for fact, _, _ in self.details if fact not in facts)
        if missing:
            raise KeyError(f"missing facts: {', '.join(sorted(set(missing)))}")
        scalars = tuple(PRIORITY_RANK[str(facts[name])] if name == PRIORITY else facts[name]
                        for name in FACT_NAMES)
        results = tuple(test_holds(op, facts[fact], value) for fact, op, value in self.details)
        return self.evaluate((*scalars, *results))  # type: ignore[arg-type]


def _recorder(fired: list[str], category: str) -> Callable[[Any], None]:
    """The action of a category's rules: note that it fired (a plain function: the
    host inspects its signature)."""
    def record(_context: Any) -> None:
        fired.append(category)
    return record


def _evaluator(host: _SynchronousHost, name: str, fired: list[str],
               keys: tuple[str, ...]) -> Callable[[FactVector], frozenset[str]]:
    """Evaluate one fact vector: assert it, collect the categories that fired, retract
    it (business state never stays in the engine)."""
    fact_ids = itertools.count(1)

    def evaluate(facts: FactVector) -> frozenset[str]:
        fact: dict[str, Any] = dict(zip(keys, facts, strict=True))
        fact["sid"] = "0"
        with _ENGINE_LOCK:
            fact["id"] = f"f{next(fact_ids)}"
            fired.clear()
            try:
                host.assert_fact(name, fact)
            except durable_engine.MessageNotHandledException:
                pass  # no category matched: the empty set
            finally:
                host.retract_fact(name, fact)
            return frozenset(fired)
    return evaluate


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
    contents: dict[str, bytes] = {}
    problems: list[RuleProblem] = []
    for path in files:
        try:
            # Read once: the version is the hash of exactly the bytes that were parsed.
            contents[path.name] = read_rule_bytes(path, str(path))
        except RuleFileError as exc:
            problems.extend(exc.problems)
    return _compile_files(contents, lambda name: str(directory / name), problems)


def _compile_files(contents: Mapping[str, bytes], display: Callable[[str], str],
                   problems: list[RuleProblem]) -> tuple[Definitions, str, dict[str, Any]]:
    """Parse, check and compile rule files given as bytes (from a directory or from
    the state store alike: one validator). The version hashes names and bytes in name
    order, so a directory and the same files stored as a deployed version agree."""
    definitions: list[Definition] = []
    attributes: list[AttributeDeclaration] = []
    digest = hashlib.sha256()
    for name in sorted(contents):
        data = contents[name]
        digest.update(name.encode() + b"\0" + data + b"\0")
        try:
            parsed = parse_rule_file(data, display(name))
        except RuleFileError as exc:
            problems.extend(exc.problems)
        else:
            definitions.extend(parsed.definitions)
            attributes.extend(parsed.attributes)
    if problems:
        raise RuleFileError(problems)
    checked = Definitions(definitions, attributes)
    ruleset = compile_ruleset(checked)  # limits of the engine are rule-file errors too
    return checked, digest.hexdigest()[:12], ruleset


def load_rules(directory: Path | None = None) -> CompiledRules:
    """Load, validate and compile a rule directory (the shipped default if None)."""
    directory = directory or default_rules_dir()
    definitions, version, ruleset = _check_and_compile(directory)
    return CompiledRules(definitions, version, str(directory), ruleset)


def read_rule_directory(directory: Path) -> dict[str, bytes]:
    """The rule files of a directory as they would be loaded (name -> bytes): what a
    deploy stores. Validate them with :func:`load_rules_from_files`."""
    if not directory.is_dir():
        raise RuleFileError([RuleProblem(str(directory), None, "not a directory")])
    return {path.name: read_rule_bytes(path, str(path)) for path in rule_files(directory)}


def load_rules_from_files(files: Mapping[str, bytes], source: str) -> CompiledRules:
    """Load, validate and compile rule files held in memory (a version kept in the state
    store): the same validator as a directory, nothing is written to disk or executed.
    Problems name ``source/file:line``. Names must be plain ``*.yaml``/``*.yml`` file
    names, as in a directory."""
    problems: list[RuleProblem] = []
    for name, data in files.items():
        where = f"{source}/{name}"
        if (not name or "/" in name or "\\" in name or name.startswith(".")
                or not name.endswith(RULE_FILE_SUFFIXES)):
            problems.append(RuleProblem(where, None, "not a rule file name (*.yaml)"))
        elif len(data) > MAX_FILE_BYTES:
            problems.append(RuleProblem(where, None, f"file larger than {MAX_FILE_BYTES} bytes"))
    if not files:
        problems.append(RuleProblem(source, None, "no rule files (*.yaml)"))
    if problems:
        raise RuleFileError(problems)
    definitions, version, ruleset = _compile_files(files, lambda name: f"{source}/{name}", [])
    return CompiledRules(definitions, version, source, ruleset)


def default_rules_dir() -> Path:
    import rules

    return Path(rules.__file__).parent
