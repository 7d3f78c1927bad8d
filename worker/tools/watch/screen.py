"""The terminal of ``inbox-rules watch``: the view as a rich renderable (tabs with badge
counts and unread counts, then the conversations of one tab, the unread ones marked),
printed once or kept live."""

from __future__ import annotations

from contextlib import suppress

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from worker.settings import Settings
from worker.tools.watch.follow import Watcher
from worker.tools.watch.view import InboxView


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
        unread = view.unread_counts.get(name, 0)
        if unread:
            header.append(f" ({unread} unread)", style="bold yellow")
    if not view.tabs:
        header.append("no conversations yet", style="dim")
    table = Table(expand=True, show_edge=False)
    table.add_column(f"{selected or 'conversations'}", no_wrap=True)
    table.add_column("categories")
    shown = view.in_tab(selected) if selected else []
    limit = len(shown) if max_rows is None else max_rows
    for cid in shown[:limit]:
        if cid in view.unread:
            table.add_row(Text(f"● {cid}", style="bold"), ", ".join(view.conversations[cid]))
        else:
            table.add_row(f"  {cid}", ", ".join(view.conversations[cid]))
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
