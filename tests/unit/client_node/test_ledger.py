"""Tests for fedsynth.client_node.ledger: a party never spends past its cap, even across crashes
(torn tails, killed processes) and concurrent processes sharing one ledger."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import multiprocessing as mp
import os
import signal
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsynth.client_node.ledger import BudgetExceeded, Ledger, LedgerDamaged
from fedsynth.crypto.accountant import Accountant

DELTA = 1e-6
V = 400.0  # Skellam variance of every release below
COST_FIELDS = ["kind", "budget", "mechanism", "sampling_rate", "count", "variance", "l1", "l2"]
LIVENESS = 60.0  # seconds; only bounds a hang, never decides an outcome


def eps(*counts: int, variance: float = V, l1: float = 1.0, l2: float = 1.0) -> float:
    """ε at DELTA of releases of the given counts, composed as the coordinator would."""
    acc = Accountant()
    for c in counts:
        acc.add(step="x", count=c, variance=variance, l1=l1, l2=l2)
    return acc.epsilon(DELTA)


def between(low: float, high: float) -> float:
    assert low < high
    return (low + high) / 2


def charge(ledger: Ledger, count: int, **kw: Any) -> float:
    return ledger.charge(job_id="job", round_id=1, label="pairs, part 1", count=count,
                         variance=V, **kw)


def new_format_line(tmp_path: Path, count: int = 2) -> bytes:
    """One release line exactly as the ledger writes it."""
    scratch = Ledger(tmp_path / "scratch" / f"line-{count}.jsonl", 100.0, DELTA)
    charge(scratch, count)
    return scratch.path.read_bytes()


def kind_format_line(count: int = 2) -> bytes:
    """A release line as written before releases named their mechanism (Skellam)."""
    return (json.dumps({"kind": "release", "budget": "synthesis", "count": count,
                        "variance": V, "l1": 1.0, "l2": 1.0, "job_id": "mid", "round": 1,
                        "label": "pairs", "time": 1.0}) + "\n").encode()


def old_format_line(count: int = 2, label: str = "one-way, all") -> bytes:
    """A release line as written before entries had a kind (no sensitivities either)."""
    return (json.dumps({"job_id": "old", "round": 1, "label": label, "count": count,
                        "variance": V, "time": 1.0}) + "\n").encode()


def lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(x) for x in data.decode().splitlines()]


def kinds(path: Path) -> list[str]:
    return [e.get("kind", "release") for e in lines(path)]  # no kind: an old-format release


# --- format and reading --------------------------------------------------------------------


def test_constructor_still_takes_path_cap_and_delta_positionally(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", 2.0, DELTA)
    assert (ledger.epsilon_cap, ledger.delta, ledger.evaluation_epsilon_cap) == (2.0, DELTA, 0.0)
    assert ledger.spent() == 0.0
    assert ledger.torn() == 0
    assert ledger.entries() == []


def test_every_release_is_one_line_with_its_cost_fields_first(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", 5.0, DELTA)
    after = charge(ledger, 3, l1=2.0, l2=1.5)
    [entry] = lines(ledger.path)
    assert list(entry)[:8] == COST_FIELDS
    assert entry["kind"] == "release" and entry["budget"] == "synthesis"
    assert (entry["mechanism"], entry["sampling_rate"]) == ("skellam", 1.0)
    assert (entry["count"], entry["variance"], entry["l1"], entry["l2"]) == (3, V, 2.0, 1.5)
    assert (entry["job_id"], entry["round"], entry["label"]) == ("job", 1, "pairs, part 1")
    assert after == ledger.spent() == pytest.approx(eps(3, l1=2.0, l2=1.5), rel=1e-12)


def test_old_format_lines_are_synthesis_releases_with_unit_sensitivity(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(old_format_line(2) + old_format_line(3, label="pairs"))
    ledger = Ledger(path, 5.0, DELTA, evaluation_epsilon_cap=1.0)
    assert ledger.spent() == pytest.approx(eps(2, 3), rel=1e-12)
    assert ledger.spent("evaluation") == 0.0
    assert [(e["kind"], e["budget"], e["l1"], e["l2"]) for e in ledger.entries()] == [
        ("release", "synthesis", 1.0, 1.0)] * 2
    assert charge(ledger, 1) == pytest.approx(eps(2, 3, 1), rel=1e-12)
    assert path.read_bytes().startswith(old_format_line(2))  # old lines are left as they were


def test_sensitivity_and_numpy_costs_are_charged_as_the_accountant_composes_them(
        tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", 5.0, DELTA)
    after = ledger.charge(job_id="j", round_id=np.int64(2), label="sums", count=np.int64(4),
                          variance=np.float32(9 * V), l1=3.0, l2=3.0)
    assert after == pytest.approx(eps(4, variance=9 * V, l1=3.0, l2=3.0), rel=1e-12)
    assert ledger.accountant().rho() == pytest.approx(4 / (2 * V), rel=1e-6)  # Δ² v / Δ²
    assert type(lines(ledger.path)[0]["count"]) is int


# --- cap, budgets, charge_many -------------------------------------------------------------


def test_a_refused_release_leaves_the_ledger_untouched(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", between(eps(2), eps(4)), DELTA)
    with pytest.raises(BudgetExceeded, match="epsilon_cap"):
        charge(ledger, 4)
    assert not ledger.path.exists()
    charge(ledger, 2)
    before = ledger.path.read_bytes()
    with pytest.raises(BudgetExceeded, match=r"over its cap"):
        charge(ledger, 2)
    assert ledger.path.read_bytes() == before


def test_charge_many_is_checked_against_the_cap_together_and_written_all_or_none(
        tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", between(eps(1, 2), eps(1, 2, 1)), DELTA)
    group = [{"label": "a", "count": 1, "variance": V, "l1": 1.0, "l2": 1.0},
             {"label": "b", "count": 2, "variance": V, "l1": 1.0, "l2": 1.0}]
    after = ledger.charge_many(group, job_id="j", round_id=1, budget="synthesis")
    assert after == ledger.spent() == pytest.approx(eps(1, 2), rel=1e-12)
    assert [e["label"] for e in lines(ledger.path)] == ["a", "b"]
    before = ledger.path.read_bytes()
    with pytest.raises(BudgetExceeded):  # the first would fit alone; the pair does not
        ledger.charge_many([{"label": "c", "count": 1, "variance": 1e12},
                            {"label": "d", "count": 1, "variance": V}],
                           job_id="j", round_id=2, budget="synthesis")
    assert ledger.path.read_bytes() == before


def test_evaluation_budget_is_separate_and_closed_unless_the_party_opens_it(
        tmp_path: Path) -> None:
    closed = Ledger(tmp_path / "closed.jsonl", 5.0, DELTA)
    with pytest.raises(BudgetExceeded, match="evaluation_epsilon_cap"):
        charge(closed, 1, budget="evaluation")
    assert not closed.path.exists()

    cap = between(eps(1), eps(2))
    ledger = Ledger(tmp_path / "ledger.jsonl", cap, DELTA, evaluation_epsilon_cap=cap)
    charge(ledger, 1)
    assert charge(ledger, 1, budget="evaluation") == pytest.approx(eps(1), rel=1e-12)
    assert ledger.spent("synthesis") == ledger.spent("evaluation") == pytest.approx(eps(1))
    for budget in ("synthesis", "evaluation"):
        with pytest.raises(BudgetExceeded, match=budget):
            charge(ledger, 1, budget=budget)


@pytest.mark.parametrize("bad", [
    {"budget": "marketing"}, {"count": 0}, {"count": 1.5}, {"variance": 0.0},
    {"variance": float("nan")}, {"variance": float("inf")}, {"l1": -1.0}, {"l2": 0.0},
    {"l2": float("nan")},
])
def test_unusable_requests_are_refused_before_anything_is_written(
        tmp_path: Path, bad: dict[str, Any]) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", 100.0, DELTA, evaluation_epsilon_cap=100.0)
    args: dict[str, Any] = {"job_id": "j", "round_id": 1, "label": "x", "count": 1,
                            "variance": V, **bad}
    with pytest.raises(ValueError):
        ledger.charge(**args)
    assert not ledger.path.exists()


# --- audit lines ---------------------------------------------------------------------------


def test_audit_lines_come_back_oldest_first_and_cost_nothing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", 5.0, DELTA)
    ledger.record("setup", job_id="j1", parties=3)
    charge(ledger, 2)
    ledger.record("evaluation", job_id="j1", statistics=12)
    ledger.record("setup", job_id="j2", parties=4)
    assert [a["job_id"] for a in ledger.audits("setup")] == ["j1", "j2"]
    assert [a["statistics"] for a in ledger.audits("evaluation")] == [12]
    assert all("time" in a for a in ledger.audits("setup"))
    assert ledger.spent() == pytest.approx(eps(2), rel=1e-12)
    assert len(ledger.entries()) == 1
    for reserved in ("release", "torn"):
        with pytest.raises(ValueError, match="reserved"):
            ledger.record(reserved, job_id="j")


# --- crashes -------------------------------------------------------------------------------


def test_torn_tail_is_repaired_and_its_release_counted_before_the_next_check(
        tmp_path: Path) -> None:
    """A crash mid-write left A complete and B torn after its cost fields. C fits beside A
    alone but not beside A and B, so it must be refused; the tail is repaired, not appended to."""
    a, b = new_format_line(tmp_path, 2), new_format_line(tmp_path, 2)
    fragment = b[:b.index(b'"job_id"') + 12]
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(a + fragment)
    ledger = Ledger(path, between(eps(2, 2, 1), eps(2, 2, 2)), DELTA)
    assert eps(2, 2) < ledger.epsilon_cap  # what the party would have believed, skipping B
    assert ledger.spent() == pytest.approx(eps(2, 2), rel=1e-12)
    assert ledger.torn() == 1

    with pytest.raises(BudgetExceeded):
        charge(ledger, 2)
    assert kinds(path) == ["release", "torn"]  # repaired, nothing added
    assert ledger.audits("torn")[0]["fragment"] == fragment.decode()
    assert ledger.spent() == pytest.approx(eps(2, 2), rel=1e-12)

    assert charge(ledger, 1) == pytest.approx(eps(2, 2, 1), rel=1e-12)
    assert kinds(path) == ["release", "torn", "release"]
    assert ledger.torn() == 1


@pytest.mark.parametrize("form", ["new", "kind", "old"])
def test_every_cut_of_a_torn_line_counts_the_whole_release_or_nothing(
        tmp_path: Path, form: str) -> None:
    """Cut after the delimiter that ends the last cost field: counted in full. Cut anywhere
    before: not counted (a cut number is never read as a smaller one). Same before and after
    the repair, and the fragment is kept in a "torn" record."""
    full = old_format_line(1)
    line = {"new": lambda: new_format_line(tmp_path, 3), "kind": lambda: kind_format_line(3),
            "old": lambda: old_format_line(3)}[form]()
    last_cost_end = line.index(b', "time"' if form == "old" else b', "job_id"')
    path = tmp_path / "ledger.jsonl"
    for cut in range(1, len(line) - 1):
        fragment = line[:cut]
        path.write_bytes(full + fragment)
        ledger = Ledger(path, 100.0, DELTA)
        expected = eps(1, 3) if cut > last_cost_end else eps(1)
        assert ledger.spent() == pytest.approx(expected, rel=1e-12), fragment
        assert ledger.torn() == 1
        if cut % 7 == 0 or abs(cut - last_cost_end) <= 2:  # the repair is slower: sample it
            ledger.record("setup", job_id="next")
            assert kinds(path) == ["release", "torn", "setup"]
            assert ledger.audits("torn")[0]["fragment"] == fragment.decode()
            assert ledger.spent() == pytest.approx(expected, rel=1e-12), fragment
            assert ledger.torn() == 1


def test_a_tail_of_garbage_is_recorded_as_torn_and_costs_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(old_format_line(1) + b"\x00\x00\xff\x00")
    ledger = Ledger(path, 100.0, DELTA)
    assert charge(ledger, 1) == pytest.approx(eps(1, 1), rel=1e-12)
    assert kinds(path) == ["release", "torn", "release"]


@pytest.mark.parametrize(("damage", "line_no"), [
    (b"not json\n", 2),
    (b'{"kind": "release", "budget": "synthesis", "count": 2, "variance": -1.0}\n', 2),
    (b'{"kind": "release", "budget": "fun", "count": 2, "variance": 1.0}\n', 2),
    (b"[1, 2]\n", 2),
])
@pytest.mark.parametrize("where", ["middle", "last complete line"])
def test_damaged_lines_raise_naming_the_file_and_line_and_nothing_is_charged(
        tmp_path: Path, damage: bytes, line_no: int, where: str) -> None:
    path = tmp_path / "ledger.jsonl"
    tail = old_format_line(1) if where == "middle" else b""
    path.write_bytes(old_format_line(1) + damage + tail)
    ledger = Ledger(path, 100.0, DELTA)
    for attempt in (ledger.spent, lambda: charge(ledger, 1), lambda: ledger.record("setup")):
        with pytest.raises(LedgerDamaged, match=rf"ledger\.jsonl: line {line_no} .*restore"):
            attempt()
    assert issubclass(LedgerDamaged, ValueError)
    assert path.read_bytes() == old_format_line(1) + damage + tail


def test_folder_is_fsynced_after_the_ledger_file_is_created_and_after_a_repair(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "party" / "state" / "ledger.jsonl"
    synced: list[tuple[int, bool]] = []  # (inode of a folder fsynced, ledger existed then)
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            synced.append((st.st_ino, path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    ledger = Ledger(path, 100.0, DELTA)
    charge(ledger, 1)
    assert (path.parent.stat().st_ino, True) in synced
    assert (tmp_path.stat().st_ino, False) in synced  # the folders it made are durable too

    synced.clear()
    charge(ledger, 1)
    assert synced == []  # appending to an existing file needs no folder fsync
    with path.open("ab") as f:
        f.write(b'{"kind": "rel')
    charge(ledger, 1)
    assert synced == [(path.parent.stat().st_ino, True)]  # the repair's rename


# --- processes -----------------------------------------------------------------------------


def _serialised(path: Path) -> bool:
    """True if someone holds the exclusive lock on the ledger's sibling "<ledger>.lock"."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def _charge_at_once(path: str, cap: float, index: int, barrier: Any, results: Any) -> None:
    """A worker: one round of 2 marginals, by charge or charge_many (the same ε).

    To make a missing lock show every time, each worker's first cap check waits until all
    workers are at theirs, unless the ledger holds its exclusive lock (then the others are
    queued on it, and waiting for them would only deadlock)."""
    original = Accountant.epsilon
    first = [True]

    def epsilon(self: Accountant, delta: float) -> float:
        if first and not _serialised(Path(path)):
            barrier.wait(timeout=LIVENESS)
        first.clear()
        return original(self, delta)

    Accountant.epsilon = epsilon  # type: ignore[method-assign]
    ledger = Ledger(Path(path), cap, DELTA)
    try:
        if index % 2:
            after = ledger.charge_many([{"label": "a", "count": 1, "variance": V},
                                        {"label": "b", "count": 1, "variance": V}],
                                       job_id=f"job{index}", round_id=1, budget="synthesis")
        else:
            after = ledger.charge(job_id=f"job{index}", round_id=1, label="ab", count=2,
                                  variance=V)
        results.put((index, "accepted", after))
    except BudgetExceeded:
        results.put((index, "refused", None))
    except Exception as exc:  # a broken barrier included: reported, not hung
        results.put((index, "error", repr(exc)))


