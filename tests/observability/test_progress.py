"""Progress bars: drawn on a terminal, nothing at all on a pipe or a file."""

from __future__ import annotations

import io

import pytest

from worker.observability.progress import progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("total", [50, None])
def test_silent_when_not_a_terminal(total: int | None) -> None:
    stream = io.StringIO()
    with progress(total, "replaying", stream=stream) as bar:
        for _ in range(50):
            bar.advance()
        bar.advance(10)
    assert stream.getvalue() == ""


def test_silent_on_stderr_when_it_is_not_a_terminal(
        capsys: pytest.CaptureFixture[str]) -> None:
    with progress(3, "sweeping rules") as bar:  # pytest's captured stderr is no terminal
        bar.advance(3)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("total", [50, None])
def test_drawn_on_a_terminal(total: int | None) -> None:
    stream = FakeTerminal()
    with progress(total, "replaying", stream=stream) as bar:
        for _ in range(50):
            bar.advance()
    drawn = stream.getvalue()
    assert "replaying" in drawn
    assert ("50/50" if total else "50") in drawn


def test_an_error_inside_still_ends_the_bar_and_propagates() -> None:
    stream = FakeTerminal()
    with pytest.raises(RuntimeError, match="bad line"), \
            progress(10, "replaying", stream=stream) as bar:
        bar.advance(2)
        raise RuntimeError("bad line")
    assert "2/10" in stream.getvalue()
