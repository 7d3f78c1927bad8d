"""SIGKILL at random moments: nothing lost, downstream ends like an offline replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.events import EVENT_TYPES
from tests.reliability.scenarios import Size, crash_run
from tests.support.streams import RICH_TYPES, VIEWS_TYPES, event_stream, type_counts


def test_the_stream_has_every_event_type_duplicates_and_stale_events() -> None:
    stream = event_stream(seed=1, count=3000, accounts=40, profile="chaos")
    # Every type but those of rich streams: stamped in the past, a snooze's wake would
    # race the worker's ticks (docs/time.md, "Clocks and skew") and differ from replay;
    # nor views (a knob of their own: the chaos stream stays what it was).
    assert set(type_counts(stream)) == set(EVENT_TYPES) - RICH_TYPES - VIEWS_TYPES
    ids = [(e["account_id"], e["event_id"]) for e in stream]
    assert len(ids) - len(set(ids)) > 10, "re-sent duplicates"
    assert sum("-stale-" in e["event_id"] for e in stream) > 10, "stale events"
    assert sum("sequence" not in e for e in stream) > 10, "events without a sequence"
    assert len({e["account_id"] for e in stream}) == 40


@pytest.mark.broker
def test_sigkilled_and_restarted_worker_loses_nothing(
        vhost: str, tmp_path: Path, size: Size) -> None:
    report = crash_run(vhost, tmp_path, events=size.crash_events, kills=size.kills, seed=11,
                       batch_size=50)
    print(report.summary())
    report.verdict.assert_clean()
    assert report.dead_letters == 0, "good events dead-lettered"
