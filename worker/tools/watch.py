"""``inbox-rules watch``: one agent's inbox, kept exactly as a downstream service should.

This is the reference downstream consumer (docs/downstream.md, docs/contract.md), written to
be copied. Three parts, each usable alone:

- :class:`InboxView`: the bookkeeping, pure and without I/O. A snapshot is the
  baseline; an update applies only if its ``seq`` is exactly the next one; a repeated
  ``update_id`` is a duplicate, an older ``seq`` is stale, a jump in ``seq`` is a gap
  (updates were missed: ask for a snapshot again). Updates that arrive while no
  snapshot is in hand are buffered and applied after it, in ``seq`` order.
- :class:`Watcher`: the transport (pika, one blocking connection, one thread). It binds
  its own queue *before* it asks for a snapshot, so no update can fall between the two.
- :func:`render_view`: the view as a rich renderable (tabs with badge counts, then the
  conversations of one tab), for ``--once`` and the live terminal.
"""

from __future__ import annotations

import logging
import time
import uuid
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pydantic import ValidationError
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from contracts.requests import SnapshotReply, SnapshotRequest, describe_request_error
from contracts.updates import CategoryUpdate
from worker.amqp.io import blocking_connection
from worker.amqp.link import connection_parameters
from worker.amqp.topology import Topology
from worker.backoff import backoff_delay
from worker.errors import InboxRulesError
from worker.settings import Settings

log = logging.getLogger("worker.watch")  # the name log filters know

# The contract's requests (docs/contract.md); the exchange is Topology.requests_exchange.
SNAPSHOT_ROUTING_KEY = "snapshot"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

# update_ids remembered to drop redeliveries: a redelivered update comes back soon
# after the original (a worker's unacknowledged batch), never thousands of updates late.
DEFAULT_DUPLICATE_WINDOW = 4096
# Updates held while a snapshot is awaited. Dropping the oldest beyond this is safe: a
# dropped update the snapshot does not cover shows up as a gap, and a gap resyncs.
DEFAULT_BUFFER_LIMIT = 100_000
PRIMARY_TAB = "primary"


class WatchError(InboxRulesError):
    """The watch cannot go on: no broker, no worker answering, or a broken reply."""


# -- what happened to one update --------------------------------------------------------
@dataclass(frozen=True)
class Applied:
    """The update was the next one: the view now shows it."""

    update: CategoryUpdate


@dataclass(frozen=True)
class Duplicate:
    """The same ``update_id`` was applied recently (a redelivery): nothing to do."""

    update_id: str
    seq: int


@dataclass(frozen=True)
class Stale:
    """``seq`` is not above the view's: the snapshot or an earlier update has it."""

    seq: int
    current: int


@dataclass(frozen=True)
class Gap:
    """``seq`` jumped past ``expected``: updates were missed. The update is NOT applied
    (it is kept for after the snapshot); ask for a new snapshot."""

    expected: int
    got: int


@dataclass(frozen=True)
class Buffered:
    """No snapshot in hand yet (starting, or resyncing): kept for after it."""

    seq: int


Result = Applied | Duplicate | Stale | Gap | Buffered


@dataclass(frozen=True)
class Loaded:
    """What one snapshot page did. ``next_after`` not None: ask for the next page with
    ``after`` = it. Once ``complete``, ``results`` are the buffered updates applied
    after the snapshot; a :class:`Gap` among them means: ask for a snapshot again."""

    complete: bool
    next_after: str | None
    results: tuple[Result, ...] = ()

    @property
    def resync_needed(self) -> bool:
        return any(isinstance(result, Gap) for result in self.results)


@dataclass(frozen=True)
class _Page:
    after: str | None
    reply: SnapshotReply