def test_concurrent_processes_accept_exactly_the_releases_that_fit(tmp_path: Path) -> None:
    workers, fit = 3, 2
    path = tmp_path / "ledger.jsonl"
    cap = between(eps(*[2] * fit), eps(*[2] * (fit + 1)))
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_charge_at_once, args=(str(path), cap, i, barrier, results))
             for i in range(workers)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=LIVENESS) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=LIVENESS)
            if p.is_alive():
                p.kill()
    assert [o for o in outcomes if o[1] == "error"] == []
    accepted = sorted(o[2] for o in outcomes if o[1] == "accepted")
    assert len(accepted) == fit
    # one after the other: each saw the ones before it
    assert accepted == pytest.approx([eps(*[2] * k) for k in range(1, fit + 1)], rel=1e-12)
    ledger = Ledger(path, cap, DELTA)
    assert ledger.spent() == pytest.approx(eps(*[2] * fit), rel=1e-12) and ledger.spent() <= cap
    assert sum(e["count"] for e in ledger.entries()) == 2 * fit


def _charge_then_hang(path: str, charged: Any, never: Any) -> None:
    Ledger(Path(path), 1.0, DELTA).charge(job_id="j", round_id=1, label="ab", count=2,
                                          variance=V)
    charged.set()
    never.wait()  # here the noised counts would be sent; the process is killed first


