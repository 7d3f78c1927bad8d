"""The ``inbox-rules`` command line (a contract too: docs/reference/cli.md)."""

from __future__ import annotations

import json
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click
from pydantic import ValidationError

from contracts.requests import describe_request_error
from worker.domain.inbox import Inbox
from worker.errors import DemoError, SettingsError, StoreError
from worker.observability import configure_logging, progress
from worker.observability.logs import url_secrets
from worker.tools.demo import run_demo
from worker.tools.replay import BadLine, parse_moment, replay_lines

if TYPE_CHECKING:
    pass

from worker.cli_rules import rules
from worker.cli_support import (
    AMQP_URL_OPTION,
    EXIT_NO,
    EXIT_OK,
    EXIT_TROUBLE,
    RULES_DIR,
    Commands,
    Trouble,
    broker_settings,
    command_settings,
    exit_status,
    load_or_exit,
)
from worker.cli_views import views
from worker.settings import describe_settings


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit status of every command: 0 done (no difference, every case "
                    "passes); 1 the command's answer is no (differences found, a test "
                    "case failed, a deploy or rollback refused); 2 trouble (invalid rule "
                    "files, bad input lines, bad settings, no connection to the broker "
                    "or the state store, bad usage). Each command's --help says which "
                    "it uses.")
@click.version_option(package_name="inbox-rules", message="%(prog)s %(version)s",
                      help="Print the installed version and exit.")
def main() -> None:
    """Sort live-chat conversations into per-agent inbox categories with rule files."""


@main.command(epilog=exit_status(
    "every line replayed",
    "invalid rule files, a bad --until, bad lines in EVENTS (each said on stderr and "
    "skipped: the updates are those of the rest), EVENTS unreadable"))
@click.argument("events", type=click.File("rb"))
@click.option("--rules", "rules_dir", type=RULES_DIR, default=None,
              help="Rule directory (default: the shipped rule set).")
@click.option("--until", default=None, metavar="TIMESTAMP",
              help="After the last event, cross every time threshold due by TIMESTAMP "
                   "(ISO 8601; UTC if it has no offset).")
def replay(events: BinaryIO, rules_dir: Path | None, until: str | None) -> None:
    """Print the category updates EVENTS.jsonl would produce ('-' reads stdin)."""
    try:
        moment = None if until is None else parse_moment(until)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--until") from exc
    rules = load_or_exit(rules_dir)
    inbox = Inbox(rules)
    out = sys.stdout.buffer
    write = out.write
    bad = 0
    # A progress bar on stderr when it is a terminal; silent otherwise (pipes, CI).
    with progress(None, "replaying events") as bar:
        for item in replay_lines(inbox, events, progress=bar.advance):
            if isinstance(item, BadLine):
                bad += 1
                out.flush()
                click.echo(f"line {item.number}: {item.reason}", err=True)
            else:
                write(item.body)
                write(b"\n")
    if moment is not None:
        for update in inbox.cross_until(moment):
            write(update.body)
            write(b"\n")
    out.flush()
    if bad:
        click.echo(f"{bad} bad line(s) skipped", err=True)
        sys.exit(EXIT_TROUBLE)


def _settings_help() -> str:
    rows = describe_settings()
    width = max(len(name) for name, _, _ in rows)
    lines = [f"  {name:<{width}}  {description} [default: {default}]"
             for name, default, description in rows]
    # '\b' keeps click from re-wrapping the table.
    return "Settings (environment variables):\n\n\b\n" + "\n".join(lines)


@main.command(epilog=exit_status(
    "stopped by SIGTERM or SIGINT (the batch in hand committed)",
    "bad settings (one line per variable), invalid rule files, a TLS file that cannot "
    "be read, the HTTP port taken, a state store that cannot be used")
    + "\n\n" + _settings_help())
