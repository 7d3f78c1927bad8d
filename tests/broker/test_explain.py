"""``explain`` against a running worker: its answer for a pair is the categories it
published for that pair (the last update's), through the request and the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from contracts.requests import ExplainReply, ExplainRequest
from tests.support.harness import Bus, ThreadWorker, amqp_url, settings_for, wait_for
from tests.support.oracle import final_view
from tests.support.streams import event_stream
from worker.cli import main
from worker.rulebook import load_rules
from worker.settings import Settings
from worker.tools.request_client import RequestError, ask

pytestmark = pytest.mark.broker


def test_explain_answers_what_the_worker_published(vhost: str, bus: Bus,
                                                   tmp_path: Path) -> None:
    events = event_stream(seed=31, count=300, accounts=2)
    settings = settings_for(vhost, tmp_path / "state.sqlite3")
    with ThreadWorker(settings):
        bus.publish_events(events)
        wait_for(bus.drained, 120, "the worker to consume every event", interval=0.2)
        published, _ = final_view(bus.updates())
        # Pairs in several states (in categories, emptied), plus ones never published.
        pairs = sorted(published)[:: max(1, len(published) // 8)]
        account = pairs[0][0]
        pairs += [(account, "ag-nobody", pairs[0][2]), (account, pairs[0][1], "c-nowhere"),
                  ("acc-nowhere", "ag-1", "c-1")]
        for key in pairs:
            account_id, agent_id, conversation_id = key
            reply = ask(settings, "explain",
                        ExplainRequest(account_id=account_id, agent_id=agent_id,
                                       conversation_id=conversation_id),
                        ExplainReply, timeout=20)
            assert (reply.account_id, reply.agent_id, reply.conversation_id) == key
            assert reply.categories == published.get(key, []), key
            assert reply.rules_version == load_rules().version
            held = {e.name for e in reply.explanations if e.holds}
            assert held == set(reply.categories)
        # The command, live: the same answer, as JSON and for a person.
        account_id, agent_id, conversation_id = pairs[1]
        ids = ["--account", account_id, "--agent", agent_id,
               "--conversation", conversation_id, "--timeout", "20"]
        env = {"AMQP_URL": amqp_url(vhost)}
        result = CliRunner().invoke(main, ["explain", "--live", *ids, "--json"], env=env)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["categories"] == published[pairs[1]]
        text = CliRunner().invoke(main, ["explain", "--live", *ids], env=env)
        assert text.exit_code == 0, text.output
        assert f"categories: {', '.join(published[pairs[1]]) or 'none'}" in text.stdout


def test_no_worker_is_said_plainly(vhost: str) -> None:
    """Nothing declared the requests exchange: the broker refuses, we say so at once."""
    settings = Settings(amqp_url=amqp_url(vhost))
    request = ExplainRequest(account_id="acc-1", agent_id="ag-1", conversation_id="c-1")
    with pytest.raises(RequestError, match="is one running"):
        ask(settings, "explain", request, ExplainReply, timeout=5)
    result = CliRunner().invoke(main, ["explain", "--live", "--account", "acc-1", "--agent",
                                       "ag-1", "--conversation", "c-1", "--timeout", "5"],
                                env={"AMQP_URL": amqp_url(vhost)})
    assert result.exit_code == 2 and "inbox.requests" in result.output  # trouble
