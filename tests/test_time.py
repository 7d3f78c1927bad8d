"""Categories that change as time passes (docs/time.md), without a broker.

The time facts (``conversation.waiting_seconds``, ``conversation.last_message_by``) from
the events' ``occurred_at``; the thresholds the compiler collects; crossings made at
exactly their instant, in time order, with ``time:<instant>`` causes; replay and its
``--until``; the worker's way (crossings at any moment of its clock, accounts evicted
and loaded again from a store) giving replay's updates; the stores' due index.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from contracts import parse_event_object
from tests.support.streams import Events, encode, event_stream
from worker.accounts import AccountCache
from worker.cli import main
from worker.domain import Inbox
from worker.domain.categoriser import Categoriser
from worker.domain.reading import facts_of
from worker.domain.updates import Update, update_id_for
from worker.domain.waiting import waited_and_due
from worker.errors import RuleFileError
from worker.rulebook.engine import CompiledRules, default_rules_dir, load_rules
from worker.store import StateStore
from worker.store.memory import MemoryStore
from worker.store.sqlite import SqliteStore
from worker.tools.rule_cases import run_cases

SLA = default_rules_dir() / "examples" / "sla"
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
OVERDUE = ["all", "new", "overdue", "primary"]
NEW = ["all", "new", "primary"]


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def moment(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def sla() -> CompiledRules:
    return load_rules(SLA)


@pytest.fixture
def inbox(sla: CompiledRules) -> Inbox:
    return Inbox(sla)


@pytest.fixture
def ev() -> Events:
    return Events()


def rules_with(tmp_path: Path, text: str, name: str = "time.yaml") -> CompiledRules:
    """The default rules plus ``text`` as one more rule file."""
    directory = tmp_path / f"rules-{abs(hash(text))}"
    directory.mkdir()
    shutil.copy(default_rules_dir() / "inbox.yaml", directory / "inbox.yaml")
    (directory / name).write_text(text)
    return load_rules(directory)


def shown(inbox: Inbox, agent: str = "ag-1", conversation: str = "c-1",
          account: str = "acc-1") -> list[str]:
    return sorted(inbox.categories_of(account, conversation, agent))


def start(inbox: Inbox, ev: Events, agents: Iterable[str] = ("ag-1", "ag-2")) -> None:
    inbox.handle(ev.account("free", list(agents), occurred_at=at(0)))
    inbox.handle(ev("conversation.created", "c-1", occurred_at=at(0), group_id=None))


# -- the facts and the thresholds ----------------------------------------------------


def test_the_sla_example_collects_one_threshold_and_the_default_rules_none(
        sla: CompiledRules) -> None:
    assert sla.thresholds == {"conversation.waiting_seconds": (300,)}
    assert load_rules().thresholds == {}, "the default rules test no time fact"
    assert sla.categories[-1] == "overdue"


def test_the_example_keeps_the_default_rules_byte_for_byte() -> None:
    """The example is the default rule set plus sla.yaml: its copy must not drift. The
    first lines differ only by the path to the schema, relative to each file
    (tests/test_rule_schema.py checks where each one leads)."""
    def after_the_schema_line(path: Path) -> bytes:
        first, rest = path.read_bytes().split(b"\n", 1)
        assert first.startswith(b"# yaml-language-server: $schema="), first
        return rest

    assert (after_the_schema_line(SLA / "inbox.yaml")
            == after_the_schema_line(default_rules_dir() / "inbox.yaml"))


@pytest.mark.parametrize(("test", "thresholds"), [
    ("{fact: conversation.waiting_seconds, at_least: 300}", (300,)),
    ("{fact: conversation.waiting_seconds, greater_than: 299}", (300,)),
    ("{not: {fact: conversation.waiting_seconds, less_than: 60}}", (60,)),
    ("{fact: conversation.waiting_seconds, at_most: 59}", (60,)),
    ("{fact: conversation.waiting_seconds, equals: 60}", (60, 61)),
    ("{fact: conversation.waiting_seconds, in: [10, 20]}", (10, 11, 20, 21)),
    ("{fact: conversation.waiting_seconds, not_in: [0]}", (1,)),
    ("{fact: conversation.waiting_seconds, less_than: 0}", ()),
    ("{fact: conversation.last_message_by, equals: visitor}", ()),
])
def test_thresholds_are_where_a_test_may_change_truth(tmp_path: Path, test: str,
                                                      thresholds: tuple[int, ...]) -> None:
    rules = rules_with(tmp_path, f"categories:\n  timed:\n    when: {test}\n")
    expected = {"conversation.waiting_seconds": thresholds} if thresholds else {}
    assert rules.thresholds == expected


def test_thresholds_come_through_predicates_and_categories_but_not_unused_ones(
        tmp_path: Path) -> None:
    rules = rules_with(tmp_path, """
