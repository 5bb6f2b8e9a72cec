"""Scalability of a job's steps: wall time, peak resident memory and rows per second."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _peak_mb() -> float:
    """Peak resident set of this process in MB (since the last reset, where Linux allows)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak() -> bool:
    try:
        _CLEAR.write_text("5")  # Linux: reset the peak resident set (VmHWM) to the current one
        return True
    except OSError:
        return False


@dataclass
class StepMeter:
    steps: list[dict[str, Any]] = field(default_factory=list)
    _open: dict[str, Any] | None = None

    def begin(self, name: str) -> None:
        if self._open is not None:
            raise RuntimeError(f"step {self._open['step']!r} is still open")
        exact = _reset_peak()
        self._open = {"step": name, "t": time.perf_counter(), "peak_is_per_step": exact}

    def end(self, rows: int | None = None) -> None:
        """Close the open step; `rows` it processed give its rows per second."""
        if self._open is None:
            raise RuntimeError("no step is open")
        seconds = time.perf_counter() - self._open.pop("t")
        self.steps.append({**self._open, "seconds": seconds, "peak_rss_mb": _peak_mb(),
                           "rows": rows,
                           "rows_per_second": rows / seconds if rows and seconds > 0 else None})
        self._open = None

    @contextmanager
    def step(self, name: str, rows: int | None = None) -> Iterator[None]:
        self.begin(name)
        try:
            yield
        finally:
            self.end(rows)

    def timings(self) -> dict[str, float]:
        return {s["step"]: float(s["seconds"]) for s in self.steps}
