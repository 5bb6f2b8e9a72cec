"""Temporary folders this process made, so that an interrupt can remove them.

A job keeps its parties' folders and half-written outputs in temporary folders. Normally
they are removed as the `with` blocks unwind; on Ctrl-C the command line stops the process
at once (worker threads and engine processes cannot be unwound reliably) and removes what
is registered here first, so an interrupted job leaves nothing behind.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_lock = threading.Lock()
_live: set[Path] = set()


@contextmanager
def folder(prefix: str, dir: Path | None = None) -> Iterator[Path]:
    """A new temporary folder, removed on exit from the block (or by `remove_all`)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    with _lock:
        _live.add(path)
    try:
        yield path
    finally:
        with _lock:
            _live.discard(path)
        shutil.rmtree(path, ignore_errors=True)


def keep(path: Path) -> None:
    """`path` is no longer temporary (it was renamed into place): do not remove it."""
    with _lock:
        _live.discard(path)


def remove_all() -> None:
    """Remove every registered folder now (called on interrupt)."""
    with _lock:
        paths = list(_live)
        _live.clear()
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)
