"""One exit-status table for every command (see ``inbox-rules --help``): 0 done, 1 the
command's own answer is no, 2 trouble. Every command triggers each status it uses
here (without a broker: connecting is tried on a closed port), and its --help lists
them. ``shadow``'s 0/1/2 are in tests/test_shadow.py, ``run``'s in test_cli_run.py and
test_cli_settings.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tests.support.streams import encode, event_stream
from tests.test_rule_versions import copy_rules, failing, invalid, variant
from worker.cli import main
from worker.cli_support import EXIT_NO, EXIT_OK, EXIT_TROUBLE
from worker.rulebook import load_rules
from worker.store.sqlite import SqliteStore

CLOSED = "amqp://guest:guest@127.0.0.1:1/%2F"  # nothing listens on port 1
ENV = {"AMQP_URL": CLOSED, "INBOX_RULES_STATE_PATH": None, "INBOX_RULES_STORE_URL": None}
IDS = ["--account", "acc-0", "--agent", "ag-0", "--conversation", "c-0"]
UNKNOWN_FACT = "unknown fact"  # what invalid() breaks
NO_BROKER = "127.0.0.1:1"

Case = Callable[[Path], list[str]]


def _views(tmp_path: Path, fact: str) -> str:
    path = tmp_path / "views.json"
    path.write_text(json.dumps({"views": [{"view_id": "v",
                                           "when": {"fact": fact, "equals": "open"}}]}))
    return str(path)


def _events(tmp_path: Path, extra: bytes = b"") -> str:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in encode(
        event_stream(seed=1, count=40, accounts=1))) + extra)
    return str(path)


def _store(tmp_path: Path, *versions: Path) -> str:
    """A SQLite store with ``versions`` deployed in order."""
    path = tmp_path / "state.sqlite3"
    SqliteStore(path).close()
    for directory in versions:
        result = CliRunner().invoke(main, ["rules", "deploy", str(directory),
                                           "--store", str(path)])
        assert result.exit_code == EXIT_OK, result.output
    return str(path)


# name: (exit status, arguments, a fragment of the output it says on stderr or None).
CASES: dict[str, tuple[int, Case, str | None]] = {
    "replay ok": (EXIT_OK, lambda t: ["replay", _events(t)], None),
    "replay bad line": (EXIT_TROUBLE, lambda t: ["replay", _events(t, b"{not json\n")],
                        "line 41:"),
    "replay invalid rules": (EXIT_TROUBLE, lambda t: [
        "replay", _events(t), "--rules", str(invalid(t))], UNKNOWN_FACT),
    "explain ok": (EXIT_OK, lambda t: ["explain", _events(t), *IDS], None),
    "explain bad line": (EXIT_TROUBLE, lambda t: [
        "explain", _events(t, b"{not json\n"), *IDS], "line 41:"),
    "explain --live no broker": (EXIT_TROUBLE, lambda t: ["explain", "--live", *IDS],
                                 NO_BROKER),
    "demo no broker": (EXIT_TROUBLE, lambda t: ["demo"], NO_BROKER),
    "watch bad ids": (EXIT_TROUBLE, lambda t: [
        "watch", "--account", "a#b", "--agent", "ag-0", "--once"], "bad watch request"),
    "watch no broker": (EXIT_TROUBLE, lambda t: [
        "watch", "--account", "acc-0", "--agent", "ag-0", "--once"], NO_BROKER),
    "run invalid rules": (EXIT_TROUBLE, lambda t: ["run", "--rules", str(invalid(t))],
                          UNKNOWN_FACT),
    "shadow invalid candidate": (EXIT_TROUBLE, lambda t: [
        "shadow", _events(t), "--candidate", str(invalid(t))], UNKNOWN_FACT),
    "views check ok": (EXIT_OK, lambda t: [
        "views", "check", _views(t, "conversation.status")], None),
    "views check a problem": (EXIT_NO, lambda t: [
        "views", "check", _views(t, "conversation.colour")], "unknown fact"),
    "views check unreadable": (EXIT_TROUBLE, lambda t: [
        "views", "check", str(t / "none.json")], "cannot read"),
    "rules check ok": (EXIT_OK, lambda t: ["rules", "check", str(copy_rules(t, "a"))],
                       None),
    "rules check invalid": (EXIT_TROUBLE, lambda t: ["rules", "check", str(invalid(t))],
                            UNKNOWN_FACT),
    "rules test ok": (EXIT_OK, lambda t: ["rules", "test", str(copy_rules(t, "a"))], None),
    "rules test a case fails": (EXIT_NO, lambda t: ["rules", "test", str(failing(t))],
                                None),
    "rules test invalid": (EXIT_TROUBLE, lambda t: ["rules", "test", str(invalid(t))],
                           UNKNOWN_FACT),
    "rules deploy ok": (EXIT_OK, lambda t: [
        "rules", "deploy", str(copy_rules(t, "a")), "--store", _store(t)], None),
    "rules deploy a case fails": (EXIT_NO, lambda t: [
        "rules", "deploy", str(failing(t)), "--store", _store(t)], "test case(s) failed"),
    "rules deploy invalid": (EXIT_TROUBLE, lambda t: [
        "rules", "deploy", str(invalid(t)), "--store", _store(t)], UNKNOWN_FACT),
    "rules deploy store unusable": (EXIT_TROUBLE, lambda t: [
        "rules", "deploy", str(copy_rules(t, "a")), "--store", str(t)], "state store"),
    "rules rollback ok": (EXIT_OK, lambda t: [
        "rules", "rollback", "--store", _store(t, copy_rules(t, "a"), variant(t))], None),
    "rules rollback never deployed": (EXIT_NO, lambda t: [
        "rules", "rollback", "nope", "--store", _store(t, copy_rules(t, "a"))],
        "no deployed rules version 'nope'"),
    "rules rollback store unusable": (EXIT_TROUBLE, lambda t: [
        "rules", "rollback", "--store", str(t)], "state store"),
    "rules schema ok": (EXIT_OK, lambda t: ["rules", "schema"], None),
    "rules history ok": (EXIT_OK, lambda t: [
        "rules", "history", "--store", _store(t, copy_rules(t, "a"))], None),
    "rules history no store": (EXIT_TROUBLE, lambda t: [
        "rules", "history", "--store", str(t / "missing.sqlite3")], "no such file"),
}


@pytest.mark.parametrize("name", CASES)
def test_every_command_exits_with_the_status_of_its_outcome(name: str, tmp_path: Path,
                                                           ) -> None:
    expected, case, said = CASES[name]
    result = CliRunner().invoke(main, case(tmp_path), env=ENV)
    assert result.exit_code == expected, result.output
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert "Traceback" not in result.output
    if said is not None:
        assert said in result.stderr


def test_a_deploy_of_invalid_rules_is_trouble_and_stores_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path, copy_rules(tmp_path, "a"))
    result = CliRunner().invoke(main, ["rules", "deploy", str(invalid(tmp_path)),
                                       "--store", store])
    assert result.exit_code == EXIT_TROUBLE and "unknown fact" in result.stderr
    history = json.loads(CliRunner().invoke(
        main, ["rules", "history", "--json", "--store", store]).stdout)
    assert history["live"] == load_rules(copy_rules(tmp_path, "b")).version


def test_an_unexpected_error_is_trouble_with_its_traceback(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("worker.cli_rules.check_rules", broken)
    result = CliRunner().invoke(main, ["rules", "check", str(copy_rules(tmp_path, "a"))])
    assert result.exit_code == EXIT_TROUBLE  # never 1: that is an answer
    assert "Traceback" in result.stderr and "RuntimeError: a bug" in result.stderr


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
        else:
            found.append((prefix + name, command))
    return found


@pytest.mark.parametrize(("name", "command"), _commands(main))
def test_every_commands_help_lists_the_statuses_it_uses(name: str,
                                                        command: click.Command) -> None:
    result = CliRunner().invoke(main, [*name.split(), "--help"])
    assert result.exit_code == EXIT_OK
    epilog = result.stdout.split("Exit status:", 1)[1]
    tested = {code for case, (code, *_) in CASES.items() if case.startswith(name + " ")}
    if name == "shadow":
        tested |= {EXIT_OK, EXIT_NO}  # tests/test_shadow.py
    listed = {int(line.split()[0]) for line in epilog.splitlines()
              if line.strip()[:1].isdigit()}
    assert tested <= listed and EXIT_TROUBLE in listed
    assert (EXIT_NO in listed) == (name in {"shadow", "rules test", "rules deploy",
                                            "rules rollback", "views check"})
