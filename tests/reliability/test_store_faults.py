"""The state store fails (disk full): the worker acks nothing it could not commit,
says why, and recovers when the fault clears, in place or after a crash.

The state file lives on a small tmpfs of its own (the suite runs as root, as CI does);
filling it makes SQLite's commits fail for real with "database or disk is full".
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.harness import Rig, rig, wait_for
from tests.support.oracle import Oracle, compare_committed, judge
from tests.support.streams import event_stream

pytestmark = pytest.mark.broker

FAILED = "commit failed"
FULL = "database or disk is full"


@contextmanager
def small_disk(path: Path, size: str = "8m") -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


@contextmanager
def disk_full(disk: Path) -> Iterator[None]:
    """Fill ``disk`` to the last byte while inside."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    try:
        yield
    finally:
        filler.unlink()


def wait_for_failed_commits(r: Rig, stream: list[dict[str, object]], since: int) -> None:
    """Feed events until a commit fails (SQLite may first reuse space it already has)."""
    fed = 0

    def failing() -> bool:
        nonlocal fed
        if r.worker.log(since).count(FAILED) >= 2:
            return True
        if fed < len(stream):
            r.publish(stream[fed:fed + 100])
            fed += 100
        return False

    wait_for(failing, 60, "a commit to fail on the full disk", interval=0.2)
    assert fed < len(stream), "the disk never filled up"
    r.publish(stream[fed:])


def assert_holds_unacked(r: Rig, seconds: float = 2.0) -> None:
    """While commits fail, the events stay unacknowledged: nothing is acked."""
    queue = r.broker.topology.events_queue
    before = (r.broker.ready(queue), r.broker.in_worker())
    time.sleep(seconds)
    after = (r.broker.ready(queue), r.broker.in_worker())
    assert before[1] > 0, f"nothing held unacked during the fault: {before}"
    assert sum(after) == sum(before), f"acked without committing: {before} -> {after}"


def test_disk_full_blocks_acks_and_the_worker_recovers_in_place_and_after_a_crash(
        vhost: str, tmp_path: Path) -> None:
    stream = event_stream(seed=41, count=3000, accounts=20, profile="chaos")
    first, second, third = stream[:800], stream[800:1900], stream[1900:]
    oracle = Oracle.replay(stream)
    with small_disk(tmp_path / "disk") as disk, \
            rig(vhost, tmp_path, state=disk / "state.sqlite3",
                settings={"batch_size": 50, "reconnect_max_delay": 0.5}) as r:
        r.publish(first)
        wait_for(lambda: r.broker.drained(), 60, "the first events", interval=0.3)

        # Fault 1: the disk fills up; it clears while the worker keeps retrying.
        with disk_full(disk):
            wait_for_failed_commits(r, second, since=0)
            assert_holds_unacked(r)
        wait_for(lambda: r.broker.drained(), 60, "recovery in place", interval=0.3)
        assert r.worker.starts == 1

        # Fault 2: full again, and the worker is killed while it cannot commit.
        offset = len(r.worker.log().encode())
        with disk_full(disk):
            wait_for_failed_commits(r, third, since=offset)
            assert_holds_unacked(r, seconds=1.0)
            r.worker.kill()
        r.worker.start()
        r.worker.wait_ready()
        r.settle()
        # Read the state before the disk goes away.
        state, _ = compare_committed(oracle, r.state)
    verdict = judge(oracle, r.updates.received, len(stream))
    log = r.worker.log()
    print(f"{verdict.received_updates} updates ({verdict.duplicates} duplicates) for "
          f"{verdict.expected_updates}; failed commits logged: {log.count(FAILED)}")
    verdict.assert_clean()
    assert not state, state[:3]
    assert not r.dead.received
    # Says why: the operator must read the real cause, not a follow-up error.
    failures = [line for line in log.splitlines() if FAILED in line]
    assert "not acknowledged" in failures[0]
    assert all(FULL in line for line in failures), f"the log hides the cause: {failures[0]}"
