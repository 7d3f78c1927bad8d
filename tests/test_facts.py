"""The facts inboxes sort by, in the domain (no broker): conversation details and how
updates change them, snoozes and their wakes, per-agent unread and mentions, unread
counts, and tests of details as rule files write them. Expectations are worked by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from contracts import BadEvent, parse_event_object
from tests.support.streams import Events, encode
from worker.cli import main
from worker.domain.inbox import Inbox
from worker.domain.reading import facts_of, is_unread
from worker.domain.updates import Update
from worker.errors import RuleFileError
from worker.rulebook import load_rules
from worker.rulebook.engine import default_rules_dir

DEFAULT = load_rules()
HELPDESK = load_rules(default_rules_dir() / "examples" / "helpdesk")
T = "2026-11-24T10:{:02d}:00Z"


def event(number: int, kind: str, minute: int = 0, conversation: str | None = "c-1",
          **data: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"event_id": f"e-{number}", "type": kind, "account_id": "acc-1",
                           "occurred_at": T.format(minute), "data": data}
    if conversation is not None:
        raw["conversation_id"] = conversation
    return raw


def run(inbox: Inbox, *events: dict[str, Any]) -> list[Update]:
    return [u for e in events for u in inbox.handle(parse_event_object(e))]


TEAM = event(0, "account.updated", conversation=None, plan="free", agents=["ag-1", "ag-2"])


# -- details ---------------------------------------------------------------------------
def test_updated_replaces_given_fields_and_merges_attributes_key_by_key() -> None:
    inbox = Inbox(HELPDESK)
    run(inbox, TEAM, event(1, "conversation.created", channel="email", priority="low",
                           labels=["a", "b"], attributes={"vip": True, "tier": "gold"}),
        event(2, "conversation.updated", labels=["c"], attributes={"vip": None, "mrr": 5}))
    conversation = inbox.account("acc-1").conversations["c-1"]
    assert conversation.channel == "email" and conversation.priority == "low"
    assert conversation.labels == {"c"}
    assert dict(conversation.attributes) == {"tier": "gold", "mrr": 5}
    run(inbox, event(3, "conversation.updated", channel=None, priority="urgent"))
    conversation = inbox.account("acc-1").conversations["c-1"]
    assert (conversation.channel, conversation.priority) == (None, "urgent")
    assert conversation.labels == {"c"}, "a field not given keeps its value"


def test_an_update_that_would_hold_more_than_32_attributes_is_bad_and_changes_nothing(
        tmp_path: Path) -> None:
    thirty = {f"k{i}": i for i in range(30)}
    events = [TEAM, event(1, "conversation.created", attributes=thirty),
              event(2, "conversation.updated", attributes={"x": 1, "y": 2, "z": 3}),
              event(3, "conversation.updated", attributes={"k0": None, "x": 1, "y": 2})]
    inbox = Inbox(DEFAULT)
    run(inbox, *events[:2])
    with pytest.raises(BadEvent, match="33 attributes"):
        run(inbox, events[2])
    assert len(inbox.account("acc-1").conversations["c-1"].attributes) == 30
    run(inbox, events[3])  # a removal makes room: 29 + 2
    assert len(inbox.account("acc-1").conversations["c-1"].attributes) == 31
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(encode(events)) + b"\n")
    result = CliRunner().invoke(main, ["replay", str(path)])
    assert result.exit_code == 2  # bad lines: said and skipped
    assert "line 3:" in result.stderr and "33 attributes" in result.stderr


def test_an_attribute_of_another_type_than_declared_counts_as_absent() -> None:
    inbox = Inbox(HELPDESK)
    run(inbox, TEAM, event(1, "conversation.created",
                           attributes={"vip": "yes", "mrr": 7, "seats": 2.5, "tier": 3}))
    facts = facts_of(inbox.account("acc-1"), "c-1", "ag-1", HELPDESK.attributes)
    assert facts["conversation.attributes.vip"] is None  # text, not a boolean
    assert facts["conversation.attributes.mrr"] == 7  # an integer is a number too
    assert facts["conversation.attributes.seats"] is None  # not an integer
    assert facts["conversation.attributes.tier"] is None
    assert facts["conversation.channel"] is None and facts["conversation.priority"] == "none"


# -- snooze ----------------------------------------------------------------------------
def test_a_snooze_wakes_at_until_as_a_time_crossing_before_any_later_event() -> None:
    inbox = Inbox(DEFAULT)
    run(inbox, TEAM, event(1, "conversation.created"),
        event(2, "conversation.snoozed", until=T.format(10)))
    assert inbox.categories_of("acc-1", "c-1", "ag-1") == {"all"}
    later = run(inbox, event(3, "conversation.created", 15, conversation="c-2"))
    woken = [u for u in later if u.conversation_id == "c-1"]
    assert [(u.agent_id, u.cause_event_id, u.occurred_at.isoformat(), u.categories)
            for u in woken] == [
        ("ag-1", "time:2026-11-24T10:10:00Z", "2026-11-24T10:10:00+00:00",
         ["all", "new", "primary"]),
        ("ag-2", "time:2026-11-24T10:10:00Z", "2026-11-24T10:10:00+00:00",
         ["all", "new", "primary"])]
    assert later.index(woken[-1]) < len(later) - 1, "the wake before the later event"
    conversation = inbox.account("acc-1").conversations["c-1"]
    assert conversation.status == "open" and conversation.snoozed_until is None
    assert conversation.waiting_since is not None
    assert conversation.waiting_since.isoformat() == "2026-11-24T10:10:00+00:00"


def test_a_snooze_until_a_moment_already_past_leaves_it_open() -> None:
    inbox = Inbox(DEFAULT)
    updates = run(inbox, TEAM, event(1, "conversation.created", 5),
                  event(2, "conversation.snoozed", 5, until=T.format(4)))
    assert all(u.cause_event_id == "e-1" for u in updates)
    assert inbox.account("acc-1").conversations["c-1"].status == "open"
    assert inbox.account("acc-1").next_due() is None


def test_an_agent_s_message_does_not_wake_a_snooze_and_a_second_snooze_moves_until() -> None:
    inbox = Inbox(DEFAULT)
    run(inbox, TEAM, event(1, "conversation.created"),
        event(2, "conversation.snoozed", until=T.format(10)),
        event(3, "message.created", 1, author="agent", agent_id="ag-1"),
        event(4, "conversation.snoozed", 2, until=T.format(20)))
    state = inbox.account("acc-1")
    assert state.conversations["c-1"].status == "snoozed"
    due = state.next_due()
    assert due is not None and due.isoformat().startswith("2026-11-24T10:20")
    assert inbox.categories_of("acc-1", "c-1", "ag-1") == {"all", "mine", "primary"}
    assert run(inbox, event(5, "conversation.created", 12, "c-2"))[0].cause_event_id == "e-5"


# -- unread ----------------------------------------------------------------------------
def test_unread_counts_follow_reads_messages_and_mentions() -> None:
    inbox = Inbox(DEFAULT)
    run(inbox, TEAM, event(1, "conversation.created"),
        event(2, "conversation.created", conversation="c-2"),
        event(3, "message.created", author="visitor"),
        event(4, "message.created", conversation="c-2", author="visitor"))
    state = inbox.account("acc-1")
    assert state.unread_counts_of("ag-1") == {"all": 2, "new": 2, "primary": 2}
    [read] = run(inbox, event(5, "conversation.read", agent_id="ag-1"))
    assert (read.agent_id, read.unread, read.added, read.removed) == ("ag-1", False, [], [])
    assert read.unread_counts == {"all": 1, "new": 1, "mine": 0, "primary": 1, "resolved": 0}
    replied = run(inbox, event(6, "message.created", conversation="c-2", author="agent",
                               agent_id="ag-2", mentions=["ag-1"]))
    by_agent = {u.agent_id: u for u in replied}
    assert by_agent["ag-2"].unread is False and by_agent["ag-2"].categories == [
        "all", "mine", "primary"]
    assert by_agent["ag-1"].unread is True and by_agent["ag-1"].categories == ["all"]
    assert by_agent["ag-1"].unread_counts == {"all": 1, "new": 0, "mine": 0, "primary": 0,
                                              "resolved": 0}
    assert is_unread(state, "c-2", "ag-1") and not is_unread(state, "c-2", "ag-2")
    assert run(inbox, event(7, "conversation.read", conversation="c-2", agent_id="ag-1"))[
        0].unread is False
    assert state.unread_counts_of("ag-1")["all"] == 0


def test_rules_that_test_unread_tell_agents_apart_by_it() -> None:
    """unread_mine is per agent: 16 relations, each agent in its own."""
    inbox = Inbox(HELPDESK)
    run(inbox, TEAM, event(1, "conversation.created", channel="web"),
        event(2, "conversation.assigned", agent_id="ag-1"),
        event(3, "conversation.assigned", agent_id="ag-2"),
        event(4, "message.created", author="visitor"))
    assert len(inbox.account("acc-1").conversations["c-1"].categories) == 16
    assert "unread_mine" in inbox.categories_of("acc-1", "c-1", "ag-1")
    [read] = run(inbox, event(5, "conversation.read", agent_id="ag-2"))
    assert read.agent_id == "ag-2" and read.removed == ["unread_mine"]
    assert "unread_mine" in inbox.categories_of("acc-1", "c-1", "ag-1")


# -- rule files ------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "problem"), [
    ("  x:\n    when: {fact: conversation.labels, equals: vip}\n",
     ":4: conversation.labels is a set: test it with contains"),
    ("  x:\n    when: {fact: conversation.channel, contains: email}\n",
     ":4: 'contains' tests a set (conversation.labels)"),
    ("  x:\n    when: {fact: conversation.status, present: true}\n",
     ":4: 'present' tests an optional fact"),
    ("  x:\n    when: {fact: conversation.priority, at_least: huge}\n",
     ":4: conversation.priority is one of none, low, medium, high, urgent"),
    ("  x:\n    when: {fact: conversation.attributes.colour, equals: red}\n",
     ":4: conversation.attributes.colour: attribute 'colour' is not declared"),
    ("  x:\n    when: {fact: conversation.attributes.vip, at_least: 1}\n",
     ":4: conversation.attributes.vip is a boolean: 'at_least' does not apply"),
    ("  x:\n    when: {fact: conversation.attributes.mrr, equals: lots}\n",
     ":4: conversation.attributes.mrr is a number; 'lots' is not"),
    ("  x:\n    when: {fact: conversation.labels, contains_any: []}\n",
     ":4: 'contains_any' takes a non-empty list"),
    ("  x:\n    when: {fact: conversation.channel, equals: 'a.b'}\n",
     ":4: conversation.channel: 'a.b' is not an id"),
])
def test_rules_check_checks_every_test_against_its_fact_s_type(
        tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "rules.yaml").write_text(
        "attributes: {vip: boolean, mrr: number}\ncategories:\n" + text)
    with pytest.raises(RuleFileError) as caught:
        load_rules(tmp_path)
    assert any(problem in str(p) for p in caught.value.problems), caught.value.problems


def test_an_attribute_declared_twice_with_two_types_is_refused_at_both_places(
        tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("attributes: {vip: boolean}\ncategories:\n  x:\n"
                                     "    when: {fact: conversation.attributes.vip, "
                                     "equals: true}\n")
    (tmp_path / "b.yaml").write_text("attributes:\n  vip: string\n")
    with pytest.raises(RuleFileError) as caught:
        load_rules(tmp_path)
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'b.yaml'}:2: attribute 'vip' is declared string here and boolean at "
        f"{tmp_path / 'a.yaml'}:1"]


def test_absent_values_fail_every_test_but_the_negations(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        "attributes: {mrr: number}\ncategories:\n"
        "  cheap: {when: {fact: conversation.attributes.mrr, less_than: 10}}\n"
        "  not_rich: {when: {not: {fact: conversation.attributes.mrr, at_least: 10}}}\n"
        "  not_email: {when: {fact: conversation.channel, not_equals: email}}\n"
        "  elsewhere: {when: {fact: conversation.channel, not_in: [email, web]}}\n"
        "  unknown: {when: {fact: conversation.attributes.mrr, present: false}}\n")
    inbox = Inbox(load_rules(tmp_path))
    run(inbox, TEAM, event(1, "conversation.created"))
    assert inbox.categories_of("acc-1", "c-1", "ag-1") == {
        "not_rich", "not_email", "elsewhere", "unknown"}
    run(inbox, event(2, "conversation.updated", channel="web", attributes={"mrr": 3}))
    assert inbox.categories_of("acc-1", "c-1", "ag-1") == {"cheap", "not_rich", "not_email"}


def test_events_helper_builds_the_new_events() -> None:
    """The unit tests' event builder takes the new types like the old ones."""
    ev = Events()
    snoozed = ev("conversation.snoozed", "c-1", until="2026-11-24T11:00:00Z")
    assert snoozed.type == "conversation.snoozed"


def test_a_timestamp_without_an_offset_is_utc_so_an_account_may_mix_both() -> None:
    """Events of one account compared in time: with and without an offset alike."""
    inbox = Inbox(DEFAULT)
    naive = {**event(2, "conversation.snoozed", until="2026-11-24T10:10:00Z"),
             "occurred_at": "2026-11-24T10:01:00"}
    run(inbox, TEAM, event(1, "conversation.created"), naive)
    later = {**event(3, "conversation.created", conversation="c-2"),
             "occurred_at": "2026-11-24T10:20:00"}
    woken = [u for u in run(inbox, later) if u.conversation_id == "c-1"]
    assert {u.cause_event_id for u in woken} == {"time:2026-11-24T10:10:00Z"}
    assert parse_event_object(naive).occurred_at.utcoffset() is not None
