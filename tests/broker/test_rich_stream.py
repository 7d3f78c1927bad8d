"""The facts inboxes sort by, through kills: a rich stream (labels, attributes, priority
and channel changes, reads after replies, mentions, snoozes with short ``until``s that
wake while the stream runs) into three workers on PostgreSQL under the helpdesk rules
(which test every new fact, unread and mentions included), while two of them are
SIGKILLed and come back.

Judged from outside: downstream ends where ``inbox-rules replay --until`` of the same
events ends (categories, unread flags, counts and unread counts of every agent), no
``update_id`` with two bodies, ``seq`` gap-free, and every agent's snapshot equal to
the updates applied by ``seq``. Snoozes wake live: crossings with cause ``time:`` are
published by the workers' clocks while events still flow.
"""

from __future__ import annotations

from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.harness import (
    Bus,
    Producer,
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
from tests.support.streams import event_stream, iso, type_counts
from worker.rulebook.engine import default_rules_dir

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

HELPDESK = default_rules_dir() / "examples" / "helpdesk"
RATE = 200.0  # events per second
SECONDS = 16
PARTITIONS = 8


def test_a_rich_stream_through_kills_ends_as_replay_until_says(
        vhost: str, database: str, tmp_path: Path) -> None:
    settings: dict[str, object] = {
        "partitions": PARTITIONS, "member_lease": 2.0, "heartbeat": 3, "time_lag": 0.2,
        "rules_dir": HELPDESK, "max_batch_delay": 0.01, "reconnect_max_delay": 1.0}
    bus = Bus(vhost, confirm=True)
    # Stamped with the clock it is sent by (the workers' too: one machine), so snoozes
    # of a few seconds fall due while the stream runs.
    stream = event_stream(41, int(RATE * SECONDS), 10, agents=3, rich=True,
                          start=datetime.now(UTC) + timedelta(seconds=2),
                          step=1 / RATE, snapshots=0.0)
    kinds = type_counts(stream)
    assert kinds["conversation.snoozed"] > 50 and kinds["conversation.read"] > 50
    assert kinds["conversation.updated"] > 50
    untils = [e["data"]["until"] for e in stream
              if e["type"] == "conversation.snoozed" and e["data"].get("until")]
    end = max(datetime.fromisoformat(t.replace("Z", "+00:00")) for t in
              [*untils, stream[-1]["occurred_at"]]) + timedelta(seconds=1)
    with closing(bus), collecting(vhost, bus.updates_queue) as updates, \
            fleet(vhost, database, tmp_path, settings) as workers:
        for name in ("w1", "w2", "w3"):
            workers.add(name)
        workers.wait_dealt(PARTITIONS)
        done = through_kills(workers, Producer(vhost, as_messages(stream), RATE),
                             ((4, "w1", None), (8, "w2", "w1"), (12, None, "w2")))
        wait_for(lambda: datetime.now(UTC) > end + timedelta(seconds=1)
                 and settled(bus, partitioned_topology(PARTITIONS), quiet=3.0), 180,
                 "the stream and its wakes through, every queue drained", interval=1.0)
        downstream = Downstream.read(updates.received, PARTITIONS)
        taken = snapshots(vhost, {(u["account_id"], u["agent_id"])
                                  for u in downstream.updates.values()})
    expected = replay(stream, HELPDESK, until=iso(end))
    wakes = sum(u["cause_event_id"].startswith("time:") for u in downstream.updates.values())
    print(f"{done}; {len(downstream.updates)} updates ({wakes} wakes), "
          f"{downstream.duplicates} duplicates; replay: {len(expected)} updates")
    assert wakes > 20, "snoozes woke while the stream ran"
    shown = assert_ends_as_replayed(downstream, taken, expected)
    _, unread_counts = downstream.unread()
    assert any(unread_counts.values()) and any("unread_mine" in c for c in shown.values())
