"""``contracts.client.InboxMirror`` against real workers: the examples of the README and
of docs/downstream.md run as written, and a mirror of three agents that goes through
worker crashes and a cut of its own connection ends where the agents' fresh snapshots
are."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contracts.client import Inbox, InboxMirror
from contracts.requests import SnapshotReply
from tests.support.harness import (
    REPO,
    Bus,
    Producer,
    TcpProxy,
    ThreadWorker,
    WorkerProcess,
    amqp_url,
    as_messages,
    connect,
    running,
    settings_for,
    wait_for,
)
from tests.support.oracle import replay
from tests.support.several import snapshots
from tests.support.streams import event_stream

pytestmark = pytest.mark.broker


def python_block(document: Path) -> str:
    """The one ``python`` code block of ``document``."""
    (block,) = re.findall(r"```python\n(.*?)```", document.read_text(), re.DOTALL)
    return str(block)


def team(events: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The account of a one-account stream and its agents."""
    first = next(e for e in events if e["type"] == "account.updated")
    return first["account_id"], list(first["data"]["agents"])


def fresh(vhost: str, account_id: str, agents: list[str]) -> dict[str, SnapshotReply]:
    return {agent: reply for (_account, agent), reply
            in snapshots(vhost, [(account_id, agent) for agent in agents]).items()}


def differences(inbox: Inbox, snapshot: SnapshotReply) -> list[str]:
    """Where the mirror's inbox and the worker's snapshot of it disagree."""
    theirs = {cid: frozenset(cats) for cid, cats in snapshot.conversations.items()}
    wrong = [f"{what}: mirror {mine!r}, snapshot {want!r}" for what, mine, want in (
        ("seq", inbox.seq, snapshot.seq),
        ("counts", dict(inbox.counts), snapshot.counts),
        ("unread_counts", dict(inbox.unread_counts), snapshot.unread_counts),
        ("unread", sorted(inbox.unread), sorted(snapshot.unread))) if mine != want]
    if dict(inbox.conversations) != theirs:
        keys = sorted(c for c in set(inbox.conversations) | set(theirs)
                      if inbox.conversations.get(c) != theirs.get(c))
        wrong.append(f"{len(keys)} conversation(s) differ, e.g. "
                     f"{[(c, inbox.conversations.get(c), theirs.get(c)) for c in keys[:3]]}")
    return wrong


class Lines(threading.Thread):
    """Every line a subprocess prints, as it prints it."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.lines: list[str] = []
        self.start()

    def run(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))


BADGE = re.compile(r"(\S+) (\d+) \((\d+) unread\)")


def last_badges(lines: list[str], agent: str) -> tuple[int, dict[str, int], dict[str, int]]:
    """What the docs example printed last for ``agent``: seq, counts, unread counts."""
    line = [line for line in lines if line.startswith(f"{agent} seq ")][-1]
    seq, badges = line.removeprefix(f"{agent} seq ").split(": ", 1)
    found = BADGE.findall(badges)
    return int(seq), {n: int(c) for n, c, _ in found}, {n: int(u) for n, _, u in found}


def readme_example(vhost: str, tmp_path: Path) -> None:
    """The README's, as written: acc-1 as the README's events left it, printed once."""
    (tmp_path / "readme.py").write_text(python_block(REPO / "README.md"))
    readme = subprocess.run([sys.executable, "readme.py"], cwd=tmp_path,
                            env={**os.environ, "AMQP_URL": amqp_url(vhost)},
                            capture_output=True, text=True, timeout=60, check=False)
    assert readme.returncode == 0, readme.stderr
    taken = fresh(vhost, "acc-1", ["ag-1", "ag-2"])
    printed = {}
    for line in readme.stdout.splitlines():
        agent, seq, rest = line.split(" ", 2)
        counts, unread = rest.split("} ", 1)
        printed[agent] = (int(seq), ast.literal_eval(counts + "}"), ast.literal_eval(unread))
    assert printed == {agent: (reply.seq, reply.counts, sorted(reply.unread))
                       for agent, reply in taken.items()}
    assert all(reply.seq > 0 for reply in taken.values())


def docs_example(vhost: str, bus: Bus, tmp_path: Path, account_id: str, agents: list[str],
                 rest: list[dict[str, Any]], pump: Callable[[float], None],
                 ) -> dict[str, SnapshotReply]:
    """The docs', as written: three agents followed while ``rest`` of the stream comes,
    until Ctrl-C; the fresh snapshots it ended equal to. ``pump`` passes the time
    between two looks."""
    (tmp_path / "inbox.py").write_text(python_block(REPO / "docs" / "downstream.md"))
    with subprocess.Popen([sys.executable, "inbox.py", amqp_url(vhost), account_id, *agents],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True) as example:
        try:
            out = Lines(example)
            wait_for(lambda: all(any(line.startswith(f"{agent} seq ") for line in out.lines)
                                 for agent in agents), 30, "the example's snapshots",
                     sleep=pump)
            first = {agent: last_badges(out.lines, agent)[0] for agent in agents}
            bus.publish_events(rest)
            wait_for(bus.drained, 60, "the worker to take the rest", interval=0.1, sleep=pump)
            taken = fresh(vhost, account_id, agents)
            wanted = {agent: (reply.seq, reply.counts, reply.unread_counts)
                      for agent, reply in taken.items()}
            wait_for(lambda: {agent: last_badges(out.lines, agent) for agent in agents}
                     == wanted, 30, f"the example to print {wanted}", interval=0.1,
                     sleep=pump)
            example.send_signal(signal.SIGINT)  # Ctrl-C: it closes the mirror and ends
            assert example.wait(30) == 0
        finally:
            if example.poll() is None:
                example.kill()
    assert all(taken[agent].seq > first[agent] for agent in agents)  # it followed updates
    return taken


def test_the_examples_run_as_written_and_a_mirror_works_on_the_callers_connection(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    """The README's example, then the docs' while a mirror on the test's own blocking
    connection, driven by the test's waits, follows the same agents."""
    readme_events = [json.loads(line) for line in (REPO / "README.md").read_text().split(
        "cat > events.jsonl <<'JSON'\n", 1)[1].split("\nJSON\n", 1)[0].splitlines()]
    events = event_stream(seed=31, count=300, accounts=1, agents=3)
    account_id, agents = team(events)
    connection = connect(vhost)
    try:
        with ThreadWorker(settings_for(vhost, tmp_path / "state.sqlite3")):
            bus.publish_events([*readme_events, *events[:150]])
            wait_for(bus.drained, 60, "the worker to take the first events", interval=0.1)
            readme_example(vhost, tmp_path)
            with InboxMirror(connection, account_id=account_id, agent_ids=agents) as mirror:
                taken = docs_example(vhost, bus, tmp_path, account_id, agents, events[150:],
                                     pump=mirror.process)
                wait_for(lambda: all(mirror.inbox(a).seq == taken[a].seq for a in agents),
                         30, "the caller's mirror to catch up", sleep=mirror.process)
                wrong = {agent: differences(mirror.inbox(agent), taken[agent])
                         for agent in agents}
            assert not any(wrong.values()), wrong
            assert mirror.connections == 1 and connection.is_open
    finally:
        connection.close()


