"""Deploy and roll back rule versions for a fleet (``inbox-rules rules deploy|rollback``).

``deploy DIR`` checks the rule files, runs their test cases, keeps the files in the
state store every worker shares as a new version and makes it live; ``rollback`` makes
a kept version live again. The workers follow the live version themselves
(:class:`worker.rule_versions.LiveRulesFollower`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from worker.errors import InboxRulesError, RuleFileError, StoreError
from worker.rule_versions import load_version, who
from worker.rulebook.engine import CompiledRules, load_rules_from_files, read_rule_directory
from worker.settings import Settings, mask_url
from worker.store import RuleDeployment, RuleStore
from worker.tools.rule_cases import CaseResult, run_cases


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
