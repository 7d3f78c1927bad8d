"""The ``inbox-rules`` command line (a contract too: docs/reference/cli.md)."""

from __future__ import annotations

import json
import os
import ssl
import sys
import textwrap
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import click
from pydantic import ValidationError

from contracts.requests import describe_request_error
from worker.domain.inbox import Inbox
from worker.errors import DemoError, RuleFileError, SettingsError, StoreError
from worker.observability import configure_logging, progress
from worker.observability.logs import url_secrets
from worker.rulebook.engine import CompiledRules, check_rules, default_rules_dir, load_rules
from worker.settings import Settings, describe_settings, load_settings, unknown_variables
from worker.store import RuleDeployment, RuleStore
from worker.tools.demo import run_demo
from worker.tools.replay import BadLine, parse_moment, replay_lines
from worker.tools.rule_cases import run_cases
from worker.tools.rule_coverage import Coverage, run_with_coverage

if TYPE_CHECKING:
    from worker.tools.rule_deploy import Deployed

_T = TypeVar("_T")
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


def _exit_status(ok: str, trouble: str, no: str | None = None) -> str:
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


class _Commands(click.Group):
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


def _broker_settings(amqp_url: str | None) -> Settings:
    """The settings of a command that connects, ``--amqp-url`` over AMQP_URL."""
    return _settings() if amqp_url is None else _settings(AMQP_URL=amqp_url)


def _settings(**overrides: object) -> Settings:
    """The settings (``overrides`` first), read once per command: a warning for each
    INBOX_RULES_* variable that sets nothing, one line per bad variable and exit
    status 2 if any is invalid."""
    for warning in unknown_variables(os.environ):
        click.echo(warning, err=True)
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        raise Trouble(str(exc)) from exc


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]},
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


