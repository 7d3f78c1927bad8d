"""One long event on a worker of several, with the PostgreSQL store and a short lease.

An ``account.updated`` that gives a very large single-agent account a team holds the
owner's ioloop for seconds, past its 2 s member lease. Its work keeps advancing, so it
keeps its heartbeat and its partitions: were they to move, the next owner would meet
the same event and stall the same way. The account is built with the categoriser and
committed straight to the store, as a worker would have left it; the test runs the
same event on it in process first, to show that it does hold a loop that long.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.harness import blocking, wait_for
from tests.support.several import fleet, partitioned_topology
from tests.support.streams import Events
from worker.domain.account import AccountState
from worker.domain.categoriser import Categoriser
from worker.domain.state import Account
from worker.rulebook import load_rules
from worker.store.postgres import PostgresStore

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

PARTITIONS = 4
LEASE = 2.0
CONVERSATIONS = 30_000
TEAM = [f"ag-{i}" for i in range(12)]
ACCOUNT = "acc-large"
SINK = "test.updates-sink"


def large_account(url: str) -> tuple[dict[str, Any], float]:
    """A free account with one agent and :data:`CONVERSATIONS` open conversations,
    committed to the store at ``url``; the event that gives it :data:`TEAM` (one
    update per new agent and conversation), and the seconds that event takes in the
    categoriser here."""
    categoriser = Categoriser(load_rules(None))
    events = Events(ACCOUNT)
    state = AccountState(Account(ACCOUNT), rules_version=categoriser.rules.version,
                         event_window=1000)
    categoriser.handle(state, events.account("free", TEAM[:1], sequence=1))
    for n in range(CONVERSATIONS):
        categoriser.handle(state, events("conversation.created", f"c-{n}", sequence=1))
    store = PostgresStore(url, PARTITIONS, worker_id="setup")
    try:
        for partition in range(PARTITIONS):
            store.acquire(partition)
        store.commit([state.take_write()])
        store.leave("setup")
    finally:
        store.close()
    event = {"event_id": "e-team", "type": "account.updated", "account_id": ACCOUNT,
             "occurred_at": "2026-11-24T11:00:00Z", "sequence": 2,
             "data": {"plan": "free", "agents": TEAM, "groups": {}}}
    started = time.monotonic()
    updates = categoriser.handle(state, events.account("free", TEAM, sequence=2))
    took = time.monotonic() - started
    assert len(updates) >= CONVERSATIONS * (len(TEAM) - 1)
    return event, took


def epochs(url: str) -> list[tuple[int, int]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT partition, epoch FROM inbox_rules.partitions"
                            " ORDER BY partition").fetchall()


def agents_stored(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT agents FROM inbox_rules.accounts WHERE account_id = %s",
                           (ACCOUNT,)).fetchone()
    return "" if row is None else str(row[0])


def test_a_worker_busy_on_one_long_event_keeps_its_partitions(
        vhost: str, database: str, tmp_path: Path) -> None:
    event, took = large_account(database)
    # The categoriser alone; the worker also holds its loop to load the account and to
    # turn the updates into messages (about as long again). Past half the lease, a
    # worker that beat only while its loop turned stopped beating.
    assert took > LEASE / 2, f"the event takes {took:.1f} s here: too short to matter"
    topology = partitioned_topology(PARTITIONS)
    settings = {"partitions": PARTITIONS, "member_lease": LEASE, "heartbeat": 30}
    with fleet(vhost, database, tmp_path, settings) as workers:
        for name in ("w1", "w2"):
            workers.add(name)
        shares = workers.wait_dealt(PARTITIONS)
        before = epochs(database)
        with blocking(vhost) as channel:
            # Updates go somewhere (not back to the worker as unroutable) and are
            # dropped at once: the test judges ownership, not what downstream sees.
            channel.queue_declare(SINK, arguments={"x-max-length": 0})
            channel.queue_bind(SINK, topology.updates_exchange, "#")
            channel.basic_publish(topology.events_exchange, "account.updated",
                                  json.dumps(event).encode())
        wait_for(lambda: json.loads(agents_stored(database) or "[]") == sorted(TEAM), 120,
                 "the team committed", interval=0.5)
        assert epochs(database) == before, (
            f"partitions moved while the event ran ({took:.1f} s in process):\n"
            f"{workers.tails()}")
        assert workers.shares() == shares
