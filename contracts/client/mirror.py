""":class:`InboxMirror`: the inboxes of some agents of one account, kept exact from the
broker, on a thread of its own or on the caller's connection."""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import pika
import pika.connection
import pika.exceptions
from pydantic import ValidationError

from contracts.asyncapi_parts.common import REQUESTS_EXCHANGE, UPDATES_EXCHANGE
from contracts.client.inbox import Inbox, InboxKeeper
from contracts.client.link import Link, MirrorError, Options
from contracts.requests import (
    CATEGORY_PATTERN,
    DEFAULT_SNAPSHOT_LIMIT,
    SnapshotRequest,
    describe_request_error,
)
from contracts.updates import CategoryUpdate

log = logging.getLogger("contracts.client")

OnChange = Callable[[str, CategoryUpdate | None], None]
# What a lost or refused connection raises (pika wraps a reset during the handshake in
# a ValueError): each means "connect again".
LINK_ERRORS = (pika.exceptions.AMQPError, OSError, ValueError)
PUMP = 0.1  # seconds of I/O between two looks at close()
VIEW_PREFIX = "view:"  # an account's or an agent's view is published as view:<view_id>


class InboxMirror:
    """Keeps the inboxes of ``agent_ids`` (agents of ``account_id``) exact.

    ``source`` is where the broker is:

    - a URL (``amqp://…``, ``amqps://…``) or pika connection parameters: the mirror
      connects by itself and runs on a thread of its own, reconnecting with backoff
      (and taking new snapshots) whenever the connection is lost;
    - a ``pika.BlockingConnection``: the mirror opens a channel of its own on it and
      works in the caller's thread, whenever the caller runs the connection's I/O
      (:meth:`process`, or ``process_data_events``/``start_consuming`` of its own).
      Reconnecting is the caller's: after a lost connection, :meth:`reattach` a new one.

    ``on_change(agent_id, update)`` is called after every update applied, and with
    ``None`` after a snapshot replaced the inbox; on the thread that does the I/O,
    outside the mirror's lock (it may call :meth:`inbox`). ``categories`` keeps only
    the conversations in at least one of them (counts cover the whole inbox; the
    worker filters the snapshots too, views' ``view:<id>`` included);
    ``timeout`` is how long a snapshot reply may take before it is asked for again;
    ``page_limit`` the conversations per snapshot page (default: the worker's).
    """

    def __init__(self, source: str | pika.connection.Parameters | Any, *, account_id: str,
                 agent_ids: Iterable[str], on_change: OnChange | None = None,
                 categories: Iterable[str] | None = None, timeout: float = 10.0,
                 page_limit: int | None = None, updates_exchange: str = UPDATES_EXCHANGE,
                 requests_exchange: str = REQUESTS_EXCHANGE,
                 name: str = "inbox-rules client", reconnect_max_delay: float = 30.0,
                 connect: Callable[[pika.connection.Parameters], Any] = pika.BlockingConnection,
                 ) -> None:
        agents = list(dict.fromkeys(agent_ids))
        wanted = tuple(categories) if categories else None
        if not agents:
            raise ValueError("agent_ids: name at least one agent")
        asked = request_filter(wanted)
        for agent_id in agents:
            try:  # the contract's own checks: ids fit a routing key, names are categories
                SnapshotRequest(account_id=account_id, agent_id=agent_id,
                                categories=list(asked) if asked else None,
                                limit=page_limit or DEFAULT_SNAPSHOT_LIMIT)
            except ValidationError as exc:
                raise ValueError(describe_request_error(exc)) from exc
        self.on_change = on_change
        self.reconnect_max_delay = reconnect_max_delay
        self.lock = threading.RLock()
        self.keepers: Mapping[str, InboxKeeper] = {
            agent_id: InboxKeeper(account_id, agent_id, categories=wanted)
            for agent_id in agents}
        self.connections = 0  # links set up: 1, then one more per reconnect
        self._changed = threading.Condition(self.lock)
        self._problem: str | None = None
        self._retry_at: float | None = None
        self._link: Link | None = None
        self._closed = False
        self._started = False
        self._connect = connect
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._connection: Any = None
        if isinstance(source, str | pika.connection.Parameters):
            self._parameters = (pika.URLParameters(source) if isinstance(source, str)
                                else source)
            if not self._parameters.client_properties:
                self._parameters.client_properties = {"connection_name": name}
            where = describe(self._parameters)
        else:
            self._parameters = None
            self._connection = source
            where = "the broker of the caller's connection"
        self.options = Options(account_id, asked, page_limit, timeout, updates_exchange,
                               requests_exchange, where)

    # -- reading --------------------------------------------------------------------
    @property
    def agent_ids(self) -> list[str]:
        return list(self.keepers)

    def inbox(self, agent_id: str) -> Inbox:
        """``agent_id``'s inbox as it is: a frozen picture, safe on any thread."""
        keeper = self.keepers.get(agent_id)
        if keeper is None:
            raise KeyError(f"{agent_id!r} is not one of the mirror's agents "
                           f"{self.agent_ids}")
        with self.lock:
            return keeper.picture()

    @property
    def synced(self) -> bool:
        """Every inbox holds a snapshot and no resync is pending."""
        with self.lock:
            return all(keeper.synced for keeper in self.keepers.values())

    @property
    def status(self) -> str:
        """What the mirror is doing, for a person: ``live``, ``loading snapshot``,
        ``resyncing`` (with the problem, if one holds it up), ``reconnecting in …``."""
        with self.lock:
            problem = f" ({self._problem})" if self._problem else ""
            if self._closed:
                return "closed"
            if self._retry_at is not None:
                return f"reconnecting in {max(0.0, self._retry_at - time.monotonic()):.1f} " \
                       f"s{problem}"
            if self._link is None:
                return "connecting"
            if self.synced:
                return "live"
            first = any(keeper.snapshots == 0 for keeper in self.keepers.values())
            return ("loading snapshot" if first else "resyncing") + problem

    # -- what a link reports ---------------------------------------------------------
    def _on_changed(self, agent_id: str, updates: Sequence[CategoryUpdate | None]) -> None:
        if None in updates:  # a snapshot: a problem that held it up is over
            with self._changed:
                if self.synced:
                    self._problem = None
                self._changed.notify_all()
        if self.on_change is None:
            return
        for update in updates:
            try:
                self.on_change(agent_id, update)
            except Exception:  # a caller's bug must not stop the mirror
                log.exception("on_change(%r, …) failed", agent_id)

    def _on_problem(self, text: str) -> None:
        with self._changed:
            self._problem = text
            self._changed.notify_all()

    # -- starting and ending --------------------------------------------------------
    def __enter__(self) -> InboxMirror:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def start(self, wait: bool = True) -> None:
        """Bind the queue, ask for every agent's snapshot, and (``wait``) return once
        every inbox holds one. :class:`MirrorError` (the mirror closed) if the broker
        or a worker fails the first time: no connection, a request returned, a reply
        late by ``timeout``. Without ``wait``, it returns at once and keeps trying."""
        if self._started:
            raise MirrorError("the mirror was started already")
        self._started = True
        if self._parameters is not None:
            self._thread = threading.Thread(target=self._run, name="inbox-mirror",
                                            daemon=True)
            self._thread.start()
        else:
            self._attach(self._connection)
        if wait:
            self._wait_synced()

    def _wait_synced(self) -> None:
        problem: str | None = None
        while problem is None:
            if self._thread is None:
                self.process(0.05)
            with self._changed:
                if self._thread is not None:
                    self._changed.wait(0.05)
                if self.synced:
                    return
                problem = self._problem
        self.close()
        raise MirrorError(problem)

    def process(self, time_limit: float = 0.0) -> None:
        """With the caller's connection: run its I/O for up to ``time_limit`` seconds
        (the mirror's and the caller's own consumers and timers). :class:`MirrorError`
        if the broker closed the mirror's channel; pika's errors if the connection
        is lost."""
        if self._parameters is not None:
            raise MirrorError("this mirror runs on a thread of its own: nothing to process")
        if self._link is None:
            raise MirrorError("not attached: call start() (or reattach())")
        if not self._connection.is_open:
            raise MirrorError("the connection is closed: reattach() an open one")
        self._connection.process_data_events(time_limit=time_limit)
        self._link.check()

    def reattach(self, connection: Any) -> None:
        """With the caller's connection: go on on ``connection`` after the old one was
        lost. A new queue is bound and every inbox resyncs (what it shows stays until
        then)."""
        if self._parameters is not None:
            raise MirrorError("this mirror reconnects by itself")
        self._detach()
        self._connection = connection
        self._attach(connection)

    def close(self) -> None:
        """Stop: the queue and the mirror's channel go (the caller's connection stays
        open); with a URL, the thread ends and the connection closes."""
        with self.lock:
            self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(30)
        if self._parameters is None:
            self._detach()

    # -- the link -------------------------------------------------------------------
    def _attach(self, connection: Any) -> None:
        with self.lock:
            for keeper in self.keepers.values():
                keeper.reset()  # a new queue: what the old one held may be lost
            self._link = Link(connection, self.options, self.keepers, self.lock,
                              self._on_changed, self._on_problem)
            self.connections += 1
            self._retry_at = None

    def _detach(self) -> None:
        with self.lock:
            link, self._link = self._link, None
        if link is not None:
            link.close()

    def _run(self) -> None:
        """The mirror's thread: connect, work, and after a loss connect again."""
        attempt = 0
        while not self._stop.is_set():
            problem = self._session()
            if self._stop.is_set():
                break
            attempt = attempt + 1 if self.connections == 0 or not self.synced else 1
            # Doubling from 0.25 s up to the cap, jittered (many clients, one broker).
            delay = min(self.reconnect_max_delay, 0.25 * 2.0 ** min(attempt - 1, 20)) \
                * random.uniform(0.5, 1.0)
            log.warning("%s: connecting again in %.1f s", problem, delay)
            with self._changed:
                self._problem, self._retry_at = problem, time.monotonic() + delay
                self._changed.notify_all()
            self._stop.wait(delay)

    def _session(self) -> str:
        """One connection, until it is lost (what happened) or close() is called."""
        assert self._parameters is not None
        try:
            connection = self._connect(self._parameters)
        except LINK_ERRORS as exc:
            return f"cannot connect to {self.options.where}: {exc!r}"
        try:
            self._attach(connection)
            link = self._link
            assert link is not None
            while not self._stop.is_set():
                connection.process_data_events(time_limit=PUMP)
                link.check()
            return "closed"
        except MirrorError as exc:
            return str(exc)
        except LINK_ERRORS as exc:
            return f"lost the connection to {self.options.where}: {exc!r}"
        except Exception as exc:  # a bug must not end the thread unseen
            log.exception("the mirror's connection failed")
            return f"the mirror failed: {exc!r}"
        finally:
            self._detach()
            if connection.is_open:
                try:
                    connection.close()
                except LINK_ERRORS:
                    log.debug("closing the mirror's connection failed", exc_info=True)


def request_filter(categories: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The snapshot requests' filter for ``categories`` (the rules' names and views'
    ``view:<view_id>`` alike); ``ValueError`` for a name that is neither."""
    if not categories:
        return None
    for name in categories:
        if not re.fullmatch(CATEGORY_PATTERN, name):
            raise ValueError(f"categories: {name!r} is neither a category name nor "
                             f"{VIEW_PREFIX}<view_id> ({CATEGORY_PATTERN})")
    return categories


def describe(parameters: pika.connection.Parameters) -> str:
    """Where ``parameters`` lead, as a URL with the password hidden."""
    scheme = "amqps" if parameters.ssl_options else "amqp"
    user = quote(parameters.credentials.username, safe="")
    return (f"{scheme}://{user}:***@{parameters.host}:{parameters.port}/"
            f"{quote(parameters.virtual_host, safe='')}")

