"""Rule versions for a fleet (issue 11, part 4): deploy, history, rollback, and the
worker's follower.

A deploy validates the files and runs their cases before anything is written: an
invalid or failing rule set changes nothing live, in any store and through the
command line. History lists every deployment with where it came from and what
changed; rollback makes an earlier version live the same way, by default the one live
before. Workers load a stored version through the same validator as a directory and
reach the same version (the hash of the same bytes). Compiled rule sets are freed
when dropped, so many versions do not accumulate in a process.
"""

from __future__ import annotations

import gc
import json
import shutil
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

# The PostgreSQL store's fixtures, for the stores' postgres params.
from tests.test_store_postgres import open_store as open_store
from tests.test_store_postgres import url as url
from worker.cli import main
from worker.errors import RuleFileError, StoreConflictError, StoreError
from worker.rule_versions import KEPT_VERSIONS, LiveRulesFollower, load_version
from worker.rulebook import load_rules
from worker.rulebook.engine import (
    CompiledRules,
    default_rules_dir,
    load_rules_from_files,
    read_rule_directory,
)
from worker.store import RuleStore
from worker.store.memory import MemoryStore
from worker.store.sqlite import SqliteStore
from worker.tools.rule_deploy import DeployRefusedError, deploy_directory, describe_change, rollback

GROUPS_ON_PRO = "{fact: account.plan, equals: pro}"
GROUPS_ON_STANDARD_TOO = "{fact: account.plan, in: [pro, standard]}"
# A case that holds only when groups route on the standard plan too.
STANDARD_ROUTING_CASE = """\
cases:
  - name: standard routes group chats (variant)
    events:
      - {type: account.updated, data: {plan: standard, agents: [ag-1, ag-2], groups: {g-1: [ag-1]}}}
      - {type: conversation.created, conversation_id: c-1, data: {group_id: g-1}}
    expect:
      - {agent: ag-1, conversation: c-1, categories: [all, new, primary]}
      - {agent: ag-2, conversation: c-1, categories: [all]}
"""


