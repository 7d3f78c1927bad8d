"""``--amqp-url`` on every command that connects: it overrides AMQP_URL, through the
same Settings, and every such command's help says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.cli_support import EXIT_TROUBLE

# AMQP_URL names a port nothing listens on; --amqp-url another, whose error names it.
ENV = {"AMQP_URL": "amqp://env:envsecret@127.0.0.1:1/%2F"}
GIVEN = "amqp://cli:s3cret@127.0.0.1:2/%2F"
IDS = ["--account", "acc-1", "--agent", "ag-1"]
CONNECTING = {
    "demo": ["demo"],
    "watch": ["watch", *IDS, "--once"],
    "explain --live": ["explain", "--live", *IDS, "--conversation", "c-1"],
}


@pytest.mark.parametrize("command", CONNECTING)
def test_amqp_url_overrides_the_environment(command: str) -> None:
    result = CliRunner().invoke(main, [*CONNECTING[command], "--amqp-url", GIVEN], env=ENV)
    assert result.exit_code == EXIT_TROUBLE, result.output
    assert "cannot connect to amqp://cli:***@127.0.0.1:2/%2F" in result.stderr
    assert "secret" not in result.output


def test_run_takes_the_broker_of_amqp_url(tmp_path: Path) -> None:
    """An amqps:// URL makes run check its TLS files first: only --amqp-url's is one."""
    env = {**ENV, "INBOX_RULES_TLS_CA_FILE": str(tmp_path / "missing-ca.pem")}
    result = CliRunner().invoke(main, ["run", "--amqp-url", "amqps://cli:s3cret@h:5671/"],
                                env=env)
    assert result.exit_code == EXIT_TROUBLE, result.output
    assert "TLS settings" in result.stderr and "s3cret" not in result.output


@pytest.mark.broker
def test_amqp_url_reaches_the_local_broker() -> None:
    """Connected (the broker answers: no worker declared inbox.requests, or one
    replies) although AMQP_URL names a closed port."""
    result = CliRunner().invoke(main, [
        "explain", "--live", *IDS, "--conversation", "c-1", "--timeout", "2",
        "--amqp-url", "amqp://guest:guest@127.0.0.1:5672/%2F"], env=ENV)
    assert "cannot connect" not in result.output, result.output


def test_amqp_url_is_refused_where_nothing_connects(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("")
    result = CliRunner().invoke(main, ["explain", str(events), *IDS, "--conversation",
                                       "c-1", "--amqp-url", GIVEN])
    assert result.exit_code == EXIT_TROUBLE and "--live only" in result.stderr


@pytest.mark.parametrize("command", ["run", "demo", "watch", "explain"])
def test_the_help_of_every_command_that_connects_names_amqp_url(command: str) -> None:
    text = CliRunner().invoke(main, [command, "--help"]).stdout
    assert "--amqp-url URL" in text and "AMQP_URL" in text.split("--amqp-url URL", 1)[1]
