"""``inbox-rules watch``: one agent's inbox, kept exactly as a downstream service keeps it.

The keeping is :class:`contracts.client.InboxMirror`'s, the client downstream services
use (docs/downstream.md); this package adds the terminal:

- :class:`Watcher` (:mod:`worker.tools.watch.follow`): one agent's mirror, with the
  worker's settings (exchange names, TLS), redrawn at a terminal's pace;
- :func:`render_view` (:mod:`worker.tools.watch.screen`): the inbox as a rich renderable
  (tabs with badge counts, then the conversations of one tab), for ``--once`` and the
  live terminal; :func:`run_watch` is the command.
"""

from worker.tools.watch.follow import OnChange, Watcher, WatchError
from worker.tools.watch.screen import (
    PRIMARY_TAB,
    default_tab,
    in_tab,
    render_view,
    run_watch,
    tabs,
)

__all__ = [
    "PRIMARY_TAB",
    "OnChange",
    "WatchError",
    "Watcher",
    "default_tab",
    "in_tab",
    "render_view",
    "run_watch",
    "tabs",
]