predicates:
  slow: {when: {fact: conversation.waiting_seconds, at_least: 120}}
  unused: {when: {fact: conversation.waiting_seconds, at_least: 999}}
categories:
  late: {when: {predicate: slow}}
  later: {when: {all: [{category: late}, {fact: conversation.waiting_seconds, at_least: 600}]}}
""")
    assert rules.thresholds == {"conversation.waiting_seconds": (120, 600)}


@pytest.mark.parametrize(("test", "reason"), [
    ("{fact: conversation.waiting_seconds, at_least: soon}", "is a int"),
    ("{fact: conversation.waiting_seconds, at_least: 1.5}", "is a int"),
    ("{fact: conversation.last_message_by, equals: bot}", "one of visitor, agent, none"),
    ("{fact: conversation.last_message_by, greater_than: 1}", "compares numbers"),
    ("{fact: conversation.waiting_seconds, at_least: 300000000000}",
     "300000000000 is beyond the limit of 3155760000 seconds"),
    ("{fact: conversation.waiting_seconds, in: [60, 3155760001]}", "beyond the limit"),
])
def test_time_facts_are_checked_like_every_fact(tmp_path: Path, test: str, reason: str) -> None:
    with pytest.raises(RuleFileError, match=reason):
        rules_with(tmp_path, f"categories:\n  timed:\n    when: {test}\n")


def test_rules_check_refuses_a_wait_beyond_100_years_at_its_line(tmp_path: Path) -> None:
    """Unrefused, such a threshold passed the check and crashed replay, explain, shadow
    and rules test (a due time past the calendar's end)."""
    shutil.copytree(SLA, tmp_path / "sla")
    path = tmp_path / "sla" / "sla.yaml"
    path.write_text(path.read_text().replace("at_least: 300}", "at_least: 300000000000}"))
    result = CliRunner().invoke(main, ["rules", "check", str(tmp_path / "sla")])
    assert result.exit_code == 2
    assert result.stderr == (f"{path}:27: conversation.waiting_seconds: 300000000000 is "
                             "beyond the limit of 3155760000 seconds (100 years)\n")
    path.write_text(path.read_text().replace("300000000000", "3155760000"))
    assert load_rules(tmp_path / "sla").thresholds == {
        "conversation.waiting_seconds": (3155760000,)}


def test_the_facts_follow_the_events(inbox: Inbox, ev: Events) -> None:
    """waiting_seconds and last_message_by at the account's clock (explain's facts)."""
    def facts() -> tuple[object, object]:
        named = facts_of(inbox.account("acc-1"), "c-1", "ag-1")
        return named["conversation.waiting_seconds"], named["conversation.last_message_by"]

    start(inbox, ev)
    assert facts() == (0, "none")
    inbox.handle(ev("message.created", "c-1", occurred_at=at(42), author="visitor"))
    assert facts() == (42, "visitor")
    inbox.handle(ev("message.created", "c-1", occurred_at=at(50), author="agent",
                    agent_id="ag-1"))
    assert facts() == (0, "agent")
    inbox.handle(ev("message.created", "c-1", occurred_at=at(70), author="visitor"))
    inbox.handle(ev("message.created", "c-1", occurred_at=at(95), author="visitor"))
    assert facts() == (25, "visitor"), "waiting since the first visitor message after the agent's"


# -- crossings -----------------------------------------------------------------------


def test_an_unanswered_chat_becomes_overdue_at_exactly_300_seconds(
        inbox: Inbox, ev: Events, sla: CompiledRules) -> None:
    start(inbox, ev)
    assert inbox.cross_until(moment(300) - timedelta(microseconds=1)) == []
    assert shown(inbox) == NEW
    updates = inbox.cross_until(moment(300))
    assert [(u.agent_id, u.categories, u.added) for u in updates] == [
        ("ag-1", OVERDUE, ["overdue"]), ("ag-2", OVERDUE, ["overdue"])]
    for update in updates:
        body = json.loads(update.body)
        assert body["cause_event_id"] == "time:2026-11-24T10:05:00Z"
        assert body["occurred_at"] == "2026-11-24T10:05:00Z"
        assert body["counts"]["overdue"] == 1
        assert update.update_id == update_id_for(sla.version, "acc-1",
                                                 "time:2026-11-24T10:05:00Z",
                                                 update.agent_id, "c-1")
    assert inbox.cross_until(moment(100_000)) == [], "nothing more is ever due"
    assert inbox.account("acc-1").next_due() is None


def test_an_agent_message_before_300_seconds_prevents_it(inbox: Inbox, ev: Events) -> None:
    start(inbox, ev)
    inbox.handle(ev("message.created", "c-1", occurred_at=at(299), author="agent",
                    agent_id="ag-1"))
    assert inbox.account("acc-1").next_due() is None, "not waiting: nothing is due"
    assert inbox.cross_until(moment(3600)) == []
    assert shown(inbox) == ["all", "mine", "primary"]


def test_a_visitor_message_after_an_agent_s_starts_a_new_wait(inbox: Inbox, ev: Events) -> None:
    start(inbox, ev)
    inbox.handle(ev("message.created", "c-1", occurred_at=at(100), author="agent",
                    agent_id="ag-1"))
    inbox.handle(ev("message.created", "c-1", occurred_at=at(200), author="visitor"))
    inbox.handle(ev("message.created", "c-1", occurred_at=at(450), author="visitor"))
    assert inbox.account("acc-1").next_due() == moment(500)
    assert shown(inbox, "ag-2") == ["all"]
    [one, _] = inbox.cross_until(moment(500))
    assert one.cause_event_id == "time:2026-11-24T10:08:20Z"
    assert shown(inbox, "ag-2") == ["all", "overdue"]


def test_reopening_starts_a_new_wait_and_resolving_ends_it(inbox: Inbox, ev: Events) -> None:
    start(inbox, ev)
    inbox.cross_until(moment(300))
    assert shown(inbox) == OVERDUE
    resolved = inbox.handle(ev("conversation.resolved", "c-1", occurred_at=at(400)))
    assert {u.agent_id: u.categories for u in resolved} == {"ag-1": ["resolved"],
                                                            "ag-2": ["resolved"]}
    assert inbox.account("acc-1").next_due() is None
    inbox.handle(ev("conversation.reopened", "c-1", occurred_at=at(1000)))
    assert shown(inbox) == NEW
    assert inbox.account("acc-1").next_due() == moment(1300)
    assert [u.cause_event_id for u in inbox.cross_until(moment(1300))] == [
        "time:2026-11-24T10:21:40Z"] * 2


def test_deleting_ends_it(inbox: Inbox, ev: Events) -> None:
    start(inbox, ev)
    inbox.handle(ev("conversation.deleted", "c-1", occurred_at=at(10)))
    assert inbox.account("acc-1").next_due() is None
    assert inbox.cross_until(moment(1000)) == []
    assert shown(inbox) == []


def test_crossings_before_an_event_come_first_in_time_order(inbox: Inbox, ev: Events) -> None:
    """Replay: every crossing due by an event's occurred_at is made before it, in time
    order across conversations and accounts."""
    other = Events("acc-2")
    inbox.handle(ev.account("free", ["ag-1"], occurred_at=at(0)))
    inbox.handle(other.account("free", ["ag-9"], occurred_at=at(0)))
    inbox.handle(ev("conversation.created", "c-2", occurred_at=at(20)))
    inbox.handle(other("conversation.created", "c-1", occurred_at=at(10)))
    inbox.handle(ev("conversation.created", "c-1", occurred_at=at(20)))
    updates = inbox.handle(ev("conversation.assigned", "c-1", occurred_at=at(400),
                              agent_id="ag-1"))
    assert [(u.account_id, u.conversation_id, u.cause_event_id) for u in updates] == [
        ("acc-2", "c-1", "time:2026-11-24T10:05:10Z"),
        ("acc-1", "c-1", "time:2026-11-24T10:05:20Z"),
        ("acc-1", "c-2", "time:2026-11-24T10:05:20Z"),
        ("acc-1", "c-1", updates[-1].cause_event_id)]
    assert updates[-1].cause_event_id.startswith("e-")
    assert [u.seq for u in updates if u.account_id == "acc-1"] == [3, 4, 5]
    assert updates[1].counts["overdue"] == 2, "counts after the whole instant"


def test_the_clock_never_goes_back_so_no_crossing_is_made_twice(inbox: Inbox,
                                                                ev: Events) -> None:
    """An event that occurred before a crossing already made (it came late) is evaluated
    at the account's clock: the crossing is not undone and made again under the same
    update id with other content."""
    start(inbox, ev)
    crossed = inbox.cross_until(moment(305))
    late = inbox.handle(ev("conversation.assigned", "c-1", occurred_at=at(200),
                           agent_id="ag-2"))
    assert {u.agent_id: u.categories for u in late} == {
        "ag-1": ["all", "overdue"], "ag-2": ["all", "mine", "overdue", "primary"]}
    again = inbox.cross_until(moment(10_000))
    assert again == []
    ids = [u.update_id for u in (*crossed, *late)]
    assert len(set(ids)) == len(ids)


def test_a_late_snooze_that_has_ended_by_the_account_s_clock_makes_no_crossing(
        ev: Events) -> None:
    """A snooze that comes late, its ``until`` between its ``occurred_at`` and the
    account's clock, has ended when it is applied: the conversation is open (waiting
    from ``until``), and no crossing is made in the past - one at ``until`` was made
    already (an earlier snooze's wake) and would be made again under its update ids
    with other content, which downstream drops as duplicates."""
    inbox = Inbox(load_rules())
    start(inbox, ev)
    inbox.handle(ev("conversation.snoozed", "c-1", occurred_at=at(1), until=at(10)))
    woken = inbox.cross_until(moment(20))
    assert [u.cause_event_id for u in woken] == [f"time:{at(10)}"] * 2
    created = inbox.handle(ev("conversation.created", "c-2", occurred_at=at(20)))
    late = inbox.handle(ev("conversation.snoozed", "c-1", occurred_at=at(5), until=at(10)))
    assert late == [] and shown(inbox) == NEW
    later = [*inbox.handle(ev("conversation.created", "c-3", occurred_at=at(30))),
             *inbox.cross_until(moment(10_000))]
    assert {u.conversation_id for u in later} == {"c-3"}
    ids = [u.update_id for u in (*woken, *created, *later)]
    assert len(set(ids)) == len(ids)


def test_a_threshold_change_in_the_rule_files_moves_the_crossings(
        tmp_path: Path, ev: Events) -> None:
    def sla_at(seconds: int) -> CompiledRules:
        directory = tmp_path / f"sla-{seconds}"
        shutil.copytree(SLA, directory)
        path = directory / "sla.yaml"
        path.write_text(path.read_text().replace("at_least: 300", f"at_least: {seconds}"))
        return load_rules(directory)

    inbox = Inbox(sla_at(300))
    start(inbox, ev)
    inbox.handle(ev("conversation.created", "c-2", occurred_at=at(100)))
    assert inbox.account("acc-1").next_due() == moment(300)
    inbox.cross_until(moment(350))
    assert shown(inbox) == OVERDUE and shown(inbox, conversation="c-2") == NEW

    rules = sla_at(600)
    adopted = inbox.adopt_rules(rules)
    assert {(u.conversation_id, u.agent_id): u.removed for u in adopted} == {
        ("c-1", "ag-1"): ["overdue"], ("c-1", "ag-2"): ["overdue"]}
    assert all(u.cause_event_id == f"rules:{rules.version}:1" for u in adopted)
    assert inbox.account("acc-1").next_due() == moment(600)
    crossed = inbox.cross_until(moment(700))
    assert [(u.conversation_id, u.cause_event_id) for u in crossed] == [
        ("c-1", "time:2026-11-24T10:10:00Z"), ("c-1", "time:2026-11-24T10:10:00Z"),
        ("c-2", "time:2026-11-24T10:11:40Z"), ("c-2", "time:2026-11-24T10:11:40Z")]


def test_several_thresholds_cross_one_after_the_other(tmp_path: Path, ev: Events) -> None:
    rules = rules_with(tmp_path, """
categories:
  waiting_1m: {when: {all: [{fact: conversation.waiting_seconds, at_least: 60},
                            {fact: conversation.waiting_seconds, less_than: 120}]}}
  answered_by_agent: {when: {fact: conversation.last_message_by, equals: agent}}
""")
    inbox = Inbox(rules)
    inbox.handle(ev.account("free", ["ag-1"], occurred_at=at(0)))
    inbox.handle(ev("conversation.created", "c-1", occurred_at=at(0)))
    changes = [(u.cause_event_id, u.added, u.removed) for u in inbox.cross_until(moment(500))]
    assert changes == [("time:2026-11-24T10:01:00Z", ["waiting_1m"], []),
                       ("time:2026-11-24T10:02:00Z", [], ["waiting_1m"])]
    [answered] = inbox.handle(ev("message.created", "c-1", occurred_at=at(600),
                                 author="agent", agent_id="ag-1"))
    assert answered.added == ["answered_by_agent"]


def test_the_cache_sees_buckets_not_seconds(sla: CompiledRules, ev: Events) -> None:
    """Conversations created at every second of an hour, looked at every few seconds:
    the fact vectors the engine is given are a handful, not one per second."""
    inbox = Inbox(sla)
    inbox.handle(ev.account("pro", ["ag-1", "ag-2"], {"g-1": ["ag-1"]}, occurred_at=at(0)))
    for second in range(0, 3600, 3):
        inbox.handle(ev("conversation.created", f"c-{second}", occurred_at=at(second),
                        group_id="g-1" if second % 2 else None))
    assert len(inbox.categoriser._evaluated) <= 8
    assert sum(inbox.categoriser._evaluated.get(k) is not None
               for k in inbox.categoriser._evaluated) == len(inbox.categoriser._evaluated)


def test_who_wrote_last_splits_the_cache_only_when_a_rule_tests_it(
        tmp_path: Path) -> None:
    def keys(rules: CompiledRules) -> int:
        ev = Events()
        inbox = Inbox(rules)
        inbox.handle(ev.account("free", ["ag-1"], occurred_at=at(0)))
        for n, author in enumerate(("visitor", "agent", "visitor")):
            inbox.handle(ev("conversation.created", f"c-{n}", occurred_at=at(0)))
            data: dict[str, Any] = {"agent_id": "ag-9"} if author == "agent" else {}
            inbox.handle(ev("message.created", f"c-{n}", occurred_at=at(1), author=author,
                            **data))
            inbox.handle(ev("conversation.unassigned", f"c-{n}", occurred_at=at(1),
                            agent_id="ag-9"))
        return len(inbox.categoriser._evaluated)

    default = load_rules()
    assert "conversation.last_message_by" not in default.tested_facts
    asking = rules_with(tmp_path, "categories:\n  answered:\n    when: "
                                  "{fact: conversation.last_message_by, equals: agent}\n")
    assert "conversation.last_message_by" in asking.tested_facts
    assert keys(asking) > keys(default)


def test_rules_without_time_facts_keep_no_due_times(ev: Events) -> None:
    inbox = Inbox(load_rules())
    start(inbox, ev)
    state = inbox.account("acc-1")
    assert state.conversations["c-1"].due_at is None and state.next_due() is None
    assert state.conversations["c-1"].waiting_since == moment(0)
    assert inbox.cross_until(moment(10**6)) == []


# -- replay ----------------------------------------------------------------------------


def _replay(tmp_path: Path, events: list[dict[str, Any]], *args: str) -> list[dict[str, Any]]:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(encode(events)) + b"\n")
    result = CliRunner().invoke(main, ["replay", str(path), "--rules", str(SLA), *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _envelope(number: int, kind: str, seconds: float, conversation: str | None = None,
              **data: Any) -> dict[str, Any]:
    event = {"event_id": f"e-{number}", "type": kind, "account_id": "acc-1",
             "occurred_at": at(seconds), "data": data}
    if conversation is not None:
        event["conversation_id"] = conversation
    return event


def test_replay_crosses_by_the_next_event_and_until_at_the_end(tmp_path: Path) -> None:
    events = [_envelope(1, "account.updated", 0, plan="free", agents=["ag-1"], groups={}),
              _envelope(2, "conversation.created", 0, "c-1", group_id=None),
              _envelope(3, "conversation.created", 200, "c-2", group_id=None),
              _envelope(4, "conversation.created", 400, "c-3", group_id=None)]
    plain = _replay(tmp_path, events)
    assert [u["cause_event_id"] for u in plain] == [
        "e-2", "e-3", "time:2026-11-24T10:05:00Z", "e-4"]
    until = _replay(tmp_path, events, "--until", "2026-11-24T10:11:00")
    assert until[:4] == plain
    # c-2's crossing (10:08:20) is due by then, c-3's (10:11:40) is not.
    assert [u["cause_event_id"] for u in until[4:]] == ["time:2026-11-24T10:08:20Z"]
    assert until[-1]["counts"]["overdue"] == 2


@pytest.mark.parametrize("occurred_at", ["9999-12-31T23:59:59Z", "9999-12-31T23:58:00Z",
                                         "9999-12-31T23:59:59-01:00",
                                         "9999-12-31T23:50:00-01:00"])
def test_a_wait_that_would_end_past_the_calendar_s_end_is_never_due(
        tmp_path: Path, occurred_at: str) -> None:
    """A due time past what a datetime holds, in the event's offset or in UTC, is no
    due time: replay, explain and shadow go on (the conversation never crosses)."""
    events = [_envelope(1, "account.updated", 0, plan="free", agents=["ag-1"], groups={}),
              _envelope(2, "conversation.created", 0, "c-1", group_id=None) | {
                  "occurred_at": occurred_at}]
    updates = _replay(tmp_path, events, "--until", "9999-12-31T23:59:59Z")
    assert [u["categories"] for u in updates] == [["all", "new"]]
    path = tmp_path / "late.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    explained = CliRunner().invoke(main, ["explain", str(path), "--rules", str(SLA),
                                          "--account", "acc-1", "--agent", "ag-1",
                                          "--conversation", "c-1", "--json"])
    assert explained.exit_code == 0, explained.output
    shadowed = CliRunner().invoke(main, ["shadow", str(path), "--rules", str(SLA),
                                         "--candidate", str(default_rules_dir())])
    assert shadowed.exit_code == 0, shadowed.output


