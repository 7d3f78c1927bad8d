"""Rule versions for a fleet: deploy, roll back, and keep every worker on the live one.

SIGHUP reloads one host's rule directory; a fleet needs one place that says which
rules are live, or its workers drift apart (a missed SIGHUP, a host that got other
files). That place is the state store every worker already shares
(:class:`worker.store.RuleStore`): ``inbox-rules rules deploy DIR`` checks the rule
files, runs their test cases, keeps the files there as a new version and makes it
live; ``rollback`` makes a kept version live again; each worker polls the live
version (:class:`LiveRulesFollower`) and adopts a new one through the same path as
SIGHUP (:meth:`worker.driver.Driver.adopt`: at a batch boundary, accounts re-categorised
before their next event or by the paced sweep).

Rule files are kept as data (name -> YAML text) and loaded through the same validator
as a directory (:func:`worker.rulebook.engine.load_rules_from_files`); nothing is
written to disk or executed.
"""

from __future__ import annotations

import getpass
import json
import logging
import socket
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from worker.errors import InboxRulesError, RuleFileError, RuleProblem, StoreError
from worker.rule_cases import CaseResult, run_cases
from worker.rulebook.engine import (
    CompiledRules,
    default_rules_dir,
    load_rules_from_files,
    read_rule_directory,
)
from worker.settings import Settings, mask_url
from worker.store import RuleDeployment, RuleStore, StateStore

log = logging.getLogger(__name__)

# Compiled versions a worker keeps besides the live one: a rollback to a recent version
# reuses its compiled rules and their evaluation cache. Bounded: every compiled set
# holds a durable-rules ruleset and a cache (benchmarks/rules_churn.py).
KEPT_VERSIONS = 2


class DeployRefusedError(InboxRulesError):
    """Nothing was changed: the rule set does not validate, a case fails, or there is
    nothing to deploy or roll back to. ``problems`` are ``file:line: reason`` lines."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class NoStoreError(StoreError):
    """The SQLite file named as the state store does not exist, and creating it was not
    asked for (a typo in a path would otherwise start a store no worker reads)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no state store at {path}")
        self.path = path


@dataclass(frozen=True)
class Deployed:
    """What a deploy or rollback did (``deployment`` None: the version was live already)."""

    version: str
    previous: str | None
    deployment: RuleDeployment | None
    summary: str
    cases: int = 0


class OwnedRuleStore(RuleStore, Protocol):
    """A rule store this process opened, and closes."""

    def close(self) -> None: ...


def open_rule_store(where: str, settings: Settings, *, read_only: bool = False,
                    create: bool = True) -> tuple[OwnedRuleStore, str]:
    """The store the workers share, and how to name it (password masked): ``where`` is
    a SQLite file or a ``postgresql://`` URL; empty: the workers' own settings say
    (``INBOX_RULES_STORE_URL`` if set, else ``INBOX_RULES_STATE_PATH``). Opened for
    writing, it is migrated like a worker would (a deploy may come before the first
    worker); ``read_only`` only looks. A SQLite file that does not exist is created
    only with ``create`` (else :class:`NoStoreError`)."""
    url = where if where.startswith(("postgresql://", "postgres://")) else (
        None if where else settings.store_url)
    if url:
        from worker.store.postgres import PostgresStore  # psycopg: only when used

        return (PostgresStore(url, settings.partitions, read_only=read_only),
                mask_url(url))
    from worker.store.sqlite import SqliteStore

    path = Path(where) if where else settings.state_path
    if read_only and not path.exists():
        raise StoreError(f"state store {path}: no such file (no worker and no deploy has "
                         "written it: nothing deployed)")
    if not create and not path.exists():
        raise NoStoreError(path)
    return SqliteStore(path, read_only=read_only), str(path)


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
    """A kept version, compiled; :class:`RuleFileError` if it does not validate here
    (kept by a newer inbox-rules, say) or its files do not hash to its name."""
    files = store.rule_files(version)
    if files is None:
        raise StoreError(f"no deployed rules version {version!r}")
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


