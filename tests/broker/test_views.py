"""Views through kills: shared and personal views events interleaved with a rich stream
into three workers on PostgreSQL (two of them SIGKILLed and brought back), an invalid
views event among them, and ``views.check`` asked live.

Judged from outside: downstream ends where ``inbox-rules replay`` of the same events
ends (every agent's categories with its ``view:`` categories, counts and unread
counts), no ``update_id`` with two bodies, ``seq`` gap-free, every snapshot equal to the
updates applied by ``seq``; the invalid views event is dead-lettered with the path of
its problem and changes nothing.
"""

from __future__ import annotations

import json
from contextlib import closing, suppress
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contracts import BadEvent, parse_event_object
from contracts.requests import ViewsCheckReply, ViewsCheckRequest
from tests.support.harness import (
    Bus,
    Producer,
    amqp_url,
    as_messages,
    collecting,
    wait_for,
)
from tests.support.oracle import replay
from tests.support.several import (
    Downstream,
    assert_ends_as_replayed,
    fleet,
    partitioned_topology,
    settled,
    snapshots,
    through_kills,
)
from tests.support.streams import envelope, event_stream, iso, type_counts
from worker.domain.inbox import Inbox
from worker.domain.viewing import preview as preview_of
from worker.rulebook import load_rules
from worker.rulebook.views import canonical_views
from worker.settings import Settings
from worker.tools.request_client import ask

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

RATE = 200.0  # events per second
SECONDS = 12
PARTITIONS = 8
HOT = {"view_id": "hot", "when": {"all": [
    {"category": "all"}, {"fact": "conversation.priority", "at_least": "high"}]}}
INVALID = {"view_id": "broken", "when": {"all": [
    {"category": "new"}, {"fact": "conversation.colour", "equals": "red"}]}}


def test_views_through_kills_end_as_replay_says(vhost: str, database: str,
                                                tmp_path: Path) -> None:
    settings: dict[str, object] = {
        "partitions": PARTITIONS, "member_lease": 2.0, "heartbeat": 3,
        "max_batch_delay": 0.01, "reconnect_max_delay": 1.0}
    stream = event_stream(43, int(RATE * SECONDS), 6, agents=3, rich=True, snapshots=0.0,
                          views=0.01)
    # One views event the rules refuse, in the middle of the stream.
    middle = stream[len(stream) // 2]
    invalid = "views-invalid"
    stream.insert(len(stream) // 2, envelope(
        "account.views_updated", middle["account_id"], {"views": [HOT, INVALID]},
        event_id=invalid, occurred_at=middle["occurred_at"]))
    kinds = type_counts(stream)
    assert kinds["account.views_updated"] >= 10 and kinds["agent.views_updated"] >= 10
    bus = Bus(vhost, confirm=True)
    with closing(bus), collecting(vhost, bus.updates_queue) as updates, \
            fleet(vhost, database, tmp_path, settings) as workers:
        for name in ("w1", "w2", "w3"):
            workers.add(name)
        workers.wait_dealt(PARTITIONS)
        through_kills(workers, Producer(vhost, as_messages(stream), RATE),
                      ((3, "w1", None), (6, "w2", "w1"), (9, None, "w2")))
        wait_for(lambda: settled(bus, partitioned_topology(PARTITIONS), quiet=2.0), 180,
                 "the stream through, every queue drained", interval=1.0)
        downstream = Downstream.read(updates.received, PARTITIONS)
        taken = snapshots(vhost, {(u["account_id"], u["agent_id"])
                                  for u in downstream.updates.values()})
        dead = [(json.loads(body)["event_id"], properties.headers["x-error"])
                for _, properties, body in bus.drain(bus.topology.dead_letter_queue)]
        account = next(e["account_id"] for e in stream if e["event_id"] == invalid)
        check = ask(Settings(AMQP_URL=amqp_url(vhost)), "views.check",
                    ViewsCheckRequest(views=[HOT, INVALID]), ViewsCheckReply,
                    timeout=30)
        preview = ask(Settings(AMQP_URL=amqp_url(vhost)), "views.check",
                      ViewsCheckRequest(views=[HOT], account_id=account),
                      ViewsCheckReply, timeout=30)
    # Replay refuses the invalid event alike (and says so): compared without it. The
    # events are in the past: every crossing of a view on waiting time is due, by the
    # workers' clocks and by replay's --until now alike.
    expected = replay((e for e in stream if e["event_id"] != invalid),
                      until=iso(datetime.now(UTC)))
    shown = assert_ends_as_replayed(downstream, taken, expected)
    viewed = {c for cats in shown.values() for c in cats if c.startswith("view:")}
    assert {"view:unread-mine", "view:vip-waiting"} <= viewed, viewed
    assert not any("view:broken" in cats for cats in shown.values())
    # The invalid views event: dead-lettered with the path of its problem.
    reasons = [reason for event_id, reason in dead if event_id == invalid]
    assert len(reasons) == 1 and "when.all[1].fact: unknown fact 'conversation.colour'" \
        in reasons[0], reasons
    assert check.problems and check.problems[0].startswith(
        "views[1].when.all[1].fact: unknown fact 'conversation.colour'")
    # The preview: what the same events leave offline, previewed by the same views.
    inbox = Inbox(load_rules())
    for event in stream:
        with suppress(BadEvent):
            inbox.handle(parse_event_object(event))
    state = inbox.accounts[account]
    want = preview_of(state, inbox.rules.compile_views(canonical_views(
        {"views": [HOT]})), sorted(state.account.agents), 20)
    assert preview.problems == [] and preview.preview is not None
    assert {agent: (p.count, p.conversations) for agent, p in preview.preview["hot"].items()
            } == want["hot"]
    assert any(count for count, _ in want["hot"].values())
