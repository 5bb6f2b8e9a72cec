"""Progress of long steps, for the person waiting: a bar (with time left when the length is
known) on a terminal or in a notebook, short plain lines when the output is a file or a pipe.

Library code marks its long steps with `task(...)`; what is shown is chosen once per process
(`show(...)`): "auto" (the default: bars on a terminal, lines otherwise), "bars", "lines" or
"off". A step's bar goes to standard error, so standard output stays the command's result.
Steps run in worker threads too (Flower's server app), so the choice is process-wide.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, TextIO

Mode = Literal["auto", "bars", "lines", "off"]
_mode: Mode = "auto"
_lock = threading.Lock()
HEARTBEAT = 15.0  # seconds between "still running" lines when no bar can be drawn


def show(mode: Mode) -> None:
    """How progress is shown from now on in this process."""
    global _mode
    if mode not in ("auto", "bars", "lines", "off"):
        raise ValueError(f"progress mode {mode!r} is not one of auto, bars, lines, off")
    _mode = mode


def _stream() -> TextIO:
    return sys.stderr


def _resolved() -> Mode:
    if _mode != "auto":
        return _mode
    stream = _stream()
    return "bars" if _in_notebook() or getattr(stream, "isatty", lambda: False)() else "lines"


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    ip = getattr(shell, "get_ipython", lambda: None)() if shell else None
    return type(ip).__name__ == "ZMQInteractiveShell"


class Task:
    """One long step. `advance(n)` moves it on; `total` None means no known length (a timer)."""

    def __init__(self, desc: str, total: float | None, unit: str) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.done = 0.0
        self.started = time.monotonic()
        self._bar: Any = None
        self._mode = _resolved()
        self._next_line = 0.25  # lines mode: print at 25%, 50%, 75%
        self._open = True
        if self._mode == "bars":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit or "it", leave=False,
                             file=_stream(), dynamic_ncols=True,
                             bar_format=None if total else "{desc}: {elapsed}")
            if not total:
                self._ticker = threading.Thread(target=self._tick, daemon=True)
                self._ticker.start()
        elif self._mode == "lines" and not total:
            threading.Thread(target=self._heartbeat, daemon=True).start()

    def _tick(self) -> None:
        while self._bar is not None:
            time.sleep(0.5)
            bar = self._bar
            if bar is not None:
                bar.refresh()

    def _heartbeat(self) -> None:
        """Lines mode, no known length: a line every HEARTBEAT seconds while the step runs."""
        while True:
            time.sleep(HEARTBEAT)
            if not self._open:
                return
            self._line(f"{self.desc}: {time.monotonic() - self.started:.0f} s so far")

    def _line(self, text: str) -> None:
        with _lock:
            print(text, file=_stream(), flush=True)

    def advance(self, n: float = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif (self._mode == "lines" and self.total and self._next_line
              <= self.done / self.total < 1):
            elapsed = time.monotonic() - self.started
            left = elapsed * (self.total - self.done) / max(self.done, 1e-9)
            self._line(f"{self.desc}: {100 * self.done / self.total:.0f}%, about {left:.0f} s "
                       "left")
            while self.done / self.total >= self._next_line:
                self._next_line += 0.25

    def close(self, note: str = "", *, failed: bool = False) -> None:
        bar, self._bar = self._bar, None
        self._open = False
        elapsed = time.monotonic() - self.started
        if bar is not None:
            bar.close()
        if not failed and self._mode in ("lines", "bars") and elapsed >= 2.0:
            self._line(f"{self.desc}: done in {elapsed:.1f} s{note}")


def start(desc: str, total: float | None = None, unit: str = "") -> Task:
    """A step that ends with `close()` (for steps that end in another thread or callback)."""
    return Task(desc, total, unit)


@contextmanager
def task(desc: str, total: float | None = None, unit: str = "") -> Iterator[Task]:
    """A long step as a block: shown while it runs, one short line when it is done."""
    t = Task(desc, total, unit)
    try:
        yield t
    except BaseException:
        t.close(failed=True)
        raise
    t.close()
