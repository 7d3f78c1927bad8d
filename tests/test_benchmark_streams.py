"""The benchmarks' rich variants, without a broker: which variants ``benchmarks.compare
--rich`` runs and how it sets their ratios beside the default stream's, and the account
histories ``benchmarks.startup --rich`` builds its state files from."""

from __future__ import annotations

import argparse
from collections import Counter

from benchmarks.compare import FULL, Result, Row, Variant, chosen, rich_against_default
from benchmarks.startup import account_id, conversations_of, plan
from contracts import parse_event_object


def test_rich_follows_each_chosen_variant_with_its_rich_counterpart() -> None:
    assert [v.name for v in chosen(FULL, "light/2,heavy/50", rich=True)] == [
        "light/2", "light/2+rich", "heavy/50", "heavy/50+rich"]
    assert [v.name for v in chosen(FULL, "light/2+rich", rich=True)] == [
        "light/2", "light/2+rich"]
    assert [v.name for v in chosen(FULL, "light/2", rich=False)] == ["light/2"]
    rich = chosen(FULL, "light/500", rich=True)[1]
    assert (rich.fanout, rich.agents, rich.conversations, rich.rich) == (
        "light", 500, 70, True)


def result(events_per_second: float, cpu_us: float, rss_kb: int) -> Result:
    return Result(events=1000, updates=900, seconds=1000 / events_per_second,
                  cpu_seconds=cpu_us * 1000 / 1e6, rss_end_kb=rss_kb)


def test_the_rich_rows_ratios_stand_beside_the_default_streams() -> None:
    plain = Row(Variant("light", 2, 10), 0.9, relay=result(1000, 40, 20_000),
                worker=result(900, 60, 50_000), relay_latency=Result(),
                worker_latency=Result())
    rich = Row(Variant("light", 2, 10, rich=True), 0.9, relay=result(1000, 40, 20_000),
               worker=result(800, 80, 60_000), relay_latency=Result(),
               worker_latency=Result())
    [line] = rich_against_default([plain, rich])
    assert line == ("light/2+rich: worker/relay events/s 0.80 (0.90), CPU us/ev 2.00 (1.50), "
                    "RSS 3.00 (2.50); worker rich/default events/s 0.89, CPU us/ev 1.33, "
                    "RSS 1.20")
    assert rich_against_default([plain]) == []


def test_startup_builds_rich_and_default_state_from_the_streams() -> None:
    args = argparse.Namespace(rich=True, large=400, small=10, accounts=20)
    default, rich = plan(args)
    assert (default.name, default.conversations, rich.name, rich.conversations) == (
        "default", 400, "rich", 400)
    conversations = conversations_of(3, 400, 20)
    events = {name: list(state.history(3, conversations))
              for name, state in (("default", default), ("rich", rich))}
    for stream in events.values():
        for event in stream:
            parse_event_object(event)
        assert {e["account_id"] for e in stream} == {account_id(3)}
        assert len({e.get("conversation_id") for e in stream} - {None}) == len(conversations)
        assert len({e["event_id"] for e in stream}) > 0.9 * len(stream)
    kinds = Counter(e["type"] for e in events["rich"])
    assert kinds["conversation.updated"] and kinds["conversation.snoozed"]
    assert not {"conversation.updated", "conversation.snoozed"} & {
        e["type"] for e in events["default"]}
    assert [state.name for state in plan(argparse.Namespace(
        rich=False, large=400, small=10, accounts=20))] == ["small", "large"]
