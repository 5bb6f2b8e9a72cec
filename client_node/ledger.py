"""A party's crash-safe privacy ledger: every release is recorded before the value leaves.

Who knows what. The ledger is the party's own file and never leaves the party. It holds no data
and no noise: per release only the job, round, label, budget and the public cost parameters
(how many vectors, their Skellam variance, their L1 / L2 sensitivity), plus audit lines
(`record`) such as evaluation releases or job set-ups. The coordinator learns only the ε the
party chooses to report from it.

Format. One JSON object per line, ASCII, ending in "\\n", appended with write + fsync. A DP
release is `{"kind": "release", "budget", "mechanism", "sampling_rate", "count", "variance",
"l1", "l2", "job_id", "round", "label", "time"}` with the cost fields first: an event of one of
`crypto.accountant.MECHANISMS` (a Skellam counting release, or subsampled Gaussian steps of
DP-SGD). Release lines without "mechanism" are Skellam releases of earlier versions, and lines
without a "kind" releases of still earlier ones (synthesis budget, l1 = l2 = 1). "torn" lines
record a repaired crash (below); every other kind is an audit line and costs nothing. The cap
of each budget ("synthesis" -> `epsilon_cap`, "evaluation" -> `evaluation_epsilon_cap`) is
checked on the RDP composition of every release of that budget in the file (all jobs on this
data), converted at the party's δ; a request that would pass the cap is refused and nothing is
recorded.

Why a crash can only over-count. The caller must hand a noised value to its reply only after
`charge` returned (the node does), and `charge` returns only after the entry's write and fsync
returned. So
every release that ever left the party has a complete, durable line. A last line without its
"\\n" (a torn tail) comes from a charge whose write never completed: that charge never
returned, so its value was never sent, and leaving its cost out would be sound. We still count
it whenever the fragment holds the complete cost fields (which is why they are written first; a
field counts as complete only if the delimiter after its value survived, so a cut number is
never misread as a smaller one): counting a release that did not happen is merely
conservative. A fragment cut inside the cost fields cannot be priced and, by the argument
above, was never sent. Before anything is appended the torn tail is repaired: the file is
rewritten as its complete lines plus a `{"kind": "torn", "fragment", "time"}` line, and moved
over the ledger with an atomic rename (then the folder is fsynced), so a crash during the
repair leaves either the old file or the repaired one, which read the same. Reading counts the
fragment the same way before and after repair, and `torn` counts repaired and pending ones. A
complete line (one that ends in "\n") that does not parse is damage, not a crash, which can
only cut the last line short: reading raises `LedgerDamaged` naming the file and line, and
nothing is charged until a person fixes it.

Concurrency. `charge`, `charge_many` and `record` hold an exclusive `flock` on the sibling file
"<ledger>.lock" from reading the ledger, through repair and the cap check, to the fsync of the
append, so processes (and threads) sharing a ledger are serialised and two of them cannot both
fit under a cap that only one fits under. The lock is on a sibling, not on the ledger, because
the repair replaces the ledger's inode. Readers (`spent`, `entries`, ...) take the shared lock
when the lock file exists; without it they still see a consistent state (an append in progress
reads as a tail fragment, priced as above; a repair is a rename). The ledger must live on a file
system where flock holds between all the processes that use it (a local disk does; some
network file systems do not).

Durability. The file is fsynced after each append; the folder is fsynced when the ledger (or a
missing folder on its path) is created and after a repair's rename, so the new directory entry
survives a power loss too. `charge_many` writes a round's releases with one write: a crash in
it leaves a prefix of them on disk (counted, a priced fragment included) and none of them sent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import operator
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsynth.crypto.accountant import MECHANISMS, Accountant

BUDGETS = ("synthesis", "evaluation")
COST_FIELDS = ("kind", "budget", "count", "variance", "l1", "l2")
EVENT_FIELDS = ("mechanism", "sampling_rate")  # cost fields too, on lines that have them
RESERVED_KINDS = ("release", "torn")
# A torn fragment is priced from its shortest prefix, closed at a comma, that holds every cost
# field; the cost fields come first, so a handful of commas suffices (old-format lines put the
# job id and label first, whose text may hold a few commas).
_MAX_PREFIXES = 64


class BudgetExceeded(RuntimeError):
    """The request would take the party past its own ε cap."""


class LimitReached(RuntimeError):
    """`record_limited` found its limit reached; `count` lines already match."""

    def __init__(self, count: int) -> None:
        self.count = count
        super().__init__(f"{count} matching audit line(s) already recorded")


class LedgerDamaged(ValueError):
    """A ledger line other than a torn tail does not parse: the file was altered or corrupted."""


@dataclass
class _State:
    """What the ledger file holds: parsed complete lines, plus a torn tail if there is one."""

    data: bytes
    lines: list[dict[str, Any]]
    fragment: str | None  # the text after the last "\n", if the file does not end in one

    def releases(self) -> list[dict[str, Any]]:
        return [e for e in self.lines if e["kind"] == "release"]

    def recovered(self) -> list[dict[str, Any]]:
        """Releases priced from torn fragments (recorded ones, then a pending tail)."""
        texts = [str(e.get("fragment", "")) for e in self.lines if e["kind"] == "torn"]
        if self.fragment is not None:
            texts.append(self.fragment)
        return [r for r in map(_price_fragment, texts) if r is not None]

    def torn(self) -> int:
        return sum(e["kind"] == "torn" for e in self.lines) + (self.fragment is not None)


@dataclass
class Ledger:
    path: Path
    epsilon_cap: float
    delta: float
    evaluation_epsilon_cap: float = 0.0  # separate budget for DP evaluation releases

    def __post_init__(self) -> None:
        self.path = Path(self.path)  # a str from a config file works too

    # --- reading ---------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Every DP release on a complete line, oldest first (old-format lines normalised)."""
        return self._read().releases()

    def accountant(self, budget: str = "synthesis") -> Accountant:
        """The releases of one budget, recovered torn fragments included, composed."""
        _check_budget(budget)
        state = self._read()
        return _compose([*state.releases(), *state.recovered()], budget)

    def spent(self, budget: str = "synthesis") -> float:
        """ε spent in `budget` at the party's δ (recoverable torn fragments counted)."""
        return self.accountant(budget).epsilon(self.delta)

    def audits(self, kind: str) -> list[dict[str, Any]]:
        """The audit lines of `kind` (or the "torn" records), oldest first."""
        if kind == "release":
            raise ValueError("releases are not audit lines; use entries() or spent()")
        return [e for e in self._read().lines if e["kind"] == kind]

    def torn(self) -> int:
        """Torn fragments (crashes mid-write) so far: repaired ones plus a pending torn tail."""
        return self._read().torn()

    # --- writing ---------------------------------------------------------------------------

    def charge(self, *, job_id: str, round_id: int, label: str, count: int, variance: float,
               l1: float = 1.0, l2: float = 1.0, budget: str = "synthesis") -> float:
        """Locked check-and-append of a DP release; raises BudgetExceeded past the cap of that
        budget ("synthesis" -> epsilon_cap, "evaluation" -> evaluation_epsilon_cap); returns ε
        spent in that budget after it."""
        return self.charge_many([{"label": label, "count": count, "variance": variance,
                                  "l1": l1, "l2": l2}],
                                job_id=job_id, round_id=round_id, budget=budget)

    def charge_many(self, releases: list[dict[str, Any]], *, job_id: str, round_id: int,
                    budget: str) -> float:
        """Several releases of one round (each dict has label, count, variance, l1, l2) checked
        against the cap together and appended under one lock with one write (all or none);
        returns ε spent in that budget after them."""
        _check_budget(budget)
        if not releases:
            raise ValueError("charge_many needs at least one release")
        entries = [_release_entry(r, job_id=job_id, round_id=round_id, budget=budget)
                   for r in releases]
        cap = self.epsilon_cap if budget == "synthesis" else self.evaluation_epsilon_cap
        with self._exclusive():
            state = self._repaired(self._read_locked())
            acc = _compose([*state.releases(), *state.recovered(), *entries], budget)
            after = acc.epsilon(self.delta)
            if after > cap * (1 + 1e-9):
                knob = "epsilon_cap" if budget == "synthesis" else "evaluation_epsilon_cap"
                raise BudgetExceeded(
                    f"this release would bring the party's {budget} spending to ε={after:.4f}, "
                    f"over its cap ε={cap} (δ={self.delta}); raise {knob} in the party's "
                    "policy or ask for less")
            self._append(entries)
        return after

    def record(self, kind: str, **fields: object) -> None:
        """Append an audit line (not a DP release, costs nothing), locked and fsynced."""
        self.record_limited(kind, limit=math.inf, same=lambda _e: True, **fields)

    def record_limited(self, kind: str, *, limit: float, same: Callable[[dict[str, Any]], bool],
                       **fields: object) -> int:
        """Append an audit line only if fewer than `limit` lines of `kind` satisfy `same`, all
        under the exclusive lock (two concurrent requests cannot both pass); returns how many
        there were before. Raises LimitReached otherwise and writes nothing."""
        if kind in RESERVED_KINDS or not kind:
            raise ValueError(f"kind {kind!r} is reserved for the ledger itself; audit lines "
                             "need another kind (e.g. 'evaluation', 'setup')")
        entry: dict[str, Any] = {"kind": kind, **fields}
        entry.setdefault("time", time.time())
        with self._exclusive():
            state = self._repaired(self._read_locked())
            before = sum(1 for e in state.lines if e["kind"] == kind and same(e))
            if before >= limit:
                raise LimitReached(before)
            self._append([entry])
        return before

    # --- internals -------------------------------------------------------------------------

    @property
    def _lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _read(self) -> _State:
        """Read under the shared lock (for callers that do not hold the exclusive one)."""
        try:
            lock_fd = os.open(self._lock_path, os.O_RDONLY)
        except FileNotFoundError:  # never written by this version: nobody to wait for
            return self._read_locked()
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_SH)
            return self._read_locked()
        finally:
            os.close(lock_fd)  # closing releases the lock

    def _read_locked(self) -> _State:
        """Read without taking a lock: a second flock from this process would wait on itself."""
        try:
            return self._parse(self.path.read_bytes())
        except FileNotFoundError:
            return self._parse(b"")

    def _parse(self, data: bytes) -> _State:
        *complete, tail = data.split(b"\n")
        lines = []
        for number, raw in enumerate(complete, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise self._damaged(number, "not valid JSON") from None
            try:
                lines.append(_normalise(obj))
            except (ValueError, TypeError, KeyError) as exc:
                raise self._damaged(number, str(exc)) from None
        fragment = tail.decode("utf-8", errors="backslashreplace") if tail else None
        return _State(data=data, lines=lines, fragment=fragment)

    def _damaged(self, number: int, why: str) -> LedgerDamaged:
        return LedgerDamaged(
            f"{self.path}: line {number} is not a valid ledger entry ({why}). The ledger is "
            "damaged, not torn by a crash (only the last line can be): restore it from a "
            "backup, or correct that line by hand keeping every release it records, before "
            "this party takes part in any new job")

    def _repaired(self, state: _State) -> _State:
        """Replace a torn tail by a "torn" record (atomic rename), holding the exclusive lock."""
        if state.fragment is None:
            return state
        record = {"kind": "torn", "fragment": state.fragment, "time": time.time()}
        cut = len(state.data) - len(state.data.rsplit(b"\n", 1)[-1])
        data = state.data[:cut] + _line(record)
        target = Path(os.path.realpath(self.path))  # a symlinked ledger stays a symlink
        mode = os.stat(target).st_mode & 0o7777
        tmp = target.with_name(target.name + ".repair")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        return self._parse(data)

    def _append(self, entries: list[dict[str, Any]]) -> None:
        data = b"".join(_line(e) for e in entries)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o666)
            created = True
        except FileExistsError:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            created = False
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:  # the new file's directory entry must survive a power loss as well
            _fsync_dir(self.path.parent)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        _make_dirs(self.path.parent)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _check_budget(budget: str) -> None:
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; use one of {', '.join(BUDGETS)}")


