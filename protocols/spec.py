"""The job specification every party checks before it takes part, and its wire form."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedsynth.crypto.accountant import check_epsilon_delta
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.synthesis.schema import Schema

CHANNELS = ("secagg", "plain")
METHODS = ("marginals",)


class JobSpecError(ValueError):
    """Job parameters that cannot run; lists every problem with its fix."""


def default_threshold(parties: int) -> int:
    """Default t: survive the loss of a fifth of the parties (at least 2 when possible)."""
    return max(min(2, parties), math.ceil(0.8 * parties))


@dataclass(frozen=True)
class JobSpec:
    """What a job asks of each party; validated on both sides."""

    schema: Schema
    epsilon: float
    delta: float
    parties: int
    threshold: int
    colluders: int = 0
    channel: str = "secagg"
    method: str = "marginals"

    def __post_init__(self) -> None:
        problems: list[str] = []
        try:
            check_epsilon_delta(self.epsilon, self.delta)
        except ValueError as exc:
            problems.append(str(exc))
        if self.parties < 1:
            problems.append(f"need at least one party, got {self.parties}")
        if not 1 <= self.threshold <= self.parties:
            problems.append(f"threshold t={self.threshold} must be between 1 and the "
                            f"{self.parties} parties (fewer parties than t cannot finish a round)")
        if not 0 <= self.colluders < self.threshold:
            problems.append(f"colluders c={self.colluders} must be below threshold "
                            f"t={self.threshold}: t - c honest survivors carry the noise")
        if self.channel not in CHANNELS:
            problems.append(f"channel {self.channel!r} is not one of {CHANNELS}")
        if self.method not in METHODS:
            problems.append(f"method {self.method!r} is not one of {METHODS}")
        if self.channel == "secagg" and self.parties > 1 and self.threshold < 2:
            problems.append("secagg needs t >= 2 so that no single share reveals a self-mask")
        if problems:
            raise JobSpecError("invalid job: " + "; ".join(problems))

    @property
    def honest_min(self) -> int:
        """Fewest honest parties whose noise shares reach every released sum."""
        return self.threshold - self.colluders

    def to_proto(self) -> pb.JobSpec:
        return pb.JobSpec(schema_json=self.schema.to_json(), epsilon=self.epsilon,
                          delta=self.delta, parties=self.parties, threshold=self.threshold,
                          colluders=self.colluders, channel=self.channel, method=self.method)

    @classmethod
    def from_proto(cls, m: pb.JobSpec) -> JobSpec:
        return cls(schema=Schema.from_json(m.schema_json, source="job schema"),
                   epsilon=m.epsilon, delta=m.delta, parties=m.parties, threshold=m.threshold,
                   colluders=m.colluders, channel=m.channel, method=m.method)
