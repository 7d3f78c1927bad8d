"""What the driver's parts see of the driver (:class:`worker.driver.core.Driver`).

Each part (time crossings, rules sweeps, adoptions) is given the driver as a
:class:`DriverHost`: the link, the store, the rules in force and the few decisions that
stay with the driver (whether it may act, backing off, launching a batch). A test may
give a part anything that has these.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from worker.accounts import AccountCache
from worker.amqp.topology import Topology
from worker.domain.rules import Rules
from worker.driver.state import Phase, Stats
from worker.link import Link, Outgoing
from worker.pipeline import Plan, Step
from worker.rules_in_force import RulesInForce
from worker.settings import Settings
from worker.store import StateStore


class DriverHost(Protocol):
    phase: Phase
    link: Link | None
    settings: Settings
    store: StateStore
    topology: Topology
    in_force: RulesInForce
    cache: AccountCache
    step: Step
    stats: Stats
    wall_clock: Callable[[], datetime]
    active: bool  # deliveries arrived on this connection: the active consumer

    @property
    def rules(self) -> Rules: ...

    def linked(self) -> Link:
        """The link attached."""

    def may_act(self) -> bool:
        """Only the active consumer sends ticks and adoptions and sweeps."""

    def publish_aside(self, message: Outgoing) -> bool:
        """Publish a tick or an adoption (its confirm concerns no batch); False: the
        link is down."""

    def back_off(self, why: str) -> None:
        """Try again after a delay."""

    def check_takeover(self) -> bool:
        """False if the cache may not be used (the store failed: backing off)."""

    def launch(self, plan: Plan, sweep: int | None, started: float) -> None:
        """Put a batch in flight."""
