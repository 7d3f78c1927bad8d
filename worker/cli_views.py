"""``inbox-rules views``: views (saved filters of accounts and agents) checked offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from worker.cli_support import EXIT_NO, EXIT_TROUBLE, RULES_DIR, exit_status
from worker.errors import RuleFileError
from worker.rulebook.engine import check_rules, default_rules_dir
from worker.rulebook.views import check_views

MAX_VIEWS_FILE_BYTES = 1024 * 1024


@click.group(epilog="Exit status as every command's: 0 done, 1 the answer is no, 2 "
                    "trouble.")
def views() -> None:
    """Views: conditions accounts and agents define over the rules' facts and categories."""


@views.command("check", epilog=exit_status(
    "every view is valid",
    "unreadable FILE or invalid rule files",
    "a view has a problem (every problem on stderr with its path)"))
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--rules", "rules_dir", type=RULES_DIR, default=None,
              help="Rule directory the views refer to (default: the shipped rule set).")
def views_check(file: Path, rules_dir: Path | None) -> None:
    """Validate FILE, the body of a views event ({"views": [...]}, with "agent_id" for
    an agent's personal views), against the rules' facts, categories and predicates."""
    try:
        data = file.read_bytes()[:MAX_VIEWS_FILE_BYTES + 1]
    except OSError as exc:
        click.echo(f"{file}: cannot read: {exc.strerror}", err=True)
        sys.exit(EXIT_TROUBLE)
    try:
        definitions, _ = check_rules(rules_dir or default_rules_dir())
    except RuleFileError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_TROUBLE)
    if len(data) > MAX_VIEWS_FILE_BYTES:
        click.echo(f"{file}: larger than {MAX_VIEWS_FILE_BYTES} bytes", err=True)
        sys.exit(EXIT_NO)
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        click.echo(f"{file}: not JSON: {exc}", err=True)
        sys.exit(EXIT_NO)
    checked, found = check_views(raw, definitions)
    for view_problem in found:
        click.echo(f"{file}: {view_problem}", err=True)
    if found:
        sys.exit(EXIT_NO)
    names = ", ".join(view.category for view in checked) or "none"
    click.echo(f"{file}: ok, {len(checked)} view(s): {names}")
