"""Memory stays flat over a long stream: the duplicate window and caches are bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.scenarios import Size, memory_run

pytestmark = pytest.mark.broker

GROWTH = 1.10  # at most 10% above the RSS right after warm-up


def test_rss_stays_flat_after_warm_up(vhost: str, tmp_path: Path, size: Size) -> None:
    report = memory_run(vhost, tmp_path, events=size.memory_events, seed=51, dedup_window=2000)
    print(report.summary())
    report.verdict.assert_clean()
    assert len(report.after_warm_up) >= 10, "too few samples to call it flat"
    assert report.peak <= report.baseline * GROWTH, report.summary()
    assert report.seen_rows == report.dedup_window, "the duplicate window is bounded on disk too"
