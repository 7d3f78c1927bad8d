"""The layout stays readable: modules and functions stay small, and the architecture page
names files that exist.

Limits: a module of ``worker/`` or ``contracts/`` has at most MAX_MODULE_LINES lines, a
function (or method) at most MAX_FUNCTION_LINES from its ``def`` to its last line
(docstring included, decorators not: command-line options are declarations). A place
allowed over a limit would be listed with its size: it may shrink (then lower or drop
its entry), never grow.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "contracts")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

# Places allowed over a limit: path -> lines; "path:function" -> lines. None is.
LONG_MODULES: dict[str, int] = {}
LONG_FUNCTIONS: dict[str, int] = {}


def _modules() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _functions(tree: ast.AST) -> Iterator[tuple[str, int]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_module_grows_over_the_limit() -> None:
    over = {}
    for path in _modules():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        allowed = LONG_MODULES.get(_name(path), MAX_MODULE_LINES)
        if lines > allowed:
            over[_name(path)] = lines
    assert not over, f"modules over {MAX_MODULE_LINES} lines (split them): {over}"


def test_no_function_grows_over_the_limit() -> None:
    over = {}
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for name, lines in _functions(tree):
            key = f"{_name(path)}:{name}"
            if lines > LONG_FUNCTIONS.get(key, MAX_FUNCTION_LINES):
                over[key] = lines
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines (split them): {over}"


def test_the_known_exceptions_are_still_exceptions() -> None:
    """An entry that is within the limits now is dropped from the lists."""
    modules = {_name(p): len(p.read_text(encoding="utf-8").splitlines()) for p in _modules()}
    stale = [m for m in LONG_MODULES if modules.get(m, 0) <= MAX_MODULE_LINES]
    functions = {f"{_name(p)}:{name}": lines for p in _modules()
                 for name, lines in _functions(ast.parse(p.read_text(encoding="utf-8")))}
    stale += [f for f in LONG_FUNCTIONS if functions.get(f, 0) <= MAX_FUNCTION_LINES]
    assert not stale, f"within the limits now, drop from the lists: {stale}"


ARCHITECTURE = ROOT / "docs" / "architecture.md"
PATH = re.compile(r"\b(?:worker|contracts)/[\w/]*\w\.py\b|\b(?:worker|contracts)/[\w/]*/(?=`)")


def test_every_path_the_architecture_page_names_exists() -> None:
    named = sorted(set(PATH.findall(ARCHITECTURE.read_text(encoding="utf-8"))))
    assert len(named) >= 20, f"the page names few files: {named}"
    missing = [p for p in named if not (ROOT / p).exists()]
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_the_walk_names_each_stage_in_order() -> None:
    """intake -> link -> driver -> pipeline step -> categoriser -> store -> confirms -> ack."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    walk = text[:text.index("## The packages")]
    stages = ["worker/amqp/intake.py", "worker/amqp/link.py", "worker/driver/core.py",
              "worker/pipeline.py", "worker/domain/categoriser.py",
              "worker/driver/confirms.py", "worker/committer.py", "worker/store/"]
    positions = [walk.find(stage) for stage in stages]
    assert -1 not in positions, dict(zip(stages, positions, strict=True))
    assert positions == sorted(positions), dict(zip(stages, positions, strict=True))
    assert "ack" in walk[positions[-1]:]