def copy_rules(tmp_path: Path, name: str) -> Path:
    directory = tmp_path / name
    shutil.copytree(default_rules_dir(), directory,
                    ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return directory


def variant(tmp_path: Path, name: str = "b") -> Path:
    """Groups route on standard too, with cases that say so (the shipped cases say
    otherwise, and would refuse it)."""
    directory = copy_rules(tmp_path, name)
    text = (directory / "inbox.yaml").read_text()
    assert GROUPS_ON_PRO in text
    (directory / "inbox.yaml").write_text(text.replace(GROUPS_ON_PRO, GROUPS_ON_STANDARD_TOO))
    shutil.rmtree(directory / "cases")
    (directory / "cases").mkdir()
    (directory / "cases" / "standard.yaml").write_text(STANDARD_ROUTING_CASE)
    return directory


def invalid(tmp_path: Path) -> Path:
    directory = copy_rules(tmp_path, "invalid")
    (directory / "inbox.yaml").write_text(
        (directory / "inbox.yaml").read_text().replace("fact: conversation.status",
                                                       "fact: conversation.nope", 1))
    return directory


def failing(tmp_path: Path) -> Path:
    """Valid files whose shipped cases fail (groups on standard, old expectations)."""
    directory = copy_rules(tmp_path, "failing")
    text = (directory / "inbox.yaml").read_text()
    (directory / "inbox.yaml").write_text(text.replace(GROUPS_ON_PRO, GROUPS_ON_STANDARD_TOO))
    return directory


StoreFactory = Callable[[], RuleStore]


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens the kind of store under test (every call: another handle on the same
    store, as the command line and a worker would have)."""
    opened: list[Any] = []
    memory = MemoryStore()

    def open_() -> RuleStore:
        if request.param == "memory":
            return memory
        if request.param == "sqlite":
            store = SqliteStore(tmp_path / "state.sqlite3")
        else:
            store = request.getfixturevalue("open_store")()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        if request.param == "sqlite":
            store.close()


# -- the loader ------------------------------------------------------------------------
def test_files_in_memory_load_to_the_version_of_their_directory() -> None:
    directory = default_rules_dir()
    files = read_rule_directory(directory)
    assert set(files) == {"inbox.yaml"}
    from_memory = load_rules_from_files(files, "deployed:x")
    assert from_memory.version == load_rules(directory).version
    assert from_memory.categories == load_rules(directory).categories


def test_files_in_memory_go_through_the_same_validator() -> None:
    files = read_rule_directory(default_rules_dir())
    broken = {"inbox.yaml": files["inbox.yaml"].replace(b"fact: conversation.status",
                                                        b"fact: conversation.nope", 1)}
    with pytest.raises(RuleFileError, match=r"deployed:v/inbox.yaml:\d+: .*unknown fact"):
        load_rules_from_files(broken, "deployed:v")
    for name in ("../inbox.yaml", "inbox.py", ".hidden.yaml", "a/b.yaml"):
        with pytest.raises(RuleFileError, match="not a rule file name"):
            load_rules_from_files({name: files["inbox.yaml"]}, "deployed:v")
    with pytest.raises(RuleFileError, match="no rule files"):
        load_rules_from_files({}, "deployed:v")


# -- the stores ------------------------------------------------------------------------
def test_a_store_keeps_versions_and_their_deployments_in_order(stores: StoreFactory) -> None:
    store = stores()
    assert store.live_version() is None and store.live_rules() is None
    assert store.rule_history() == []
    a = {"inbox.yaml": "# a: é\n".encode()}
    b = {"inbox.yaml": b"# b\n", "more.yml": b"# more\n"}
    first = store.deploy_rules("va", a, "alice@h:/rules", "first", expect_live=None)
    store.deploy_rules("vb", b, "bob@h:/rules-b", "b", expect_live="va")
    reader = stores()
    assert reader.live_version() == "vb"
    assert reader.live_rules() == ("vb", b)
    assert reader.rule_files("va") == a, "the exact bytes come back"
    third = reader.set_live("va", "carol@h", "back", expect_live="vb")
    assert (third.number, third.action) == (3, "rollback")
    history = stores().rule_history()
    assert [(d.number, d.version, d.action, d.source, d.summary) for d in history] == [
        (1, "va", "deploy", "alice@h:/rules", "first"),
        (2, "vb", "deploy", "bob@h:/rules-b", "b"),
        (3, "va", "rollback", "carol@h", "back")]
    assert history[0].at == first.at or abs((history[0].at - first.at).total_seconds()) < 5
    assert history[0].at <= history[1].at <= history[2].at
    assert stores().live_version() == "va"


def test_a_store_refuses_an_unknown_version_and_a_stale_expectation(
        stores: StoreFactory) -> None:
    store = stores()
    store.deploy_rules("va", {"inbox.yaml": b"a"}, "s", "first")
    with pytest.raises(StoreError, match="no deployed rules version 'nope'"):
        store.set_live("nope", "s", "x")
    with pytest.raises(StoreConflictError, match="changed meanwhile"):
        store.deploy_rules("vb", {"inbox.yaml": b"b"}, "s", "x", expect_live=None)
    with pytest.raises(StoreConflictError, match="changed meanwhile"):
        store.set_live("va", "s", "x", expect_live="vb")
    assert [d.version for d in stores().rule_history()] == ["va"]
    assert stores().rule_files("vb") is None, "a refused deploy keeps nothing"


def test_the_sqlite_schema_migrates_to_rule_versions_and_reads_only(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert {"rule_versions", "rule_deployments"} <= tables
    writer = SqliteStore(path)
    writer.deploy_rules("va", {"inbox.yaml": b"a"}, "s", "first")
    reader = SqliteStore(path, read_only=True)
    try:
        assert reader.live_version() == "va"
        with pytest.raises(StoreError):
            reader.deploy_rules("vb", {"inbox.yaml": b"b"}, "s", "x")
    finally:
        reader.close()
        writer.close()


# -- deploy and rollback ---------------------------------------------------------------
def test_deploy_of_an_invalid_or_failing_rule_set_changes_nothing_live(
        stores: StoreFactory, tmp_path: Path) -> None:
    store = stores()
    a = copy_rules(tmp_path, "a")
    deploy_directory(store, a)
    live = store.live_version()
    for directory, why in ((invalid(tmp_path), "do not validate"),
                           (failing(tmp_path), "test case")):
        with pytest.raises(DeployRefusedError, match=why) as refused:
            deploy_directory(store, directory)
        assert refused.value.problems, "it says what is wrong"
    no_cases = copy_rules(tmp_path, "no-cases")
    shutil.rmtree(no_cases / "cases")
    (no_cases / "inbox.yaml").write_text((no_cases / "inbox.yaml").read_text() + "\n# edit\n")
    with pytest.raises(DeployRefusedError, match="no test cases"):
        deploy_directory(store, no_cases)
    again = stores()
    assert again.live_version() == live
    assert len(again.rule_history()) == 1


def test_deploy_says_what_changed_and_rollback_goes_back(
        stores: StoreFactory, tmp_path: Path) -> None:
    store = stores()
    a, b = copy_rules(tmp_path, "a"), variant(tmp_path)
    first = deploy_directory(store, a, "tester")
    assert first.previous is None and first.cases > 50
    assert first.summary.startswith("first deployed version; categories: all, new")
    second = deploy_directory(store, b, "tester")
    assert second.previous == first.version
    # new and mine test groups in effect (through multi_agent), primary is either.
    assert second.summary == "changed categories: new, mine, primary"
    assert deploy_directory(store, b).deployment is None, "live already: nothing to do"
    back = rollback(store, source="tester")
    assert (back.version, back.previous) == (first.version, second.version)
    assert back.summary == "changed categories: new, mine, primary"
    assert stores().live_version() == first.version
    # Two rollbacks in a row come back (the version live before), like `cd -`.
    assert rollback(store).version == second.version
    assert rollback(store, first.version).version == first.version
    history = stores().rule_history()
    assert [d.action for d in history] == ["deploy", "deploy", "rollback", "rollback",
                                           "rollback"]
    assert history[0].source == f"tester:{a.resolve()}"
    with pytest.raises(DeployRefusedError, match="deployed versions: "):
        rollback(store, "0123456789ab")


def test_rollback_with_nothing_to_go_back_to_is_refused(stores: StoreFactory,
                                                         tmp_path: Path) -> None:
    store = stores()
    with pytest.raises(DeployRefusedError, match="nothing to roll back to"):
        rollback(store)
    deploy_directory(store, copy_rules(tmp_path, "a"))
    with pytest.raises(DeployRefusedError, match="only one version"):
        rollback(store)


def test_describe_change_names_added_removed_changed_and_order(tmp_path: Path) -> None:
    a = copy_rules(tmp_path, "a")
    old = load_rules(a)
    text = (a / "inbox.yaml").read_text()
    crowded = ("  crowded:\n    description: very large teams\n    when: {fact: "
               "account.agent_count, greater_than: 50}\n")
    (a / "inbox.yaml").write_text(text + crowded)
    assert describe_change(old, load_rules(a)) == "added categories: crowded"
    assert describe_change(load_rules(a), old) == "removed categories: crowded"
    (a / "inbox.yaml").write_text(text + "\n# a comment\n")
    assert describe_change(old, load_rules(a)) == (
        "no category changed (the files differ in form only)")


# -- the worker's side -----------------------------------------------------------------
def test_the_follower_adopts_the_live_version_and_skips_one_that_does_not_load(
        tmp_path: Path) -> None:
    store = MemoryStore()
    directory_rules = load_rules(None)
    follower = LiveRulesFollower(store, directory_rules)
    assert follower.start(directory_rules) is directory_rules, "nothing deployed"
    assert follower.poll() is None
    deployed = deploy_directory(store, variant(tmp_path))
    adopted = follower.poll()
    assert adopted is not None and adopted.version == deployed.version
    assert adopted.source == f"deployed:{deployed.version}"
    assert follower.poll() is None, "once"
    # A version that does not load here (its files do not hash to its name): skipped,
    # once; the next good one is taken.
    store.deploy_rules("0000deadbeef", read_rule_directory(default_rules_dir()), "s", "x")
    assert follower.poll() is None and follower.version == deployed.version
    with pytest.raises(RuleFileError, match="hash to"):
        load_version(store, "0000deadbeef")
    back = deploy_directory(store, copy_rules(tmp_path, "a"))
    assert back.version == directory_rules.version
    assert follower.poll() is not None and follower.version == directory_rules.version
    # A worker starting now takes the deployed version over its directory.
    fresh = LiveRulesFollower(store, load_rules(variant(tmp_path, "c")))
    assert fresh.start(load_rules(variant(tmp_path, "d"))).version == directory_rules.version


def test_the_follower_keeps_a_bounded_number_of_compiled_versions(tmp_path: Path) -> None:
    store = MemoryStore()
    follower = LiveRulesFollower(store, load_rules(None))
    directory = copy_rules(tmp_path, "a")
    text = (directory / "inbox.yaml").read_text()
    seen: weakref.WeakSet[CompiledRules] = weakref.WeakSet()
    versions = []
    for n in range(8):
        (directory / "inbox.yaml").write_text(f"# version {n}\n{text}")
        versions.append(deploy_directory(store, directory).version)
        rules = follower.poll()
        assert rules is not None
        seen.add(rules)
        del rules
    gc.collect()
    assert len(seen) == KEPT_VERSIONS + 1
    # A recent version is served from those kept (its cache warm), not compiled again.
    kept = set(seen)
    rollback(store)
    again = follower.poll()
    assert again in kept and again is not None and again.version == versions[-2]


def test_compiled_rule_sets_are_freed_with_their_engine_state() -> None:
    """durable-rules never unregisters a ruleset from a host; each rule set has a host
    of its own, released (rete tree and session freed) once nothing uses it. A rule
    set whose first fact matched nothing used to crash the release (the engine's
    action context was never initialised)."""
    gone: list[weakref.ref[CompiledRules]] = []
    threads = threading.active_count()
    vector = {"conversation.status": "deleted", "conversation.has_group": False,
              "conversation.joined_count": 0, "agent.joined": False, "agent.in_group": False,
              "account.plan": "free", "account.agent_count": 1, "account.group_count": 0,
              "conversation.waiting_seconds": 0, "conversation.last_message_by": "none",
              "conversation.priority": "none", "agent.unread": False, "agent.mentioned": False}
    for _ in range(50):
        rules = load_rules(None)
        assert rules.evaluate_facts(vector) == frozenset()
        gone.append(weakref.ref(rules))
        del rules
    assert all(ref() is None for ref in gone), "freed as soon as dropped (no cycle)"
    assert threading.active_count() == threads, "a host per rule set starts no thread"
    # The engine's side too: kept, 150 rule sets took about 75 MiB (~0.5 MiB each in C).
    before = _rss_mib()
    for _ in range(150):
        load_rules(None).evaluate_facts(vector)
    assert _rss_mib() - before < 15
    assert load_rules(None).evaluate_facts({**vector, "conversation.status": "resolved"}) == {
        "resolved"}


def _rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines()
                    if line.startswith("VmRSS:")).split()[1]) / 1024


# -- the command line ------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str]) -> Any:
    return CliRunner().invoke(main, list(args), env=env)


def test_the_command_line_deploys_lists_and_rolls_back(tmp_path: Path) -> None:
    env = {"INBOX_RULES_STATE_PATH": str(tmp_path / "state.sqlite3"),
           "INBOX_RULES_STORE_URL": ""}
    a, b = copy_rules(tmp_path, "a"), variant(tmp_path)
    result = _cli("rules", "history", env=env)
    assert result.exit_code == 2 and "nothing deployed" in result.stderr  # no store
    for directory, status in ((invalid(tmp_path), 2), (failing(tmp_path), 1)):
        result = _cli("rules", "deploy", str(directory), "--create", env=env)
        assert result.exit_code == status and "nothing deployed" in result.stderr, \
            result.output
    assert "FAIL " in result.stderr
    result = _cli("rules", "deploy", str(a), "--create", env=env)
    assert result.exit_code == 0, result.output
    version_a = load_rules(a).version
    assert f"live now: {version_a} (was none), deployment #1" in result.stdout
    result = _cli("rules", "deploy", str(invalid(tmp_path / "again")), env=env)
    assert result.exit_code == 2 and "unknown fact" in result.stderr
    result = _cli("rules", "deploy", str(b), env=env)
    version_b = load_rules(b).version
    assert result.exit_code == 0
    assert "what changed: changed categories: new, mine, primary" in result.stdout
    result = _cli("rules", "rollback", env=env)
    assert result.exit_code == 0 and f"live now {version_a} (was {version_b})" in result.stdout
    result = _cli("rules", "rollback", "nope", env=env)
    assert result.exit_code == 1 and "no deployed rules version 'nope'" in result.stderr
    result = _cli("rules", "history", env=env)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("#1  ") and f"deploy    {version_a}" in lines[0]
    assert f"{a.resolve()}" in lines[0] and "first deployed version" in lines[1]
    assert lines[-2].startswith("#3  ") and lines[-2].endswith("(live)")
    assert "rollback  " + version_a in lines[-2]
    report = json.loads(_cli("rules", "history", "--json", env=env).stdout)
    assert report["live"] == version_a
    assert [d["version"] for d in report["deployments"]] == [version_a, version_b, version_a]
    # --store names another store: nothing deployed there.
    other = tmp_path / "other.sqlite3"
    result = _cli("rules", "deploy", str(a), "--store", str(other), "--create", env=env)
    assert result.exit_code == 0 and str(other) in result.stdout
    assert len(json.loads(_cli("rules", "history", "--json", env=env).stdout)[
        "deployments"]) == 3


def test_deploy_creates_no_store_unless_asked(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With no store named, a deploy used to start ./inbox-rules.sqlite3 (which no worker
    reads) and report success."""
    monkeypatch.chdir(tmp_path)
    unset: dict[str, str | None] = {"INBOX_RULES_STATE_PATH": None,
                                     "INBOX_RULES_STORE_URL": None}
    env = {"INBOX_RULES_STORE_URL": ""}
    a = copy_rules(tmp_path, "a")
    for command in (["rules", "deploy", str(a)], ["rules", "rollback"]):
        result = CliRunner().invoke(main, command, env=unset)
        assert result.exit_code == 2, result.output
        assert result.stderr == (
            "no state store at inbox-rules.sqlite3: name the workers' store with --store "
            "FILE|URL (or INBOX_RULES_STORE_URL / INBOX_RULES_STATE_PATH); rules deploy "
            "--create starts a new one\n")
        assert list(tmp_path.glob("*.sqlite3")) == []
    named = tmp_path / "named.sqlite3"
    result = _cli("rules", "deploy", str(a), "--store", str(named), env=env)
    assert result.exit_code == 2 and f"no state store at {named}:" in result.stderr
    assert not named.exists()
    result = _cli("rules", "deploy", str(a), "--store", str(named), "--create", env=env)
    assert result.exit_code == 0 and named.exists(), result.output
    result = _cli("rules", "deploy", str(variant(tmp_path)), "--store", str(named), env=env)
    assert result.exit_code == 0, result.output  # the file exists: no --create needed