# -- the view ---------------------------------------------------------------------------
class InboxView:
    """One agent's inbox as a downstream service keeps it: no I/O, so it can be tested
    (and reused behind any transport) without a broker or a terminal.

    Feed it snapshot pages (:meth:`load_snapshot`) and updates (:meth:`apply`) in the
    order they arrive; each call says what it did. ``categories`` (optional) keeps only
    the conversations in at least one of them, like the request filter of the same
    name; badge counts always cover the whole inbox.
    """

    def __init__(self, account_id: str, agent_id: str, *,
                 categories: Iterable[str] | None = None,
                 duplicate_window: int = DEFAULT_DUPLICATE_WINDOW,
                 buffer_limit: int = DEFAULT_BUFFER_LIMIT) -> None:
        self.account_id = account_id
        self.agent_id = agent_id
        self.filter: tuple[str, ...] | None = tuple(categories) if categories else None
        self.seq = 0
        self.rules_version = ""
        self.counts: dict[str, int] = {}
        self._conversations: dict[str, tuple[str, ...]] = {}
        self._synced = False
        self._pages: list[_Page] = []
        self._buffer: deque[CategoryUpdate] = deque(maxlen=buffer_limit)
        self._recent: deque[str] = deque()
        self._recent_ids: set[str] = set()
        self._window = duplicate_window
        # Pages taken at different seqs (SnapshotReply): until ``seq`` reaches the
        # newest page, an update applies to a conversation only above its page's seq.
        self._page_bounds: list[str] = []  # next_after of every page but the last
        self._page_seqs: list[int] = []
        self._counts_seq = 0  # counts are those of this seq (the newest page, or later)

    # -- reading --------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        """A complete snapshot is in hand and no gap is pending."""
        return self._synced

    @property
    def conversations(self) -> Mapping[str, tuple[str, ...]]:
        """Conversation id -> its sorted categories (only non-empty sets are kept)."""
        return self._conversations

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def tabs(self) -> list[str]:
        """The categories the rules publish, in their order: the keys of the counts."""
        return list(self.counts)

    def in_tab(self, tab: str) -> list[str]:
        """The conversations in category ``tab``, by id."""
        return sorted(cid for cid, cats in self._conversations.items() if tab in cats)

    def default_tab(self) -> str | None:
        """The tab to show first: the first filtered category, else ``primary``, else
        the first one the rules publish."""
        if self.filter:
            return self.filter[0]
        tabs = self.tabs
        if PRIMARY_TAB in tabs:
            return PRIMARY_TAB
        return tabs[0] if tabs else None

    # -- writing --------------------------------------------------------------------
    def reset(self) -> None:
        """Forget being in sync (the queue was lost, so updates may have been): the next
        updates are buffered until a new snapshot is loaded. What is shown stays."""
        self._synced = False
        self._pages = []
        self._buffer.clear()

    def load_snapshot(self, reply: SnapshotReply, after: str | None = None) -> Loaded:
        """Take one snapshot page: ``after`` is what the request for it said (None for
        the first page, which also drops any half-loaded snapshot).

        Nothing changes until the last page: then the pages replace the inbox, and the
        buffered updates are applied in ``seq`` order.
        """
        self._check_owner(reply.account_id, reply.agent_id)
        if after is None:
            self._pages = []
        elif not self._pages or self._pages[-1].reply.next_after != after:
            expected = self._pages[-1].reply.next_after if self._pages else None
            raise ValueError(f"snapshot page after {after!r} does not follow the pages "
                             f"loaded so far (expected after={expected!r})")
        self._pages.append(_Page(after, reply))
        if reply.next_after is not None:
            return Loaded(False, reply.next_after)
        self._install(self._pages)
        self._pages = []
        return Loaded(True, None, self._drain())

    def apply(self, update: CategoryUpdate) -> Result:
        """Apply ``update`` if it is the next one; say what was done with it."""
        self._check_owner(update.account_id, update.agent_id)
        if not self._synced:
            self._buffer.append(update)
            return Buffered(update.seq)
        return self._apply_synced(update)

    # -- inside ---------------------------------------------------------------------
    def _check_owner(self, account_id: str, agent_id: str) -> None:
        if (account_id, agent_id) != (self.account_id, self.agent_id):
            raise ValueError(f"{account_id}.{agent_id} is not this view's agent "
                             f"({self.account_id}.{self.agent_id})")

    def _keep(self, categories: Iterable[str]) -> tuple[str, ...] | None:
        """The categories to store for a conversation, None to not store it."""
        cats = tuple(categories)
        if not cats or (self.filter is not None and not set(cats) & set(self.filter)):
            return None
        return cats

    def _install(self, pages: list[_Page]) -> None:
        conversations: dict[str, tuple[str, ...]] = {}
        for page in pages:
            for cid, cats in page.reply.conversations.items():
                kept = self._keep(cats)
                if kept is not None:
                    conversations[cid] = kept
        # The newest page (the last of equal seqs) gives counts and rules version.
        newest = max(reversed(pages), key=lambda page: page.reply.seq).reply
        self._conversations = conversations
        self.counts = dict(newest.counts)
        self.rules_version = newest.rules_version
        self._counts_seq = newest.seq
        # From the oldest page on, every update is needed; each page ignores those at
        # or below its own seq (they are in it already).
        self.seq = min(page.reply.seq for page in pages)
        self._page_seqs = [page.reply.seq for page in pages]
        self._page_bounds = [page.reply.next_after for page in pages[:-1]
                             if page.reply.next_after is not None]
        self._forget_pages_once_past()
        self._synced = True

    def _drain(self) -> tuple[Result, ...]:
        pending = sorted(self._buffer, key=lambda update: update.seq)
        self._buffer.clear()
        results: list[Result] = []
        for index, update in enumerate(pending):
            result = self._apply_synced(update)
            results.append(result)
            if isinstance(result, Gap):  # kept (with what follows) for the next snapshot
                self._buffer.extend(pending[index + 1:])
                break
        return tuple(results)

    def _apply_synced(self, update: CategoryUpdate) -> Result:
        if update.update_id in self._recent_ids:
            return Duplicate(update.update_id, update.seq)
        if update.seq <= self.seq:
            if update.rules_version != self.rules_version:
                # A number we hold came again under other rules: the worker crashed
                # between publishing and committing and restarted with new rule files,
                # so it numbered those updates again. Only a snapshot is exact now.
                self._synced = False
                self._buffer.append(update)
                return Gap(self.seq + 1, update.seq)
            return Stale(update.seq, self.seq)
        if update.seq > self.seq + 1:
            self._synced = False
            self._buffer.append(update)
            return Gap(self.seq + 1, update.seq)
        if not self._page_seqs or update.seq > self._page_seq(update.conversation_id):
            kept = self._keep(update.categories)
            if kept is None:
                self._conversations.pop(update.conversation_id, None)
            else:
                self._conversations[update.conversation_id] = kept
        if update.seq > self._counts_seq:
            self.counts = dict(update.counts)
            self.rules_version = update.rules_version
            self._counts_seq = update.seq
        self.seq = update.seq
        self._remember(update.update_id)
        self._forget_pages_once_past()
        return Applied(update)

    def _page_seq(self, conversation_id: str) -> int:
        """The seq of the page whose id range (after, next_after] holds the id."""
        return self._page_seqs[bisect_left(self._page_bounds, conversation_id)]

    def _forget_pages_once_past(self) -> None:
        if self._page_seqs and self.seq >= max(self._page_seqs):
            self._page_seqs, self._page_bounds = [], []

    def _remember(self, update_id: str) -> None:
        self._recent.append(update_id)
        self._recent_ids.add(update_id)
        if len(self._recent) > self._window:
            self._recent_ids.discard(self._recent.popleft())


