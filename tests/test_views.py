"""Views checked against a rule set, offline: every problem with its path, the limits,
and ``inbox-rules views check``. Expectations are worked by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.rulebook.engine import default_rules_dir, load_rules
from worker.rulebook.views import (
    MAX_CONDITION_NODES,
    MAX_PERSONAL_VIEWS,
    MAX_SHARED_VIEWS,
    check_views,
)

HELPDESK_DIR = default_rules_dir() / "examples" / "helpdesk"
HELPDESK = load_rules(HELPDESK_DIR).definitions
VIP_WAITING = {"view_id": "vip-waiting", "name": "VIP waiting",
               "when": {"all": [{"category": "new"},
                                {"fact": "conversation.labels", "contains": "vip"}]}}
URGENT_EMAIL = {"view_id": "urgent-email", "name": "Urgent email",
                "when": {"all": [{"predicate": "unresolved"},
                                 {"fact": "conversation.priority", "at_least": "high"},
                                 {"fact": "conversation.channel", "equals": "email"},
                                 {"fact": "conversation.attributes.mrr", "at_least": 1000}]}}


def problems_of(body: Any, personal: bool | None = None) -> list[str]:
    views, problems = check_views(body, HELPDESK, personal=personal)
    assert not (views and problems), "views only when there is no problem"
    return [str(p) for p in problems]


def test_valid_views_are_read_with_their_categories() -> None:
    views, problems = check_views({"views": [VIP_WAITING, URGENT_EMAIL]}, HELPDESK)
    assert problems == []
    assert [(v.view_id, v.name, v.category) for v in views] == [
        ("vip-waiting", "VIP waiting", "view:vip-waiting"),
        ("urgent-email", "Urgent email", "view:urgent-email")]


@pytest.mark.parametrize(("when", "problem"), [
    ({"fact": "conversation.colour", "equals": "red"},
     "views[0].when.fact: unknown fact 'conversation.colour'"),
    ({"all": [{"category": "new"}, {"fact": "conversation.priority", "at_least": "huge"}]},
     "views[0].when.all[1].at_least: conversation.priority is one of none, low, medium, "
     "high, urgent; 'huge' is not"),
    ({"any": [{"category": "view:other"}]},
     "views[0].when.any[0].category: unknown category 'view:other'"),
    ({"not": {"predicate": "nope"}}, "views[0].when.not.predicate: unknown predicate 'nope'"),
    ({"fact": "conversation.attributes.vip", "at_least": 1},
     "views[0].when.at_least: conversation.attributes.vip is a boolean: 'at_least' does "
     "not apply"),
    ({"fact": "conversation.attributes.colour", "equals": "red"},
     "views[0].when.equals: conversation.attributes.colour: attribute 'colour' is not "
     "declared"),
    ({"fact": "conversation.labels", "equals": "vip"},
     "views[0].when.equals: conversation.labels is a set"),
    ({"all": []}, "views[0].when.all: takes a non-empty list of conditions"),
    ({"every": []}, "views[0].when: unknown condition (every)"),
])
def test_every_problem_is_said_with_its_path(when: dict[str, Any], problem: str) -> None:
    found = problems_of({"views": [{"view_id": "v", "when": when}]})
    assert any(p.startswith(problem) for p in found), found


def test_every_problem_of_a_body_is_listed_and_no_view_is_taken() -> None:
    found = problems_of({"views": [
        VIP_WAITING,
        {"view_id": "a.b", "when": {"category": "new"}},
        {"view_id": "x", "name": 3, "when": {"category": "nope"}},
        {"view_id": "vip-waiting", "when": {"category": "all"}},
        {"name": "no condition", "view_id": "y"}]})
    assert found == [
        "views[1].view_id: must be an id (letters, digits, '-', '_' and ':', at most 128)",
        "views[2].name: must be text of at most 128 characters",
        "views[2].when.category: unknown category 'nope' (the rules' categories: all, new, "
        "mine, primary, resolved, urgent, vip, email, no_channel, billing, escalated, "
        "unread_mine, mentions, snoozed)",
        "views[3].view_id: 'vip-waiting' is also views[0]'s id",
        "views[4].when: a view needs a condition"]


def test_a_fact_test_read_before_says_its_problems_at_each_path_again() -> None:
    """Fact tests are read once and kept (every views event and compiled set repeats
    them): a test seen before is judged the same, with the path it has now."""
    bad = {"fact": "conversation.priority", "at_least": "huge"}
    body = {"views": [{"view_id": "a", "when": bad},
                      {"view_id": "b", "when": {"all": [{"category": "new"}, bad]}}]}
    reason = "conversation.priority is one of none, low, medium, high, urgent; 'huge' is not"
    expected = [f"views[0].when.at_least: {reason}", f"views[1].when.all[1].at_least: {reason}"]
    assert problems_of(body) == expected
    assert problems_of(body) == expected
    good = {"views": [{"view_id": "c", "when": {"fact": "conversation.priority",
                                                 "at_least": "high"}}]}
    assert check_views(good, HELPDESK)[0] == check_views(good, HELPDESK)[0]


def test_the_limits_are_per_body_and_per_view() -> None:
    shared = [{"view_id": f"v{i}", "when": {"category": "all"}} for i in
              range(MAX_SHARED_VIEWS + 1)]
    assert problems_of({"views": shared}) == [
        f"views: {MAX_SHARED_VIEWS + 1} views: at most {MAX_SHARED_VIEWS} shared views per "
        "account"]
    assert problems_of({"views": shared[:MAX_SHARED_VIEWS]}) == []
    personal = {"agent_id": "ag-1", "views": shared[:MAX_PERSONAL_VIEWS + 1]}
    assert problems_of(personal) == [
        f"views: {MAX_PERSONAL_VIEWS + 1} views: at most {MAX_PERSONAL_VIEWS} personal views "
        "per agent"]
    assert problems_of({"agent_id": "a.b", "views": []}) == ["agent_id: must be the agent's id"]
    # an any of n tests is n + 1 nodes
    wide = [{"fact": "conversation.labels", "contains": f"l{i}"} for i in
            range(MAX_CONDITION_NODES)]
    assert problems_of({"views": [{"view_id": "w", "when": {"any": wide}}]}) == [
        f"views[0].when: {MAX_CONDITION_NODES + 1} condition nodes: at most "
        f"{MAX_CONDITION_NODES} per view"]
    assert problems_of({"views": [{"view_id": "w", "when": {"any": wide[:-1]}}]}) == []


@pytest.mark.parametrize("body", [[], "views", {"views": {}}, {"views": [3]}])
def test_a_body_of_another_shape_is_a_problem_not_a_crash(body: Any) -> None:
    assert problems_of(body)


def test_views_check_says_every_problem_and_exits_1(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"views": [VIP_WAITING, URGENT_EMAIL]}))
    bad.write_text(json.dumps({"views": [
        {"view_id": "v", "when": {"fact": "conversation.colour", "equals": "red"}},
        {"view_id": "w", "when": {"category": "urgent"}}]}))
    runner = CliRunner()
    ok = runner.invoke(main, ["views", "check", str(good), "--rules", str(HELPDESK_DIR)])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout == f"{good}: ok, 2 view(s): view:vip-waiting, view:urgent-email\n"
    refused = runner.invoke(main, ["views", "check", str(bad), "--rules", str(HELPDESK_DIR)])
    assert refused.exit_code == 1
    assert refused.stderr.startswith(f"{bad}: views[0].when.fact: unknown fact")
    default = runner.invoke(main, ["views", "check", str(bad)])  # the shipped rules
    assert default.exit_code == 1 and "views[1].when.category: unknown category 'urgent'" \
        in default.stderr
    (tmp_path / "broken.json").write_text("{")
    assert runner.invoke(main, ["views", "check", str(tmp_path / "broken.json")]).exit_code == 1
    assert runner.invoke(main, ["views", "check", str(tmp_path / "none.json")]).exit_code == 2
