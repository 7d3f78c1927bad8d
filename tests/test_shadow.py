"""``inbox-rules shadow``: what a candidate rule set would change, checked against an
independent computation (replay the events under both rule sets, diff what downstream
ends up with), from events and from a state file a worker wrote, read-only."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from contracts import parse_event_object
from tests.support.harness import fresh_database
from tests.support.oracle import final_view, replay
from tests.support.streams import encode, event_stream
from worker.cli import main
from worker.domain.account import AccountState
from worker.domain.categoriser import Categoriser
from worker.domain.state import Account
from worker.errors import StoreError
from worker.rulebook import load_rules
from worker.rulebook.engine import default_rules_dir
from worker.store import StateStore
from worker.store.sqlite import SqliteStore

# Seed 3 ends with unassigned chats routed to groups on PRO accounts: the variant below
# puts them in `new` (and `primary`) for agents outside the group.
EVENTS = event_stream(seed=3, count=600, accounts=3)


def _copy_rules(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(default_rules_dir(), target,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return target


@pytest.fixture
def variant(tmp_path: Path) -> Path:
    """`new` ignores groups (on every plan): the contract's own example of a rule edit."""
    directory = _copy_rules(tmp_path, "variant")
    rules = directory / "inbox.yaml"
    text = rules.read_text(encoding="utf-8")
    old = "            - predicate: routed_to_agent\n"
    assert text.count(old) == 1
    rules.write_text(text.replace(old, "            - predicate: open\n"), encoding="utf-8")
    return directory


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(body + b"\n" for body in encode(EVENTS)))
    return path


def _shadow(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["shadow", *args], env=env, catch_exceptions=False)


def _independent(candidate: Path, events: list[dict[str, Any]] = EVENTS) -> dict[str, Any]:
    """Replay under both rule sets (the command line's replay) and diff the final
    categories and counts downstream ends up with."""
    now_categories, now_counts = final_view(replay(events))
    new_categories, new_counts = final_view(replay(events, candidate))
    entered: Counter[str] = Counter()
    left: Counter[str] = Counter()
    differences = 0
    for key in set(now_categories) | set(new_categories):
        before = set(now_categories.get(key, []))
        after = set(new_categories.get(key, []))
        if before != after:
            differences += 1
            entered.update(after - before)
            left.update(before - after)
    badges = {}
    for agent in set(now_counts) | set(new_counts):
        before_counts, after_counts = now_counts.get(agent, {}), new_counts.get(agent, {})
        change = {c: after_counts.get(c, 0) - before_counts.get(c, 0)
                  for c in set(before_counts) | set(after_counts)}
        change = {c: n for c, n in sorted(change.items()) if n}
        if change:
            badges[agent] = change
    return {"differences": differences, "entered": entered, "left": left, "badges": badges}


def _check(report: dict[str, Any], expected: dict[str, Any]) -> None:
    assert report["differences"] == expected["differences"] > 0
    assert {n: c["enter"] for n, c in report["categories"].items() if c["enter"]} == dict(
        expected["entered"])
    assert {n: c["leave"] for n, c in report["categories"].items() if c["leave"]} == dict(
        expected["left"])
    got = {(b["account_id"], b["agent_id"]): b["changes"] for b in report["badge_changes"]}
    assert got == expected["badges"]
    totals = [sum(abs(n) for n in b["changes"].values()) for b in report["badge_changes"]]
    assert totals == sorted(totals, reverse=True)  # the largest change first


