"""Hypothesis strategies for bad input messages, one family per way upstream can get it
wrong: invalid JSON, wrong types, missing fields, unknown types, bad ids, wrong
encodings, oversized, deeply nested, huge numbers, wrong content types.

Each message is built from a valid event and broken in one place, so its reason is
known. Every one is checked against the contract (``parse_event`` must refuse it): a
strategy that drifts into valid input is filtered out rather than mislabelled.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from contracts import BadEvent, parse_event
from contracts.events import EVENT_TYPES
from tests.support.streams import envelope

MAX_BYTES = 64 * 1024
# As much header as a frame carries: 43,671 euro signs are 131,013 bytes of UTF-8, yet
# 43,671 repr characters (a guard counting those, up to 64 Ki, copied them).
FRAME_FILLING_HEADERS = {"trace": "\u20ac" * 43_671}
RAW = "\u0000RAW\u0000"  # placeholder replaced by raw bytes after json.dumps

TEMPLATES: dict[str, dict[str, Any]] = {
    "account.updated": {"plan": "pro", "agents": ["ag-1", "ag-2"], "groups": {"g-1": ["ag-1"]}},
    "conversation.created": {"group_id": "g-1", "channel": "web", "priority": "high",
                             "labels": ["vip"], "attributes": {"n": 1, "s": "x"}},
    "message.created": {"author": "agent", "agent_id": "ag-1", "mentions": ["ag-2"]},
    "conversation.assigned": {"agent_id": "ag-2"},
    "conversation.unassigned": {"agent_id": "ag-2"},
    "conversation.transferred": {"to_agent_id": "ag-3"},
    "conversation.resolved": {},
    "conversation.reopened": {},
    "conversation.deleted": {},
    "conversation.updated": {"priority": "low", "labels": ["vip"], "attributes": {"n": 2}},
    "conversation.snoozed": {"until": "2026-11-24T12:00:00Z"},
    "conversation.unsnoozed": {},
    "conversation.read": {"agent_id": "ag-2"},
    "account.views_updated": {"views": [{"view_id": "v-1", "when": {"category": "new"}}]},
    "agent.views_updated": {"agent_id": "ag-2",
                            "views": [{"view_id": "v-2", "when": {"category": "mine"}}]},
}
# Events about the account as a whole: no conversation_id.
ACCOUNT_TYPES = ("account.updated", "account.views_updated", "agent.views_updated")
# Fields whose absence is an error, by event type (envelope fields apply to all).
REQUIRED_DATA = {"account.updated": ["plan", "agents"], "message.created": ["author"],
                 "conversation.assigned": ["agent_id"], "conversation.unassigned": ["agent_id"],
                 "conversation.transferred": ["to_agent_id"], "conversation.read": ["agent_id"],
                 "conversation.updated": [], "account.views_updated": ["views"],
                 "agent.views_updated": ["agent_id", "views"]}
ID_FIELDS = ("account_id", "conversation_id", "data.agent_id", "data.group_id",
             "data.to_agent_id", "data.channel")
# Ids that may be null.
NULLABLE_IDS = ("data.group_id", "data.channel")


@dataclass(frozen=True)
class BadMessage:
    kind: str
    body: bytes
    routing_key: str = "bad"
    content_type: str | None = "application/json"
    content_encoding: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)


def is_bad(body: bytes) -> bool:
    try:
        parse_event(body, max_bytes=MAX_BYTES)
    except BadEvent:
        return True
    return False


def template(kind: str) -> dict[str, Any]:
    """A valid event of ``kind``, to break in one place."""
    return envelope(kind, "acc-bad", json.loads(json.dumps(TEMPLATES[kind])), event_id="bad-1",
                    sequence=3, conversation_id=None if kind in ACCOUNT_TYPES else "c-bad")


def _set(event: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    target = event
    for name in parents:
        target = target[name]
    target[last] = value


def _dumps(event: dict[str, Any], raw: bytes = b"") -> bytes:
    body = json.dumps(event).encode()
    return body.replace(json.dumps(RAW).encode(), raw) if raw else body


kinds = st.sampled_from(EVENT_TYPES)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
not_strings = json_values.filter(lambda v: not isinstance(v, str))
bad_ids = st.one_of(
    not_strings.filter(lambda v: v is not None),
    st.just(""),
    st.text(min_size=129, max_size=200, alphabet="abc"),
    # '.', '*' and '#' would break topic routing; spaces, slashes, unicode are not ids.
    st.builds(lambda a, c, b: a + c + b, st.text(alphabet="ab", max_size=5),
              st.sampled_from(list(".*# /\\é\u200b\n")), st.text(alphabet="ab", max_size=5)),
)


@st.composite
def invalid_json(draw: st.DrawFn) -> BadMessage:
    how = draw(st.sampled_from(("binary", "text", "truncated", "trailing", "single-quotes")))
    good = _dumps(template(draw(kinds)))
    if how == "binary":
        body = draw(st.binary(max_size=300))
    elif how == "text":
        body = draw(st.text(max_size=200)).encode()
    elif how == "truncated":
        body = good[:draw(st.integers(0, len(good) - 1))]
    elif how == "trailing":
        body = good + draw(st.sampled_from((b",", b"}", b" x", b"{}", b"\x00")))
    else:
        body = good.replace(b'"', b"'")
    return BadMessage(f"invalid-json/{how}", body)


@st.composite
def wrong_type(draw: st.DrawFn) -> BadMessage:
    kind = draw(kinds)
    event = template(kind)
    paths = ["event_id", "type", "account_id", "occurred_at", "sequence", "data"]
    paths += [f"data.{name}" for name in TEMPLATES[kind]]
    if kind not in ACCOUNT_TYPES:
        paths.append("conversation_id")
    path = draw(st.sampled_from(paths))
    if path in ("event_id", "type", "account_id", "conversation_id") or path in ID_FIELDS:
        value = draw(not_strings.filter(lambda v: v is not None or path not in NULLABLE_IDS))
    elif path == "occurred_at":
        value = draw(st.one_of(st.none(), st.lists(st.integers(), max_size=2),
                               st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                               st.text(alphabet="xyz", min_size=1, max_size=10)))
    elif path == "sequence":
        value = draw(st.one_of(st.integers(max_value=-1), st.booleans(),
                               st.floats(allow_nan=False, allow_infinity=False).filter(
                                   lambda f: f != int(f)),
                               st.integers(0, 99).map(str), st.lists(st.integers(), max_size=2)))
    elif path == "data":
        value = draw(st.one_of(st.lists(json_scalars, max_size=3), st.text(max_size=5),
                               st.integers(), st.booleans()))
    elif path in ("data.agents", "data.groups", "data.labels", "data.mentions"):
        # Many wrong items at once: the reason names each, within limits.
        value = draw(st.one_of(st.text(max_size=5), st.integers(),
                               st.lists(not_strings, min_size=1, max_size=200)))
    elif path == "data.attributes":
        # Not an object, or values that are no attribute value (nested, or too long).
        bad_values = st.one_of(st.lists(json_scalars, max_size=3),
                               st.dictionaries(st.text(max_size=3), json_scalars, max_size=2),
                               st.text(min_size=257, max_size=300))
        value = draw(st.one_of(st.text(max_size=5), st.integers(), st.lists(json_scalars),
                               st.dictionaries(st.text(alphabet="ab", min_size=1, max_size=4),
                                               bad_values, min_size=1, max_size=40)))
    elif path == "data.views":  # a list of views, each an object
        value = draw(st.one_of(st.text(max_size=5), st.integers(), st.booleans(),
                               st.lists(st.one_of(json_scalars, st.lists(json_scalars)),
                                        min_size=1, max_size=5)))
    elif path == "data.until":  # null is no snooze end: not wrong
        value = draw(st.one_of(st.lists(st.integers(), max_size=2),
                               st.text(alphabet="xyz", min_size=1, max_size=10),
                               st.just("2026-11-24T12:00:00")))  # no timezone
    else:  # data.plan, data.author, data.priority: a value outside the choices
        value = draw(st.one_of(not_strings, st.text(alphabet="xyz", max_size=8)))
    _set(event, path, value)
    return BadMessage(f"wrong-type/{path}", _dumps(event))


@st.composite
def missing_field(draw: st.DrawFn) -> BadMessage:
    kind = draw(kinds)
    event = template(kind)
    paths = ["event_id", "type", "account_id", "occurred_at"]
    if kind not in ACCOUNT_TYPES:
        paths.append("conversation_id")
    if kind in REQUIRED_DATA:
        paths += ["data"] + [f"data.{name}" for name in REQUIRED_DATA[kind]]
    path = draw(st.sampled_from(paths))
    *parents, last = path.split(".")
    target = event
    for name in parents:
        target = target[name]
    del target[last]
    return BadMessage(f"missing/{path}", _dumps(event))


@st.composite
def unknown_type(draw: st.DrawFn) -> BadMessage:
    event = template(draw(kinds))
    event["type"] = draw(st.one_of(
        st.text(max_size=40), st.sampled_from(("Conversation.Created", "conversation.created ",
                                                "conversation", "account.deleted"))
    ).filter(lambda t: t not in EVENT_TYPES))
    return BadMessage("unknown-type", _dumps(event))


@st.composite
def bad_id(draw: st.DrawFn) -> BadMessage:
    kind = draw(kinds)
    event = template(kind)
    paths = ["account_id"] + [p for p in ID_FIELDS[1:]
                              if p.split(".")[-1] in event.get("data", {}) or p in event]
    path = draw(st.sampled_from(paths))
    _set(event, path, draw(bad_ids.filter(lambda v: isinstance(v, str))))
    return BadMessage(f"bad-id/{path}", _dumps(event))


INVALID_UTF8 = (b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xed\xa0\x80",
                b"\xf8\x88\x80\x80\x80", b"\xc0\xaf", b"\xe2\x82", b"\xf0\x28\x8c\x28")


@st.composite
def wrong_encoding(draw: st.DrawFn) -> BadMessage:
    event = template(draw(kinds))
    how = draw(st.sampled_from(("invalid-utf8", "utf-16", "utf-32", "latin-1")))
    if how == "invalid-utf8":
        path = draw(st.sampled_from(("event_id", "account_id", "occurred_at", "type")))
        _set(event, path, RAW)
        raw = b'"' + draw(st.text(alphabet="ab", max_size=4)).encode() \
            + draw(st.sampled_from(INVALID_UTF8)) + b'"'
        return BadMessage(f"encoding/{how}/{path}", _dumps(event, raw))
    if how == "latin-1":
        event["event_id"] = "caf\u00e9-" + draw(st.text(alphabet="xyz", max_size=5))
        return BadMessage("encoding/latin-1", json.dumps(event, ensure_ascii=False)
                          .encode("latin-1"), content_type="application/json; charset=latin-1")
    return BadMessage(f"encoding/{how}", json.dumps(event).encode(how),
                      content_type=f"application/json; charset={how}")


@st.composite
def oversized(draw: st.DrawFn) -> BadMessage:
    """Otherwise valid: only the size is wrong, and it must be refused before parsing."""
    event = template(draw(kinds))
    over = draw(st.integers(1, 8192))
    event["padding"] = ""
    event["padding"] = "x" * (MAX_BYTES + over - len(_dumps(event)))
    body = _dumps(event)
    assert len(body) == MAX_BYTES + over
    return BadMessage("oversized", body)


@st.composite
def deeply_nested(draw: st.DrawFn) -> BadMessage:
    depth = draw(st.integers(100, 30_000))
    where = draw(st.sampled_from(("body", "data", "event_id", "data.agents")))
    opener, closer = draw(st.sampled_from(((b"[", b"]"), (b'{"a":', b"}"))))
    nest = opener * depth + b"1" + closer * depth
    if where == "body":
        return BadMessage("nested/body", nest)
    event = template("account.updated")
    _set(event, where, RAW)
    return BadMessage(f"nested/{where}", _dumps(event, nest))


@st.composite
def huge_number(draw: st.DrawFn) -> BadMessage:
    kind = draw(kinds)
    event = template(kind)
    paths = ["sequence", "event_id", "occurred_at", "account_id", "data"]
    if "attributes" in event["data"]:
        paths.append("data.attributes.n")  # beyond a signed 64-bit integer, or inf
    path = draw(st.sampled_from(paths))
    digits = draw(st.integers(19, 5000))
    raw = draw(st.sampled_from((b"", b"-"))) + b"9" * digits
    if draw(st.booleans()):
        raw = b"1e" + str(digits).encode()  # beyond any float: inf
    _set(event, path, RAW)
    return BadMessage(f"huge-number/{path}", _dumps(event, raw))


@st.composite
def wrong_content(draw: st.DrawFn) -> BadMessage:
    event = template(draw(kinds))
    how = draw(st.sampled_from(("xml", "form", "gzip", "msgpack-ish")))
    if how == "xml":
        inner = "".join(f"<{k}>{v}</{k}>" for k, v in event.items() if not isinstance(v, dict))
        return BadMessage("content/xml", f"<event>{inner}</event>".encode(),
                          content_type="application/xml")
    if how == "form":
        body = "&".join(f"{k}={v}" for k, v in event.items() if not isinstance(v, dict))
        return BadMessage("content/form", body.encode(),
                          content_type="application/x-www-form-urlencoded")
    if how == "gzip":
        return BadMessage("content/gzip", gzip.compress(_dumps(event), mtime=0),
                          content_encoding="gzip")
    return BadMessage("content/binary", b"\x82\xa4type\xa7unknown" + draw(st.binary(max_size=50)),
                      content_type="application/msgpack")


header_values = st.one_of(st.text(max_size=30), st.integers(-(2**31), 2**31), st.booleans(),
                          st.lists(st.text(max_size=5), max_size=3))


@st.composite
def bad_message(draw: st.DrawFn) -> BadMessage:
    message = draw(st.one_of(invalid_json(), wrong_type(), missing_field(), unknown_type(),
                             bad_id(), wrong_encoding(), oversized(), deeply_nested(),
                             huge_number(), wrong_content()).filter(lambda m: is_bad(m.body)))
    headers = draw(st.dictionaries(st.text(alphabet="abcdefgh-", min_size=1, max_size=10),
                                   header_values, max_size=3))
    routing_key = draw(st.one_of(st.just("bad"), st.sampled_from(EVENT_TYPES),
                                 st.text(alphabet="abc.#*", max_size=20)))
    return BadMessage(message.kind, message.body, routing_key, message.content_type,
                      message.content_encoding, headers)
