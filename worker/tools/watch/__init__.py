"""``inbox-rules watch``: one agent's inbox, kept exactly as a downstream service should.

This is the reference downstream consumer (docs/downstream.md, docs/contract.md), written to
be copied. Three parts, each usable alone:

- :class:`InboxView` (:mod:`worker.tools.watch.view`): the bookkeeping, pure and without
  I/O. A snapshot is the baseline; an update applies only if its ``seq`` is exactly the
  next one; a repeated ``update_id`` is a duplicate, an older ``seq`` is stale, a jump in
  ``seq`` is a gap (updates were missed: ask for a snapshot again). Updates that arrive
  while no snapshot is in hand are buffered and applied after it, in ``seq`` order.
- :class:`Watcher` (:mod:`worker.tools.watch.follow`): the transport (pika, one blocking
  connection, one thread). It binds its own queue *before* it asks for a snapshot, so
  no update can fall between the two.
- :func:`render_view` (:mod:`worker.tools.watch.screen`): the view as a rich renderable
  (tabs with badge counts, then the conversations of one tab), for ``--once`` and the
  live terminal; :func:`run_watch` is the command.
"""

from worker.tools.watch.follow import (
    DIRECT_REPLY_TO,
    SNAPSHOT_ROUTING_KEY,
    OnChange,
    Watcher,
    WatchError,
)
from worker.tools.watch.screen import render_view, run_watch
from worker.tools.watch.view import (
    DEFAULT_BUFFER_LIMIT,
    DEFAULT_DUPLICATE_WINDOW,
    PRIMARY_TAB,
    Applied,
    Buffered,
    Duplicate,
    Gap,
    InboxView,
    Loaded,
    Result,
    Stale,
)

__all__ = [
    "DEFAULT_BUFFER_LIMIT",
    "DEFAULT_DUPLICATE_WINDOW",
    "DIRECT_REPLY_TO",
    "PRIMARY_TAB",
    "SNAPSHOT_ROUTING_KEY",
    "Applied",
    "Buffered",
    "Duplicate",
    "Gap",
    "InboxView",
    "Loaded",
    "OnChange",
    "Result",
    "Stale",
    "WatchError",
    "Watcher",
    "render_view",
    "run_watch",
]
