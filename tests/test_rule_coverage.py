"""``inbox-rules rules test --coverage``: the conditions (file:line) no case made true,
and none made false, over every decision the cases showed an agent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from worker.cli import main
from worker.rulebook import load_rules
from worker.rulebook.engine import default_rules_dir
from worker.tools.rule_coverage import run_with_coverage


def _rules_test(*args: str) -> Result:
    return CliRunner().invoke(main, ["rules", "test", *args], catch_exceptions=False)


def _copy(tmp_path: Path, cases: bool = True) -> Path:
    target = tmp_path / "rules"
    ignore = ["*.py", "__pycache__"] + ([] if cases else ["cases"])
    shutil.copytree(default_rules_dir(), target, ignore=shutil.ignore_patterns(*ignore))
    return target


def _with_only_case(tmp_path: Path, name: str, text: str) -> Path:
    """The shipped rules with one case file of ours in place of the shipped cases, so
    that coverage measures that case alone."""
    directory = _copy(tmp_path, cases=False)
    (directory / "cases").mkdir()
    (directory / "cases" / name).write_text(text, encoding="utf-8")
    return directory


def _line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), start=1)
                if text in line)


def _gaps(report: dict[str, Any], kind: str) -> set[tuple[str, int, str]]:
    return {(c["file"], c["line"], c["condition"]) for c in report["coverage"][kind]}


def test_the_shipped_cases_leave_no_condition_unexercised() -> None:
    result = _rules_test("--coverage", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["failed"] == 0 and report["passed"] > 0
    assert report["coverage"]["conditions"] > 20
    assert report["coverage"]["never_true"] == report["coverage"]["never_false"] == []
    text = _rules_test("--coverage")
    assert "never made true: none" in text.stdout
    assert "never made false: none" in text.stdout


def test_a_condition_no_case_exercises_is_named_with_file_and_line(tmp_path: Path) -> None:
    directory = _copy(tmp_path)
    rules = directory / "inbox.yaml"
    with rules.open("a", encoding="utf-8") as out:
        out.write("  crowded:\n"
                  "    description: Open chats of very large teams.\n"
                  "    when:\n"
                  "      all:\n"
                  "        - predicate: open\n"
                  "        - {fact: account.agent_count, greater_than: 50}\n")
    (directory / "extra.yaml").write_text(
        "predicates:\n  anything:\n    when: {fact: account.group_count, at_least: 0}\n",
        encoding="utf-8")
    result = _rules_test(str(directory), "--coverage", "--json")
    assert result.exit_code == 0, result.output  # gaps are reported, not failed
    report = json.loads(result.stdout)
    line = _line_of(rules, "{fact: account.agent_count, greater_than: 50}")
    assert (str(rules), line, "account.agent_count greater_than 50") in _gaps(
        report, "never_true")
    assert (str(rules), line - 2, "all of 2") in _gaps(report, "never_true")
    assert _gaps(report, "never_false") == {
        (str(directory / "extra.yaml"), 3, "account.group_count at_least 0")}
    text = _rules_test(str(directory), "--coverage")
    assert (f"  {rules}:{line}  account.agent_count greater_than 50  (in category crowded)"
            in text.stdout)
    assert "never made false: 1" in text.stdout


def test_only_decisions_an_agent_was_shown_count(tmp_path: Path) -> None:
    """The categoriser also evaluates relations nobody has (a member of a group, when
    there are no groups); a case without groups never makes `agent.in_group` true."""
    directory = _with_only_case(
        tmp_path, "one.yaml",
        "cases:\n"
        "  - name: two agents, no groups\n"
        "    events:\n"
        "      - {type: account.updated, data: {plan: pro, agents: [ag-1, ag-2], groups: {}}}\n"
        "      - {type: conversation.created, conversation_id: c-1, data: {group_id: null}}\n"
        "    expect:\n"
        "      - {agent: ag-1, conversation: c-1, categories: [all, new, primary]}\n")
    rules = load_rules(directory)
    results, measured = run_with_coverage(rules, directory)
    assert [r.passed for r in results] == [True]
    never_true = {(c.line, c.condition) for c in measured.never_true}
    line = _line_of(directory / "inbox.yaml", "{fact: agent.in_group, equals: true}")
    assert (line, "agent.in_group equals true") in never_true
    assert measured.vectors == 1  # both agents see the one chat alike: one fact vector


def test_failing_cases_still_fail_with_coverage(tmp_path: Path) -> None:
    directory = _with_only_case(
        tmp_path, "wrong.yaml",
        "cases:\n"
        "  - name: wrong on purpose\n"
        "    events:\n"
        "      - {type: conversation.created, conversation_id: c-1, data: {}}\n"
        "    expect:\n"
        "      - {agent: ag-1, conversation: c-1, categories: [resolved]}\n")
    result = _rules_test(str(directory), "--coverage", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["failed"] == 1 and report["cases"][0]["failures"]
    # No agent was ever shown anything (the case names no agent): nothing exercised.
    assert report["coverage"]["fact_vectors"] == 0
    assert len(report["coverage"]["never_true"]) == report["coverage"]["conditions"]


def test_quiet_prints_only_the_failing_cases_and_the_summary(tmp_path: Path) -> None:
    directory = _copy(tmp_path)
    (directory / "cases" / "wrong.yaml").write_text(
        "cases:\n"
        "  - name: wrong on purpose\n"
        "    events:\n"
        "      - {type: conversation.created, conversation_id: c-1, data: {}}\n"
        "    expect:\n"
        "      - {agent: ag-1, conversation: c-1, categories: [resolved]}\n",
        encoding="utf-8")
    loud = _rules_test(str(directory))
    quiet = _rules_test(str(directory), "-q")
    assert quiet.exit_code == loud.exit_code == 1
    kept = [line for line in loud.stdout.splitlines() if not line.startswith("PASS ")]
    assert len(kept) < len(loud.stdout.splitlines()) - 10  # the shipped cases pass
    assert quiet.stdout.splitlines() == kept
    assert quiet.stdout.splitlines()[0].startswith("FAIL ")
    assert quiet.stdout.splitlines()[-1].endswith(" passed, 1 failed")
    shipped = loud.stdout.count("\nPASS ") + loud.stdout.startswith("PASS ")
    assert _rules_test("--quiet").stdout == f"{shipped} passed, 0 failed\n"  # all pass
