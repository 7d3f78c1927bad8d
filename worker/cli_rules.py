"""``inbox-rules rules``: the rule author's commands (check, test, deploy, rollback,
history)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from worker.errors import RuleFileError, StoreError
from worker.rulebook.engine import check_rules, default_rules_dir
from worker.store import RuleDeployment, RuleStore
from worker.tools.rule_cases import run_cases
from worker.tools.rule_coverage import Coverage, run_with_coverage

if TYPE_CHECKING:
    from worker.tools.rule_deploy import Deployed

from worker.cli_support import (
    EXIT_NO,
    EXIT_TROUBLE,
    RULES_DIR,
    command_settings,
    exit_status,
    load_or_exit,
)

_T = TypeVar("_T")


@click.group(epilog="Exit status as every command's: 0 done, 1 the answer is no, 2 "
                    "trouble (each command's --help says when).")
def rules() -> None:
    """Tools for rule authors."""


@rules.command("check", epilog=exit_status(
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


@rules.command("test", epilog=exit_status(
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
    compiled = load_or_exit(directory)
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


@rules.command("schema", epilog=exit_status(
    "the schema is printed", "it cannot be written"))
def rules_schema() -> None:
    """Print the JSON Schema of a rule file (draft-07), for editors that check and
    complete YAML with one: the file contracts/schema/rule-file.schema.json of the
    repository and of the installed package. What one file cannot show (references,
    attribute types, duplicates) only rules check says."""
    from contracts.schema import render
    from worker.rulebook.schema import rule_file_schema

    click.echo(render(rule_file_schema()), nl=False)


_STORE_OPTION = click.option(
    "--store", "where", default="", metavar="PATH|URL",
    help="The workers' state store: a SQLite file or a postgresql:// URL (default: "
         "INBOX_RULES_STORE_URL, else INBOX_RULES_STATE_PATH).")


@rules.command("deploy", epilog=exit_status(
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


@rules.command("rollback", epilog=exit_status(
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


@rules.command("history", epilog=exit_status(
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
        store, store_name = open_rule_store(where, command_settings(), read_only=read_only,
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
