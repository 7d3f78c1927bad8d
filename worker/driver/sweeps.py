"""Rules sweeps: a partition's stored accounts re-categorised under its rules in force.

After a partition adopts new rules (or is taken from another worker, who may have left
a sweep unfinished), its accounts follow before their next event, and the rest by a
paced sweep: a page of accounts still under other rules per batch, sharing the loop
with events (never two sweep batches in a row while events wait).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from worker.driver.host import DriverHost
from worker.driver.state import Batch
from worker.errors import StoreError
from worker.pipeline import Sweep

log = logging.getLogger("worker.driver")

# Accounts asked of the store per rules-sweep batch.
SWEEP_PAGE = 200


class Sweeps:
    """Per partition swept, the next account id to look at."""

    def __init__(self, host: DriverHost) -> None:
        self.host = host
        self.after: dict[int, str] = {}
        self.last_was_sweep = False

    def start(self, partition: int) -> None:
        """Sweep ``partition`` from its first account."""
        self.after[partition] = ""

    def drop(self, partition: int) -> None:
        self.after.pop(partition, None)

    def wanted(self, in_flight: Iterable[Batch], events_waiting: bool) -> bool:
        """A sweep batch goes next: one is due, none is in flight, and the last batch
        was not a sweep while events wait."""
        due = (self.host.may_act() and bool(self.after)
               and not any(b.sweep is not None for b in in_flight))
        return due and (not self.last_was_sweep or not events_waiting)

    def start_batch(self, events_waiting: bool) -> bool:
        """One page of a partition's accounts still under other rules than its queue's,
        re-categorised. Where this falls among an account's events does not matter: an
        account adopts its partition's rules before anything else touches it."""
        host = self.host
        if not host.check_takeover():
            return False
        partition, after = next(iter(self.after.items()))
        version = host.in_force.version_of(partition) or host.rules.version
        try:
            ids = host.store.accounts_behind(
                version, after, SWEEP_PAGE,
                partition=partition if host.topology.partitions else None)
        except StoreError as exc:
            host.back_off(f"cannot list accounts to re-categorise: {exc}")
            return False
        if not ids:
            if after:
                log.info("every stored account of partition %d follows rules version %s",
                         partition, version)
            del self.after[partition]
            return events_waiting or bool(self.after)
        started = time.monotonic()
        plan = host.step.run([], host.cache, host.in_force, sweep=Sweep(tuple(ids)))
        self.last_was_sweep = True
        if not plan.swept_accounts and plan.stalled is not None:
            host.back_off(f"cannot load state: {plan.stalled}")
            return False
        host.launch(plan, sweep=partition, started=started)
        return True

    def committed(self, batch: Batch) -> int:
        """A sweep batch committed: the partition's sweep goes on after its last account.
        The number of accounts it swept."""
        swept = batch.plan.swept_accounts
        if batch.sweep is None or not swept:
            return 0
        after = self.after.get(batch.sweep)
        if after is not None:
            self.after[batch.sweep] = max(after, swept[-1])
        return len(swept)
