"""What ``inbox-rules watch`` follows: one agent's :class:`~contracts.client.InboxMirror`,
with the worker's settings (exchange names, TLS, heartbeat, a name the broker shows),
and the pace of a terminal (at most one redraw every ``render_interval`` seconds)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from contracts.client import Inbox, InboxMirror, MirrorError
from worker.amqp.connection import connection_parameters
from worker.amqp.io import blocking_connection
from worker.amqp.topology import Topology
from worker.errors import InboxRulesError
from worker.settings import Settings


class WatchError(InboxRulesError):
    """The watch cannot go on: no broker, no worker answering, or a broken reply."""


OnChange = Callable[[Inbox, str], None]


class Watcher:
    """One agent's inbox, kept by an :class:`InboxMirror` on a thread of its own.

    :meth:`open` starts the mirror and waits for its first snapshot (:class:`WatchError`
    if none comes); :attr:`view` is the inbox as it is; :meth:`run` calls
    ``on_change(view, status)`` whenever the inbox or the mirror's status changed, at
    most every ``render_interval`` seconds, until ``stop()``.
    """

    def __init__(self, settings: Settings, account_id: str, agent_id: str, *,
                 categories: Iterable[str] | None = None, timeout: float = 10.0,
                 page_limit: int | None = None, on_change: OnChange | None = None,
                 render_interval: float = 0.25) -> None:
        self.agent_id = agent_id
        self.categories = tuple(categories) if categories else None
        self.on_change = on_change
        self.render_interval = render_interval
        self._changed = threading.Event()
        topology = Topology.from_settings(settings)  # the worker's names, from the settings
        try:
            self.mirror = InboxMirror(
                connection_parameters(settings, "inbox-rules watch"), account_id=account_id,
                agent_ids=[agent_id], on_change=lambda _agent, _update: self._changed.set(),
                categories=self.categories, timeout=timeout, page_limit=page_limit,
                updates_exchange=topology.updates_exchange,
                requests_exchange=topology.requests_exchange,
                reconnect_max_delay=settings.reconnect_max_delay, connect=blocking_connection)
        except ValueError as exc:
            raise WatchError(f"bad watch request: {exc}") from exc

    @property
    def view(self) -> Inbox:
        return self.mirror.inbox(self.agent_id)

    @property
    def status(self) -> str:
        return self.mirror.status

    @property
    def snapshots(self) -> int:
        """Snapshots loaded: 1, then one per resync or reconnect."""
        return self.view.snapshots

    def __enter__(self) -> Watcher:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def open(self) -> Inbox:
        """Start following; the inbox once its first snapshot is in."""
        try:
            self.mirror.start()
        except MirrorError as exc:
            raise WatchError(str(exc)) from exc
        return self.view

    def sync(self) -> Inbox:
        """The inbox, exact as of its ``seq`` (:meth:`open` waited for the snapshot)."""
        return self.view

    def close(self) -> None:
        self.mirror.close()

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Until ``stop()`` (or Ctrl-C): show every change, at the terminal's pace. The
        mirror resyncs and reconnects by itself meanwhile."""
        shown: str | None = None
        last = 0.0
        while not stop():
            self._changed.wait(self.render_interval)
            status = self.mirror.status
            if self.on_change is None or not (self._changed.is_set() or status != shown):
                continue
            time.sleep(max(0.0, last + self.render_interval - time.monotonic()))
            self._changed.clear()
            shown, last = status, time.monotonic()
            self.on_change(self.view, status)
