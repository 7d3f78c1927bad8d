"""Several workers on one PostgreSQL store: what their tests and benchmark share.

- (a database of their own: :func:`tests.support.harness.fresh_database`);
- :class:`Fleet`: ``inbox-rules run`` subprocesses on one vhost and one database, each
  with its own HTTP port (for its ``/metrics``) and log file;
- :func:`scrape`: a worker's ``/metrics`` as ``{series: value}``;
- :func:`partition_backlog` and :func:`all_drained`: where the messages are, read
  from the broker (the intake, the requests queue and every partition queue).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.requests import SnapshotReply, SnapshotRequest
from tests.support.harness import (
    TEST_SETTINGS,
    Bus,
    Producer,
    Received,
    WorkerProcess,
    amqp_url,
    free_port,
    http_get,
    rabbitmqctl,
    wait_for,
    worker_env,
    worker_unacked,
)
from tests.support.oracle import final_unread, final_view
from worker.amqp.topology import Topology
from worker.cluster.partitions import partition_of
from worker.settings import Settings
from worker.tools.request_client import ask


def partitioned_topology(partitions: int) -> Topology:
    """The names the workers derive with ``partitions`` (default names otherwise)."""
    return Topology.from_settings(Settings(AMQP_URL="amqp://unused", state_path=Path("unused"),
                                           store_url="postgresql://unused",
                                           partitions=partitions))


# -- metrics ------------------------------------------------------------------------------
_SAMPLE = re.compile(r"^(?P<series>[a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (?P<value>\S+)$")


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` of the worker on ``port``: series (name and labels, as written) to
    value. Comments and help lines are skipped."""
    status, body = http_get(port, "/metrics")
    assert status == 200, f"/metrics answered {status}: {body[:300]}"
    samples: dict[str, float] = {}
    for line in body.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[match["series"]] = float(match["value"])
    return samples


def owned_partitions(samples: dict[str, float]) -> frozenset[int]:
    """The partitions a worker says it owns (``inbox_rules_partition_owned`` series)."""
    owned = re.compile(r'^inbox_rules_partition_owned\{partition="(\d+)"\}$')
    return frozenset(int(m[1]) for series, value in samples.items()
                     if value == 1 and (m := owned.match(series)))


# -- the workers --------------------------------------------------------------------------
@dataclass
class Member:
    """One worker of the fleet: its process (restartable) and HTTP port."""

    name: str
    process: WorkerProcess
    port: int

    def metrics(self) -> dict[str, float]:
        return scrape(self.port)


