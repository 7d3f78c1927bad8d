"""Time crossings (docs/time.md): ticks sent to the accounts due, and standby probes.

Under any rules: snoozes fall due whatever the rules test. The store is asked which
accounts have a crossing due by the worker's clock; each is sent a tick through its
queue (worker.control), behind whatever is there already, and the crossing is made
when the tick comes back, in the account's order, by whoever owns the account then. A
worker that has received nothing on its connection first probes whether it is the
active consumer.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from worker.control import Tick, chunks, tick_message
from worker.driver.adoption import partition_route
from worker.driver.host import DriverHost
from worker.driver.state import Phase
from worker.errors import StoreError

log = logging.getLogger("worker.driver")

# The store is asked for the accounts due at least this often (seconds), and sooner
# when it knows the next one...
TIME_POLL = 1.0
# ...at most this many at a look...
CROSS_PAGE = 1000
# ...and an account with a tick under way is not sent another for this long (seconds):
# its tick may have been lost with a connection, or taken by another worker.
TICK_PATIENCE = 30.0
# A worker that has received nothing since it connected cannot tell whether it is the
# active consumer or a hot standby; every this many seconds it sends its input queue an
# empty tick, which only the active consumer receives (SQLite store: one active worker).
TICK_INTERVAL = 5.0
# Accounts with a tick under way, at most (beyond: no new ticks until some come back).
MAX_TICKED = 10_000


class TimeCrossings:
    """The timer of the next look at the store, the timer of the next standby probe,
    and the accounts with a tick under way (when it was sent, time.monotonic())."""

    def __init__(self, host: DriverHost) -> None:
        self.host = host
        self.timer: object | None = None
        self.probe_timer: object | None = None
        self.ticked: dict[str, float] = {}

    def start(self) -> None:
        """Rules with time facts: look for due crossings at once, then now and then; a
        worker that may be a standby first finds out whether it is the active consumer.
        Nothing due costs one indexed query a second."""
        self.cancel()
        host = self.host
        if host.link is None or host.phase is not Phase.CONSUMING:
            return
        self.timer = host.linked().call_later(0, self.on_timer)
        if not host.topology.partitions and not host.active:
            # Not at once: a worker that receives anything meanwhile knows it is the
            # active one, and a queue with a backlog is not sent a probe to sit behind it.
            self.probe_timer = host.linked().call_later(TICK_INTERVAL, self.send_probe)

    def cancel(self) -> None:
        link = self.host.link
        for timer in (self.timer, self.probe_timer):
            if timer is not None and link is not None:
                link.cancel_timer(timer)
        self.timer = self.probe_timer = None

    def committed(self, accounts: list[str]) -> None:
        """Ticks that came back and were committed: those accounts may be sent another."""
        for account_id in accounts:
            self.ticked.pop(account_id, None)

    def route(self, account_id: str) -> tuple[str, str]:
        """Where an account's tick goes: its partition's queue, or the one input queue."""
        return partition_route(self.host.topology, self.host.in_force.partition(account_id))

    def send_probe(self) -> None:
        """Send the input queue an empty tick: the broker gives it to the active
        consumer only, so receiving it (or anything) tells this worker it is the one.
        Repeated while nothing came, so a standby finds out when it takes over on an
        idle queue."""
        host = self.host
        self.probe_timer = None
        if host.phase is not Phase.CONSUMING or host.active:
            return
        # Only with the SQLite store: its one queue, partition 0.
        self._publish_tick(*partition_route(host.topology, 0), Tick(host.wall_clock(), ()))
        self.probe_timer = host.linked().call_later(TICK_INTERVAL, self.send_probe)

    def _publish_tick(self, exchange: str, routing_key: str, tick: Tick) -> bool:
        return self.host.publish_aside(tick_message(exchange, routing_key,
                                                    self.host.step.token, tick))

    def send_ticks(self) -> None:
        """Ask the store which accounts have a crossing due by the worker's clock (less
        the time lag) and send each a tick through its queue, behind whatever is there
        already: the crossing is made when the tick comes back, in the account's
        order, by whoever owns the account then (worker.control)."""
        host = self.host
        now = host.wall_clock() - timedelta(seconds=host.settings.time_lag)
        ticked = self.ticked
        if ticked:
            patience = time.monotonic() - TICK_PATIENCE
            for account_id in [a for a, sent in ticked.items() if sent < patience]:
                del ticked[account_id]
        try:
            ids = host.store.due_accounts(now, CROSS_PAGE + len(ticked))
        except StoreError as exc:
            log.warning("cannot list accounts with time crossings due: %s", exc)
            self.schedule(now)
            return
        fresh = [a for a in ids if a not in ticked][:max(0, MAX_TICKED - len(ticked))]
        routes: dict[tuple[str, str], list[str]] = {}
        for account_id in fresh:
            routes.setdefault(self.route(account_id), []).append(account_id)
        sent_at = time.monotonic()
        for (exchange, routing_key), accounts in routes.items():
            for page in chunks(sorted(accounts)):
                if not self._publish_tick(exchange, routing_key, Tick(now, page)):
                    return
                host.stats.ticks_sent += 1
                ticked.update(dict.fromkeys(page, sent_at))
        self.schedule(now)

    def schedule(self, now: datetime) -> None:
        """The next look: when the store says the next crossing is due, TIME_POLL at
        most (another worker's accounts may become ours, a commit may bring one)."""
        host = self.host
        if host.phase is not Phase.CONSUMING:
            return
        if self.timer is not None:
            host.linked().cancel_timer(self.timer)
            self.timer = None
        delay = TIME_POLL
        try:
            upcoming = host.store.next_due()
        except StoreError:
            upcoming = None  # the next look says why
        if upcoming is not None and upcoming > now:
            delay = min(delay, (upcoming - now).total_seconds())
        self.timer = host.linked().call_later(delay, self.on_timer)

    def on_timer(self) -> None:
        """Look now (the look schedules the next one); not the active consumer (yet):
        come back later."""
        host = self.host
        self.timer = None
        if host.phase is not Phase.CONSUMING:
            return
        if host.may_act():
            self.send_ticks()
        if self.timer is None and host.phase is Phase.CONSUMING:
            self.timer = host.linked().call_later(TIME_POLL, self.on_timer)
