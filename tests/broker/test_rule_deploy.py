"""Deploy and roll back through a running worker (issue 11, part 4).

A worker started on a state store with a deployed version runs it (over its rule
directory); ``inbox-rules rules deploy`` while events flow makes the worker adopt the
new version at a batch boundary (found by its poll), and ``rules rollback`` takes it
back the same way. Whatever happened in between, downstream (duplicates dropped by
``update_id``, the last update per agent and conversation) ends where a clean run under
the final rules does, and no ``update_id`` is ever carried by two different bodies:
an account's n-th rules change has a cause of its own (``rules:<version>:<n>``), so
going B and back to A never repeats an id of the first time under A.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from tests.support.harness import (
    Bus,
    Producer,
    WorkerProcess,
    amqp_url,
    as_messages,
    wait_drained,
    wait_for,
    worker_env,
)
from tests.support.oracle import Final, final_view, replay
from tests.support.streams import event_stream
from tests.test_rule_versions import copy_rules, variant

# The PostgreSQL store's fixture (a database of its own), for the fleet.
from tests.test_store_postgres import url as url
from worker.amqp.topology import Topology
from worker.cli import main
from worker.rulebook import load_rules
from worker.settings import Settings
from worker.store.sqlite import SqliteStore

pytestmark = pytest.mark.broker


def _cli(state: Path | str, *args: str, partitions: int = 16) -> Any:
    """The command line on the workers' store: a SQLite file, or a PostgreSQL URL."""
    env = ({"INBOX_RULES_STATE_PATH": str(state), "INBOX_RULES_STORE_URL": ""}
           if isinstance(state, Path) else
           {"INBOX_RULES_STORE_URL": state, "INBOX_RULES_PARTITIONS": str(partitions)})
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


def _downstream(updates: list[dict[str, Any]]) -> Final:
    """What a downstream service shows: duplicates dropped by update_id, then the last
    update per (agent, conversation); pairs in no category and agents with no badge
    left out (a clean run under A never mentions what only B showed)."""
    seen: set[str] = set()
    unique = []
    for update in updates:
        if update["update_id"] not in seen:
            seen.add(update["update_id"])
            unique.append(update)
    categories, counts = final_view(unique)
    return ({key: value for key, value in categories.items() if value},
            {key: value for key, value in counts.items() if any(value.values())})


def _assert_one_body_per_update_id(updates: list[dict[str, Any]]) -> None:
    """No update_id is carried by two different bodies: downstream drops a repeated id
    as a duplicate, so a reused id with another body would lose that update."""
    bodies: dict[str, str] = {}
    for update in updates:
        body = json.dumps(update, sort_keys=True)
        assert bodies.setdefault(update["update_id"], body) == body, update["update_id"]


def test_deploy_then_rollback_through_a_running_worker_ends_as_a_clean_run(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    events = event_stream(seed=6, count=1500)
    state = tmp_path / "state.sqlite3"
    a, b = copy_rules(tmp_path, "a"), variant(tmp_path)
    version_a, version_b = load_rules(a).version, load_rules(b).version
    _cli(state, "rules", "deploy", str(a), "--create")  # the first: no worker wrote it
    # Its own directory is the variant: the deployed version must win.
    worker = WorkerProcess.in_vhost(vhost, tmp_path, rules_poll_interval=0.2, rules_dir=b)
    worker.start()
    try:
        worker.wait_ready()
        assert (f"rules: version {version_a} deployed in the state store takes precedence "
                f"over the rule directory {b}") in worker.log()
        producer = Producer(vhost, as_messages(events), rate=150.0)  # ~10 s of traffic
        producer.start()
        wait_for(lambda: producer.published >= 300, 30, "events flowing", alive=worker)
        deployed = _cli(state, "rules", "deploy", str(b))
        assert f"live now: {version_b} (was {version_a})" in deployed.stdout
        wait_for(lambda: f"partition 0: rules version {version_b} in force" in worker.log(), 30,
                 "the worker to adopt B", alive=worker)
        assert producer.published < len(events), "B went live while events flowed"
        wait_for(lambda: producer.published >= 800, 30, "more events under B", alive=worker)
        rolled = _cli(state, "rules", "rollback")
        assert f"live now {version_a} (was {version_b})" in rolled.stdout
        wait_for(lambda: f"partition 0: rules version {version_a} in force" in worker.log(), 30,
                 "the worker to adopt A again", alive=worker)
        assert producer.published < len(events), "A went live again while events flowed"
        producer.finish()
        wait_drained(bus, bus.topology.events_queue)
        wait_for(lambda: _all_follow(state, version_a), 30, "the sweep under A",
                 alive=worker)
        # A SIGHUP now would set this host apart from the fleet: refused.
        assert worker.process is not None
        worker.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP ignored" in worker.log(), 10, "SIGHUP refused",
                 alive=worker)
    finally:
        status = worker.stop()
    assert status == 0, worker.log_tail()
    updates = bus.updates()
    _assert_one_body_per_update_id(updates)
    # B was live and decided events, and the rollback re-categorised what B changed.
    assert any(u["rules_version"] == version_b for u in updates)
    assert any(u["cause_event_id"].startswith(f"rules:{version_a}:") for u in updates)
    clean = _downstream(replay(events))
    assert clean != _downstream(replay(events, b)), "B and A differ on this stream"
    assert _downstream(updates) == clean


