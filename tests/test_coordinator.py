"""Membership and partition dealing without a database: a fake store records what the
coordinator takes, gives up and tells the driver; and whether a worker whose loop one
long event holds keeps its heartbeat."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from tests.support.streams import Events
from worker.cluster.membership import Coordinator, Liveness, deal
from worker.domain.account import AccountState
from worker.domain.categoriser import Categoriser
from worker.domain.state import Account
from worker.rulebook import load_rules
from worker.settings import Settings


class FakeMembership:
    def __init__(self, members: list[str]) -> None:
        self.members = members
        self.acquired: list[int] = []
        self.released: list[int] = []
        self.beats = 0
        self.left: list[str] = []

    def heartbeat(self, worker_id: str, lease_seconds: float) -> None:
        self.beats += 1

    def live_members(self) -> list[str]:
        return sorted(self.members)

    def leave(self, worker_id: str) -> None:
        self.left.append(worker_id)

    def acquire(self, partition: int) -> int:
        self.acquired.append(partition)
        return len(self.acquired)

    def release(self, partition: int) -> None:
        self.released.append(partition)


def test_partitions_are_dealt_evenly_and_the_same_by_everyone() -> None:
    members = ["w-b", "w-a", "w-c"]
    shares = {m: deal(members, m, 8) for m in members}
    assert sorted(len(s) for s in shares.values()) == [2, 3, 3]
    assert set().union(*shares.values()) == set(range(8))
    assert sum(len(s) for s in shares.values()) == 8, "each partition exactly once"
    assert deal(list(reversed(members)), "w-a", 8) == shares["w-a"]
    assert deal(members, "w-gone", 8) == frozenset()


def _coordinator(store: FakeMembership, me: str, alive: Callable[[], bool] = lambda: True,
                 ) -> tuple[Coordinator, list[frozenset[int]]]:
    told: list[frozenset[int]] = []
    coordinator = Coordinator(store, me, 8, 4.0, told.append, lambda call: call(),
                              alive)
    return coordinator, told


def test_a_joining_worker_takes_its_share_and_the_others_give_theirs_up() -> None:
    store = FakeMembership(["w-a"])
    coordinator, told = _coordinator(store, "w-a")
    coordinator.tick()
    assert told == [frozenset(range(8))] and store.acquired == list(range(8))
    store.members.append("w-b")
    coordinator.tick()
    assert told[-1] == frozenset({0, 2, 4, 6})
    assert store.released == [], "released only once the driver finished with them"
    coordinator.released(frozenset({1, 3, 5, 7}))
    coordinator.tick()
    assert store.released == [1, 3, 5, 7]
    store.members.remove("w-b")  # the other one crashed: its share comes back
    coordinator.tick()
    assert told[-1] == frozenset(range(8))
    assert store.acquired[-4:] == [1, 3, 5, 7], "taken again: new epochs"


def test_a_stuck_loop_stops_the_heartbeat() -> None:
    store = FakeMembership(["w-a"])
    alive = [True]
    coordinator, _ = _coordinator(store, "w-a", lambda: alive[0])
    coordinator.tick()
    alive[0] = False
    coordinator.tick()
    assert store.beats == 1


def test_a_release_the_driver_reports_late_does_not_give_up_a_partition_posted_again() -> None:
    """Found by tests/broker/test_several_workers.py: the driver reports what it dropped
    under an older assignment; the coordinator had meanwhile dealt those partitions to
    it again. Giving them up then left the driver consuming them with no epoch (every
    commit fenced off: "this worker has not acquired it")."""
    store = FakeMembership(["w-a", "w-b"])
    coordinator, told = _coordinator(store, "w-a")
    coordinator.tick()
    assert told[-1] == frozenset({0, 2, 4, 6})
    store.members.remove("w-b")
    coordinator.tick()  # all eight again
    coordinator.released(frozenset({0, 2}))  # dropped under an older assignment
    coordinator.tick()
    assert store.released == [], "0 and 2 are assigned to the driver again: kept"
    assert coordinator.held == set(range(8))


def test_after_a_fence_every_partition_is_taken_anew_even_one_the_driver_never_took() -> None:
    """Found by tests/broker/test_several_workers.py: a fence while partition 3 was
    assigned but not yet consumed (the driver was handing others over). The driver
    gives back only what it consumed, so waiting for every held partition to come back
    waited for ever: the worker consumed nothing, and nobody else took its share."""
    store = FakeMembership(["w-a", "w-c"])
    coordinator, told = _coordinator(store, "w-a")
    coordinator.tick()
    assert told[-1] == frozenset({0, 2, 4, 6})
    store.members.append("w-b")
    coordinator.tick()
    assert told[-1] == frozenset({0, 3, 6})  # 3 taken, not yet consumed by the driver
    coordinator.fenced()
    coordinator.released(frozenset({0, 2, 4, 6}))  # what the driver had consumed
    acquired = len(store.acquired)
    coordinator.tick()
    assert store.acquired[acquired:] == [0, 3, 6], "taken anew: new epochs"
    assert set(store.released) >= {0, 2, 3, 4, 6}
    assert told[-1] == frozenset({0, 3, 6}) and len(told) == 3, "told again"
    assert coordinator.held == {0, 3, 6}
    coordinator.released(frozenset({0, 2, 4, 6}))  # a late report changes nothing now
    coordinator.tick()
    assert coordinator.held == {0, 3, 6}


def test_a_member_lease_is_one_every_worker_can_judge_by() -> None:
    """Every worker judges a member by that member's lease (the store checks the same
    bound): an infinite, NaN or day-long-plus lease is refused at start."""
    for lease in ("inf", "nan", "0", "86401"):
        with pytest.raises(ValidationError, match="member_lease"):
            Settings(AMQP_URL="amqp://unused", member_lease=lease)
    assert Settings(AMQP_URL="amqp://unused", member_lease="2.5").member_lease == 2.5


class Held:
    """A loop that last turned at 0 s, one event holding it since; a clock the test
    moves and the event's progress counter."""

    def __init__(self) -> None:
        self.now = 0.0
        self.progress = 0

    def liveness(self, window: float = 1.0, limit: float = 30.0) -> Liveness:
        return Liveness(lambda: 0.0, lambda: self.progress, window, limit,
                        clock=lambda: self.now)