def test_an_identical_copy_changes_nothing(tmp_path: Path, events_file: Path) -> None:
    same = _copy_rules(tmp_path, "same")
    result = _shadow(str(events_file), "--candidate", str(same))
    assert result.exit_code == 0, result.output
    assert "\n0 of " in result.stdout and " (agent, conversation) pairs " in result.stdout
    # Another version (a comment added), the same meaning: everything is evaluated
    # again under the candidate, and nothing differs.
    with (same / "inbox.yaml").open("a", encoding="utf-8") as rules:
        rules.write("# reworded nothing\n")
    result = _shadow(str(events_file), "--candidate", str(same), "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["differences"] == 0
    assert report["candidate_version"] != report["rules_version"]


def test_a_variant_reports_what_replaying_under_both_rule_sets_gives(
        events_file: Path, variant: Path) -> None:
    expected = _independent(variant)
    result = _shadow(str(events_file), "--candidate", str(variant), "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    _check(report, expected)
    # Examples, each explained under the candidate (and under the rules live now).
    example = next(e for e in report["examples"] if e["category"] == "new")
    assert example["change"] == "enter" and "new" in example["after"]
    assert example["candidate"]["holds"] and not example["current"]["holds"]
    assert {c["file"] for c in example["candidate"]["conditions"]} == {
        str(variant / "inbox.yaml")}
    text = _shadow(str(events_file), "--candidate", str(variant))
    assert text.exit_code == 1
    assert f"{expected['differences']} of " in text.stdout
    assert "new enters for" in text.stdout and "candidate:" in text.stdout


def test_views_follow_the_categories_they_name_into_the_report(
        tmp_path: Path, variant: Path) -> None:
    """A shared view on ``new``: the variant moves it with ``new``, pair for pair,
    as replaying the same events under both rule sets says."""
    accounts = sorted({e["account_id"] for e in EVENTS})
    views = [{"event_id": f"views-{account}", "type": "account.views_updated",
              "account_id": account, "occurred_at": EVENTS[0]["occurred_at"],
              "data": {"views": [{"view_id": "waiting", "when": {"category": "new"}}]}}
             for account in accounts]
    events = [*views, *EVENTS]
    path = tmp_path / "with-views.jsonl"
    path.write_bytes(b"".join(body + b"\n" for body in encode(events)))
    expected = _independent(variant, events)
    assert expected["entered"]["view:waiting"] == expected["entered"]["new"] > 0
    result = _shadow(str(path), "--candidate", str(variant), "--json")
    assert result.exit_code == 1, result.output
    _check(json.loads(result.stdout), expected)


def test_trouble_exits_2(tmp_path: Path, events_file: Path, variant: Path) -> None:
    broken = _copy_rules(tmp_path, "broken")
    (broken / "inbox.yaml").write_text("categories:\n  all:\n    when: {fact: nope, "
                                       "equals: 1}\n", encoding="utf-8")
    result = _shadow(str(events_file), "--candidate", str(broken))
    assert result.exit_code == 2 and "unknown fact 'nope'" in result.stderr
    with_bad_line = tmp_path / "bad.jsonl"
    with_bad_line.write_bytes(events_file.read_bytes() + b"{not json\n")
    result = _shadow(str(with_bad_line), "--candidate", str(variant), "--json")
    assert result.exit_code == 2 and "line 601:" in result.stderr
    assert json.loads(result.stdout)["differences"] > 0  # the report of the rest
    result = _shadow("--store", str(tmp_path / "missing.sqlite3"), "--candidate",
                     str(variant))
    assert result.exit_code == 2 and "cannot open read-only" in result.stderr
    assert not (tmp_path / "missing.sqlite3").exists()
    assert _shadow("--candidate", str(variant)).exit_code == 2  # neither events nor state


# -- against the state a worker wrote ---------------------------------------------------
def _commit_events(store: StateStore, rules_dir: Path | None = None
                   ) -> dict[str, AccountState]:
    """Categorise EVENTS into ``store`` as a worker does (one commit per event), then
    close it: the state a shadow run reads, whichever store holds it. Returns the
    accounts written, by id."""
    states: dict[str, AccountState] = {}
    try:
        categoriser = Categoriser(load_rules(rules_dir))
        for raw in EVENTS:
            event = parse_event_object(raw)
            state = states.get(event.account_id) or states.setdefault(
                event.account_id, AccountState(Account(event.account_id),
                                               rules_version=categoriser.rules.version))
            categoriser.handle(state, event)
            store.commit([state.take_write()])
    finally:
        store.close()
    return states


def _write_state(path: Path, rules_dir: Path | None = None) -> None:
    """What a worker leaves in its SQLite file for EVENTS."""
    _commit_events(SqliteStore(path), rules_dir)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_state_a_worker_wrote_gives_the_same_report_and_stays_untouched(
        tmp_path: Path, variant: Path) -> None:
    path = tmp_path / "state.sqlite3"
    _write_state(path)
    before = _digest(path)
    expected = _independent(variant)
    result = _shadow("--store", str(path), "--candidate", str(variant), "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    _check(report, expected)
    assert report["categorised_under"] == {load_rules().version: 3}
    # `--store` alone: the worker's settings name the file.
    env = {"INBOX_RULES_STATE_PATH": str(path)}
    result = _shadow("--candidate", str(variant), "--store", "--json", env=env)
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["differences"] == expected["differences"]
    same = _copy_rules(tmp_path, "same")
    assert _shadow("--store", str(path), "--candidate", str(same)).exit_code == 0
    assert _digest(path) == before


def test_state_is_a_hidden_deprecated_name_of_store_that_still_works(
        tmp_path: Path, variant: Path) -> None:
    """--store names the state store in every command; shadow's old --state still reads
    it, with one warning, and is no longer in its help."""
    path = tmp_path / "state.sqlite3"
    _write_state(path)
    new = _shadow("--store", str(path), "--candidate", str(variant), "--json")
    old = _shadow("--state", str(path), "--candidate", str(variant), "--json")
    assert (old.exit_code, old.stdout) == (new.exit_code, new.stdout) == (1, new.stdout)
    assert old.stderr.count("deprecated") == 1 and "use --store" in old.stderr
    assert "deprecated" not in new.stderr
    alone = _shadow("--candidate", str(variant), "--state", "--json",
                    env={"INBOX_RULES_STATE_PATH": str(path)})
    assert alone.stdout == new.stdout
    both = _shadow("--store", str(path), "--state", str(path), "--candidate", str(variant))
    assert both.exit_code == 2 and "--store only" in both.stderr
    for command in (["shadow"], ["rules", "deploy"], ["rules", "history"],
                    ["rules", "rollback"]):
        text = CliRunner().invoke(main, [*command, "--help"]).stdout
        assert "--store" in text and "--state" not in text


def test_state_under_the_candidate_already_has_nothing_to_change(
        tmp_path: Path, variant: Path) -> None:
    path = tmp_path / "state.sqlite3"
    _write_state(path, variant)
    result = _shadow("--store", str(path), "--candidate", str(variant), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["differences"] == 0


def test_the_read_only_store_iterates_every_account_and_writes_nothing(
        tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    _write_state(path)
    store = SqliteStore(path, read_only=True)
    try:
        ids = [state.account_id for state in store.iter_accounts(page=2)]
        assert ids == sorted({e["account_id"] for e in EVENTS})
        with pytest.raises(StoreError, match="readonly"):
            store.commit([])
    finally:
        store.close()


def test_a_read_only_open_never_creates_or_migrates(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite3"
    empty.write_bytes(b"")
    with pytest.raises(StoreError, match="holds no inbox-rules state"):
        SqliteStore(empty, read_only=True)
    assert empty.read_bytes() == b""


# -- PostgreSQL ---------------------------------------------------------------------
@pytest.fixture
def database() -> Iterator[str]:
    """A database of its own, dropped after the test."""
    with fresh_database() as url:
        yield url


@pytest.mark.postgres
def test_state_in_postgresql_read_with_selects_only(database: str, variant: Path) -> None:
    from worker.store.postgres import PostgresStore

    # A read-only open of a database no worker prepared creates nothing.
    with pytest.raises(StoreError, match="holds no inbox-rules state"):
        PostgresStore(database, 4, read_only=True)
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'inbox_rules'"
                            ).fetchone() is None
    store = PostgresStore(database, 4)
    for partition in range(4):
        store.acquire(partition)
    states = _commit_events(store)
    expected = _independent(variant)
    result = _shadow("--store", database, "--candidate", str(variant), "--json")
    assert result.exit_code == 1, result.output
    _check(json.loads(result.stdout), expected)
    # --store alone: INBOX_RULES_STORE_URL names the database.
    result = _shadow("--candidate", str(variant), "--store", "--json",
                     env={"INBOX_RULES_STORE_URL": database})
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["differences"] == expected["differences"]
    reader = PostgresStore(database, 4, read_only=True)
    try:
        assert len(list(reader.iter_accounts(page=2))) == len(states)
        with pytest.raises(StoreError, match="read-only transaction"):
            reader.acquire(0)  # the session cannot write, whatever is asked of it
    finally:
        reader.close()
