"""Every broker test gets its own vhost, created and deleted here (rabbitmqctl, as
CI runs as root). No broker means a failed test, never a skipped one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.broker.bus import Bus, rabbitmqctl


@pytest.fixture
def vhost() -> Iterator[str]:
    name = f"inbox-rules-test-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


@pytest.fixture
def bus(vhost: str) -> Iterator[Bus]:
    connection = Bus(vhost)
    yield connection
    connection.close()