# -- rendering --------------------------------------------------------------------------
def render_view(view: InboxView, tab: str | None = None, *, status: str = "",
                max_rows: int | None = 50) -> RenderableType:
    """The tabs with their badge counts as a header row, then the conversations of
    ``tab`` (default: :meth:`InboxView.default_tab`), at most ``max_rows`` of them
    (None: all)."""
    selected = tab or view.default_tab()
    header = Text()
    for name in view.tabs:
        if header:
            header.append("  ")
        style = "bold reverse" if name == selected else "bold"
        header.append(f" {name} ", style=style)
        header.append(f" {view.counts.get(name, 0)}", style="cyan")
    if not view.tabs:
        header.append("no conversations yet", style="dim")
    table = Table(expand=True, show_edge=False)
    table.add_column(f"{selected or 'conversations'}", no_wrap=True)
    table.add_column("categories")
    shown = view.in_tab(selected) if selected else []
    limit = len(shown) if max_rows is None else max_rows
    for cid in shown[:limit]:
        table.add_row(cid, ", ".join(view.conversations[cid]))
    if len(shown) > limit:
        table.caption = f"… and {len(shown) - limit} more"
    subtitle = f"seq {view.seq}"
    if view.rules_version:
        subtitle += f" · rules {view.rules_version}"
    if view.filter:
        subtitle += f" · only {', '.join(view.filter)}"
    if status:
        subtitle += f" · {status}"
    return Panel(Group(header, Text(), table),
                 title=f"inbox of {view.agent_id} in {view.account_id}",
                 subtitle=subtitle, subtitle_align="left")


