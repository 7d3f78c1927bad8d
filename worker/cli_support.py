"""What every ``inbox-rules`` command shares: exit statuses, settings read once, errors
said in one line, the broker URL option."""

from __future__ import annotations

import os
import sys
import textwrap
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import click

from worker.errors import RuleFileError, SettingsError
from worker.rulebook.engine import CompiledRules, load_rules
from worker.settings import Settings, load_settings, unknown_variables

if TYPE_CHECKING:
    pass


RULES_DIR = click.Path(exists=True, file_okay=False, path_type=Path)

# Exit statuses, the same in every command (like diff's).
EXIT_OK = 0
EXIT_NO = 1  # the command's own answer is no: differences, a failing case, a refusal
EXIT_TROUBLE = 2  # it could not do its work: bad input, settings, usage; no connection


class Trouble(click.ClickException):
    """A failure that is not the command's answer: exit status 2, each line of the
    message on stderr as ``Error: ...``."""

    exit_code = EXIT_TROUBLE

    def show(self, file: object = None) -> None:
        for line in self.format_message().splitlines():
            click.echo(f"Error: {line}", err=True)


def exit_status(ok: str, trouble: str, no: str | None = None) -> str:
    """A command's --help epilog: what each exit status means for it (the same three
    codes in every command)."""
    rows = [(EXIT_OK, ok), *([(EXIT_NO, no)] if no else []),
            (EXIT_TROUBLE, f"trouble: {trouble}; bad usage")]
    lines = []
    for code, text in rows:
        lines += textwrap.wrap(text, 76, initial_indent=f"  {code}  ",
                               subsequent_indent="     ")
    # '\b' keeps click from re-wrapping the table.
    return "Exit status:\n\n\b\n" + "\n".join(lines)


class Commands(click.Group):
    """An unexpected error exits 2 (trouble), with its traceback, not Python's 1: a 1
    is a command's answer (differences, a failing case), never a crash."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, EOFError,
                BrokenPipeError):
            raise  # click's own, handled as click does
        except Exception:  # noqa: BLE001 - any other is a bug: say it, exit 2
            traceback.print_exc()
            ctx.exit(EXIT_TROUBLE)


AMQP_URL_OPTION = click.option(
    "--amqp-url", metavar="URL", default=None,
    help="The broker, amqp:// or amqps:// (overrides AMQP_URL; default: AMQP_URL, else "
         f"{Settings.model_fields['amqp_url'].default}). A password here shows in the "
         "process list: prefer AMQP_URL for one.")


def broker_settings(amqp_url: str | None) -> Settings:
    """The settings of a command that connects, ``--amqp-url`` over AMQP_URL."""
    return command_settings() if amqp_url is None else command_settings(AMQP_URL=amqp_url)


def command_settings(**overrides: object) -> Settings:
    """The settings (``overrides`` first), read once per command: a warning for each
    INBOX_RULES_* variable that sets nothing, one line per bad variable and exit
    status 2 if any is invalid."""
    for warning in unknown_variables(os.environ):
        click.echo(warning, err=True)
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        raise Trouble(str(exc)) from exc


def load_or_exit(directory: Path | None) -> CompiledRules:
    try:
        return load_rules(directory)
    except RuleFileError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_TROUBLE)
