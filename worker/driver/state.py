"""What the driver's parts share: its phase, its counters and a batch on its way."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

from worker.link import Outgoing
from worker.pipeline import DeadLetter, Plan


class Phase(Enum):
    OFFLINE = "offline"  # no link: connecting, or reconnecting after a loss
    CONSUMING = "consuming"  # link up, deliveries flowing
    DRAINING = "draining"  # stop asked: finishing the batches out, then leaving
    HANDING_OVER = "handing over"  # partitions lost: finishing the batches out, reconnect
    STOPPED = "stopped"


WORKING = (Phase.CONSUMING, Phase.DRAINING, Phase.HANDING_OVER)


@dataclass
class Stats:
    """Counters for operators, tests and the benchmark (counted once per commit)."""

    consumed: int = 0
    acked: int = 0
    updates: int = 0
    dead_lettered: int = 0
    commits: int = 0
    failed_batches: int = 0
    redelivered: int = 0
    swept_accounts: int = 0
    crossed_accounts: int = 0  # accounts looked at by ticks (time crossings)
    ticks_sent: int = 0


@dataclass
class Batch:
    """A plan on its way: published, confirmed, then committed and acked."""

    plan: Plan
    messages: list[Outgoing]
    sweep: int | None = None  # the partition a rules sweep batch covers
    published: int = 0
    last_sequence: int | None = None  # publish number of its last message
    started: float = field(default_factory=time.monotonic)
    confirmed: float = 0.0  # when the broker had confirmed all of it

    @property
    def all_published(self) -> bool:
        return self.published == len(self.messages)


# Batch timings and dead-letter reasons kept for the monitor between two of its reads.
MAX_KEPT = 10_000


class Report:
    """Since the monitor last asked: dead-letter reasons and (batch, confirm) timings
    of committed batches (bounded even with no monitor reading)."""

    def __init__(self) -> None:
        self.dead_letter_reasons: list[str] = []
        self.batch_timings: list[tuple[float, float]] = []

    def finished(self, batch: Batch) -> None:
        plan = batch.plan
        if len(self.batch_timings) < MAX_KEPT:
            # Event to confirm: from the arrival of the batch's oldest event.
            arrived = plan.deliveries[0].received if plan.deliveries else batch.started
            self.batch_timings.append((time.monotonic() - batch.started,
                                       batch.confirmed - (arrived or batch.started)))
        if plan.dead_letters and len(self.dead_letter_reasons) < MAX_KEPT:
            self.dead_letter_reasons.extend(o.reason for o in plan.outcomes
                                            if isinstance(o, DeadLetter))

    def take_dead_letter_reasons(self) -> list[str]:
        reasons, self.dead_letter_reasons = self.dead_letter_reasons, []
        return reasons

    def take_batch_timings(self) -> list[tuple[float, float]]:
        timings, self.batch_timings = self.batch_timings, []
        return timings
