"""A party's crash-safe privacy ledger: every release is recorded before the value leaves.

Entries are JSON lines appended with flush + fsync. A release is written *before* the reply
is sent, so a crash can only over-count spending, never under-count it. The cap is checked on
the RDP composition of every entry in the file (all jobs on this data), converted at the
party's δ; a request that would pass the cap is refused and nothing is recorded.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsynth.crypto.accountant import Accountant


class BudgetExceeded(RuntimeError):
    """The request would take the party past its own ε cap."""


@dataclass
class Ledger:
    path: Path
    epsilon_cap: float
    delta: float

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for i, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                # a torn last line from a crash mid-write: it was never followed by a send
                if i == len(self.path.read_text().splitlines()):
                    continue
                raise ValueError(f"{self.path}: line {i} is not valid JSON; the ledger is "
                                 "damaged, restore it from backup before any new job") from None
        return out

    def accountant(self, extra: list[dict[str, Any]] | None = None) -> Accountant:
        acc = Accountant()
        for e in [*self.entries(), *(extra or [])]:
            acc.add(step=str(e.get("label", "")), count=int(e["count"]),
                    variance=float(e["variance"]))
        return acc

    def spent(self) -> float:
        return self.accountant().epsilon(self.delta)

    def charge(self, *, job_id: str, round_id: int, label: str, count: int,
               variance: float) -> float:
        """Record a release if it fits under the cap; return ε spent after it."""
        entry = {"job_id": job_id, "round": round_id, "label": label, "count": count,
                 "variance": variance, "time": time.time()}
        after = self.accountant([entry]).epsilon(self.delta)
        if after > self.epsilon_cap * (1 + 1e-9):
            raise BudgetExceeded(
                f"this release would bring the party's spending to ε={after:.4f}, over its cap "
                f"ε={self.epsilon_cap} (δ={self.delta}); raise the cap in the party's policy or "
                "ask for less")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return after
