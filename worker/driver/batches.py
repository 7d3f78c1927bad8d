"""The batches in flight, in order: published within the confirm window, then
committed in groups (the oldest batches whose messages are all confirmed).

Also what makes a batch unfit to ack although confirmed: a message the broker
returned as unroutable that would be lost (:func:`unroutable`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial

from worker.accounts import AccountCache
from worker.amqp.topology import Topology
from worker.committer import Committer
from worker.driver.confirms import ConfirmWindow
from worker.driver.state import Batch
from worker.errors import StoreError
from worker.link import Outgoing, Returned
from worker.pipeline import Plan
from worker.rules_in_force import RulesInForce

# Publishes per ioloop callback: bounded so heartbeats and confirms keep flowing.
PUBLISH_CHUNK = 500


class InFlight:
    """Batches started and not yet acked, oldest first; those whose commit was
    submitted and has not reported back (they may have been discarded meanwhile: then
    nothing is loaded until it reports)."""

    def __init__(self, confirms: ConfirmWindow) -> None:
        self.confirms = confirms
        self.batches: deque[Batch] = deque()
        self.committing: list[Batch] = []

    def __bool__(self) -> bool:
        return bool(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def deliveries(self) -> int:
        return sum(len(b.plan.deliveries) for b in self.batches)

    @property
    def discarded_commit_running(self) -> bool:
        committing = self.committing
        return bool(committing) and not (self.batches and self.batches[0] is committing[0])

    def add(self, plan: Plan, sweep: int | None, started: float) -> None:
        self.batches.append(Batch(plan, plan.messages(), sweep=sweep, started=started))

    def pump(self, publish: Callable[[Outgoing], int | None], window: int) -> bool:
        """Publish within the confirm window, batches in order, a chunk at most. True if
        the chunk was used up (more may follow on the next callback)."""
        confirms = self.confirms
        sent = 0
        for batch in self.batches:
            messages = batch.messages
            while (batch.published < len(messages) and sent < PUBLISH_CHUNK
                   and confirms.open(window)):
                sequence = publish(messages[batch.published])
                if sequence is None:
                    return False  # the link is down: on_lost follows
                confirms.sent(sequence)
                batch.published += 1
                sent += 1
                if batch.all_published:
                    batch.last_sequence = sequence
            if not batch.all_published:
                break
        return sent >= PUBLISH_CHUNK

    def confirmed_group(self) -> list[Batch]:
        """The oldest batches all of whose messages are published and confirmed."""
        group: list[Batch] = []
        for batch in self.batches:
            if not batch.all_published or (batch.last_sequence is not None
                                           and not self.confirms.covers(batch.last_sequence)):
                break
            group.append(batch)
        return group

    def submit(self, group: list[Batch], committer: Committer,
               done: Callable[[list[Batch], StoreError | None], None]) -> None:
        """Commit ``group`` in one transaction (group commit: under load one fsync serves
        several batches); ``done`` is told when it reports back."""
        self.committing = group
        adopted = {p: v for b in group for p, v in b.plan.adopted.items()}
        committer.submit([w for b in group for w in b.plan.writes], partial(done, group),
                         adopted or None)

    def discard(self, cache: AccountCache, in_force: RulesInForce) -> None:
        """Drop every batch: the accounts they touched reload from the store, their
        adoptions are evaluated again, in order."""
        for batch in self.batches:
            cache.forget(batch.plan.touched)
        self.batches.clear()
        in_force.rollback()


def unroutable(topology: Topology, returned: Returned) -> str | None:
    """Why a returned message makes its batch unfit to ack, or None. An update nobody
    downstream bound a queue for is not an error. A dead letter, or an event or request
    the router passed on to a partition queue (one an operator deleted), that reached no
    queue would be lost."""
    if returned.exchange == topology.dead_letter_exchange:
        return (f"a dead letter was unroutable ({returned.reply_text}): is "
                f"{topology.dead_letter_queue} bound to {topology.dead_letter_exchange}?")
    if topology.partitions and returned.exchange == topology.partitions_exchange:
        key = returned.routing_key
        queue = topology.partition_queue(int(key)) if key.isdecimal() else repr(key)
        return (f"a message routed to partition {key} was unroutable "
                f"({returned.reply_text}): is {queue} bound to "
                f"{topology.partitions_exchange}?")
    return None
