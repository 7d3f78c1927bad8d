"""The AsyncAPI document: current with the models, and valid for the official parser.

The parser is JavaScript (``@asyncapi/parser``), so this test needs Node.js; it fails,
never skips, without it: a contract check that silently stops running is worse than
none. Its npm packages are installed here on first use (``npm ci`` from the committed
lock, scripts off), so a fresh clone needs nothing beyond ``pytest``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts import asyncapi
from contracts.asyncapi import ASYNCAPI_PATH, REF_TEMPLATE, component_schemas, render
from contracts.events import EVENT_TYPES
from contracts.schema import CONTRACTS
from contracts.trace import TRACEPARENT_PATTERN, TRACEPARENT_READ_PATTERN, trace_context
from contracts.updates import CategoryUpdate

CHECK_DIR = Path(asyncapi.__file__).parent / "asyncapi-check"


def test_checked_in_document_is_current() -> None:
    assert ASYNCAPI_PATH.read_text(encoding="utf-8") == render(), (
        f"{ASYNCAPI_PATH} is stale: run `python -m contracts.asyncapi`")
    assert asyncapi.main(["--check"]) == 0


def test_check_mode_fails_on_a_stale_file(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "asyncapi.yaml"
    stale.write_text(render().replace("seq", "sequence_number"), encoding="utf-8")
    monkeypatch.setattr(asyncapi, "ASYNCAPI_PATH", stale)
    assert asyncapi.main(["--check"]) == 1
    assert asyncapi.main([]) == 0
    assert asyncapi.main(["--check"]) == 0


def _document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(render())
    return loaded


def test_payloads_are_the_model_schemas() -> None:
    """Every contract's schema is in the document as the model says (refs moved to
    components), so a field added to a model, like ``CategoryUpdate.seq``, appears
    without anyone touching the generator."""
    schemas = _document()["components"]["schemas"]
    assert schemas == component_schemas()
    for contract in CONTRACTS:
        model_schema = contract.schema(ref_template=REF_TEMPLATE)
        assert schemas[contract.name].get("properties") == model_schema.get("properties")
    update = schemas["CategoryUpdate"]
    assert set(update["properties"]) == set(CategoryUpdate.model_fields)
    assert set(update["required"]) == {
        name for name, field in CategoryUpdate.model_fields.items() if field.is_required()}


def test_document_describes_the_topology() -> None:
    doc = _document()
    assert doc["asyncapi"] == "3.0.0"
    channels = doc["channels"]
    amqp = {name: channel["bindings"]["amqp"] for name, channel in channels.items()}
    assert amqp["chatEvents"]["exchange"] == {
        "name": "chat.events", "type": "topic", "durable": True, "autoDelete": False}
    assert channels["chatEvents"]["parameters"]["eventType"]["enum"] == list(EVENT_TYPES)
    assert channels["inboxCategories"]["address"] == "{accountId}.{agentId}"
    assert amqp["inboxCategories"]["exchange"]["name"] == "inbox.categories"
    for kind in ("snapshot", "explain"):
        assert channels[f"{kind}Requests"]["address"] == kind
        assert amqp[f"{kind}Requests"]["exchange"]["type"] == "direct"
        reply = doc["operations"][f"receive{kind.title()}Requests"]["reply"]
        assert reply["address"]["location"] == "$message.header#/reply_to"
    assert channels["replies"]["address"] is None
    assert amqp["deadLetters"]["is"] == "queue"
    assert amqp["deadLetters"]["queue"]["name"] == "chat.events.dlq"
    assert "x-error" in doc["components"]["messages"]["deadLetter"]["headers"]["properties"]
    actions = {name: op["action"] for name, op in doc["operations"].items()}
    assert actions == {"receiveEvents": "receive", "sendCategoryUpdates": "send",
                       "receiveSnapshotRequests": "receive",
                       "receiveExplainRequests": "receive",
                       "receiveViewsCheckRequests": "receive", "sendDeadLetters": "send"}


RECEIVED = ("event", "snapshotRequest", "explainRequest", "viewsCheckRequest")
SENT = ("categoryUpdate", "snapshotReply", "explainReply", "viewsCheckReply", "deadLetter")


def test_every_message_names_the_trace_context_headers() -> None:
    """Received messages may carry a traceparent of any version; what the worker sends
    carries one of version 00 (docs/contract.md#trace-context). The header examples are
    what the worker copies."""
    messages = _document()["components"]["messages"]
    assert set(messages) == {*RECEIVED, *SENT}
    for name, message in messages.items():
        headers = message["headers"]["properties"]
        pattern = TRACEPARENT_READ_PATTERN if name in RECEIVED else TRACEPARENT_PATTERN
        assert headers["traceparent"]["pattern"] == pattern, name
        assert headers["tracestate"]["type"] == "string", name
    examples = [e["headers"] for m in messages.values() for e in m.get("examples", [])
                if "headers" in e]
    assert len(examples) == 4
    for headers in examples:
        trace = trace_context(headers)
        assert trace is not None and trace.headers() == headers


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=CHECK_DIR, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _ensure_node_packages() -> None:
    """``npm ci`` unless an install from the current lock is already there.

    npm writes ``node_modules/.package-lock.json`` last, so its absence means no (or an
    interrupted) install; being older than the lock means the lock moved on.
    """
    installed = CHECK_DIR / "node_modules" / ".package-lock.json"
    lock = CHECK_DIR / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to install @asyncapi/parser (Node.js 18+ with npm)")
    done = _run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], timeout=240)
    assert done.returncode == 0, f"npm ci failed in {CHECK_DIR}:\n{done.stdout}\n{done.stderr}"


def test_official_parser_accepts_the_document() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed to validate contracts/asyncapi.yaml with @asyncapi/parser")
    _ensure_node_packages()
    done = _run([node, "validate.mjs", str(ASYNCAPI_PATH)], timeout=120)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "valid AsyncAPI 3.0.0" in done.stdout


def _break_exchange_type(doc: dict[str, Any]) -> None:
    doc["channels"]["chatEvents"]["bindings"]["amqp"]["exchange"]["type"] = "topical"


def _break_example(doc: dict[str, Any]) -> None:
    doc["components"]["messages"]["snapshotReply"]["examples"][0]["payload"]["seq"] = "42"


def _break_reply_messages(doc: dict[str, Any]) -> None:
    reply = doc["operations"]["receiveSnapshotRequests"]["reply"]
    reply["messages"] = [{"$ref": "#/channels/deadLetters/messages/deadLetter"}]


def _break_header_example(doc: dict[str, Any]) -> None:
    example = doc["components"]["messages"]["categoryUpdate"]["examples"][0]
    example["headers"]["traceparent"] = example["headers"]["traceparent"].upper()


@pytest.mark.parametrize(("breakage", "diagnostic"), [
    (_break_exchange_type, "channels.chatEvents.bindings.amqp.exchange.type"),
    (_break_example, "snapshotReply.examples[0] (complete inbox): payload/seq must be integer"),
    (_break_reply_messages, "message deadLetter is not a message of the reply channel"),
    (_break_header_example,
     "categoryUpdate.examples[0] (agent joins): headers/traceparent must match pattern"),
])
def test_validator_rejects_a_broken_document(
        tmp_path: Path, breakage: Callable[[dict[str, Any]], None], diagnostic: str) -> None:
    """The validator really fails, on what the parser checks (a binding's schema) and on
    what validate.mjs adds (examples against payloads, reply messages)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed to validate contracts/asyncapi.yaml with @asyncapi/parser")
    _ensure_node_packages()
    doc = _document()
    breakage(doc)
    broken = tmp_path / "asyncapi.yaml"
    broken.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    done = _run([node, "validate.mjs", str(broken)], timeout=120)
    assert done.returncode == 1, f"{done.stdout}\n{done.stderr}"
    assert diagnostic in done.stdout