def test_a_long_event_that_progresses_keeps_the_heartbeat_and_a_stuck_one_stops_it() -> None:
    held = Held()
    store = FakeMembership(["w-a"])
    coordinator, _ = _coordinator(store, "w-a", held.liveness())
    for _ in range(80):  # 20 s of one event, sampled every quarter lease
        held.now += 0.25
        held.progress += 5000
        coordinator.tick()
    assert store.beats == 80, "the loop turned 20 s ago, but its work advanced all along"
    beats = store.beats
    for _ in range(8):  # stuck: nothing advances any more
        held.now += 0.25
        coordinator.tick()
    assert store.beats == beats + 3, "beats for one window after the last advance only"


def test_a_loop_that_turns_is_alive_without_progress() -> None:
    held = Held()
    liveness = held.liveness(window=1.0)
    held.now = 0.9
    assert liveness()
    held.now = 1.1
    assert not liveness(), "no turn within the window, and no work seen advancing"


def test_progress_keeps_the_heartbeat_only_until_the_amqp_heartbeat_would_have_cut_it() -> None:
    """Past the AMQP heartbeat timeout the broker has closed the connection and requeued
    the event: it cannot be acknowledged, so its progress no longer counts."""
    held = Held()
    liveness = held.liveness(window=1.0, limit=4.0)
    seen = []
    while held.now < 6.0:
        held.now += 0.25
        held.progress += 1
        seen.append((held.now, liveness()))
    assert all(alive for at, alive in seen if at < 4.0)
    assert not any(alive for at, alive in seen if at >= 4.0)


def test_the_categoriser_progresses_all_through_one_account_updated_of_a_large_account(
        ) -> None:
    """Seen from another thread, as the coordinator sees the ioloop's work: the counter
    moves throughout the one long call, so a short window never judges it stuck."""
    categoriser = Categoriser(load_rules(None))
    events = Events("acc-large")
    state = AccountState(Account("acc-large"), rules_version=categoriser.rules.version)
    categoriser.handle(state, events.account("free", ["ag-0"], sequence=1))
    for n in range(20_000):
        categoriser.handle(state, events("conversation.created", f"c-{n}", sequence=1))
    team = [f"ag-{i}" for i in range(10)]
    turned = time.monotonic()  # the loop's last turn: one event holds it from here on
    liveness = Liveness(lambda: turned, lambda: categoriser.progress, 0.3, 30.0)
    done = threading.Event()
    samples: list[tuple[float, bool]] = []

    def one_event() -> None:
        try:
            categoriser.handle(state, events.account("pro", team, sequence=2))
        finally:
            done.set()

    thread = threading.Thread(target=one_event)
    thread.start()
    while not done.wait(0.05):
        samples.append((time.monotonic() - turned, liveness()))
    thread.join()
    assert samples and samples[-1][0] > 0.6, "the event held the loop for two windows"
    assert all(alive for _, alive in samples), samples
    time.sleep(0.35)
    assert not liveness(), "the event is over and the loop did not turn: stuck"