@dataclass
class Fleet:
    """``inbox-rules run`` subprocesses sharing one vhost and one PostgreSQL database
    (``store_url``; None: each on a SQLite file of its own in ``directory``)."""

    vhost: str
    store_url: str | None
    directory: Path
    settings: dict[str, object] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    # Settings under ``settings``: the tests' quick ones, or {} for the worker's own.
    defaults: Mapping[str, object] = field(default_factory=lambda: dict(TEST_SETTINGS))

    def add(self, name: str, *, start: bool = True, state: str | None = None) -> Member:
        """``state``: the SQLite file's name, when several workers share one (hot
        standbys); by default each has its own."""
        port = free_port()
        settings: dict[str, object] = {**self.settings, "http_port": port,
                                       "http_host": "127.0.0.1"}
        if self.store_url is not None:
            settings["store_url"] = self.store_url
        env = worker_env(amqp_url(self.vhost), self.directory / f"{state or name}.sqlite3",
                         settings,
                         defaults=self.defaults)
        member = Member(name, WorkerProcess(env, self.directory / f"{name}.log", name=name),
                        port)
        self.members[name] = member
        if start:
            self.start(name)
        return member

    def start(self, name: str) -> None:
        process = self.members[name].process
        process.start()
        process.wait_ready(60)

    def __getitem__(self, name: str) -> Member:
        return self.members[name]

    def running(self) -> list[Member]:
        return [m for m in self.members.values() if m.process.alive()]

    def shares(self) -> dict[str, frozenset[int]]:
        """The partitions each running worker says it owns now."""
        return {m.name: owned_partitions(m.metrics()) for m in self.running()}

    def wait_dealt(self, partitions: int, timeout: float = 60.0) -> dict[str, frozenset[int]]:
        """Until the running workers own every partition exactly once, in shares that
        differ by one at most, and say so twice a second apart (a deal in flux is not
        one); the shares."""
        seen: list[dict[str, frozenset[int]]] = []

        def dealt() -> bool:
            shares = self.shares()
            owned = [p for share in shares.values() for p in share]
            sizes = [len(share) for share in shares.values()]
            ok = (sorted(owned) == list(range(partitions))
                  and max(sizes) - min(sizes) <= 1)
            seen.append(shares)
            return ok and len(seen) >= 2 and seen[-2] == shares

        try:
            wait_for(dealt, timeout, "the partitions dealt among the running workers",
                     interval=1.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last shares {seen[-1:]}; logs:\n{self.tails()}") \
                from None
        return seen[-1]

    def tails(self, lines: int = 12) -> str:
        """The last ``lines`` lines of each worker's log, dead-letter warnings left out
        (bad input floods them)."""
        def tail(member: Member) -> str:
            kept = [line for line in member.process.log().splitlines()
                    if "dead-lettering" not in line]
            return "\n".join(kept[-lines:])

        return "\n".join(f"--- {m.name} ---\n{tail(m)}" for m in self.members.values())

    def kill_all(self) -> None:
        for member in self.members.values():
            with suppress(Exception):
                if member.process.paused:
                    member.process.resume()
            member.process.ensure_dead()


@contextmanager
def fleet(vhost: str, store_url: str | None, directory: Path,
          settings: Mapping[str, object] | None = None, *,
          defaults: Mapping[str, object] = TEST_SETTINGS) -> Iterator[Fleet]:
    """A :class:`Fleet` (``settings`` by field name, over ``defaults``); whatever
    happens, none of its processes is left behind."""
    the_fleet = Fleet(vhost, store_url, directory, dict(settings or {}), defaults=defaults)
    try:
        yield the_fleet
    finally:
        the_fleet.kill_all()


# -- where the messages are ---------------------------------------------------------------
def partition_backlog(bus: Bus, topology: Topology) -> dict[str, int]:
    """Ready messages per queue the workers consume (intake, requests, partitions)."""
    queues = [topology.events_queue, topology.requests_queue,
              *(topology.partition_queue(p) for p in range(topology.partitions))]
    return {queue: bus.ready(queue) for queue in queues}


def all_drained(bus: Bus, topology: Topology) -> bool:
    """No ready message in any queue the workers consume and none held unacked by a
    worker. Read queue by queue, so call it twice a moment apart before trusting it
    (an event may move from the intake to its partition queue between two reads)."""
    return not any(partition_backlog(bus, topology).values()) and worker_unacked(
        bus.vhost) == 0


def consumers(vhost: str) -> dict[str, tuple[int, int]]:
    """(active, waiting) consumers per queue of ``vhost``, from the broker's consumer
    list (a passive declare counts only the active one of a single-active-consumer
    queue)."""
    counts: dict[str, tuple[int, int]] = {}
    for row in _rabbitmqctl_rows("list_consumers", "-p", vhost, "queue_name", "active"):
        active, waiting = counts.get(row[0], (0, 0))
        counts[row[0]] = (active + 1, waiting) if row[1] == "true" else (active, waiting + 1)
    return counts


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds spent busy so far by every core of the machine (/proc/stat)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def settled(bus: Bus, topology: Topology, quiet: float = 1.0) -> bool:
    """:func:`all_drained` twice, ``quiet`` seconds apart."""
    if not all_drained(bus, topology):
        return False
    time.sleep(quiet)
    return all_drained(bus, topology)


# -- who is the active router -------------------------------------------------------------
def _rabbitmqctl_rows(*args: str) -> list[list[str]]:
    return [line.split("\t") for line in rabbitmqctl(*args, "--no-table-headers").splitlines()
            if line.strip()]


def _local_ports(pid: int) -> set[int]:
    """TCP ports of 127.0.0.1 sockets open in process ``pid`` (its client ends)."""
    inodes = set()
    with suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            columns = line.split()
            if columns[9] in inodes:
                ports.add(int(columns[1].rsplit(":", 1)[1], 16))
    return ports


def active_consumer(vhost: str, queue: str, members: list[Member]) -> Member | None:
    """The member whose connection is the single active consumer of ``queue`` now
    (the broker's consumer, its channel, its connection's client port, the process
    holding that port), or None."""
    channel = next((row[1] for row in _rabbitmqctl_rows(
        "list_consumers", "-p", vhost, "queue_name", "channel_pid", "active")
        if row[0] == queue and row[2] == "true"), None)
    if channel is None:
        return None
    connection = next((row[1] for row in _rabbitmqctl_rows(
        "list_channels", "-p", vhost, "pid", "connection") if row[0] == channel), None)
    port = next((int(row[1]) for row in _rabbitmqctl_rows(
        "list_connections", "pid", "peer_port") if row[0] == connection), None)
    if port is None:
        return None
    return next((m for m in members if m.process.alive() and port in _local_ports(m.process.pid)),
                None)


# -- judging what downstream received --------------------------------------------------
@dataclass
class Downstream:
    """What a downstream service makes of the updates it received."""

    updates: dict[str, dict[str, Any]] = field(default_factory=dict)  # update_id -> body
    duplicates: int = 0
    conflicting: list[str] = field(default_factory=list)  # one update_id, two bodies
    reused_seq: list[str] = field(default_factory=list)  # one seq, two update_ids
    gaps: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, received: list[Received], partitions: int) -> Downstream:
        seen = cls()
        first: dict[str, bytes] = {}
        for message in received:
            update = json.loads(message.body)
            uid = update["update_id"]
            if uid in first:
                seen.duplicates += 1
                if first[uid] != message.body:
                    seen.conflicting.append(f"{uid}: {first[uid]!r} then {message.body!r}")
                continue
            first[uid] = message.body
            seen.updates[uid] = update
        by_agent: dict[tuple[str, str], dict[int, str]] = {}
        for uid, update in seen.updates.items():
            seqs = by_agent.setdefault((update["account_id"], update["agent_id"]), {})
            other = seqs.setdefault(update["seq"], uid)
            if other != uid:
                seen.reused_seq.append(f"{update['account_id']}/{update['agent_id']} seq "
                                       f"{update['seq']}: {other} and {uid}")
        for (account, agent), seqs in sorted(by_agent.items()):
            if sorted(seqs) != list(range(1, len(seqs) + 1)):
                missing = sorted(set(range(1, max(seqs) + 1)) - set(seqs))
                partition = partition_of(account, partitions)
                seen.gaps.append(f"{account}/{agent} (partition {partition}): seq "
                                 f"{min(seqs)}..{max(seqs)} misses {missing[:10]}")
        return seen

    def final(self) -> tuple[dict[tuple[str, str, str], list[str]],
                             dict[tuple[str, str], dict[str, int]]]:
        """The last categories per (account, agent, conversation) and the last counts
        per (account, agent), by ``seq``."""
        return final_view(self.by_seq())

    def unread(self) -> tuple[set[tuple[str, str, str]], dict[tuple[str, str], dict[str, int]]]:
        """The (account, agent, conversation) left unread and the last unread counts
        per (account, agent), by ``seq``."""
        return final_unread(self.by_seq())

    def by_seq(self) -> list[dict[str, Any]]:
        return sorted(self.updates.values(),
                      key=lambda u: (u["account_id"], u["agent_id"], u["seq"]))

    def differences(self, taken: dict[tuple[str, str], SnapshotReply]) -> list[str]:
        """Where this view (updates applied by seq) and the snapshots disagree:
        categories, counts, unread conversations and unread counts."""
        view, counts = self.final()
        unread, unread_counts = self.unread()
        seqs: dict[tuple[str, str], int] = {}
        for update in self.updates.values():
            key = (update["account_id"], update["agent_id"])
            seqs[key] = max(seqs.get(key, 0), update["seq"])
        wrong = []
        for (account, agent), snapshot in taken.items():
            mine = {c: cats for (a, g, c), cats in view.items()
                    if (a, g) == (account, agent) and cats}
            theirs = {c: sorted(cats) for c, cats in snapshot.conversations.items()}
            if snapshot.seq != seqs.get((account, agent)):
                wrong.append(f"{account}/{agent}: snapshot seq {snapshot.seq}, downstream "
                             f"{seqs.get((account, agent))}")
            if mine != theirs:
                keys = sorted(c for c in set(mine) | set(theirs)
                              if mine.get(c) != theirs.get(c))
                wrong.append(f"{account}/{agent}: {len(keys)} conversation(s) differ, e.g. "
                             f"{[(c, mine.get(c), theirs.get(c)) for c in keys[:3]]}")
            if counts.get((account, agent)) != snapshot.counts:
                wrong.append(f"{account}/{agent}: counts {counts.get((account, agent))} "
                             f"downstream, {snapshot.counts} in the snapshot")
            flagged = {c for (a, g, c) in unread if (a, g) == (account, agent)}
            if flagged != set(snapshot.unread):
                wrong.append(f"{account}/{agent}: unread {sorted(flagged)[:5]} downstream, "
                             f"{sorted(snapshot.unread)[:5]} in the snapshot")
            if unread_counts.get((account, agent)) != snapshot.unread_counts:
                wrong.append(f"{account}/{agent}: unread counts "
                             f"{unread_counts.get((account, agent))} downstream, "
                             f"{snapshot.unread_counts} in the snapshot")
        return wrong


