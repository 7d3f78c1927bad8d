"""The terminal of ``inbox-rules watch``: the view as a rich renderable (tabs with badge
counts and unread counts, then the conversations of one tab, the unread ones marked),
printed once or kept live."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from contracts.client import Inbox
from worker.settings import Settings
from worker.tools.watch.follow import Watcher

PRIMARY_TAB = "primary"


def tabs(view: Inbox) -> list[str]:
    """The categories the worker publishes, in its order: the keys of the counts."""
    return list(view.counts)


def in_tab(view: Inbox, tab: str) -> list[str]:
    """The conversations in category ``tab``, by id."""
    return sorted(cid for cid, cats in view.conversations.items() if tab in cats)


def default_tab(view: Inbox, categories: Sequence[str] | None = None) -> str | None:
    """The tab to show first: the first of ``categories`` (the filter), else
    ``primary``, else the first one the worker publishes."""
    if categories:
        return categories[0]
    names = tabs(view)
    if PRIMARY_TAB in names:
        return PRIMARY_TAB
    return names[0] if names else None


def render_view(view: Inbox, tab: str | None = None, *, status: str = "",
                max_rows: int | None = 50,
                categories: Sequence[str] | None = None) -> RenderableType:
    """The tabs with their badge counts as a header row, then the conversations of
    ``tab`` (default: :func:`default_tab`), at most ``max_rows`` of them (None: all).
    ``categories``: the filter the inbox was kept with, if any."""
    selected = tab or default_tab(view, categories)
    header = Text()
    for name in tabs(view):
        if header:
            header.append("  ")
        style = "bold reverse" if name == selected else "bold"
        header.append(f" {name} ", style=style)
        header.append(f" {view.counts.get(name, 0)}", style="cyan")
        unread = view.unread_counts.get(name, 0)
        if unread:
            header.append(f" ({unread} unread)", style="bold yellow")
    if not view.counts:
        header.append("no conversations yet", style="dim")
    table = Table(expand=True, show_edge=False)
    table.add_column(f"{selected or 'conversations'}", no_wrap=True)
    table.add_column("categories")
    shown = in_tab(view, selected) if selected else []
    limit = len(shown) if max_rows is None else max_rows
    for cid in shown[:limit]:
        listed = ", ".join(sorted(view.conversations[cid]))
        if cid in view.unread:
            table.add_row(Text(f"● {cid}", style="bold"), listed)
        else:
            table.add_row(f"  {cid}", listed)
    if len(shown) > limit:
        table.caption = f"… and {len(shown) - limit} more"
    subtitle = f"seq {view.seq}"
    if view.rules_version:
        subtitle += f" · rules {view.rules_version}"
    if categories:
        subtitle += f" · only {', '.join(categories)}"
    if status:
        subtitle += f" · {status}"
    return Panel(Group(header, Text(), table),
                 title=f"inbox of {view.agent_id} in {view.account_id}",
                 subtitle=subtitle, subtitle_align="left")



def run_watch(settings: Settings, account_id: str, agent_id: str, *,
              categories: list[str] | None = None, tab: str | None = None,
              timeout: float = 10.0, once: bool = False, console: Console | None = None) -> None:
    """``inbox-rules watch``: print the inbox once, or keep it live until Ctrl-C."""
    from rich.live import Live

    console = console or Console()
    watcher = Watcher(settings, account_id, agent_id, categories=categories, timeout=timeout)
    with watcher:
        view = watcher.view
        if once:  # for scripts: every conversation of the tab
            console.print(render_view(view, tab, status=watcher.status, max_rows=None,
                                      categories=categories))
            return
        rows = max(3, console.height - 8)  # the panel fits the terminal: no scrolling
        with Live(render_view(view, tab, status=watcher.status, max_rows=rows,
                              categories=categories),
                  console=console, auto_refresh=False) as live:
            def show(current: Inbox, status: str) -> None:
                live.update(render_view(current, tab, status=status, max_rows=rows,
                                        categories=categories), refresh=True)

            watcher.on_change = show
            with suppress(KeyboardInterrupt):  # Ctrl-C is how a live watch ends
                watcher.run()
