"""Rule versions a worker runs: the store's live version, followed; kept versions loaded.

SIGHUP reloads one host's rule directory; a fleet needs one place that says which
rules are live, or its workers drift apart (a missed SIGHUP, a host that got other
files). That place is the state store every worker already shares
(:class:`worker.store.RuleStore`). ``inbox-rules rules deploy DIR`` keeps the rule files
there as a new version and makes it live (:mod:`worker.tools.rule_deploy`); each worker
polls the live version (:class:`LiveRulesFollower`) and adopts a new one through the
same path as SIGHUP (:meth:`worker.driver.Driver.adopt`: at a batch boundary, accounts
re-categorised before their next event or by the paced sweep).

Rule files are kept as data (name -> YAML text) and loaded through the same validator
as a directory (:func:`worker.rulebook.engine.load_rules_from_files`); nothing is
written to disk or executed.
"""

from __future__ import annotations

import getpass
import logging
import socket
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from worker.errors import RuleFileError, RuleProblem, StoreError, UnknownRulesError
from worker.rulebook.engine import (
    CompiledRules,
    default_rules_dir,
    load_rules_from_files,
    read_rule_directory,
)
from worker.store import RuleStore, StateStore

log = logging.getLogger(__name__)

# Compiled versions a worker keeps besides the live one: a rollback to a recent version
# reuses its compiled rules and their evaluation cache. Bounded: every compiled set
# holds a durable-rules ruleset and a cache (benchmarks/rules_churn.py).
KEPT_VERSIONS = 2


def who() -> str:
    """``user@host``: who deployed, for the history."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def stored_source(version: str) -> str:
    """How a version loaded from the store names itself (problems, explanations)."""
    return f"deployed:{version}"


def load_version(store: RuleStore | StateStore, version: str) -> CompiledRules:
    """A kept version, compiled; :class:`UnknownRulesError` if the store keeps no files of
    it, :class:`RuleFileError` if they do not validate here (kept by a newer
    inbox-rules, say) or do not hash to its name."""
    files = store.rule_files(version)
    if files is None:
        raise UnknownRulesError(version)
    return _checked(version, files)


def _checked(version: str, files: Mapping[str, bytes]) -> CompiledRules:
    source = stored_source(version)
    rules = load_rules_from_files(files, source)
    if rules.version != version:
        raise RuleFileError([RuleProblem(source, None, f"the stored files hash to "
                                                       f"{rules.version}, not {version}")])
    return rules


def keep_directory(store: StateStore, directory: Path | None,
                   expected: CompiledRules | None = None) -> CompiledRules:
    """Read a rule directory once, compile it and keep its files in the store (no
    deployment): a partition may come to be in force under this version, and any worker
    must then be able to load it (worker.rules_in_force). ``expected``: the same
    directory loaded before; if the files changed since, the files read now win."""
    directory = directory or default_rules_dir()
    files = read_rule_directory(directory)
    rules = load_rules_from_files(files, str(directory))
    if expected is not None and rules.version == expected.version:
        rules = expected
    store.keep_rules(rules.version, files, f"{who()}:{directory.resolve()}")
    return rules


class LiveRulesFollower:
    """Keeps one worker on the store's live rules version.

    :meth:`poll` is cheap when nothing changed (one small read of the live version);
    when it changed, the version's files are read, validated and compiled, and the new
    rules returned for the driver to adopt. A version that does not load here is
    reported once and skipped until another one goes live: the worker keeps the rules
    it has (as with a rule directory that does not validate on SIGHUP).

    At most :data:`KEPT_VERSIONS` compiled versions are kept besides the live one, so
    a fleet that deploys and rolls back all day holds a bounded number of rulesets.
    """

    def __init__(self, store: RuleStore, current: CompiledRules) -> None:
        self.store = store
        self.version = current.version  # the version this worker runs or was asked to
        self._failed: str | None = None
        self._kept: OrderedDict[str, CompiledRules] = OrderedDict()

    def start(self, directory_rules: CompiledRules) -> CompiledRules:
        """The rules to start with: a deployed live version takes precedence over the
        rule directory (logged). If it does not load here, the directory's rules, and
        an error."""
        try:
            live = self.store.live_version()
            rules = None if live is None else self._load(live)
        except StoreError as exc:
            log.error("cannot read the deployed rules (%s): starting with the rule "
                      "directory %s, version %s; the store is looked at again",
                      exc, directory_rules.source, directory_rules.version)
            return directory_rules
        if live is None:
            log.info("rules: no version deployed in the state store; the rule directory %s, "
                     "version %s", directory_rules.source, directory_rules.version)
            return directory_rules
        if rules is None:
            return directory_rules
        log.info("rules: version %s deployed in the state store takes precedence over the "
                 "rule directory %s (version %s)", live, directory_rules.source,
                 directory_rules.version)
        self.version = live
        return rules

    def poll(self) -> CompiledRules | None:
        """New live rules to adopt, or None. Raises :class:`StoreError` if the store
        cannot be read (the caller tries again later)."""
        live = self.store.live_version()
        if live is None or live == self.version or live == self._failed:
            return None
        rules = self._load(live)
        if rules is not None:
            log.info("rules version %s deployed: adopting it (was %s)", live, self.version)
            self.version = live
        return rules

    def _load(self, version: str) -> CompiledRules | None:
        kept = self._kept.pop(version, None)
        if kept is None:
            try:
                kept = load_version(self.store, version)
            except RuleFileError as exc:
                self._failed = version
                log.error("deployed rules version %s does not load here; keeping version %s:"
                          "\n%s", version, self.version, exc)
                return None
        self._kept[version] = kept
        while len(self._kept) > KEPT_VERSIONS + 1:
            self._kept.popitem(last=False)
        self._failed = None
        return kept