def snapshots(vhost: str, agents: Iterable[tuple[str, str]],
              ) -> dict[tuple[str, str], SnapshotReply]:
    """Every agent's whole inbox, page by page (the stream must be idle)."""
    settings = Settings(AMQP_URL=amqp_url(vhost))
    out: dict[tuple[str, str], SnapshotReply] = {}
    for account, agent in sorted(agents):
        after: str | None = None
        merged: SnapshotReply | None = None
        while True:
            page = ask(settings, "snapshot",
                       SnapshotRequest(account_id=account, agent_id=agent, after=after),
                       SnapshotReply, timeout=30)
            if merged is None:
                merged = page
            else:
                assert page.seq == merged.seq, "nothing changes while the stream is idle"
                merged.conversations.update(page.conversations)
                merged.unread.extend(page.unread)
            if page.next_after is None:
                break
            after = page.next_after
        assert merged is not None
        out[(account, agent)] = merged
    return out


def through_kills(workers: Fleet, producer: Producer,
                  schedule: Iterable[tuple[float, str | None, str | None]]) -> list[str]:
    """Publish ``producer``'s stream while, at each (second, victim, back) of
    ``schedule``, ``back`` is started again and ``victim`` SIGKILLed; what was done."""
    done: list[str] = []
    began = time.monotonic()
    producer.start()
    try:
        for moment, victim, back in schedule:
            time.sleep(max(0.0, began + moment - time.monotonic()))
            if back is not None:
                workers.start(back)
            if victim is not None:
                workers[victim].process.kill()
            done.append(f"{moment} s: SIGKILL {victim}, back {back}")
        producer.finish()
    finally:
        producer.abandon()
    return done


def assert_ends_as_replayed(downstream: Downstream, taken: Mapping[tuple[str, str], SnapshotReply],
                            expected: list[dict[str, Any]],
                            ) -> dict[tuple[str, str, str], list[str]]:
    """Downstream as a clean replay of the same events ends it: no update id with two
    bodies, no reused or skipped ``seq``, snapshots equal to the updates applied by
    ``seq``, and the same categories, counts, unread flags and unread counts. Returns
    what each agent is shown."""
    assert not downstream.conflicting, downstream.conflicting[:5]
    assert not downstream.reused_seq, downstream.reused_seq[:5]
    assert not downstream.gaps, downstream.gaps[:5]
    wrong = downstream.differences(dict(taken))
    assert not wrong, wrong[:10]
    view, counts = downstream.final()
    want_view, want_counts = final_view(expected)
    shown = {key: cats for key, cats in view.items() if cats}
    assert shown == {key: cats for key, cats in want_view.items() if cats}
    assert counts == want_counts
    assert downstream.unread() == final_unread(expected)
    return shown
