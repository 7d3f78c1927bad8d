"""Every broker test gets its own vhost, created and deleted here (rabbitmqctl, as
CI runs as root). No broker means a failed test, never a skipped one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.harness import Bus, fresh_database, fresh_vhost


@pytest.fixture
def vhost() -> Iterator[str]:
    with fresh_vhost() as name:
        yield name


@pytest.fixture
def bus(vhost: str) -> Iterator[Bus]:
    connection = Bus(vhost)
    yield connection
    connection.close()


@pytest.fixture
def database() -> Iterator[str]:
    """A PostgreSQL database of its own, dropped afterwards."""
    with fresh_database() as url:
        yield url
