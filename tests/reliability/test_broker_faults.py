"""The broker cuts the worker off, or restarts: the worker reconnects by itself and
downstream ends like an offline replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.scenarios import Size, cut_run, restart_run

pytestmark = pytest.mark.broker


def test_connections_closed_by_the_broker_mid_stream(
        vhost: str, tmp_path: Path, size: Size) -> None:
    report = cut_run(vhost, tmp_path, events=size.cut_events, cuts=size.cuts, seed=21)
    print(report.summary())
    report.verdict.assert_clean()
    assert report.dead_letters == 0
    assert report.reconnects >= size.cuts, "every cut was noticed and survived"


def test_broker_application_restart_mid_stream(vhost: str, tmp_path: Path, size: Size) -> None:
    # stop_app stops every vhost of this broker: one short outage in CI.
    report = restart_run(vhost, tmp_path, events=size.restart_events, restarts=size.restarts,
                         seed=31)
    print(report.summary())
    report.verdict.assert_clean()
    assert report.dead_letters == 0
    assert report.reconnects >= size.restarts