def _cost(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The validated cost fields of a release (mechanism "skellam" and sampling rate 1 when a
    line of an earlier version has none)."""
    count, variance = obj["count"], obj["variance"]
    l1, l2 = obj.get("l1", 1.0), obj.get("l2", 1.0)
    mechanism, rate = obj.get("mechanism", "skellam"), obj.get("sampling_rate", 1.0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    for name, v in (("variance", variance), ("l1", l1), ("l2", l2), ("sampling_rate", rate)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if variance <= 0:
        raise ValueError(f"variance must be positive, got {variance!r}")
    if l1 <= 0 or l2 <= 0:
        raise ValueError(f"sensitivities must be positive, got l1={l1!r}, l2={l2!r}")
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
    if not 0 < rate <= 1 or (mechanism == "skellam" and rate != 1):
        raise ValueError(f"sampling_rate {rate!r} does not fit mechanism {mechanism!r}")
    return {"mechanism": str(mechanism), "sampling_rate": float(rate), "count": count,
            "variance": float(variance), "l1": float(l1), "l2": float(l2)}


def _normalise(obj: object) -> dict[str, Any]:
    """A parsed line as a dict with a "kind"; releases validated, old-format ones completed."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if "kind" not in obj:  # written before kinds existed: a synthesis release, l1 = l2 = 1
        return {**obj, "kind": "release", "budget": "synthesis", **_cost(obj)}
    if obj["kind"] == "release":
        if obj.get("budget") not in BUDGETS:
            raise ValueError(f"unknown budget {obj.get('budget')!r}")
        return {**obj, **_cost(obj)}
    if obj["kind"] == "torn" and not isinstance(obj.get("fragment"), str):
        raise ValueError("a torn record without its fragment")
    if not isinstance(obj["kind"], str):
        raise ValueError(f"kind must be a string, got {obj['kind']!r}")
    return obj


def _price_fragment(fragment: str) -> dict[str, Any] | None:
    """The release a torn fragment records, if its cost fields all survived, else None."""
    candidates = [fragment]
    ends = [i for i, ch in enumerate(fragment) if ch == ","][:_MAX_PREFIXES]
    candidates += [fragment[:i] + "}" for i in ends]
    for text in candidates:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            return None
        if obj.get("kind", "release") != "release":
            return None  # an audit or torn record: no cost
        needed = ((*COST_FIELDS, *EVENT_FIELDS) if "mechanism" in obj else COST_FIELDS) \
            if "kind" in obj else ("count", "variance")
        if all(k in obj for k in needed):
            try:
                return _normalise(obj)
            except (ValueError, TypeError, KeyError):
                return None
    return None


def _release_entry(release: Mapping[str, Any], *, job_id: str, round_id: int,
                   budget: str) -> dict[str, Any]:
    unknown = set(release) - {"label", "count", "variance", "l1", "l2", *EVENT_FIELDS}
    if unknown:
        raise ValueError(f"unknown release fields {sorted(unknown)}")
    try:  # numpy scalars welcome; stored as plain JSON numbers
        given = {"mechanism": release.get("mechanism", "skellam"),
                 "sampling_rate": float(release.get("sampling_rate", 1.0)),
                 "count": operator.index(release["count"]),
                 "variance": float(release["variance"]),
                 "l1": float(release.get("l1", 1.0)), "l2": float(release.get("l2", 1.0))}
    except KeyError as exc:
        raise ValueError(f"a release needs {exc.args[0]!r}") from None
    except TypeError as exc:
        raise ValueError(f"release {dict(release)!r} has a non-numeric cost: {exc}") from None
    # cost fields first: a fragment torn after them can still be priced (see module docstring)
    return {"kind": "release", "budget": budget, **_cost(given), "job_id": str(job_id),
            "round": int(round_id), "label": str(release.get("label", "")), "time": time.time()}


def _compose(releases: list[dict[str, Any]], budget: str) -> Accountant:
    acc = Accountant()
    for e in releases:
        if e["budget"] == budget:
            acc.add(step=str(e.get("label", "")), count=e["count"], variance=e["variance"],
                    l1=e["l1"], l2=e["l2"], mechanism=e["mechanism"],
                    sampling_rate=e["sampling_rate"])
    return acc


def _line(entry: Mapping[str, Any]) -> bytes:
    return (json.dumps(entry, allow_nan=False) + "\n").encode("ascii")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(folder: Path) -> None:
    """mkdir -p, fsyncing the parent of each folder it creates."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        _fsync_dir(d.parent)