@click.option("--rules", "rules_dir", type=RULES_DIR, default=None,
              help="Rule directory (overrides INBOX_RULES_RULES_DIR).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@AMQP_URL_OPTION
def run(rules_dir: Path | None, log_level: str, amqp_url: str | None) -> None:
    """Run the worker: consume chat.events, publish inbox.categories, until SIGTERM.
    The broker is AMQP_URL (or --amqp-url); every setting is below."""
    settings = broker_settings(amqp_url)
    # Text or one JSON object per line; the broker password is masked in either, at
    # every level (pika's own step-by-step connection errors only at DEBUG).
    configure_logging(log_level.upper(), settings.log_format,
                      secrets=url_secrets(settings.amqp_url))
    if rules_dir is not None:
        settings = settings.model_copy(update={"rules_dir": rules_dir})
    try:
        settings.tls_context()  # a wrong CA or key path is said now, not at each reconnect
    except (OSError, ssl.SSLError) as exc:
        raise Trouble(f"TLS settings: {exc}") from exc
    compiled = load_or_exit(settings.rules_dir)
    from worker.service import serve  # the broker stack: only the worker needs it

    try:
        serve(settings, compiled)
    except (StoreError, SettingsError) as exc:
        raise Trouble(str(exc)) from exc


@main.command(epilog=exit_status(
    "the inboxes printed",
    "bad settings, no broker at AMQP_URL, no worker answering within --timeout"))
@click.option("--timeout", default=10.0, show_default=True,
              help="Seconds to wait for the worker's updates.")
@AMQP_URL_OPTION
def demo(timeout: float, amqp_url: str | None) -> None:
    """Publish a small scenario to a running worker (through the broker at AMQP_URL, or
    --amqp-url) and print each agent's inbox."""
    try:
        click.echo(run_demo(broker_settings(amqp_url), timeout))
    except DemoError as exc:
        raise Trouble(str(exc)) from exc


@main.command(epilog=exit_status(
    "the inbox printed (--once), or the watch ended with Ctrl-C",
    "ids or categories that cannot be routing keys, bad settings, no broker at "
    "AMQP_URL, no worker answering within --timeout, a broken reply"))
@click.option("--account", "account_id", required=True, help="The agent's account id.")
@click.option("--agent", "agent_id", required=True, help="The agent whose inbox to show.")
@click.option("--categories", default=None, metavar="A,B",
              help="Only conversations in these categories (comma-separated).")
@click.option("--tab", default=None,
              help="The tab whose conversations are listed (default: primary).")
@click.option("--timeout", default=10.0, show_default=True,
              help="Seconds to wait for the worker's snapshot reply.")
@click.option("--once", is_flag=True, help="Print the inbox once and exit.")
@AMQP_URL_OPTION
def watch(account_id: str, agent_id: str, categories: str | None, tab: str | None,
          timeout: float, once: bool, amqp_url: str | None) -> None:
    """Show one agent's tabs and badge counts live: snapshot, updates by seq, resync on
    a gap (the reference downstream consumer), from the broker at AMQP_URL (or
    --amqp-url)."""
    from worker.tools.watch import WatchError, run_watch  # pika and rich: only here

    wanted = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
    try:
        run_watch(broker_settings(amqp_url), account_id, agent_id, categories=wanted, tab=tab,
                  timeout=timeout, once=once)
    except WatchError as exc:
        raise Trouble(str(exc)) from exc


@main.command(epilog=exit_status(
    "explained",
    "invalid rule files, bad lines in EVENTS (each said on stderr and skipped: the "
    "explanation is of the rest), bad ids; with --live: bad settings, no broker at "
    "AMQP_URL, no worker answering within --timeout"))
@click.argument("events", type=click.File("rb"), required=False)
@click.option("--account", "account_id", required=True, help="The account.")
@click.option("--agent", "agent_id", required=True, help="The agent whose view to explain.")
@click.option("--conversation", "conversation_id", required=True,
              help="The conversation to explain.")
@click.option("--rules", "rules_dir", type=RULES_DIR, default=None,
              help="Rule directory (default: the shipped rule set; not with --live).")
@click.option("--live", is_flag=True,
              help="Ask the running worker (over inbox.requests) instead of replaying EVENTS.")
@click.option("--timeout", default=10.0, show_default=True,
              help="With --live: seconds to wait for the worker's reply.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object (an ExplainReply; key 'categories': those that hold).")
@AMQP_URL_OPTION
def explain(events: BinaryIO | None, account_id: str, agent_id: str, conversation_id: str,
            rules_dir: Path | None, live: bool, timeout: float, as_json: bool,
            amqp_url: str | None) -> None:
    """After replaying EVENTS.jsonl ('-' reads stdin), or live from the running worker
    (through the broker at AMQP_URL, or --amqp-url): the facts of one agent and
    conversation, and for every category whether it holds and the conditions
    (file:line) that decided it."""
    from contracts.requests import ExplainReply, ExplainRequest
    from worker.tools.explain import explain_events, render

    if live == (events is not None):
        raise click.UsageError("give EVENTS.jsonl to replay, or --live to ask the worker")
    if live and rules_dir is not None:
        raise click.UsageError("--rules does not apply to --live: the worker's rules answer")
    if amqp_url is not None and not live:
        raise click.UsageError("--amqp-url applies to --live only: a replay needs no broker")
    try:
        request = ExplainRequest(account_id=account_id, agent_id=agent_id,
                                 conversation_id=conversation_id)
    except ValidationError as exc:
        raise click.UsageError(f"bad ids: {describe_request_error(exc)}") from exc
    bad = 0
    if events is None:
        from worker.tools.request_client import RequestError, ask  # pika: only here

        try:
            reply = ask(broker_settings(amqp_url), "explain", request, ExplainReply,
                        timeout=timeout)
        except RequestError as exc:
            raise Trouble(str(exc)) from exc
        undecided, source = None, None
    else:
        rules = load_or_exit(rules_dir)
        with progress(None, "replaying events") as bar:
            explained = explain_events(rules, events, account_id, agent_id, conversation_id,
                                       progress=bar.advance)
        for line in explained.bad:
            click.echo(f"line {line.number}: {line.reason}", err=True)
        bad = len(explained.bad)
        reply, undecided, source = explained.reply, explained.undecided, rules.source
    if as_json:
        click.echo(reply.model_dump_json())
    else:
        click.echo(render(reply, undecided, source), nl=False)
    if bad:
        click.echo(f"{bad} bad line(s) skipped", err=True)
        sys.exit(EXIT_TROUBLE)


@main.command(epilog=exit_status(
    "no difference",
    "invalid rule files, bad lines in EVENTS (each said on stderr and skipped: the "
    "comparison is of the rest), a state store that cannot be read, bad settings",
    no="differences (the report says which)"))
@click.argument("events", type=click.File("rb"), required=False)
@click.option("--candidate", "candidate_dir", type=RULES_DIR, required=True,
              help="The rule directory that would go live.")
@click.option("--rules", "rules_dir", type=RULES_DIR, default=None,
              help="The rules live now (default: the shipped rule set).")
@click.option("--store", "store", is_flag=False, flag_value="", default=None,
              metavar="[PATH|URL]",
              help="Compare against the workers' state store instead of EVENTS, read-only: "
                   "a SQLite file, a postgresql:// URL, or (no value) INBOX_RULES_STORE_URL, "
                   "else INBOX_RULES_STATE_PATH.")
@click.option("--state", "old_store", is_flag=False, flag_value="", default=None,
              hidden=True, help="Deprecated name of --store.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object (key 'differences': the pairs whose categories differ).")
def shadow(events: BinaryIO | None, candidate_dir: Path, rules_dir: Path | None,
           store: str | None, old_store: str | None, as_json: bool) -> None:
    """What would change if the rules of --candidate went live: per category the
    (agent, conversation) pairs entering and leaving it, badge count changes per agent,
    and examples with their explanations. Exit status as diff's."""
    from worker.tools.shadow import ShadowReport, open_state, render
    from worker.tools.shadow import shadow as compare

    if old_store is not None:
        if store is not None:
            raise click.UsageError("--state is the old name of --store: give --store only")
        click.echo("warning: shadow --state is deprecated: use --store (the option's name "
                   "in rules deploy, history and rollback too)", err=True)
        store = old_store
    if (events is None) == (store is None):
        raise click.UsageError("give EVENTS.jsonl to replay, or --store to read the "
                               "workers' state")
    current = load_or_exit(rules_dir)
    candidate = load_or_exit(candidate_dir)
    bad = 0
    report: ShadowReport
    if events is not None:
        inbox = Inbox(current)
        with progress(None, "replaying events") as bar:
            for item in replay_lines(inbox, events, progress=bar.advance):
                if isinstance(item, BadLine):
                    bad += 1
                    click.echo(f"line {item.number}: {item.reason}", err=True)
        with progress(len(inbox.accounts), "comparing accounts") as bar:
            report = compare(inbox.accounts.values(), candidate, current,
                             progress=bar.advance)
        source = current.source
    else:
        try:
            state, where = open_state(store or "", command_settings())
            try:
                with progress(None, "comparing accounts") as bar:
                    report = compare(state.iter_accounts(), candidate, current,
                                     progress=bar.advance)
            finally:
                state.close()
        except StoreError as exc:
            click.echo(f"shadow: {exc}", err=True)
            sys.exit(EXIT_TROUBLE)
        source = f"state {where}"
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(render(report, current_source=source, candidate_source=candidate.source),
                   nl=False)
    if bad:
        click.echo(f"{bad} bad line(s) skipped: the comparison is of the rest", err=True)
        sys.exit(EXIT_TROUBLE)
    sys.exit(EXIT_NO if report.differences else EXIT_OK)


main.add_command(rules)
main.add_command(views)


if __name__ == "__main__":
    main()
