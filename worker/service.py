"""The worker process: a driver, its broker link, one ioloop thread, signals.

Where things live: events enter in :mod:`worker.amqp` (the link), become plans in
:mod:`worker.pipeline` (the pure batch step over :mod:`worker.domain`), and are
carried out, committed and acked by :mod:`worker.driver`.
"""

from __future__ import annotations

import logging
import signal

from pika.adapters.select_connection import IOLoop

from worker.amqp import AmqpLink
from worker.committer import ThreadedCommitter
from worker.driver import Driver, Stats
from worker.errors import RuleFileError
from worker.monitor import Monitor
from worker.observability import HealthState, Metrics, StatusLine, start_http
from worker.rulebook import CompiledRules, load_rules
from worker.settings import Settings
from worker.store import StateStore
from worker.store.sqlite import SqliteStore
from worker.topology import Topology

log = logging.getLogger(__name__)


class Worker:
    """One driver on one connection, run by the thread that calls :meth:`run`."""

    def __init__(self, settings: Settings, rules: CompiledRules, store: StateStore,
                 ioloop: IOLoop | None = None) -> None:
        self.settings = settings
        self.store = store
        self.ioloop = ioloop or IOLoop()
        topology = Topology.from_settings(settings)
        self.committer = ThreadedCommitter(store, self.ioloop.add_callback_threadsafe)
        self.driver = Driver(settings, rules, store, topology, self.committer)
        self.link = AmqpLink(settings, topology, self.driver, self.ioloop)
        self.driver.attach(self.link)
        self.metrics = Metrics()
        self.health = HealthState()
        self.monitor = Monitor(self.driver, lambda: self.link.ready, self.metrics,
                               self.health, StatusLine(settings.status_interval))

    @property
    def stats(self) -> Stats:
        return self.driver.stats

    @property
    def rules(self) -> CompiledRules:
        rules = self.driver.rules
        assert isinstance(rules, CompiledRules)
        return rules

    def run(self) -> None:
        """Block, running the ioloop, until :meth:`stop` has finished its work."""
        http = start_http(self.settings, self.metrics, self.health)
        self.monitor.run_every(self.ioloop.call_later)
        self.link.start()
        try:
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

    def reload_rules(self) -> bool:
        """Load the rule directory again; accounts follow the new rules from now on.

        A rule set that does not validate never goes live: the worker keeps the rules
        it has and logs every problem as file:line. True if new rules were adopted.
        """
        current = self.driver.rules.version
        try:
            rules = load_rules(self.settings.rules_dir)
        except RuleFileError as exc:
            log.error("rules not reloaded, keeping version %s; the new files do not "
                      "validate:\n%s", current, exc)
            return False
        if rules.version == current:
            log.info("rules reloaded: unchanged (version %s)", rules.version)
            return False
        self.driver.adopt(rules)
        return True


def serve(settings: Settings, rules: CompiledRules) -> Stats:
    """Run the worker in this thread until SIGTERM or SIGINT; the state store is closed
    on the way out."""
    store = SqliteStore(settings.state_path)
    try:
        worker = Worker(settings, rules, store)
        log.info("rules version %s; state %s", rules.version, settings.state_path)
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
        store.close()
