"""Memory stays flat over a long stream: the duplicate windows (one per account) and
the caches are bounded, in memory and in the state file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.scenarios import Size, memory_run

pytestmark = pytest.mark.broker

GROWTH = 1.10  # at most 10% above the RSS right after warm-up
# Per account: the steady stream sends each of its 10 accounts about 1,200 events, so
# every window is full (and pruned) before the warm-up ends. The stream re-sends only
# among its last 50 events: no duplicate falls out of a window.
DEDUP_WINDOW = 500


def test_rss_stays_flat_after_warm_up(vhost: str, tmp_path: Path, size: Size) -> None:
    report = memory_run(vhost, tmp_path, events=size.memory_events, seed=51,
                        dedup_window=DEDUP_WINDOW)
    print(report.summary())
    report.verdict.assert_clean()
    assert len(report.after_warm_up) >= 10, "too few samples to call it flat"
    assert report.peak <= report.baseline * GROWTH, report.summary()
    # The duplicate windows are bounded on disk too: each account keeps exactly its
    # newest window of event ids (all of them while it has had fewer).
    assert any(n > DEDUP_WINDOW for n in report.event_ids.values()), "no window overflowed"
    assert set(report.window_rows) == set(report.event_ids)
    assert report.window_rows == {account_id: min(n, DEDUP_WINDOW)
                                  for account_id, n in report.event_ids.items()}, \
        report.summary()
