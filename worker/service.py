"""The worker process: a driver, its broker link, one ioloop thread, signals.

Where things live: events enter in :mod:`worker.amqp.link` (the link), become plans in
:mod:`worker.pipeline` (the pure batch step over :mod:`worker.domain`), and are
carried out, committed and acked by :mod:`worker.driver`.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import sys
from typing import TYPE_CHECKING

from pika.adapters.select_connection import IOLoop

from worker.amqp.link import AmqpLink
from worker.amqp.topology import Topology
from worker.cluster.membership import Coordinator, Liveness
from worker.committer import ThreadedCommitter
from worker.driver import Driver, Phase, Stats
from worker.errors import RuleFileError, StoreError
from worker.monitor import Monitor
from worker.observability import HealthState, HttpServer, Metrics, StatusLine, start_http
from worker.rule_versions import LiveRulesFollower, keep_directory
from worker.rulebook import CompiledRules
from worker.settings import Settings
from worker.store import StateStore
from worker.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from worker.store.postgres import PostgresStore

log = logging.getLogger(__name__)

# Seconds a thread may hold the GIL while another waits (Python's default: 0.005).
GIL_SWITCH_INTERVAL = 0.0005
# RabbitMQ's heartbeat timeout, seconds: the one negotiated when INBOX_RULES_HEARTBEAT
# is 0 (the broker's).
BROKER_HEARTBEAT = 60


class Worker:
    """One driver on one connection, run by the thread that calls :meth:`run`."""

    def __init__(self, settings: Settings, rules: CompiledRules, store: StateStore,
                 ioloop: IOLoop | None = None, *,
                 follower: LiveRulesFollower | None = None) -> None:
        self.settings = settings
        self.store = store
        # The store's deployed rules (inbox-rules rules deploy), polled on the ioloop.
        self.follower = follower
        self._follow_failing = False
        self.ioloop = ioloop or IOLoop()
        topology = Topology.from_settings(settings)
        self.committer = ThreadedCommitter(store, self.ioloop.add_callback_threadsafe)
        self.driver = Driver(settings, rules, store, topology, self.committer)
        self.link = AmqpLink(settings, topology, self.driver, self.ioloop)
        self.driver.attach(self.link)
        self.metrics = Metrics()
        self.health = HealthState()
        self.monitor = Monitor(self.driver, lambda: self.link.ready, self.metrics,
                               self.health, StatusLine(settings.status_interval),
                               lambda: self.link.blocked)

    @property
    def stats(self) -> Stats:
        return self.driver.stats

    @property
    def rules(self) -> CompiledRules:
        rules = self.driver.rules
        assert isinstance(rules, CompiledRules)
        return rules

    def run(self) -> None:
        """Block, running the ioloop, until :meth:`stop` has finished its work. A start
        that fails (the HTTP port taken: :class:`SettingsError`) still closes the
        commit thread and the ioloop."""
        http: HttpServer | None = None
        try:
            http = start_http(self.settings, self.metrics, self.health)
            self.monitor.run_every(self.ioloop.call_later)
            if self.follower is not None and self.settings.rules_poll_interval > 0:
                self.ioloop.call_later(self.settings.rules_poll_interval, self.follow_rules)
            self.link.start()
            self.ioloop.start()
        finally:
            self.committer.close()  # a commit under way finishes first
            self.ioloop.close()  # its wake-up socket pair
            if http is not None:
                http.close()

    def request_stop(self) -> None:
        """Thread- and signal-safe: ask the ioloop thread to stop gracefully."""
        self.ioloop.add_callback_threadsafe(self.driver.stop)

    def request_reload(self) -> None:
        """Thread- and signal-safe: ask the ioloop thread to reload the rule files."""
        self.ioloop.add_callback_threadsafe(self.reload_rules)

    def follow_rules(self) -> None:
        """Poll the store's live rules version (on the ioloop, every
        ``rules_poll_interval`` seconds) and adopt a new one the way SIGHUP does: at a
        batch boundary, every account re-categorised. A store that cannot be read is
        logged once until it can again; the rules in hand stay live meanwhile."""
        assert self.follower is not None
        try:
            rules = self.follower.poll()
        except StoreError as exc:
            if not self._follow_failing:
                log.warning("cannot read the deployed rules version (%s); keeping version "
                            "%s, looking again every %.0f s", exc, self.follower.version,
                            self.settings.rules_poll_interval)
            self._follow_failing = True
            rules = None
        else:
            self._follow_failing = False
        if rules is not None:
            self.driver.adopt(rules)
        if self.driver.phase is not Phase.STOPPED:
            self.ioloop.call_later(self.settings.rules_poll_interval, self.follow_rules)

    def reload_rules(self) -> bool:
        """Load the rule directory again; accounts follow the new rules from now on.

        A rule set that does not validate never goes live: the worker keeps the rules
        it has and logs every problem as file:line. True if new rules were adopted.

        Once rules were deployed to the state store, the store decides for the whole
        fleet: SIGHUP is then refused with a warning (reloading one host's directory
        would set it apart from the others until the next deploy). Deploy the
        directory instead (``inbox-rules rules deploy DIR``).
        """
        if self.follower is not None:
            try:
                deployed = self.follower.store.live_version()
            except StoreError as exc:
                log.error("SIGHUP ignored: cannot tell whether rules are deployed in the "
                          "state store (%s)", exc)
                return False
            if deployed is not None:
                log.warning("SIGHUP ignored: rules version %s is deployed in the state "
                            "store and every worker follows it; to change the rules, run "
                            "'inbox-rules rules deploy DIR' (or 'rules rollback')", deployed)
                return False
        current = self.driver.rules.version
        try:
            rules = keep_directory(self.store, self.settings.rules_dir)
        except RuleFileError as exc:
            log.error("rules not reloaded, keeping version %s; the new files do not "
                      "validate:\n%s", current, exc)
            return False
        except StoreError as exc:
            log.error("rules not reloaded, keeping version %s; the state store cannot "
                      "keep the new files: %s", current, exc)
            return False
        if rules.version == current:
            log.info("rules reloaded: unchanged (version %s)", rules.version)
            return False
        self.driver.adopt(rules)
        return True


def serve(settings: Settings, rules: CompiledRules) -> Stats:
    """Run the worker in this thread until SIGTERM or SIGINT; the state store is closed
    on the way out."""
    # The commit thread gives the GIL up around every SQLite call and must get it back
    # from the ioloop thread, which holds it nearly all the time under load: at the
    # default 5 ms slices a batch's commit took 9 ms on average (21 ms at p90) for 2 ms
    # of its own work, and the batch's ack waited for it. 0.5 ms slices halve that.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    worker_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    shared: PostgresStore | None = None
    if settings.store_url:
        from worker.store.postgres import PostgresStore  # psycopg: only when used

        shared = PostgresStore(settings.store_url, settings.partitions, worker_id=worker_id)
    store: SqliteStore | PostgresStore = (shared if shared is not None
                                          else SqliteStore(settings.state_path))
    coordinator: Coordinator | None = None
    try:
        # Kept in the store: a partition may come to be in force under them.
        rules = keep_directory(store, settings.rules_dir, expected=rules)
        # A deployed live version takes precedence over the rule directory (logged).
        follower = LiveRulesFollower(store, rules)
        rules = follower.start(rules)
        worker = Worker(settings, rules, store, follower=follower)
        if shared is not None:
            lease = settings.member_lease
            driver = worker.driver
            # The categorisers in use (one comes or goes with new rules: the sum
            # changes, which reads as progress once).
            liveness = Liveness(lambda: worker.health.loop_turned_at,
                                lambda: driver.in_force.progress, lease / 2,
                                settings.heartbeat or BROKER_HEARTBEAT)
            coordinator = Coordinator(shared, worker_id, settings.partitions,
                                      lease, driver.assign,
                                      worker.ioloop.add_callback_threadsafe, liveness)
            worker.driver.ownership.on_released = coordinator.released
            worker.driver.on_fenced = coordinator.fenced
            coordinator.start()
            log.info("worker %s: state in PostgreSQL, %d partitions shared with the other "
                     "workers", worker_id, settings.partitions)
        else:
            log.info("state %s (one active worker; others wait as hot standbys)",
                     settings.state_path)
        log.info("rules version %s", rules.version)
        previous = {sig: signal.signal(sig, lambda _sig, _frame: worker.request_stop())
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(
            signal.SIGHUP, lambda _sig, _frame: worker.request_reload())
        try:
            worker.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return worker.stats
    finally:
        if coordinator is not None:
            coordinator.stop()  # the others take our partitions at once
        store.close()
