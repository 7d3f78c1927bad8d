"""Where a batch's commit runs: inline (tests, tools) or on a thread of its own (the
worker), so that a commit's fsync - which releases the GIL - does not stall the ioloop
while it could be taking confirms and evaluating the next batches.

The driver submits one commit at a time, in batch order, and learns the outcome
through ``on_done`` on its own thread (the threaded committer posts it back).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from worker.domain.account import AccountWrite
from worker.errors import StoreError
from worker.store import StateStore

log = logging.getLogger(__name__)

Done = Callable[[StoreError | None], None]


class Committer(Protocol):
    def submit(self, writes: Sequence[AccountWrite], on_done: Done,
               rules_in_force: Mapping[int, str] | None = None) -> None:
        """Commit ``writes`` (and the partitions' rules in force: StateStore.commit);
        ``on_done(None)`` after, or ``on_done(error)``."""

    def close(self) -> None: ...


class InlineCommitter:
    """Commits in the caller's thread; ``on_done`` runs before ``submit`` returns."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def submit(self, writes: Sequence[AccountWrite], on_done: Done,
               rules_in_force: Mapping[int, str] | None = None) -> None:
        try:
            self.store.commit(writes, rules_in_force)
        except StoreError as exc:
            on_done(exc)
            return
        on_done(None)

    def close(self) -> None:
        return None


class ThreadedCommitter:
    """Commits on one daemon thread, in submission order; ``post`` hands ``on_done``
    back to the driver's thread (``IOLoop.add_callback_threadsafe``)."""

    def __init__(self, store: StateStore, post: Callable[[Callable[[], None]], None]) -> None:
        self.store = store
        self.post = post
        self._jobs: queue.SimpleQueue[
            tuple[Sequence[AccountWrite], Done, Mapping[int, str] | None] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name="inbox-rules-commit",
                                        daemon=True)
        self._thread.start()

    def submit(self, writes: Sequence[AccountWrite], on_done: Done,
               rules_in_force: Mapping[int, str] | None = None) -> None:
        self._jobs.put((writes, on_done, rules_in_force))

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            writes, on_done, rules_in_force = job
            error: StoreError | None = None
            try:
                self.store.commit(writes, rules_in_force)
            except StoreError as exc:
                error = exc
            self.post(lambda on_done=on_done, error=error: on_done(error))  # type: ignore[misc]