def test_waited_and_due_is_never_due_past_the_last_datetime() -> None:
    last = datetime.max.replace(tzinfo=UTC)
    assert waited_and_due(last, last, (300,)) == (0, None)
    assert waited_and_due(last - timedelta(seconds=400), last, (300, 500)) == (300, None)
    behind = timezone(timedelta(hours=-1))
    late = datetime(9999, 12, 31, 23, 59, tzinfo=behind)
    assert waited_and_due(late, late, (300,)) == (0, None)
    # 23:55 at -01:00 is 00:55 of year 10000 in UTC, where crossings are stamped.
    earlier = datetime(9999, 12, 31, 23, 50, tzinfo=behind)
    assert waited_and_due(earlier, earlier, (300,)) == (0, None)
    assert waited_and_due(T0, T0, (300,)) == (0, moment(300))


def test_replay_until_must_be_a_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("")
    result = CliRunner().invoke(main, ["replay", str(path), "--until", "tomorrow"])
    assert result.exit_code == 2 and "--until" in result.output


# -- rule test cases with times ------------------------------------------------------


def test_the_sla_cases_pass_and_so_do_the_default_ones_under_the_sla_rules(
        sla: CompiledRules, tmp_path: Path) -> None:
    results = run_cases(sla, SLA)
    assert results and all(r.passed for r in results), [r.failures for r in results]
    # The default categories are unchanged by adding overdue (the default cases keep
    # every event at one instant: nothing waits long enough).
    shutil.copytree(default_rules_dir() / "cases", tmp_path / "cases")
    results = run_cases(sla, tmp_path)
    assert len(results) > 40 and all(r.passed for r in results)


