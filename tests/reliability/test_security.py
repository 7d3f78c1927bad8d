"""Security basics, end to end: no credentials in the logs, the size limit applied
before any parsing. (Rule files are data, never executed: tests/test_rulebook.py
``test_python_tags_in_rule_files_are_never_executed``.)"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.reliability.bad_input import template
from tests.support.harness import (
    WorkerProcess,
    amqp_url,
    cut_worker_connections,
    rig,
    running,
    vhost_user,
    wait_for,
    worker_env,
)
from tests.support.oracle import Oracle, judge
from tests.support.streams import event_stream

pytestmark = pytest.mark.broker


def test_the_amqp_password_never_reaches_the_logs(vhost: str, tmp_path: Path) -> None:
    user = f"inbox-rules-{secrets.token_hex(4)}"
    password = f"Pw-{secrets.token_hex(8)}@:/%"  # characters a URL must escape
    secrets_seen = (password, quote(password, safe=""), quote(password))
    events = event_stream(seed=61, count=300, accounts=3, profile="chaos")
    with vhost_user(vhost, user, password):
        with rig(vhost, tmp_path, url=amqp_url(vhost, user, password),
                 args=("--log-level", "DEBUG")) as r:
            r.publish(events[:150])
            r.broker.channel.basic_publish("chat.events", "x", b"not json")  # a warning line
            wait_for(r.broker.drained, 30, "the first events", interval=0.2)
            assert cut_worker_connections(vhost) == 1  # reconnecting logs the URL again
            wait_for(r.broker.drained, 30, "a reconnect", interval=0.3)
            r.publish(events[150:])
            r.settle()
        # The wrong password: the refusal is logged, the password is not.
        wrong = WorkerProcess(
            worker_env(amqp_url(vhost, user, password + "-wrong"), tmp_path / "other.sqlite3"),
            tmp_path / "refused.log", ("--log-level", "DEBUG"))
        with running(wrong):
            wait_for(lambda: wrong.log().count(f"{user}:***@") >= 2, 30, "refused logins")
    judge(Oracle.replay(events), r.updates.received, len(events)).assert_clean()
    for log in (r.worker.log(), wrong.log()):
        assert f"{user}:***@" in log, "the masked URL names the user"
        for secret in secrets_seen:
            assert secret not in log
    assert "refused" in wrong.log().lower() or "credentials" in wrong.log().lower()


def test_the_size_limit_applies_before_parsing(vhost: str, tmp_path: Path) -> None:
    limit = 4096

    def padded(size: int, event_id: str) -> bytes:
        event = template("conversation.created")
        event.update(event_id=event_id, account_id="acc-size", padding="")
        event["padding"] = "x" * (size - len(json.dumps(event).encode()))
        body = json.dumps(event).encode()
        assert len(body) == size
        return body

    at_limit, over = padded(limit, "e-at-limit"), padded(limit + 1, "e-over")
    # Nested far beyond what the parser accepts: it must never get to try.
    deep = b"[" * (limit + 500) + b"]" * (limit + 500)
    with rig(vhost, tmp_path, settings={"max_message_bytes": limit}) as r:
        # An agent first, so that the event at the limit produces an update.
        r.publish([{**template("account.updated"), "account_id": "acc-size",
                    "event_id": "e-agents"}])
        for body in (over, deep, at_limit):
            r.broker.channel.basic_publish("chat.events", "conversation.created", body)
        wait_for(lambda: len(r.dead) == 2 and r.broker.drained(), 30, "all three handled")
        r.settle()
    reasons = {m.body: (m.properties.headers or {}).get("x-error", "") for m in r.dead.received}
    # The worker keeps no more of a body than the limit: that is what a dead letter carries.
    assert set(reasons) == {over[:limit], deep[:limit]}
    assert reasons[over[:limit]] == (
        f"message too large: {limit + 1} bytes exceeds the limit of {limit}; the body was "
        f"not kept: this message carries only its first {limit} bytes")
    assert reasons[deep[:limit]].startswith("message too large"), "size checked before parsing"
    assert any(json.loads(m.body)["cause_event_id"] == "e-at-limit" for m in r.updates.received)