def test_a_process_killed_after_charge_returned_has_its_release_in_the_ledger(
        tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ctx = mp.get_context("spawn")
    charged, never = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_charge_then_hang, args=(str(path), charged, never))
    proc.start()
    try:
        assert charged.wait(timeout=LIVENESS)
        os.kill(proc.pid or 0, signal.SIGKILL)
    finally:
        proc.join(timeout=LIVENESS)
        with contextlib.suppress(Exception):
            proc.kill()
    assert proc.exitcode == -signal.SIGKILL
    [entry] = lines(path)
    assert entry["count"] == 2
    assert Ledger(path, 1.0, DELTA).spent() == pytest.approx(eps(2), rel=1e-12)


def test_record_limited_checks_and_records_under_one_lock(tmp_path: Path) -> None:
    from fedsynth.client_node.ledger import LimitReached

    led = Ledger(tmp_path / "ledger.jsonl", 1.0, 1e-6)
    assert led.record_limited("evaluation", limit=2, same=lambda a: a["h"] == "x", h="x") == 0
    assert led.record_limited("evaluation", limit=2, same=lambda a: a["h"] == "x", h="y") == 1
    assert led.record_limited("evaluation", limit=2, same=lambda a: a["h"] == "x", h="x") == 1
    before = led.path.read_bytes()
    with pytest.raises(LimitReached) as info:
        led.record_limited("evaluation", limit=2, same=lambda a: a["h"] == "x", h="x")
    assert info.value.count == 2
    assert led.path.read_bytes() == before  # nothing written past the limit
    assert [a["h"] for a in led.audits("evaluation")] == ["x", "y", "x"]
    assert led.spent() == 0.0