def _all_follow(state: Path, version: str) -> bool:
    store = SqliteStore(state, read_only=True)
    try:
        return store.accounts_behind(version, "", 1) == []
    finally:
        store.close()


PARTITIONS = 4


@pytest.mark.postgres
def test_a_fleet_on_postgresql_follows_a_deploy_and_a_rollback(
        vhost: str, bus: Bus, tmp_path: Path, url: str) -> None:
    """Two workers sharing the load by partition: each finds the new live version by
    itself and sweeps its own partitions; downstream ends as a clean run under A."""
    events = event_stream(seed=6, count=1200)
    a, b = copy_rules(tmp_path, "a"), variant(tmp_path)
    version_a, version_b = load_rules(a).version, load_rules(b).version
    _cli(url, "rules", "deploy", str(a), partitions=PARTITIONS)
    settings = {"store_url": url, "partitions": PARTITIONS, "rules_poll_interval": 0.2}
    workers = [WorkerProcess(worker_env(amqp_url(vhost), tmp_path / f"{name}.sqlite3",
                                        settings), tmp_path / f"{name}.log", name=name)
               for name in ("w1", "w2")]
    topology = Topology.from_settings(Settings(AMQP_URL="amqp://unused", store_url=url,
                                               partitions=PARTITIONS,
                                               state_path=tmp_path / "unused"))
    queues = [topology.events_queue,
              *(topology.partition_queue(p) for p in range(PARTITIONS))]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.wait_ready()
            assert f"rules: version {version_a} deployed in the state store" in worker.log()
        producer = Producer(vhost, as_messages(events), rate=120.0)
        producer.start()
        wait_for(lambda: producer.published >= 300, 30, "events flowing")
        _cli(url, "rules", "deploy", str(b), partitions=PARTITIONS)
        for worker in workers:
            wait_for(_switched(worker, version_a, version_b), 30, f"{worker.name} to adopt B",
                     alive=worker)
        wait_for(lambda: producer.published >= 700, 30, "more events under B")
        _cli(url, "rules", "rollback", partitions=PARTITIONS)
        for worker in workers:
            wait_for(_switched(worker, version_b, version_a), 30,
                     f"{worker.name} to adopt A again", alive=worker)
        assert producer.published < len(events), "both changes came while events flowed"
        producer.finish()
        wait_for(lambda: all(bus.ready(q) == 0 for q in queues) and bus.in_worker() == 0,
                 60, "every queue drained and acked", interval=0.2)
        wait_for(lambda: _behind(url, version_a) == 0, 30, "every account under A")
    finally:
        statuses = [worker.stop() for worker in workers]
    assert statuses == [0, 0], [w.log_tail() for w in workers]
    updates = bus.updates()
    _assert_one_body_per_update_id(updates)
    assert any(u["rules_version"] == version_b for u in updates)
    assert _downstream(updates) == _downstream(replay(events))


def _switched(worker: WorkerProcess, old: str, new: str) -> Callable[[], bool]:
    """The worker wants ``new`` live (instead of ``old``): it sends its partitions the
    adoption."""
    return lambda: f"rules version {new} wanted live" in worker.log()


def _behind(url: str, version: str) -> int:
    """Stored accounts categorised under other rules than ``version``."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM inbox_rules.accounts"
                           " WHERE rules_version IS DISTINCT FROM %s", (version,)).fetchone()
    assert row is not None
    return int(row[0])