# -- the transport ----------------------------------------------------------------------
OnChange = Callable[[InboxView, str], None]


@dataclass
class _Ask:
    correlation_id: str
    after: str | None
    deadline: float
    asked: int  # how many times this snapshot was asked for (a resync re-asks)


class Watcher:
    """One agent's inbox from the broker into an :class:`InboxView`.

    ``open()`` binds an exclusive, auto-delete queue to the updates exchange with
    ``<account>.<agent>`` and starts consuming it (updates are buffered), and consumes
    RabbitMQ's direct reply-to; only then does :meth:`sync` ask for a snapshot (every
    page of it), so every update after the snapshot is in the queue. :meth:`run` then
    applies updates as they come, asks for a new snapshot on a gap, and reconnects
    (queue, snapshot and all) after a lost connection. ``on_change(view, status)`` is
    called at most every ``render_interval`` seconds while something changed.
    """

    def __init__(self, settings: Settings, account_id: str, agent_id: str, *,
                 categories: Iterable[str] | None = None, timeout: float = 10.0,
                 page_limit: int | None = None, on_change: OnChange | None = None,
                 render_interval: float = 0.25,
                 connect: Callable[[pika.URLParameters], Any] = blocking_connection,
                 ) -> None:
        wanted = list(categories) if categories else None
        try:  # the contract's own checks: ids fit a routing key, names are categories
            SnapshotRequest(account_id=account_id, agent_id=agent_id, categories=wanted)
        except ValidationError as exc:
            raise WatchError(f"bad watch request: {describe_request_error(exc)}") from exc
        self.settings = settings
        self.view = InboxView(account_id, agent_id, categories=wanted)
        self.timeout = timeout
        self.page_limit = page_limit
        self.on_change = on_change
        self.render_interval = render_interval
        topology = Topology.from_settings(settings)  # the worker's names, from the settings
        self.updates_exchange = topology.updates_exchange
        self.requests_exchange = topology.requests_exchange
        self._connect = connect  # a seam: tests pass a double of BlockingConnection
        self.status = "connecting"
        self.ignored = 0  # update bodies that were not a CategoryUpdate
        self.snapshots = 0  # snapshots asked for: 1 + resyncs (+ reconnects)
        self._connection: Any = None
        self._channel: Any = None
        self._ask: _Ask | None = None
        self._returned: str | None = None
        self._dirty = True
        self._last_render = 0.0

    @property
    def routing_key(self) -> str:
        return f"{self.view.account_id}.{self.view.agent_id}"

    # -- the link -------------------------------------------------------------------
    def __enter__(self) -> Watcher:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Connect, bind our queue, consume it and the direct reply-to."""
        params = connection_parameters(self.settings, "inbox-rules watch")
        try:
            self._connection = self._connect(params)
            channel = self._connection.channel()
            # The worker declares the requests exchange: without it nobody could answer.
            channel.exchange_declare(self.requests_exchange, passive=True)
            channel.exchange_declare(self.updates_exchange, exchange_type="topic",
                                     durable=True)
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue, self.updates_exchange, routing_key=self.routing_key)
            # The view is the copy of record and dies with us, as the queue does: no acks.
            channel.basic_consume(queue, self._on_update, auto_ack=True)
            # RabbitMQ: consume the direct reply-to, no-ack, before publishing with it.
            channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
            channel.add_on_return_callback(self._on_return)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self.close()
            raise WatchError(self._refused(exc)) from exc
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            raise WatchError(f"cannot connect to {self.settings.safe_amqp_url}: "
                             f"{exc!r}") from exc
        self._channel = channel
        self._ask = None
        self._returned = None

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except (pika.exceptions.AMQPError, OSError):
                log.debug("closing the watch connection failed", exc_info=True)

    # -- asking for a snapshot ------------------------------------------------------
    def sync(self) -> InboxView:
        """Ask for a snapshot and wait until it (every page) is loaded and the updates
        buffered meanwhile are applied; :class:`WatchError` if no worker answers in
        ``timeout`` seconds (each page, each resync)."""
        if self._channel is None:
            raise WatchError("not connected: call open() first")
        self._request(None)
        while not self.view.synced or self._ask is not None:
            self._pump(0.05)
            if self._returned is not None:
                raise WatchError(self._returned)
            ask = self._ask
            if ask is not None and time.monotonic() > ask.deadline:
                raise WatchError(self._no_answer())
            if ask is None and not self.view.synced:  # a gap among the buffered updates
                self._request(None)
        self.status = "live"
        self._dirty = True
        return self.view

    def _request(self, after: str | None, asked: int = 1) -> None:
        request = SnapshotRequest(account_id=self.view.account_id,
                                  agent_id=self.view.agent_id,
                                  categories=list(self.view.filter) if self.view.filter else None,
                                  after=after,
                                  **({"limit": self.page_limit} if self.page_limit else {}))
        correlation_id = uuid.uuid4().hex
        if after is None and asked == 1:
            self.snapshots += 1
        self._ask = _Ask(correlation_id, after, time.monotonic() + self.timeout, asked)
        self.status = ("loading snapshot" if self.view.seq == 0 and after is None
                       else "resyncing" if after is None else f"loading snapshot after {after}")
        # mandatory: with no worker's queue bound, the broker returns it at once.
        self._channel.basic_publish(
            self.requests_exchange, SNAPSHOT_ROUTING_KEY,
            request.model_dump_json(exclude_none=True).encode(),
            pika.BasicProperties(reply_to=DIRECT_REPLY_TO, correlation_id=correlation_id,
                                 content_type="application/json"),
            mandatory=True)

    def _no_answer(self) -> str:
        return (f"no snapshot reply within {self.timeout:g} s: is a worker (inbox-rules run) "
                f"answering {self.requests_exchange!r} on {self.settings.safe_amqp_url}?")

    # -- callbacks (run inside process_data_events) ---------------------------------
    def _on_update(self, _channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        try:
            update = CategoryUpdate.model_validate_json(body)
        except ValidationError as exc:
            self.ignored += 1  # a gap later, if it was one of ours: that resyncs
            log.warning("ignoring an update that is not a CategoryUpdate: %s", exc)
            return
        if (update.account_id, update.agent_id) != (self.view.account_id, self.view.agent_id):
            self.ignored += 1
            return
        result = self.view.apply(update)
        if isinstance(result, Gap):
            log.info("updates %d..%d missed: resyncing", result.expected, result.got - 1)
            if self._ask is None:
                self._request(None)
        self._dirty = self._dirty or isinstance(result, Applied | Gap)

    def _on_reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        ask = self._ask
        if ask is None or properties.correlation_id != ask.correlation_id:
            return  # a late answer to a request we gave up on
        try:
            reply = SnapshotReply.model_validate_json(body)
        except ValidationError as exc:
            raise WatchError(f"the worker's snapshot reply is not a SnapshotReply: "
                             f"{describe_request_error(exc)}") from exc
        loaded = self.view.load_snapshot(reply, after=ask.after)
        self._ask = None
        if loaded.next_after is not None:
            self._request(loaded.next_after)
        elif loaded.resync_needed:
            self._request(None)
        else:
            self.status = "live"
        self._dirty = True

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        if self._ask is not None and properties.correlation_id == self._ask.correlation_id:
            self._returned = (
                f"no worker is bound to {self.requests_exchange!r} with routing key "
                f"{SNAPSHOT_ROUTING_KEY!r} ({method.reply_text}): is a worker "
                f"(inbox-rules run) running on {self.settings.safe_amqp_url}?")

    def _refused(self, exc: pika.exceptions.ChannelClosedByBroker) -> str:
        if exc.reply_code == 404:
            return (f"{exc.reply_text}: the worker declares {self.requests_exchange!r}; is a "
                    f"worker (inbox-rules run) running on {self.settings.safe_amqp_url}?")
        return f"the broker closed the channel: {exc.reply_text}"

    def _pump(self, seconds: float) -> None:
        self._connection.process_data_events(time_limit=seconds)
        # A blocking channel the broker closed says so only at its next use.
        if self._channel.is_closed:
            raise WatchError("the broker closed the watch channel (see its log for why)")

    # -- live -----------------------------------------------------------------------
    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Keep the view current until ``stop()`` (or Ctrl-C): apply updates, resync on
        a gap (asking again while no worker answers), reconnect after a lost link."""
        attempt = 0
        while not stop():
            try:
                if self._channel is None:
                    self.open()
                    self.sync()
                    attempt = 0
                self._live(stop)
            except (pika.exceptions.AMQPError, WatchError, OSError) as exc:
                attempt += 1
                self.close()
                self.view.reset()  # the queue died with the link: updates may be lost
                delay = backoff_delay(attempt, self.settings.reconnect_max_delay)
                self.status = f"reconnecting in {delay:.1f} s ({exc})"
                self._changed(force=True)
                log.warning("watch link lost (%s): reconnecting in %.1f s", exc, delay)
                time.sleep(delay)

    def _live(self, stop: Callable[[], bool]) -> None:
        while not stop():
            self._pump(0.1)
            ask = self._ask
            if ask is not None and time.monotonic() > ask.deadline:
                # No answer to a resync: ask again (the worker may be restarting).
                log.warning("%s; asking again", self._no_answer())
                self._request(ask.after, ask.asked + 1)
                self.status = f"resyncing: no answer after {ask.asked} request(s)"
                self._dirty = True
            elif ask is None and not self.view.synced:
                self._request(None)
            self._changed()

    def _changed(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.on_change is None or not (self._dirty or force):
            return
        if not force and now - self._last_render < self.render_interval:
            return
        self._dirty = False
        self._last_render = now
        self.on_change(self.view, self.status)


# -- the command ------------------------------------------------------------------------
def run_watch(settings: Settings, account_id: str, agent_id: str, *,
          categories: list[str] | None = None, tab: str | None = None,
          timeout: float = 10.0, once: bool = False, console: Console | None = None) -> None:
    """``inbox-rules watch``: print the inbox once, or keep it live until Ctrl-C."""
    from rich.live import Live

    console = console or Console()
    watcher = Watcher(settings, account_id, agent_id, categories=categories, timeout=timeout)
    with watcher:
        view = watcher.sync()
        if once:  # for scripts: every conversation of the tab
            console.print(render_view(view, tab, status=watcher.status, max_rows=None))
            return
        rows = max(3, console.height - 8)  # the panel fits the terminal: no scrolling
        with Live(render_view(view, tab, status=watcher.status, max_rows=rows),
                  console=console, auto_refresh=False) as live:
            def show(current: InboxView, status: str) -> None:
                live.update(render_view(current, tab, status=status, max_rows=rows),
                            refresh=True)

            watcher.on_change = show
            with suppress(KeyboardInterrupt):  # Ctrl-C is how a live watch ends
                watcher.run()
