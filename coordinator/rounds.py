"""Measurement rounds over the job's channel, charged as they happen.

Every method that releases noisy vectors goes through `Rounds.measure`: one secure sum over the
parties still taking part, charged to the coordinator's accountant as soon as the parties
release (each party charges its own ledger before its reply leaves), and logged for the privacy
report. Who drops out of a round takes no part in the next.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsynth.coordinator.exchange import (
    Exchange,
    PartyKeys,
    RoundResult,
    secure_sum,
    secure_sum_of,
)
from fedsynth.crypto.accountant import Accountant
from fedsynth.progress import task as step_progress
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.spec import JobSpec
from fedsynth.synthesis import marginals
from fedsynth.synthesis.encoding import Grouping

log = logging.getLogger("fedsynth.coordinator")


@dataclass
class Rounds:
    """Runs measurement rounds, keeps the accountant and who still takes part."""

    ex: Exchange
    spec: JobSpec
    keys: PartyKeys
    participants: list[int]
    variances: dict[str, float]
    acc: Accountant = field(default_factory=Accountant)
    log_rows: list[dict[str, Any]] = field(default_factory=list)
    round_id: int = 0
    seeded_noise: set[int] = field(default_factory=set)  # parties that said their noise was seeded

    def measure(self, label: str, groupings: Sequence[Grouping],
                cliques: Sequence[tuple[int, ...]], *, options_json: str = ""
                ) -> tuple[list[np.ndarray], float]:
        self.round_id += 1
        sizes = [g.size for g in groupings]
        length = marginals.vector_length(cliques, sizes)
        var = self.variances[label]
        with step_progress(f"round {self.round_id} ({label}): waiting for "
                           f"{len(self.participants)} parties"):
            res = secure_sum(self.ex, round_id=self.round_id, label=label,
                             channel=self.spec.channel, threshold=self.spec.threshold,
                             participants=self.participants, keys=self.keys,
                             groupings=groupings, cliques=cliques, length=length,
                             noise_variance=var, options_json=options_json)
        # charged as soon as the parties release, whatever happens next
        self.acc.add(step=label, count=len(cliques), variance=var)
        self.seeded_noise.update(res.seeded_noise)
        realized = var * len(res.contributors) / self.spec.noise_divisor
        self.log_rows.append({"round": self.round_id, "step": label, "marginals": len(cliques),
                              "cells": length, "noise_variance": var,
                              "noise_variance_per_party": var / self.spec.noise_divisor,
                              "noise_variance_realized": realized,
                              "parties_asked": list(self.participants),
                              "contributors": res.contributors})
        self.participants = res.responsive
        log.info("round %d (%s): %d marginals, %d cells, %d contributors", self.round_id, label,
                 len(cliques), length, len(res.contributors))
        return marginals.split(res.total, cliques, sizes), realized

    def train(self, req: pb.TrainRequest, length: int, release: dict[str, Any]
              ) -> RoundResult:
        """A training round: every participant answers `req` with a vector of `length` that
        it charged to its ledger as `release` (synthesis.dpsgd.TrainPlan.round_release: the
        same event here); the sum and who is still here."""
        self.round_id += 1
        req.round = self.round_id
        del req.participants[:]
        req.participants.extend(self.participants)
        label = str(release["label"])
        with step_progress(f"round {self.round_id} ({label}): waiting for "
                           f"{len(self.participants)} parties to train"):
            res = secure_sum_of(self.ex, "train_request", req, round_id=self.round_id,
                                label=label, channel=self.spec.channel,
                                threshold=self.spec.threshold, participants=self.participants,
                                keys=self.keys, length=length)
        self.acc.add(step=label, count=release["count"], variance=release["variance"],
                     l1=release["l1"], l2=release["l2"], mechanism=release["mechanism"],
                     sampling_rate=release["sampling_rate"])
        self.seeded_noise.update(res.seeded_noise)
        local = release["mechanism"] == "subsampled_gaussian"
        self.log_rows.append({"round": self.round_id, "step": label, "marginals": 0,
                              "cells": length, "noise_variance": release["variance"],
                              "mechanism": release["mechanism"], "steps": release["count"],
                              "sampling_rate": release["sampling_rate"], "l1": release["l1"],
                              "l2": release["l2"],
                              "noise_note": "each party's own DP-SGD noise (local DP per "
                                            "party); the channel only hides single updates"
                              if local else "Skellam shares of the t - c honest survivors "
                                            "reach the sum's variance",
                              **({} if local else {
                                  "noise_variance_per_party":
                                      release["variance"] / self.spec.noise_divisor,
                                  "noise_variance_realized": release["variance"]
                                      * len(res.contributors) / self.spec.noise_divisor}),
                              "parties_asked": list(self.participants),
                              "contributors": res.contributors})
        self.participants = res.responsive
        log.info("round %d (%s): %d parameters, %d contributors", self.round_id, label, length,
                 len(res.contributors))
        return res
