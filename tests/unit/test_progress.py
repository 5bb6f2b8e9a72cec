"""Progress: lines when the output is not a terminal, nothing when off, bars never break."""

from __future__ import annotations

import io

import pytest

from fedsynth import progress


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(progress, "_stream", lambda: out)
    yield out
    progress.show("auto")


def test_lines_mode_gives_percentages_with_time_left_and_no_100_percent_line(
        stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    progress.show("auto")  # a StringIO is not a terminal: lines
    with progress.task("estimating", total=100) as t:
        for _ in range(10):
            t.advance(10)
    lines = stream.getvalue().splitlines()
    assert [line.split(":")[1].split(",")[0].strip() for line in lines[:-1]] == [
        "30%", "50%", "80%"]  # the first advance past each quarter
    assert all("left" in line for line in lines[:-1])
    assert not any("100%" in line for line in lines)
    assert lines[-1].startswith("estimating: done in")


def test_off_prints_nothing(stream: io.StringIO) -> None:
    progress.show("off")
    with progress.task("x", total=3) as t:
        t.advance(3)
    assert stream.getvalue() == ""


def test_bars_mode_runs_and_a_failed_step_prints_no_done_line(stream: io.StringIO) -> None:
    progress.show("bars")
    with pytest.raises(RuntimeError), progress.task("failing", total=None):
        raise RuntimeError("boom")
    assert "done" not in stream.getvalue()
    with progress.task("counting", total=5, unit="row") as t:
        t.advance(5)
    assert "counting" in stream.getvalue()


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        progress.show("loud")  # type: ignore[arg-type]
