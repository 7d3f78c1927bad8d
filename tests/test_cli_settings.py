"""Settings as a person meets them on the command line: a bad value said in one line
naming its environment variable, a variable that sets nothing warned about."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.cli_support import EXIT_OK, EXIT_TROUBLE
from worker.errors import SettingsError
from worker.settings import load_settings, unknown_variables
from worker.store.sqlite import SqliteStore


def test_a_bad_setting_is_one_line_naming_its_variable_and_exits_2() -> None:
    env = {"INBOX_RULES_BATCH_SIZE": "abc", "INBOX_RULES_PREFETCH": "0"}
    result = CliRunner().invoke(main, ["run"], env=env)
    assert result.exit_code == EXIT_TROUBLE, result.output
    assert sorted(result.stderr.splitlines()) == [
        "Error: INBOX_RULES_BATCH_SIZE=abc: Input should be a valid integer, unable to "
        "parse string as an integer",
        "Error: INBOX_RULES_PREFETCH=0: Input should be greater than or equal to 1"]
    assert isinstance(result.exception, SystemExit)  # no traceback


def test_a_secret_setting_is_named_but_its_password_never_shown() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(store_url=["postgresql://svc:s3cret@db/inbox"])
    assert str(caught.value).startswith("INBOX_RULES_STORE_URL=***: ")
    assert "s3cret" not in str(caught.value)


def test_an_unknown_variable_is_warned_about_naming_the_setting_it_probably_meant(
        tmp_path: Path) -> None:
    assert unknown_variables({"INBOX_RULES_STATEPATH": "x", "INBOX_RULES_BATCH_SIZE": "1",
                              "inbox_rules_prefetch": "1", "INBOX_RULES_ZZZZZZZ": "1",
                              "PATH": "/bin"}) == [
        "warning: INBOX_RULES_STATEPATH is not a setting and is ignored (did you mean "
        "INBOX_RULES_STATE_PATH?)",
        "warning: INBOX_RULES_ZZZZZZZ is not a setting and is ignored"]
    path = tmp_path / "state.sqlite3"
    SqliteStore(path).close()
    result = CliRunner().invoke(main, ["rules", "history", "--store", str(path)],
                                env={"INBOX_RULES_BATCH_SIZ": "50"})
    assert result.exit_code == EXIT_OK, result.output  # a warning, not an error
    assert result.stderr == ("warning: INBOX_RULES_BATCH_SIZ is not a setting and is "
                             "ignored (did you mean INBOX_RULES_BATCH_SIZE?)\n")
