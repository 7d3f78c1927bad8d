"""Trace context (docs/contract.md#trace-context) without a broker: what counts as a
valid ``traceparent`` and ``tracestate``, and what the worker copies where: onto each
update of the event that carried it (each event of a batch its own), its dead letter,
its reply and the router's copy, never onto what a tick causes; and the trace id on the
lines logged about it."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from contracts.trace import (
    MAX_TRACESTATE,
    TRACEPARENT_PATTERN,
    TRACEPARENT_READ_PATTERN,
    TraceContext,
    parse_traceparent,
    parse_tracestate,
    trace_context,
)
from tests.observability.test_logs import restore_logging
from tests.support.streams import encode, event_stream
from tests.test_driver import _confirm_all, _driver, _request, _routed, _router
from tests.test_time_driver import DEFAULT, EVENTS, T0, _event
from tests.test_time_driver import _driver as _clock_driver
from worker.control import CONTROL_HEADER
from worker.link import Delivery
from worker.observability.logs import configure_logging

__all__ = ["restore_logging"]  # a fixture, used by name

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT_ID}-01"


def traceparent(n: int) -> str:
    """A valid traceparent of its own for each n."""
    return f"00-{n + 1:032x}-{PARENT_ID}-01"


@pytest.mark.parametrize(("value", "copied"), [
    (VALID, VALID),
    (f"00-{TRACE_ID}-{PARENT_ID}-00", f"00-{TRACE_ID}-{PARENT_ID}-00"),  # not sampled
    # A later version: its four fields read, copied as version 00.
    (f"01-{TRACE_ID}-{PARENT_ID}-01", VALID),
    (f"cc-{TRACE_ID}-{PARENT_ID}-03-what-comes-next", f"00-{TRACE_ID}-{PARENT_ID}-03"),
])
def test_a_valid_traceparent_is_copied_as_version_00(value: str, copied: str) -> None:
    assert parse_traceparent(value) == copied
    assert re.fullmatch(TRACEPARENT_READ_PATTERN, value), "as the AsyncAPI document says"
    assert re.fullmatch(TRACEPARENT_PATTERN, copied)


@pytest.mark.parametrize("value", [
    VALID.upper(),  # lowercase hex only
    f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",
    f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
    f"ff-{TRACE_ID}-{PARENT_ID}-01",  # the forbidden version
    f"00-{TRACE_ID}-{PARENT_ID}-01-more",  # version 00 has four fields
    f"01-{TRACE_ID}-{PARENT_ID}-01x",  # a later version's next field starts with '-'
    f"01-{TRACE_ID}-{PARENT_ID}-01-" + "x" * 500,  # too long to read at all
    f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",  # short
    f"00_{TRACE_ID}_{PARENT_ID}_01",
    f"00-{TRACE_ID}-{PARENT_ID[:-1]}g-01",
    f" {VALID}",
    "",
    VALID.encode(),  # a byte array header, not text
    42,
    None,
])
def test_an_invalid_traceparent_is_not_copied(value: object) -> None:
    assert parse_traceparent(value) is None
    assert trace_context({"traceparent": value, "tracestate": "rojo=1"}) is None


@pytest.mark.parametrize(("value", "copied"), [
    ("rojo=00f067aa0ba902b7", "rojo=00f067aa0ba902b7"),
    (" rojo=00f067aa0ba902b7 ,\tcongo=t61rcWkgMzE,, ", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    ("tenant-1@vendor=x y, a/b*c_d-e=~!", "tenant-1@vendor=x y,a/b*c_d-e=~!"),
    (",".join(f"k{i}=v" for i in range(32)), ",".join(f"k{i}=v" for i in range(32))),
    ("", None),
    (" , ", None),
])
def test_a_valid_tracestate_is_copied_without_its_optional_whitespace(
        value: str, copied: str | None) -> None:
    assert parse_tracestate(value) == copied


@pytest.mark.parametrize("value", [
    "rojo=1,rojo=2",  # a key twice
    "Rojo=1",  # lowercase keys
    "rojo",
    "rojo=",
    "rojo=a=b",
    "rojo=1;congo=2",
    "1abc=1",  # a simple key starts with a letter
    "tenant@Vendor=1",
    "rojo=" + "x" * 257,  # values have 256 characters at most
    ",".join(f"k{i}=v" for i in range(33)),  # 32 members at most
    "rojo=caf\u00e9",
    b"rojo=1",
])
def test_an_invalid_tracestate_is_not_copied(value: object) -> None:
    assert parse_tracestate(value) is None
    assert trace_context({"traceparent": VALID, "tracestate": value}) == TraceContext(VALID)


def test_a_tracestate_over_512_characters_loses_long_members_first_then_its_last() -> None:
    short = [f"k{i}={'v' * 60}" for i in range(10)]  # 63 characters each
    long = f"big={'w' * 200}"
    cut = parse_tracestate(",".join([short[0], long, *short[1:]]))
    assert cut is not None and len(cut) <= MAX_TRACESTATE
    assert cut == ",".join(short[:8])  # the long one went, then the last two
    fits = ",".join([short[0], f"mid={'m' * 100}", *short[1:5]])
    assert parse_tracestate(fits) == fits


def test_a_trace_context_names_its_trace_and_its_headers() -> None:
    assert TraceContext(VALID, "a=1").trace_id == TRACE_ID
    assert TraceContext(VALID, "a=1").headers() == {"traceparent": VALID, "tracestate": "a=1"}
    assert TraceContext(VALID).headers() == {"traceparent": VALID}


# -- what the worker copies where ---------------------------------------------------
def test_each_event_of_a_batch_carries_its_own_trace_context_onto_its_updates() -> None:
    events = event_stream(seed=41, count=60)
    headers: dict[str, dict[str, Any]] = {}
    for n, event in enumerate(events):
        if n % 3 == 0:
            headers[event["event_id"]] = {"traceparent": traceparent(n),
                                          "tracestate": f"vendor=n{n}", "other": n}
        elif n % 3 == 1:  # not valid: as if there were none
            headers[event["event_id"]] = {"traceparent": traceparent(n).upper(),
                                          "tracestate": "vendor=1"}
    driver, _, _ = _driver()
    driver.step.budget = 60.0  # one batch, however loaded the machine
    plan = driver.step.run([Delivery(tag, event["type"], body,
                                     headers=headers.get(event["event_id"], {}))
                            for tag, (event, body) in enumerate(
                                zip(events, encode(events), strict=True), start=1)],
                           driver.cache, driver.in_force)
    assert len(plan.deliveries) == len(events) and not plan.rest, "one batch"
    updates = plan.messages()
    traced = 0
    for message in updates:
        cause = json.loads(message.body)["cause_event_id"]
        sent = headers.get(cause, {})
        expected = trace_context(sent)
        if expected is None:
            assert message.headers is None, cause
        else:
            assert message.headers == {"traceparent": sent["traceparent"],
                                       "tracestate": sent["tracestate"]}, cause
            traced += 1
    assert 10 < traced < len(updates), "some updates traced, and some not"


def test_what_a_tick_causes_carries_no_trace_context() -> None:
    """The events before it carried one: the snooze's wake is nobody's event."""
    _, link, _ = _clock_driver(DEFAULT)
    snooze = _event(4, "conversation.snoozed", 60, "c-1",
                    until=(T0 + timedelta(seconds=600)).isoformat())
    for n, event in enumerate([*EVENTS, snooze]):
        link.deliver(json.dumps(event).encode(), event["type"],
                     {"traceparent": traceparent(n)})
    link.advance(700)
    assert link.ticks(), "the wake came through a tick"
    updates = [m for m in link.published if m.exchange == "inbox.categories"]
    causes = {json.loads(m.body)["cause_event_id"]: m.headers for m in updates}
    woken = {cause: h for cause, h in causes.items() if cause.startswith("time:")}
    assert woken and all(h is None for h in woken.values())
    assert causes["e-2"] == {"traceparent": traceparent(1)}


@pytest.mark.parametrize(("sent", "copied"), [
    ({"traceparent": VALID, "tracestate": "a=1, b=2", "hop": 3},
     {"traceparent": VALID, "tracestate": "a=1,b=2", "hop": 3}),
    ({"traceparent": f"01-{TRACE_ID}-{PARENT_ID}-01-x", "hop": 3},
     {"traceparent": VALID, "hop": 3}),
    ({"traceparent": VALID.upper(), "tracestate": "a=1", "hop": 3}, {"hop": 3}),
    ({"tracestate": "a=1", "hop": 3}, {"hop": 3}),
    ({"traceparent": VALID, "tracestate": "A=1", "hop": 3}, {"traceparent": VALID, "hop": 3}),
    # Headers too large to copy: the trace context still goes.
    ({"traceparent": VALID, "huge": "x" * 100_000},
     {"traceparent": VALID, "x-original-headers-dropped": "2 header(s), too large"}),
])
def test_a_dead_letter_carries_the_valid_trace_context_and_the_other_headers(
        sent: dict[str, Any], copied: dict[str, Any]) -> None:
    driver, link, _ = _driver()
    driver.on_delivery(Delivery(1, "event", b"{not json", headers=sent))
    _confirm_all(driver, link)
    [dead] = link.dead_letters()
    assert dead.headers is not None and dead.headers.pop("x-error").startswith("invalid JSON")
    assert dead.headers == copied


def test_a_reply_carries_its_request_trace_context() -> None:
    driver, link, _ = _driver()
    asked = {"account_id": "acc-1", "agent_id": "ag-1"}
    driver.on_delivery(_request(1, asked)._replace(
        headers={"traceparent": VALID, "tracestate": "a=1"}))
    driver.on_delivery(_request(2, asked))
    driver.on_delivery(_request(3, asked)._replace(headers={"traceparent": VALID.upper()}))
    explain = {**asked, "conversation_id": "c-1"}
    driver.on_delivery(_request(4, explain, kind="explain")._replace(
        headers={"traceparent": traceparent(4)}))
    _confirm_all(driver, link)
    replies = [m for m in link.published if m.exchange == ""]
    assert [(m.correlation_id, m.headers) for m in replies] == [
        ("c-1", {"traceparent": VALID, "tracestate": "a=1"}), ("c-2", None), ("c-3", None),
        ("c-4", {"traceparent": traceparent(4)})]
    assert link.acks[-1] == (4, True)


def test_the_routers_copy_carries_the_valid_trace_context() -> None:
    driver, link, _ = _router()
    [body] = encode(event_stream(seed=42, count=1))
    for tag, headers in enumerate([{"traceparent": f"01-{TRACE_ID}-{PARENT_ID}-01-x"},
                                   {"traceparent": VALID.upper(), "tracestate": "a=1"}],
                                  start=1):
        driver.on_delivery(Delivery(tag, "account.updated", body, headers=headers,
                                    queue="inbox-rules.events"))
    _confirm_all(driver, link)
    traced, invalid = _routed(link)
    assert traced.headers == {"traceparent": VALID, "x-inbox-routing-key": "account.updated",
                              CONTROL_HEADER: driver.step.token}
    assert invalid.headers == {"x-inbox-routing-key": "account.updated",
                               CONTROL_HEADER: driver.step.token}


@pytest.fixture
def json_log(restore_logging: None) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    yield stream


def test_lines_logged_about_a_traced_message_carry_its_trace_id(
        json_log: io.StringIO) -> None:
    driver, link, _ = _driver()
    driver.on_delivery(Delivery(1, "event", b"{traced", headers={"traceparent": VALID}))
    driver.on_delivery(Delivery(2, "event", b"{untraced"))
    driver.on_delivery(Delivery(3, "event", b"{invalid", headers={"traceparent": VALID[:-1]}))
    driver.on_delivery(_request(4, b"{traced request")._replace(
        headers={"traceparent": traceparent(4)}))
    _confirm_all(driver, link)
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    dead = [line["context"] for line in lines if "dead-lettering" in line["message"]]
    assert [context.get("trace_id") for context in dead] == [
        TRACE_ID, None, None, traceparent(4)[3:35]]