@main.command(epilog=_exit_status(
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
    rules = _load_or_exit(rules_dir)
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


@main.command(epilog=_exit_status(
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
    settings = _broker_settings(amqp_url)
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
    compiled = _load_or_exit(settings.rules_dir)
    from worker.service import serve  # the broker stack: only the worker needs it

    try:
        serve(settings, compiled)
    except (StoreError, SettingsError) as exc:
        raise Trouble(str(exc)) from exc


@main.command(epilog=_exit_status(
    "the inboxes printed",
    "bad settings, no broker at AMQP_URL, no worker answering within --timeout"))
@click.option("--timeout", default=10.0, show_default=True,
              help="Seconds to wait for the worker's updates.")
@AMQP_URL_OPTION
def demo(timeout: float, amqp_url: str | None) -> None:
    """Publish a small scenario to a running worker (through the broker at AMQP_URL, or
    --amqp-url) and print each agent's inbox."""
    try:
        click.echo(run_demo(_broker_settings(amqp_url), timeout))
    except DemoError as exc:
        raise Trouble(str(exc)) from exc


@main.command(epilog=_exit_status(
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
        run_watch(_broker_settings(amqp_url), account_id, agent_id, categories=wanted, tab=tab,
                  timeout=timeout, once=once)
    except WatchError as exc:
        raise Trouble(str(exc)) from exc


@main.command(epilog=_exit_status(
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
            reply = ask(_broker_settings(amqp_url), "explain", request, ExplainReply,
                        timeout=timeout)
        except RequestError as exc:
            raise Trouble(str(exc)) from exc
        undecided, source = None, None
    else:
        rules = _load_or_exit(rules_dir)
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


@main.command(epilog=_exit_status(
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
    current = _load_or_exit(rules_dir)
    candidate = _load_or_exit(candidate_dir)
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
            state, where = open_state(store or "", _settings())
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


@main.group(epilog="Exit status as every command's: 0 done, 1 the answer is no, 2 "
                    "trouble (each command's --help says when).")
def rules() -> None:
    """Tools for rule authors."""


@rules.command("check", epilog=_exit_status(
    "the rule files validate",
    "a rule file does not validate (every problem on stderr as file:line: reason)"))
@click.argument("directory", type=RULES_DIR, required=False)
def rules_check(directory: Path | None) -> None:
    """Validate the rule files of DIRECTORY (default: the shipped rule set)."""
    directory = directory or default_rules_dir()
    try:
        definitions, version = check_rules(directory)
    except RuleFileError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_TROUBLE)
    names = ", ".join(definitions.categories)
    click.echo(f"{directory}: ok, rules version {version}, categories: {names}")


@rules.command("test", epilog=_exit_status(
    "every case passes", "a rule file or case file does not validate",
    no="a case fails, or there are none"))
@click.argument("directory", type=RULES_DIR, required=False)
@click.option("--coverage", "with_coverage", is_flag=True,
              help="Also list the conditions (file:line) no case made true, and false.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object: the cases' results (and the coverage), for CI.")
@click.option("-q", "--quiet", is_flag=True,
              help="Print only the failing cases and the summary line (and --coverage's "
                   "gaps), not a PASS line per case.")
def rules_test(directory: Path | None, with_coverage: bool, as_json: bool,
               quiet: bool) -> None:
    """Run the rule test cases in DIRECTORY/cases against DIRECTORY's rules. The exit
    status says whether they pass; coverage gaps are reported, not failed."""
    directory = directory or default_rules_dir()
    compiled = _load_or_exit(directory)
    measured: Coverage | None = None
    try:
        if with_coverage:
            results, measured = run_with_coverage(compiled, directory)
        else:
            results = run_cases(compiled, directory)
    except RuleFileError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_TROUBLE)
    failed = [r for r in results if not r.passed]
    if as_json:
        report: dict[str, object] = {
            "passed": len(results) - len(failed), "failed": len(failed),
            "cases": [{"file": r.file, "line": r.line, "name": r.name, "passed": r.passed,
                       "failures": r.failures} for r in results]}
        if measured is not None:
            report["coverage"] = measured.to_json()
        click.echo(json.dumps(report))
    else:
        for result in results:
            if quiet and result.passed:
                continue
            mark = "PASS" if result.passed else "FAIL"
            click.echo(f"{mark} {result.file}:{result.line} {result.name}")
            for failure in result.failures:
                click.echo(f"     {failure}")
        click.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
        if measured is not None:
            click.echo(_coverage_text(measured), nl=False)
    if not results:
        click.echo(f"no test cases found in {directory / 'cases'}", err=True)
    if failed or not results:
        sys.exit(EXIT_NO)


_STORE_OPTION = click.option(
    "--store", "where", default="", metavar="PATH|URL",
    help="The workers' state store: a SQLite file or a postgresql:// URL (default: "
         "INBOX_RULES_STORE_URL, else INBOX_RULES_STATE_PATH).")


@rules.command("deploy", epilog=_exit_status(
    "deployed, or live already",
    "a rule file or case file does not validate, a state store that cannot be used, "
    "bad settings",
    no="refused, nothing deployed: a case fails, or there are none"))
@click.argument("directory", type=RULES_DIR)
@_STORE_OPTION
@click.option("--create", is_flag=True,
              help="Start a new SQLite store if the file does not exist (else refused: a "
                   "store no worker reads would take the deploy).")
def rules_deploy(directory: Path, where: str, create: bool) -> None:
    """Check DIRECTORY's rule files and run its test cases; if all pass, keep them in
    the workers' state store as a new rules version and make it live: every worker
    adopts it at a batch boundary within INBOX_RULES_RULES_POLL_INTERVAL seconds.
    Nothing is deployed if a file does not validate or a case fails."""
    from worker.tools.rule_deploy import deploy_directory

    def deploy(store: RuleStore) -> Deployed:
        return deploy_directory(store, directory)

    done, store_name = _with_rule_store(where, deploy, create=create)
    if done.deployment is None:
        click.echo(f"rules version {done.version} ({directory}) is live already in "
                   f"{store_name}: nothing to do")
        return
    cases = f"{done.cases} test case{'' if done.cases == 1 else 's'} passed"
    click.echo(f"deployed rules version {done.version} from {directory} ({cases}) to "
               f"{store_name}")
    click.echo(f"live now: {done.version} (was {done.previous or 'none'}), deployment "
               f"#{done.deployment.number}")
    click.echo(f"what changed: {done.summary}")


@rules.command("rollback", epilog=_exit_status(
    "rolled back, or live already",
    "VERSION's rule files do not load here, a state store that cannot be used, bad "
    "settings",
    no="refused, nothing changed: VERSION was never deployed, or there is nothing to go "
       "back to"))
@click.argument("version", required=False)
@_STORE_OPTION
def rules_rollback(version: str | None, where: str) -> None:
    """Make VERSION (default: the version live before the current one) the live rules
    again, the same way as a deploy. Nothing changes if it was never deployed or does
    not load."""
    from worker.tools.rule_deploy import rollback

    def roll_back(store: RuleStore) -> Deployed:
        return rollback(store, version)

    done, store_name = _with_rule_store(where, roll_back)
    if done.deployment is None:
        click.echo(f"rules version {done.version} is live already in {store_name}: "
                   "nothing to do")
        return
    click.echo(f"rolled back in {store_name}: live now {done.version} (was "
               f"{done.previous}), deployment #{done.deployment.number}")
    click.echo(f"what changed: {done.summary}")


@rules.command("history", epilog=_exit_status(
    "listed (perhaps empty)",
    "no such state store, or one that cannot be read; bad settings"))
@_STORE_OPTION
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object: 'live' and 'deployments' (oldest first).")
def rules_history(where: str, as_json: bool) -> None:
    """Every deployment and rollback of the workers' rules: when, which version, from
    where, and what changed; the live one last, marked."""
    def history(store: RuleStore) -> list[RuleDeployment]:
        return store.rule_history()

    deployments, store_name = _with_rule_store(where, history, read_only=True)
    if as_json:
        click.echo(json.dumps({
            "store": store_name,
            "live": deployments[-1].version if deployments else None,
            "deployments": [{"number": d.number, "version": d.version,
                             "at": d.at.isoformat(), "action": d.action, "source": d.source,
                             "summary": d.summary} for d in deployments]}))
        return
    if not deployments:
        click.echo(f"{store_name}: no rules deployed (workers run their rule directory)")
        return
    for d in deployments:
        live = "  (live)" if d is deployments[-1] else ""
        click.echo(f"#{d.number}  {d.at.isoformat(timespec='seconds')}  {d.action:<8}  "
                   f"{d.version}  {d.source}{live}")
        click.echo(f"     {d.summary}")


def _with_rule_store(where: str, work: Callable[[RuleStore], _T], *,
                     read_only: bool = False, create: bool = False) -> tuple[_T, str]:
    """Run ``work`` on the workers' store, closed after; said on stderr: a refusal
    (nothing changed) with exit status 1, 2 if its rule files do not validate, a store
    that cannot be used with 2. A SQLite file is created only with ``create``."""
    from worker.tools.rule_deploy import DeployRefusedError, NoStoreError, open_rule_store

    try:
        store, store_name = open_rule_store(where, _settings(), read_only=read_only,
                                            create=create)
    except NoStoreError as exc:
        click.echo(f"{exc}: name the workers' store with --store FILE|URL (or "
                   "INBOX_RULES_STORE_URL / INBOX_RULES_STATE_PATH); rules deploy --create "
                   "starts a new one", err=True)
        sys.exit(EXIT_TROUBLE)
    except StoreError as exc:
        click.echo(f"state store: {exc}", err=True)
        sys.exit(EXIT_TROUBLE)
    try:
        return work(store), store_name
    except DeployRefusedError as exc:
        click.echo(str(exc), err=True)
        for problem in exc.problems:
            click.echo(problem, err=True)
        # Invalid rule files are trouble in every command; the rest is a refusal.
        sys.exit(EXIT_TROUBLE if isinstance(exc.__cause__, RuleFileError) else EXIT_NO)
    except StoreError as exc:
        click.echo(f"{exc}; nothing changed", err=True)
        sys.exit(EXIT_TROUBLE)
    finally:
        store.close()


def _coverage_text(measured: Coverage) -> str:
    lines = [f"coverage: {len(measured.conditions)} conditions over {measured.vectors} "
             "distinct fact vectors the cases produced"]
    for title, gaps in (("never made true", measured.never_true),
                        ("never made false", measured.never_false)):
        lines.append(f"{title}: {len(gaps) or 'none'}")
        lines += [f"  {c.file}:{c.line}  {c.condition}  (in {c.owner})" for c in gaps]
    return "\n".join(lines) + "\n"


def _load_or_exit(directory: Path | None) -> CompiledRules:
    try:
        return load_rules(directory)
    except RuleFileError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_TROUBLE)


if __name__ == "__main__":
    main()
