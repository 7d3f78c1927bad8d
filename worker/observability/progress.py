"""Progress for long offline work (``replay``, ``shadow``, a rule sweep): a live bar
on a terminal, nothing at all otherwise.

On a terminal the bar is drawn by ``rich`` (maintained, typed, handles terminal width,
redraw rate and non-UTF-8 consoles, and ends the bar cleanly on an exception); it
writes to stderr so stdout stays the command's output (``replay`` pipes JSON lines).
When stderr is not a terminal (a pipe, a file, CI) nothing is written: a log or a
captured stderr must not fill with redraw sequences. rich is imported only when a bar
is drawn, so the worker and piped commands never pay for it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class ProgressReporter(Protocol):
    """What a long job reports to: ``advance(n)`` after each ``n`` items done."""

    def advance(self, n: int = 1) -> None: ...


class _Silent:
    def advance(self, n: int = 1) -> None:
        """Nothing to draw: as cheap as a call can be, so jobs may call it per item."""


class _RichBar:
    def __init__(self, bar: Progress, task: TaskID) -> None:
        self._bar = bar
        self._task = task

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._task, n)


def _is_terminal(stream: TextIO | None) -> bool:
    if stream is None:  # e.g. pythonw, or stderr closed
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like-enough stream
        return False


@contextlib.contextmanager
def progress(total: int | None, description: str, *, stream: TextIO | None = None,
             enabled: bool | None = None) -> Iterator[ProgressReporter]:
    """A progress bar for ``total`` items (None: a count and a rate, no bar) on
    ``stream`` (default: stderr), drawn only when it is a terminal.

    ``enabled`` forces the choice (True draws even off a terminal, for tests).
    """
    out = stream if stream is not None else sys.stderr
    if not (enabled if enabled is not None else _is_terminal(out)):
        yield _Silent()
        return
    with _rich_progress(out, counted=total is not None) as bar:
        task = bar.add_task(description, total=total)
        try:
            yield _RichBar(bar, task)
        finally:
            if total is None:  # end on a full bar, not a pulse frozen mid-way
                done = next(t.completed for t in bar.tasks if t.id == task)
                bar.update(task, total=done)


def _rich_progress(out: TextIO, *, counted: bool = True) -> Progress:
    """A rich Progress on ``out``: description, bar, n/total, items/s, elapsed, ETA."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Items per second (rich's own speed column counts bytes)."""

        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")

    # With no total, "1,234" reads better than MofN's "1234/?".
    count = MofNCompleteColumn() if counted else TextColumn("{task.completed:,}")
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), count,
                    RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(file=out), transient=False)