def describe_change(old: CompiledRules | None, new: CompiledRules) -> str:
    """What changed for rule authors and operators: categories added, removed, and
    changed (their compiled conditions differ, through predicates too), and a change of
    their order (the order of counts). Against no version: the categories."""
    if old is None:
        return f"first deployed version; categories: {', '.join(new.categories)}"
    added = [c for c in new.categories if c not in old.categories]
    removed = [c for c in old.categories if c not in new.categories]
    changed = [c for c in new.categories
               if c in old.categories and _meaning(old, c) != _meaning(new, c)]
    parts = []
    if added:
        parts.append(f"added categories: {', '.join(added)}")
    if removed:
        parts.append(f"removed categories: {', '.join(removed)}")
    if changed:
        parts.append(f"changed categories: {', '.join(changed)}")
    kept_new = [c for c in new.categories if c in old.categories]
    kept_old = [c for c in old.categories if c in new.categories]
    if kept_new != kept_old:
        parts.append("category order changed")
    return "; ".join(parts) or "no category changed (the files differ in form only)"


def _meaning(rules: CompiledRules, category: str) -> list[str]:
    """A category's compiled conditions (one per alternative), order-free."""
    return sorted(json.dumps(rule["all"], sort_keys=True)
                  for rule in rules.ruleset_json.values() if rule["run"] == category)


def _live(store: RuleStore) -> tuple[str | None, CompiledRules | None, str]:
    """The live version, compiled if it loads here, and a note if it does not."""
    live = store.live_version()
    if live is None:
        return None, None, ""
    try:
        return live, load_version(store, live), ""
    except RuleFileError as exc:
        return live, None, f" (the live version {live} does not load here: {exc})"


def deploy_directory(store: RuleStore, directory: Path, source: str | None = None,
                     ) -> Deployed:
    """Check the rule files of ``directory``, run its cases, keep them as a version and
    make it live. Raises :class:`DeployRefusedError` having stored nothing if the files do
    not validate, a case fails, or there are no cases; deploying the live version again
    changes nothing."""
    try:
        files = read_rule_directory(directory)
        # The same loader the workers use on the stored files, named after the directory.
        rules = load_rules_from_files(files, str(directory))
    except RuleFileError as exc:
        raise DeployRefusedError(f"{directory}: the rule files do not validate; nothing deployed",
                            [str(p) for p in exc.problems]) from exc
    try:
        results = run_cases(rules, directory)
    except RuleFileError as exc:
        raise DeployRefusedError(f"{directory}: the test cases cannot be read; nothing deployed",
                            [str(p) for p in exc.problems]) from exc
    _refuse_failures(directory, results)
    live, current, note = _live(store)
    if live == rules.version:
        return Deployed(rules.version, live, None, "already live", len(results))
    summary = describe_change(current, rules) + note
    deployment = store.deploy_rules(
        rules.version, files, f"{source or who()}:{directory.resolve()}", summary,
        expect_live=live)
    return Deployed(rules.version, live, deployment, summary, len(results))


def _refuse_failures(directory: Path, results: list[CaseResult]) -> None:
    if not results:
        raise DeployRefusedError(f"{directory}: no test cases in {directory / 'cases'}; "
                            "nothing deployed (a rule set goes live with its cases)")
    failed = [r for r in results if not r.passed]
    if failed:
        raise DeployRefusedError(
            f"{directory}: {len(failed)} of {len(results)} test case(s) failed; nothing "
            "deployed", [line for r in failed for line in
                         (f"FAIL {r.file}:{r.line} {r.name}", *(f"     {f}" for f in r.failures))])


def rollback(store: RuleStore, version: str | None = None, source: str | None = None,
             ) -> Deployed:
    """Make ``version`` live again, or (None) the version live before the current one
    (so two rollbacks in a row come back: like ``cd -``). Raises
    :class:`DeployRefusedError` having changed nothing if there is nothing to roll back to
    or the version does not load here."""
    history = store.rule_history()
    if not history:
        raise DeployRefusedError("no rules were ever deployed: nothing to roll back to")
    live = history[-1].version
    if version is None:
        if len(history) < 2:
            raise DeployRefusedError(f"only one version was ever live ({live}): nothing to roll "
                                "back to")
        version = history[-2].version
    if version == live:
        return Deployed(version, live, None, "already live")
    try:
        rules = load_version(store, version)
    except StoreError as exc:
        raise DeployRefusedError(f"{exc}; deployed versions: "
                            f"{', '.join(dict.fromkeys(d.version for d in history))}") from exc
    except RuleFileError as exc:
        raise DeployRefusedError(f"rules version {version} does not load here; nothing changed",
                            [str(p) for p in exc.problems]) from exc
    try:
        current: CompiledRules | None = load_version(store, live)
        note = ""
    except RuleFileError as exc:
        current, note = None, f" (the live version {live} does not load here: {exc})"
    summary = describe_change(current, rules) + note
    deployment = store.set_live(version, source or who(), summary, expect_live=live)
    return Deployed(version, live, deployment, summary)


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
