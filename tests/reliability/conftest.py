"""Options and fixtures of the reliability suite.

The ``vhost`` fixture is the broker suite's (a fresh vhost per test, deleted after);
``--soak`` turns the CI-sized runs into long ones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.broker.conftest import vhost

__all__ = ["vhost"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reliability")
    group.addoption("--soak", action="store_true", default=False,
                    help="run the long reliability runs (minutes each) instead of CI-sized ones")
    group.addoption("--kills", type=int, default=None,
                    help="SIGKILLs in the crash test (default: 4, or 60 with --soak)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --soak every broker test of this suite is a long one: mark it ``slow``."""
    if not config.getoption("--soak"):
        return
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here) and item.get_closest_marker("broker"):
            item.add_marker(pytest.mark.slow)


@dataclass(frozen=True)
class Size:
    """How long each scenario runs."""

    soak: bool
    crash_events: int
    kills: int
    cut_events: int
    cuts: int
    restart_events: int
    restarts: int
    fuzz_rounds: int
    memory_events: int


@pytest.fixture(scope="session")
def size(request: pytest.FixtureRequest) -> Size:
    soak = bool(request.config.getoption("--soak"))
    kills = request.config.getoption("--kills")
    if soak:
        return Size(True, crash_events=120_000, kills=kills or 60, cut_events=40_000, cuts=15,
                    restart_events=30_000, restarts=3, fuzz_rounds=2000,
                    memory_events=300_000)
    return Size(False, crash_events=5000, kills=kills or 4, cut_events=4000, cuts=3,
                restart_events=3000, restarts=1, fuzz_rounds=200, memory_events=15_000)

