"""Output folders: checked before any work, written all or nothing, never over a user's files.

fedsynth writes a job's results into a folder of its own. A folder that exists is used only
when it is empty, or, with `overwrite`, when fedsynth itself wrote it (it holds the MARKER
file); anything else (a project folder, a file, a folder of someone's notes) is refused
before the job starts, so no user file is ever replaced or renamed. Files are written to a
temporary sibling and moved into place with one rename; on failure the old folder stays.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from fedsynth import scratch
from fedsynth.errors import InputError

MARKER = ".fedsynth-output"
_MARKER_TEXT = "This folder was written by fedsynth; `--overwrite` may replace it.\n"


class OutputError(InputError):
    """An output folder that cannot or may not be written; the message says how to fix it."""


def check_out(out: Path, *, overwrite: bool = False, flag: str = "--out") -> Path:
    """Refuse, before any work, an output place fedsynth must not or cannot write.

    Returns the resolved folder. Accepted: a new folder in a writable place, an empty folder,
    or (with `overwrite`) a folder holding MARKER."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {out} is a file, not a folder: give the name of a new "
                          "folder (fedsynth writes several files into it)")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(f"{flag} {out} already exists and is not empty: give a new "
                              "folder name, or add --overwrite to replace a folder that "
                              "fedsynth wrote")
        if not (out / MARKER).is_file():
            raise OutputError(f"{flag} {out} was not written by fedsynth (it has no {MARKER} "
                              "file), so --overwrite will not replace it: give a new folder "
                              "name")
    _check_writable(out, flag)
    return out


def _check_writable(out: Path, flag: str) -> None:
    """The nearest existing folder at or above `out` lets us create (and remove) a folder."""
    place = out
    while not place.exists():
        place = place.parent
    if not place.is_dir():
        raise OutputError(f"{flag} {out}: {place} is a file, so no folder can be made there")
    try:
        probe = place / f".{out.name}.probe-{os.getpid()}"
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise OutputError(f"{flag} {out}: cannot write in {place} ({exc.strerror or exc}); "
                          "choose a folder you can write to") from None


# a file's content: text, bytes, or a function that writes the file itself (a big table,
# written straight to the disk instead of first into a string)
Content = str | bytes | Callable[[Path], None]


def write_folder(out: Path, files: Mapping[str, Content], *,
                 overwrite: bool = False) -> Path:
    """Write `files` (name -> content) as the folder `out`, all or nothing.

    `out` is checked again as in `check_out` (the user may have made it since). The folder
    is marked as fedsynth's own (MARKER) and replaces an old one only when all files are
    written; on any failure the old folder, if any, is left as it was."""
    out = check_out(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with scratch.folder(f".{out.name}.tmp-", dir=out.parent) as tmp:
        for name, content in {**files, MARKER: _MARKER_TEXT}.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            elif isinstance(content, str):
                path.write_text(content, encoding="utf-8")
            else:
                content(path)
        if out.exists():  # empty, or fedsynth's own (checked above)
            backup = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(backup)
            tmp.rename(out)
            shutil.rmtree(backup)
        else:
            tmp.rename(out)
        scratch.keep(tmp)
    return out
