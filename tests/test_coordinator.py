"""Membership and partition dealing without a database: a fake store records what the
coordinator takes, gives up and tells the driver."""

from __future__ import annotations

from collections.abc import Callable

from worker.coordinator import Coordinator, deal


class FakeMembership:
    def __init__(self, members: list[str]) -> None:
        self.members = members
        self.acquired: list[int] = []
        self.released: list[int] = []
        self.beats = 0
        self.left: list[str] = []

    def heartbeat(self, worker_id: str, lease_seconds: float) -> None:
        self.beats += 1

    def live_members(self, lease_seconds: float) -> list[str]:
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