# --- events of other mechanisms ---------------------------------------------------------------


def test_subsampled_gaussian_steps_are_priced_as_the_accountant_prices_them(
        tmp_path: Path) -> None:
    """A DP-SGD release (steps of a Poisson-subsampled Gaussian) composes with counting
    releases in one cap, at exactly the accountant's price; its cost fields come first, and a
    fragment torn after them is priced in full."""
    ledger = Ledger(tmp_path / "ledger.jsonl", 50.0, DELTA)
    charge(ledger, 2)
    sgd = {"label": "train", "count": 300, "variance": 1.2**2, "mechanism": "subsampled_gaussian",
           "sampling_rate": 0.02}
    after = ledger.charge_many([sgd], job_id="job", round_id=2, budget="synthesis")
    acc = Accountant()
    acc.add(step="x", count=2, variance=V)
    acc.add(step="y", count=300, variance=1.2**2, mechanism="subsampled_gaussian",
            sampling_rate=0.02)
    assert after == ledger.spent() == pytest.approx(acc.epsilon(DELTA), rel=1e-12)
    assert after > eps(2) * 1.5  # the steps cost something of their own
    entry = lines(ledger.path)[1]
    assert list(entry)[:8] == COST_FIELDS
    line = (json.dumps(entry) + "\n").encode()
    cut = line.index(b', "job_id"') + 2
    torn = Ledger(tmp_path / "torn.jsonl", 50.0, DELTA)
    torn.path.write_bytes(line[:cut])
    assert torn.spent() == pytest.approx(Accountant([acc.releases[1]]).epsilon(DELTA),
                                         rel=1e-12)
    rate_cut = line.index(b'"sampling_rate"')
    torn.path.write_bytes(line[:rate_cut + 20])  # cut inside the sampling rate: not priced
    assert torn.spent() == 0.0


@pytest.mark.parametrize("bad", [
    {"mechanism": "laplace"},
    {"mechanism": "skellam", "sampling_rate": 0.5},
    {"mechanism": "subsampled_gaussian", "sampling_rate": 0.0},
    {"mechanism": "subsampled_gaussian", "sampling_rate": 1.5},
])
def test_a_release_of_an_unknown_or_inconsistent_mechanism_is_refused(
        tmp_path: Path, bad: dict[str, Any]) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", 50.0, DELTA)
    with pytest.raises(ValueError):
        ledger.charge_many([{"label": "x", "count": 1, "variance": V, **bad}], job_id="job",
                           round_id=1, budget="synthesis")
    assert not ledger.path.exists() or ledger.entries() == []
