"""The ``run`` and ``demo`` commands as a user meets them, without a broker."""

from __future__ import annotations

import shutil
import socket
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.cli_support import EXIT_TROUBLE
from worker.rulebook.engine import default_rules_dir
from worker.settings import Settings, describe_settings, mask_url


def test_run_help_lists_every_setting_with_its_environment_variable() -> None:
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    for env, _default, _description in describe_settings():
        assert env in result.output
    assert len(describe_settings()) == len(Settings.model_fields)


def test_a_rule_dir_that_does_not_validate_stops_run_saying_file_and_line(
        tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules)
    path = rules / "inbox.yaml"
    path.write_text(path.read_text().replace("equals: open", "equals: [open"))
    result = CliRunner().invoke(main, ["run", "--rules", str(rules)])
    assert result.exit_code != 0
    assert "inbox.yaml:" in result.stderr


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqps://svc:s3cret@broker:5671/prod")
    monkeypatch.setenv("INBOX_RULES_PREFETCH", "50")
    settings = Settings()
    assert settings.prefetch == 50
    assert settings.safe_amqp_url == "amqps://svc:***@broker:5671/prod"
    assert settings.tls_context() is not None


def test_passwords_never_show_in_a_logged_url() -> None:
    assert mask_url("amqp://guest:guest@localhost:5672/%2F") == \
        "amqp://guest:***@localhost:5672/%2F"
    assert mask_url("amqp://localhost/") == "amqp://localhost/"


def test_a_missing_tls_file_stops_run_with_a_clear_message(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AMQP_URL", "amqps://svc:s3cret@broker:5671/prod")
    monkeypatch.setenv("INBOX_RULES_TLS_CA_FILE", str(tmp_path / "missing-ca.pem"))
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == EXIT_TROUBLE  # bad settings
    assert "TLS settings" in result.stderr and "s3cret" not in result.output


def test_an_http_port_in_use_stops_run_at_start_with_one_line(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Before any broker connection: the port is bound before the link starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        monkeypatch.setenv("INBOX_RULES_HTTP_PORT", str(port))
        monkeypatch.setenv("INBOX_RULES_HTTP_HOST", "127.0.0.1")
        monkeypatch.setenv("INBOX_RULES_STATE_PATH", str(tmp_path / "state.db"))
        monkeypatch.setenv("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2F")
        result = CliRunner().invoke(main, ["run", "--log-level", "ERROR"])
    assert result.exit_code == EXIT_TROUBLE, result.output  # bad settings
    assert result.stderr == (f"Error: INBOX_RULES_HTTP_PORT={port}: port already in use "
                             "(choose another, or 0 to turn HTTP off)\n")
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_version_prints_the_installed_distributions_version() -> None:
    result = CliRunner().invoke(main, ["--version"], prog_name="inbox-rules")
    assert result.exit_code == 0
    assert result.stdout == f"inbox-rules {version('inbox-rules')}\n"