def test_case_times_are_checked(sla: CompiledRules, tmp_path: Path) -> None:
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "times.yaml").write_text("""
cases:
  - name: bad at
    events: [{type: conversation.created, conversation_id: c-1, at: later}]
    expect: [{agent: ag-1, conversation: c-1, categories: []}]
  - name: back in time
    events: [{type: conversation.created, conversation_id: c-1, at: 500}]
    expect: [{agent: ag-1, conversation: c-1, look_at: 400, categories: []}]
""")
    bad_at, back = run_cases(sla, tmp_path)
    assert "'at' must be seconds" in bad_at.failures[0]
    assert "goes back in time" in back.failures[0]


@pytest.mark.parametrize("value", ["99999999999999999999", "-99999999999999999999", ".nan",
                                   ".inf", "-.inf", "9000000000000", "1.0e+300"])
def test_case_times_past_the_calendar_are_a_failure_at_their_line(
        sla: CompiledRules, tmp_path: Path, value: str) -> None:
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "times.yaml").write_text(f"""
cases:
  - name: at
    events: [{{type: conversation.created, conversation_id: c-1, at: {value}}}]
    expect: [{{agent: ag-1, conversation: c-1, categories: []}}]
  - name: look_at
    events: [{{type: conversation.created, conversation_id: c-1}}]
    expect:
      - {{agent: ag-1, conversation: c-1, look_at: {value}, categories: []}}
""")
    at_case, look_case = run_cases(sla, tmp_path)
    assert at_case.failures == [
        "line 4: event 1: 'at' must be seconds after the case's start (a finite number, "
        "landing within years 1-9999) or an ISO timestamp"]
    assert look_case.failures == [
        "line 9: 'look_at' must be seconds after the case's start (a finite number, "
        "landing within years 1-9999) or an ISO timestamp"]
    for name in ("inbox.yaml", "sla.yaml"):
        shutil.copy(SLA / name, tmp_path / name)
    result = CliRunner().invoke(main, ["rules", "test", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "Traceback" not in result.output


# -- the worker's way: crossings at any moment, state through a store -------------------


def _by_account(updates: Iterable[Update]) -> dict[str, list[bytes]]:
    grouped: dict[str, list[bytes]] = defaultdict(list)
    for update in updates:
        grouped[update.account_id].append(update.body)
    return dict(grouped)


TIMED = """
categories:
  overdue:
    when: {all: [{fact: conversation.status, equals: open},
                 {fact: conversation.waiting_seconds, at_least: 45}]}
  very_late:
    when: {all: [{fact: conversation.waiting_seconds, at_least: 120},
                 {fact: conversation.last_message_by, not_equals: agent}]}
"""


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_crossings_at_any_moment_of_the_workers_clock_give_the_replay_s_updates(
        tmp_path: Path, store_kind: str, seed: int) -> None:
    """As the worker does it: state in a small cache over a store (evicted, committed,
    loaded again), crossings made at random moments of its own clock for the accounts
    the store says are due, each event after them. As long as events come on time (none
    occurred before a moment the worker already crossed at), every account gets exactly
    replay's updates, in the same order."""
    rules = rules_with(tmp_path, TIMED)
    lines = encode(event_stream(seed, 600, 3, step=9.0))
    events = [parse_event_object(json.loads(line)) for line in lines]
    expected = Inbox(rules)
    replayed = [u for e in events for u in expected.handle(e)]
    replayed += expected.cross_until(events[-1].occurred_at + timedelta(hours=1))

    store: StateStore = (MemoryStore() if store_kind == "memory"
                         else SqliteStore(tmp_path / "state.sqlite3"))
    cache = AccountCache(store, 1, 1000, 1000)  # one account in memory: reloads galore
    categoriser = Categoriser(rules)
    rng = random.Random(seed)
    got: list[Update] = []
    clock = events[0].occurred_at

    def commit(account_ids: Iterable[str]) -> None:
        store.commit([cache.get(a, rules.version).take_write() for a in sorted(account_ids)])
        cache.trim()

    def cross(now: datetime) -> None:
        due = store.due_accounts(now, 1000)
        for account_id in due:
            got.extend(categoriser.cross(cache.get(account_id, rules.version), now))
        commit(due)

    for event in events:
        if event.occurred_at > clock and rng.random() < 0.5:
            span = (event.occurred_at - clock).total_seconds()
            clock = clock + timedelta(seconds=rng.uniform(0, span))
            cross(clock)
        clock = max(clock, event.occurred_at)
        got.extend(categoriser.handle(cache.get(event.account_id, rules.version), event))
        commit([event.account_id])
    cross(events[-1].occurred_at + timedelta(hours=1))
    assert store.due_accounts(events[-1].occurred_at + timedelta(hours=1), 10) == []
    assert any(u.cause_event_id.startswith("time:") for u in replayed)
    assert _by_account(got) == _by_account(replayed)


def _stored_conversation_row(path: Path) -> tuple[Any, ...]:
    with sqlite3.connect(path) as db:
        row: tuple[Any, ...] = db.execute(
            "SELECT waiting_since, last_message_by, due_at FROM conversations").fetchone()
    return row


def test_the_sqlite_store_keeps_the_time_columns_and_finds_due_accounts_by_index(
        tmp_path: Path, sla: CompiledRules) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path)
    categoriser = Categoriser(sla)
    ev = Events()
    states = {}
    for number, account in enumerate(("acc-1", "acc-2", "acc-3")):
        state = states[account] = AccountCache(store, 10, 100, 100).get(account, sla.version)
        for event in (ev.account("free", ["ag-1"], account_id=account, occurred_at=at(0)),
                      ev("conversation.created", "c-1", account_id=account,
                         occurred_at=at(10 * number))):
            categoriser.handle(state, event)
    categoriser.handle(states["acc-3"], ev("message.created", "c-1", account_id="acc-3",
                                           occurred_at=at(30), author="agent",
                                           agent_id="ag-1"))
    store.commit([s.take_write() for s in states.values()])
    assert _stored_conversation_row(path)[:2] == ("2026-11-24T10:00:00+00:00", "none")
    assert store.next_due() == moment(300)
    assert store.due_accounts(moment(299), 10) == []
    assert store.due_accounts(moment(310), 10) == ["acc-1", "acc-2"]
    assert store.due_accounts(moment(310), 1) == ["acc-1"], "the earliest due first"
    loaded = store.load_account("acc-2", event_window=10, tombstone_window=10)
    assert loaded is not None
    assert loaded.conversations == states["acc-2"].conversations
    assert loaded.next_due() == moment(310)
    loaded3 = store.load_account("acc-3", event_window=10, tombstone_window=10)
    assert loaded3 is not None and loaded3.conversations["c-1"].last_message_by == "agent"
    with sqlite3.connect(path) as db:
        plan = " ".join(str(row) for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT account_id FROM conversations INDEXED BY"
            " conversations_by_due WHERE due_at <= 1 GROUP BY account_id"
            " ORDER BY MIN(due_at), account_id LIMIT 5"))
        plan += " ".join(str(row) for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT MIN(due_at) FROM conversations WHERE due_at IS NOT NULL"))
    assert plan.count("USING COVERING INDEX conversations_by_due") == 2, plan


def test_a_version_2_file_gains_the_time_columns(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as db:
        from worker.store.sqlite.schema import _V2_TABLES

        for statement in _V2_TABLES:
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations VALUES (2, 'then')")
        db.execute("INSERT INTO meta VALUES ('generation', '0'), ('schema_version', '2')")
        db.execute("INSERT INTO conversations VALUES ('acc-1', 'c-1', 'open', NULL, '[]',"
                   " 3, '[[\"all\"], [], [], []]')")
    store = SqliteStore(path)
    loaded = store.load_account("acc-1", event_window=10, tombstone_window=10)
    assert loaded is not None
    conversation = loaded.conversations["c-1"]
    assert (conversation.waiting_since, conversation.last_message_by,
            conversation.due_at) == (None, "none", None)
    assert store.next_due() is None