def test_a_mirror_of_three_agents_ends_where_their_snapshots_are_through_worker_kills(
        vhost: str, tmp_path: Path) -> None:
    """One worker (SQLite) SIGKILLed twice while the stream flows, and the mirror's own
    connection cut (through a proxy) while the worker is down: updates come again
    (published, not stored), snapshot requests wait for a worker, the mirror
    reconnects once the network is back and resyncs. Once it has the clean run's last
    ``seq`` of every agent, it equals fresh snapshots of them."""
    events = event_stream(seed=41, count=1200, accounts=1, agents=3)
    account_id, agents = team(events)
    last = {agent: max(u["seq"] for u in replay(events) if u["agent_id"] == agent)
            for agent in agents}
    worker = WorkerProcess.in_vhost(vhost, tmp_path)
    done: list[str] = []
    began = time.monotonic()

    def step(what: str, pause: float = 0.0) -> None:
        time.sleep(pause)
        done.append(f"{time.monotonic() - began:.1f} s: {what}")

    with running(worker), TcpProxy() as network:
        worker.wait_ready()
        mirror = InboxMirror(network.url(vhost), account_id=account_id, agent_ids=agents,
                             timeout=3.0, reconnect_max_delay=0.5)
        with mirror:
            producer = Producer(vhost, as_messages(events), rate=200.0)
            producer.start()
            try:
                step("SIGKILL the worker", 1.0)
                worker.kill()
                step("start it again", 0.5)
                worker.start()
                worker.wait_ready()
                step("SIGKILL the worker and cut the mirror's network", 0.5)
                worker.kill()
                network.cut()
                step("start the worker again", 0.5)
                worker.start()
                step("the mirror's network back", 0.5)
                network.restore()
                worker.wait_ready()
                producer.finish(60)
            finally:
                producer.abandon()

            def caught_up() -> bool:
                worker.assert_alive()
                return all(mirror.inbox(agent).synced and mirror.inbox(agent).seq == seq
                           for agent, seq in last.items())

            wait_for(caught_up, 60, f"the mirror to reach the last seqs {last} ({done}; "
                     f"{mirror.status})", interval=0.1)
            step("caught up")
            taken = fresh(vhost, account_id, agents)
            wrong = {agent: differences(mirror.inbox(agent), taken[agent])
                     for agent in agents}
            reconnects = mirror.connections - 1
            resyncs = {agent: mirror.inbox(agent).snapshots - 1 for agent in agents}
    print(f"{done}; seqs {last}; {reconnects} reconnect(s), resyncs {resyncs}")
    assert not any(wrong.values()), wrong
    assert worker.kills == 2 and reconnects >= 1
    assert all(count >= 1 for count in resyncs.values())  # the cut made each resync
    assert all(seq > 100 for seq in last.values())
