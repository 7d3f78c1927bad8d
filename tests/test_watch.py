"""``inbox-rules watch`` without a broker: the rendering of an inbox into a recording
console, and the command's own checks. (The keeping is the downstream client's:
tests/test_client.py.)"""

from __future__ import annotations

import inspect

from click.testing import CliRunner
from rich.console import Console

from contracts.client import Inbox, InboxMirror
from tests.support.agent_streams import stream
from worker.amqp.topology import Topology
from worker.cli import main
from worker.settings import Settings
from worker.tools.watch import default_tab, in_tab, render_view

SETTINGS = Settings(AMQP_URL="amqp://guest:guest@localhost/%2F")


def final_view() -> Inbox:
    s = stream()
    keeper = s.keeper()
    keeper.load_snapshot(s.snapshot(s.last))
    return keeper.picture()


def test_render_shows_tabs_with_badge_counts_and_the_primary_tab() -> None:
    s = stream()
    view = final_view()
    console = Console(record=True, width=120, color_system=None)
    console.print(render_view(view, status="live"))
    text = console.export_text()
    for tab, count in s.counts_at(s.last).items():
        assert f"{tab}  {count}" in text
    assert default_tab(view) == "primary"
    for cid in in_tab(view, "primary")[:5]:
        marked = f"● {cid}" in text
        assert marked == (cid in view.unread) and (marked or f"  {cid}" in text)
    unread = s.unread_counts_at(s.last)
    assert any(unread.values()), "the stream leaves some conversation unread"
    for tab, count in unread.items():
        shown = f"{tab}  {s.counts_at(s.last)[tab]} ({count} unread)"
        assert (shown in text) == bool(count), shown
    assert f"seq {s.last}" in text and "live" in text
    assert f"inbox of {s.agent_id} in {s.account_id}" in text


def test_render_lists_the_chosen_tab_and_cuts_long_lists() -> None:
    view = final_view()
    console = Console(record=True, width=120, color_system=None)
    console.print(render_view(view, "all", max_rows=2))
    text = console.export_text()
    listed = in_tab(view, "all")
    assert listed[0] in text and listed[1] in text and listed[2] not in text
    assert f"and {len(listed) - 2} more" in text


def test_render_opens_on_the_first_filtered_category_and_says_the_filter() -> None:
    view = final_view()
    console = Console(record=True, width=120, color_system=None)
    console.print(render_view(view, categories=["resolved", "mine"]))
    text = console.export_text()
    assert default_tab(view, ["resolved", "mine"]) == "resolved"
    assert "only resolved, mine" in text
    assert all(cid in text for cid in in_tab(view, "resolved")[:3])


def test_cli_watch_reports_bad_input_without_a_broker() -> None:
    result = CliRunner().invoke(main, ["watch", "--account", "a#b", "--agent", "ag-1", "--once"])
    assert result.exit_code == 2
    assert "bad watch request: account_id" in result.output


def test_the_client_defaults_are_the_worker_default_names() -> None:
    parameters = inspect.signature(InboxMirror).parameters
    topology = Topology.from_settings(SETTINGS)
    assert (topology.requests_exchange, topology.updates_exchange) == (
        parameters["requests_exchange"].default, parameters["updates_exchange"].default)
