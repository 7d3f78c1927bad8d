"""Options and fixtures of the reliability suite.

The ``vhost`` fixture is the broker suite's (a fresh vhost per test, deleted after);
``--soak`` turns the CI-sized runs into long ones."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.broker.conftest import vhost
from tests.reliability.scenarios import CI, SOAK, Size

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


@pytest.fixture(scope="session")
def size(request: pytest.FixtureRequest) -> Size:
    chosen = SOAK if request.config.getoption("--soak") else CI
    kills = request.config.getoption("--kills")
    return replace(chosen, kills=kills) if kills else chosen
