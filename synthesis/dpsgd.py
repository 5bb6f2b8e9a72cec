"""DP-SGD generators over the encoded table (PyTorch + Opacus): what a party trains locally.

The domain. Each column's fine codes (synthesis.encoding: categories, public-bounds bins, whole
numbers, points) are grouped into at most DOMAIN_GROUPS values, one-hot encoded. With the
plan's `domain_share` > 0 (the default) the groups are cut at the quantiles of a DP one-way
round (a secure sum of every column's noisy fine counts, charged as a Skellam release before
any training; `TrainPlan.domain_variance`), as the marginal method's domain step does, and
those counts also set the generator's output biases, which DP-SGD then leaves alone
(`TrainPlan.frozen_output_bias`), and the values drawn inside a group. With 0 the groups come
from the schema alone (runs of public bins) and the biases are trained. Either way nothing
data-dependent is fitted outside DP, and there is no early stopping, validation loss or model
selection on real rows (the most common privacy bug in published DP generators): the
architecture, the number of steps and the learning rate all come from the public `TrainPlan`.

Privacy with local noise (plan `noise: local`; per party, one row of one party, add/remove). Every
local step Poisson-samples the party's rows with the public rate q, clips each row's gradient to L2
norm `clip`, sums them and adds Gaussian noise of standard deviation `noise_multiplier * clip` to
the sum (Opacus's GradSampleModule and DPOptimizer; the sampling as DPDataLoader's): one step of
the subsampled Gaussian mechanism. The noisy sum is divided by the plan's public `batch_scale`, not
by the party's expected batch q * n, which depends on its private row count. `noise_multiplier` is
the smallest σ at which the domain round (if any) and all `rounds * steps_per_round` steps of a job
compose (RDP, crypto.accountant) to the job's ε at its δ; it is a function of the public plan and
the number of columns alone, so the coordinator's accountant and every party's ledger price the
same event. What leaves the party is the trained parameters minus the global ones it started from:
a function of the DP-SGD output and of public parameters (post-processing). The noise comes from a
torch Generator seeded from OS entropy for each round, never from a seed anyone else could know;
torch's generator is not a cryptographic one (Opacus's secure mode needs torchcsprng, which is not
available here), and the Gaussian is drawn in floating point: both are listed outside the guarantee
in the job's privacy report.

Distributed noise (plan `noise: distributed`, the default; coordinator.dpsgd_method runs the
rounds). A round is one full-batch step: the party sums every row's gradient at the global
parameters, each row's clipped to L2 norm `clip` (`clipped_gradient_sum`), and rounds scale * sum
to integers (crypto.fixed_point.to_grid). One row added or removed moves that integer vector by at
most (Δ1, Δ2) = (scale·clip·√P + P, scale·clip + √P) for P parameters (`step_grid`: clipping,
scaling, and less than 1 per coordinate from rounding; the public grid `scale` is fine enough that
rounding adds at most 1/128 of clip to Δ2). The parties' Skellam shares sum to noise of variance (σ
Δ2)² on the secure sum (crypto.noise), so a step is one Skellam release (crypto.accountant: its
Gaussian part α / (2σ²) per step, as central full-batch DP gradient descent), and
`noise_multiplier` is the smallest σ at which the domain round and `rounds` such releases compose
to the job's ε. Full batches instead of Poisson samples: the accounting is exact without a
subsampling bound for Skellam noise, and at equal steps and ε a subsampled step's signal-to-noise
is no better in the regime DP-SGD runs in (ρ ≈ T q² / 2σ² with noise σ on a batch of q·n rows); a
party pays with a pass over its rows per step."""

from __future__ import annotations

import functools
import io
import json
import math
import secrets
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from opacus.grad_sample import GradSampleModule, register_grad_sampler
from opacus.optimizers import DPOptimizer
from torch import nn

from fedsynth.crypto.accountant import Accountant, zcdp_rho_for
from fedsynth.synthesis.encoding import (
    Encoding,
    Grouping,
    public_grouping,
    quantile_grouping,
    stratified_uniform,
)
from fedsynth.synthesis.schema import Schema

MODELS = ("made", "vae")
NOISES = ("local", "distributed")
OUTPUT_BIASES = ("auto", "frozen", "trained")  # TrainPlan.output_bias
# "auto" freezes the output biases from this ε up (TrainPlan.frozen_output_bias)
FROZEN_BIAS_EPSILON = 5.0
LOCAL_ROUNDS = 10  # the default rounds of local training (noise "local")
DISTRIBUTED_ROUNDS = 100  # the default gradient steps, one round each (noise "distributed")
LOCAL_ONLY = ("local_epochs", "sampling_rate")  # plan fields only noise "local" reads
ROUNDING_SHARE = 128  # a distributed step's grid: rounding adds <= 1/128 of clip to Δ2
STEP_VARIANCE_LIMIT = 2.0**38  # a distributed step's noise variance at most (crypto.noise)
MIN_SAMPLING_RATE = 1e-4
MAX_STEPS_PER_ROUND = 100_000
MAX_HIDDEN = 1024
MAX_PARAMETERS = 2_000_000  # what a party trains at most (memory, time); refused above
PARAMETER_BOUND = 1e4  # |global parameter| a party accepts: no overflow in float32 layers
MAX_ROUNDS = 10_000
MICRO_BATCH = 64  # rows per backward pass: memory does not grow with a party's row count
GRADIENT_BATCH = 256  # rows per backward pass of a distributed step (no optimizer state)
DOMAIN_GROUPS = 32  # values per numeric column in the generator's domain


MAX_DOMAIN_SHARE = 0.5
MATCH_ROWS, MATCH_SWEEPS, MAX_SHIFT = 20_000, 8, 4.0  # Generator.match_marginals
MIN_STRATUM = 50  # rows per group of rows sampled together (Made.sample)
DOMAIN_STEP = "one-way"  # the domain round's label, in the accountant and every ledger


def domain(schema: Schema) -> list[Grouping]:
    """The generator's domain from the schema alone (a plan with domain_share 0)."""
    return [public_grouping(c, DOMAIN_GROUPS) for c in Encoding.from_schema(schema).codecs]


def domain_cells(schema: Schema, plan: TrainPlan) -> list[Grouping]:
    """What the domain round counts, from the schema and the public plan alone: each column's
    fine codes, or with `domain_bins` a binned column's bins in public runs of adjacent bins
    (its lower bound, points and missing keep their own cells). A one-way count either way:
    one row adds 1 to one cell of each column."""
    return [public_grouping(c, plan.domain_bins) if plan.domain_bins and c.edges is not None
            else Grouping.identity(c.size) for c in Encoding.from_schema(schema).codecs]


def spread(cells: Grouping, counts: np.ndarray) -> np.ndarray:
    """Fine counts from the counts of `cells`, each cell's count shared evenly by its codes
    (post-processing)."""
    width = np.bincount(cells.index, minlength=cells.size).astype(float)
    return np.asarray(counts, dtype=float)[cells.index] / width[cells.index]


def data_domain(schema: Schema, fine_counts: Sequence[np.ndarray]) -> list[Grouping]:
    """The generator's domain cut at the quantiles of the DP one-way counts (post-processing
    of the domain round's secure sum): about equal-mass groups of adjacent bins or values."""
    return [quantile_grouping(c, np.asarray(n, dtype=float), DOMAIN_GROUPS)
            for c, n in zip(Encoding.from_schema(schema).codecs, fine_counts, strict=True)]


def group_log_probs(groupings: Sequence[Grouping], fine_counts: Sequence[np.ndarray]
                    ) -> list[np.ndarray]:
    """Each column's log-probabilities over its groups from the DP one-way counts: each group's
    noisy sum (unbiased; clipping every fine count first would add the positive part of the
    noise of every empty bin to the tails), clipped at zero, one row added so that no value
    starts impossible."""
    out = []
    for g, n in zip(groupings, fine_counts, strict=True):
        summed = np.bincount(g.index, weights=np.asarray(n, float), minlength=g.size)
        mass = np.clip(summed, 0, None) + 1.0
        out.append(np.log(mass / mass.sum()))
    return out


@dataclass(frozen=True)
class TrainPlan:
    """The public training plan every party follows and pins for the job."""

    epsilon: float
    delta: float
    model: str = "made"  # "made" (autoregressive masked MLP) or "vae"
    hidden: int = 128
    latent: int = 16  # vae only
    # "distributed" (the default): one full-batch gradient step per round, the noise shared
    # among the parties through the secure sum (see the module docstring); "local": each party
    # runs DP-SGD on its own rows and the channel sums the updates
    noise: str = "distributed"
    rounds: int = 0  # 0: the noise's default (LOCAL_ROUNDS or DISTRIBUTED_ROUNDS)
    local_epochs: float = 2.0  # expected passes over a party's rows per round
    sampling_rate: float = 0.05  # Poisson rate q: each row enters a step with probability q
    clip: float = 1.0
    lr: float = 1e-2
    # the noisy gradient sum is divided by this public number, never by the party's own
    # expected batch q * n: n is private, and a step scaled by it would not be post-processing
    batch_scale: int = 64
    init_seed: int = 0  # the global model's initial parameters (public)
    # share of the job's zCDP budget spent on a one-way counting round before training (see
    # the module docstring); 0: the domain comes from the schema alone
    domain_share: float = 0.3
    # the domain round counts a binned column's bins in about this many public runs of
    # adjacent bins (0: every fine code): fewer, less noisy cells on small tables (survival/
    # colon, 1,474 rows, distributed noise: 2-way TVD at ε = 3 0.099 -> 0.078, at ε = 10
    # 0.053 -> 0.049 over 2-4 runs; ISLR/Default at ε = 10 0.0201 against 0.0200)
    domain_bins: int = 64
    # whether DP-SGD trains the output biases a domain round sets (see frozen_output_bias)
    output_bias: str = "auto"

    def __post_init__(self) -> None:
        problems = []

        def whole(name: str, lo: int, hi: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                problems.append(f"{name} must be a whole number in {lo}..{hi}, got {v!r}")

        def real(name: str, lo: float, hi: float) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (
                    math.isfinite(v) and lo <= v <= hi):
                problems.append(f"{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")

        if self.model not in MODELS:
            problems.append(f"model {self.model!r} is not one of {MODELS}")
        if self.output_bias not in OUTPUT_BIASES:
            problems.append(f"output_bias {self.output_bias!r} is not one of {OUTPUT_BIASES}")
        if self.noise not in NOISES:
            problems.append(f"noise {self.noise!r} is not one of {NOISES}")
        elif self.rounds == 0 and not isinstance(self.rounds, bool):
            object.__setattr__(self, "rounds", LOCAL_ROUNDS if self.noise == "local"
                               else DISTRIBUTED_ROUNDS)
        for name, lo, hi in (("rounds", 1, MAX_ROUNDS), ("hidden", 1, MAX_HIDDEN),
                             ("latent", 1, 1024), ("batch_scale", 1, 2**20),
                             ("init_seed", 0, 2**62), ("domain_bins", 0, 2**16)):
            whole(name, lo, hi)
        # public ranges that keep the accounting's assumptions true: q on float64's grid far
        # above its resolution, a clip norm far from subnormal numbers
        for fname, flo, fhi in (("sampling_rate", MIN_SAMPLING_RATE, 1.0), ("clip", 1e-3, 1e3),
                                ("lr", 1e-6, 1.0), ("local_epochs", 1e-3, 100.0),
                                ("epsilon", 1e-3, 1e3), ("delta", 1e-300, 0.1),
                                ("domain_share", 0.0, MAX_DOMAIN_SHARE)):
            real(fname, flo, fhi)
        if not problems and self.steps_per_round > MAX_STEPS_PER_ROUND:
            problems.append(f"{self.steps_per_round} local steps per round (local_epochs / "
                            f"sampling_rate) is over {MAX_STEPS_PER_ROUND}")
        if problems:
            raise ValueError("training plan: " + "; ".join(problems))

    @property
    def distributed(self) -> bool:
        return self.noise == "distributed"

    @property
    def frozen_output_bias(self) -> bool:
        """Whether DP-SGD leaves the generator's output biases alone (`output_bias` "frozen",
        or "auto" at ε >= FROZEN_BIAS_EPSILON; never without a domain round, which is what
        sets them). With a domain round they start at the DP one-way marginals and are
        matched to them again after training (Generator.match_marginals), and their gradient,
        a row's softmax minus its one-hot, says little about how columns depend on each other
        yet took 80% of each row's squared gradient norm (survival/colon, at the start: row
        norms 2.7-3.6, of which the biases 2.8), so clipping to `clip` scaled the weights'
        part down with it. Frozen, a row's norm is about 1.4 and the same noise meets twice
        the signal: at ε = 10 (colon, distributed, 3 seeds) 2-way TVD 0.0436 against 0.0494.
        At ε = 1 freezing was worse (colon, paired runs: 0.133 / 0.147 against 0.120 / 0.129),
        with a worse 1-way fit: under that much noise the weights drift, and the trained
        biases' pull back to the marginals during training is what keeps the model near them;
        at ε = 3 one pair went each way (0.076 against 0.069, 0.072 against 0.077). Their
        coordinates stay in every vector sent, zero before noise: a distributed step's sum
        carries the Skellam shares there as everywhere, a local update is exactly zero there
        (Opacus noises trained parameters only); the coordinator applies neither
        (`trained_coordinates`)."""
        if self.domain_share == 0 or self.output_bias == "trained":
            return False
        return self.output_bias == "frozen" or self.epsilon >= FROZEN_BIAS_EPSILON

    @property
    def steps_per_round(self) -> int:
        if self.distributed:
            return 1
        return max(1, math.ceil(self.local_epochs / self.sampling_rate))

    @property
    def steps(self) -> int:
        return self.rounds * self.steps_per_round

    def domain_variance(self, columns: int) -> float:
        """Per-cell Skellam variance of the domain round: `columns` one-way marginals (each
        row adds 1 to one cell of each: Δ1 = Δ2 = 1 per marginal) sharing `domain_share` of
        the ρ that converts to the job's (ε, δ). 0 when the plan has no domain round."""
        if self.domain_share == 0:
            return 0.0
        return columns / (2.0 * self.domain_share * zcdp_rho_for(self.epsilon, self.delta))

    def prior(self, columns: int) -> tuple[tuple[int, float], ...]:
        """The counting releases before training: (marginals, variance) of the domain round."""
        return ((columns, self.domain_variance(columns)),) if self.domain_share else ()

    def check(self, schema: Schema) -> None:
        """Raise a ValueError before any release if this plan cannot run on `schema`: a domain
        round that alone spends the budget, or distributed steps whose noise does not fit the
        step's grid at the largest generator the domain round can give (a data domain keeps a
        categorical column's codes and has at most DOMAIN_GROUPS groups and missing for any
        other, and the grid's check only gets
        harder with more parameters)."""
        codecs = Encoding.from_schema(schema).codecs
        sizes = [c.size if c.column.kind == "categorical" else min(c.size, DOMAIN_GROUPS + 1)
                 for c in codecs]
        self.noise_multiplier(len(codecs), parameter_count(self, sizes))

    def grid(self, columns: int, parameters: int) -> tuple[float, float, float]:
        """(scale, Δ1, Δ2) of a distributed step (`step_grid` at this plan's σ)."""
        return step_grid(parameters, self.clip, self.noise_multiplier(columns, parameters))

    def noise_multiplier(self, columns: int, parameters: int = 1) -> float:
        """σ of the training steps. Distributed steps are Skellam releases whose sensitivity
        depends on the generator's size `parameters` (known once the domain is)."""
        return noise_multiplier(self.steps, 1.0 if self.distributed else self.sampling_rate,
                                self.epsilon, self.delta, prior=self.prior(columns),
                                grid=(parameters, self.clip) if self.distributed else None)

    def round_release(self, columns: int, parameters: int) -> dict[str, Any]:
        """What one training round releases, as the coordinator's accountant and every party's
        ledger charge it: `steps_per_round` subsampled Gaussian steps (local), or one Skellam
        release of the integer gradient sum at variance (σ Δ2)^2 (distributed)."""
        sigma = self.noise_multiplier(columns, parameters)
        if self.distributed:
            _, l1, l2 = step_grid(parameters, self.clip, sigma)
            return {"label": "train", "count": 1, "variance": (sigma * l2) ** 2, "l1": l1,
                    "l2": l2, "mechanism": "skellam", "sampling_rate": 1.0}
        return {"label": "train", "count": self.steps_per_round,
                "variance": (sigma * self.clip) ** 2, "l1": self.clip, "l2": self.clip,
                "mechanism": "subsampled_gaussian", "sampling_rate": self.sampling_rate}

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_options(cls, epsilon: float, delta: float, options: Mapping[str, Any] | None
                     ) -> TrainPlan:
        """The plan of a job at (ε, δ) with the user's fields; a ValueError that names an
        unknown field and the known ones."""
        known = {f for f in cls.__dataclass_fields__ if f not in ("epsilon", "delta")}
        unknown = sorted(set(options or {}) - known)
        if unknown:
            raise ValueError(f"training plan: unknown field(s) {', '.join(unknown)}; the fields "
                             f"are {', '.join(sorted(known))}")
        plan = cls(epsilon=epsilon, delta=delta, **dict(options or {}))
        ignored = sorted(set(options or {}) & set(LOCAL_ONLY)) if plan.distributed else []
        if ignored:  # full-batch steps read neither: say so rather than ignore the user
            raise ValueError(f"training plan: {', '.join(ignored)} applies to noise \"local\" "
                             "only (a distributed step reads every row once); drop it, or add "
                             "noise=local")
        return plan

    @classmethod
    def from_json(cls, text: str) -> TrainPlan:
        try:
            raw = json.loads(text)
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"training plan {text[:200]!r} does not parse: {exc}") from None


def step_grid(parameters: int, clip: float, sigma: float | None
              ) -> tuple[float, float, float]:
    """(scale, Δ1, Δ2) of a distributed step with noise multiplier `sigma`.

    The party sends round(scale * clipped gradient sum) (crypto.fixed_point.to_grid). One row
    added or removed moves the real sum by at most `clip` in L2 (so sqrt(P) * clip in L1, for P
    = `parameters`), scaled by `scale`; rounding to the nearest integer moves each coordinate's
    difference by less than 1 more (L2 sqrt(P), L1 P); clipping coordinates to
    ±fixed_point.STEP_BOUND is 1-Lipschitz: Δ1 = scale·clip·sqrt(P) + P, Δ2 = scale·clip +
    sqrt(P). The scale is a power of two, fine enough that rounding adds at most 1/128 of the
    clip to Δ2, unless the step's noise variance (σ Δ2)² would then pass STEP_VARIANCE_LIMIT
    (the Skellam sampler's exact range, crypto.noise): then the finest that stays under it,
    refused when rounding would add more than a quarter. `sigma` None: the fine grid."""
    root = math.sqrt(parameters)
    scale = 2.0 ** math.ceil(math.log2(ROUNDING_SHARE * root / clip))
    if sigma is not None:
        room = math.sqrt(STEP_VARIANCE_LIMIT) / sigma - root  # scale * clip at most this
        if room < 4 * root:
            raise ValueError(f"distributed DP-SGD needs noise multiplier {sigma:.3g} on a "
                             f"generator of {parameters} parameters: too much noise for the "
                             "step's integer grid; use fewer rounds, a smaller model, a larger "
                             "ε, or noise \"local\"")
        scale = min(scale, 2.0 ** math.floor(math.log2(room / clip)))
    return scale, scale * clip * root + parameters, scale * clip + root


@functools.lru_cache(maxsize=64)
def noise_multiplier(steps: int, sampling_rate: float, epsilon: float, delta: float, *,
                     prior: tuple[tuple[int, float], ...] = (),
                     grid: tuple[int, float] | None = None) -> float:
    """Smallest σ (to 0.1%) at which the Skellam counting releases `prior` ((marginals,
    variance) each) and `steps` training steps compose to at most (ε, δ): subsampled Gaussian
    steps (noise σ times the clip norm, which the accounting does not depend on), or, given
    the `grid` (parameters, clip) of distributed steps, Skellam releases of variance (σ Δ2)²
    with the sensitivity of `step_grid` at σ."""

    def eps(sigma: float, fine: bool = False) -> float:
        acc = Accountant()
        for count, variance in prior:
            acc.add(step=DOMAIN_STEP, count=count, variance=variance)
        if grid is None:
            acc.add(step="train", count=steps, variance=sigma**2,
                    mechanism="subsampled_gaussian", sampling_rate=sampling_rate)
        else:
            _, l1, l2 = step_grid(grid[0], grid[1], None if fine else sigma)
            acc.add(step="train", count=steps, variance=(sigma * l2) ** 2, l1=l1, l2=l2)
        return acc.epsilon(delta)

    if prior:
        before = Accountant()
        for count, variance in prior:
            before.add(step=DOMAIN_STEP, count=count, variance=variance)
        if before.epsilon(delta) >= 0.95 * epsilon:  # Skellam's discreteness at tiny variance
            raise ValueError(f"the domain round alone spends ε={before.epsilon(delta):.3g} of "
                             f"ε={epsilon}: lower domain_share")
    lo, hi = 0.05, 1.0
    # on the fine grid (its Skellam extra term is the smallest); the step's own grid after
    while eps(hi, fine=True) > epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError(f"no noise multiplier meets ε={epsilon} for {steps} steps")
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        if eps(mid, fine=True) <= epsilon:
            hi = mid
        else:
            lo = mid
    while grid is not None and eps(hi) > epsilon:  # a coarser grid's extra term: a hair more
        hi *= 1.001
    return hi


# --- generators ------------------------------------------------------------------------------


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (MADE)."""

    def __init__(self, n_in: int, n_out: int, mask: torch.Tensor) -> None:
        super().__init__(n_in, n_out)
        self.mask = mask.float()  # a plain attribute: Opacus refuses buffers in trainable layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


@register_grad_sampler(MaskedLinear)
def _masked_linear_grad_sample(layer: MaskedLinear, activations: Sequence[torch.Tensor],
                               backprops: torch.Tensor) -> dict[Any, torch.Tensor]:
    """Per-row gradients of a masked layer: the linear layer's, times the mask (so a row's
    clipped norm counts only weights it can move)."""
    a = activations[0]
    gs = torch.einsum("n...i,n...j->nij", backprops, a) * layer.mask
    return {layer.weight: gs, layer.bias: torch.einsum("n...k->nk", backprops)}


class Generator(nn.Module):
    """A generator over one-hot fine codes: per-row loss and sampling."""

    sizes: list[int]

    def row_loss(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, n: int, gen: torch.Generator) -> np.ndarray:
        raise NotImplementedError

    def output_bias(self) -> torch.Tensor:
        """The bias of the layer that gives every column's logits."""
        raise NotImplementedError

    def start_from(self, log_probs: Sequence[np.ndarray]) -> None:
        """Set each column's output biases to its log-probabilities (from the DP one-way
        counts): the first column of a MADE starts exact, the others from their marginals."""
        vec = np.concatenate([np.asarray(lp, dtype=np.float64) for lp in log_probs])
        with torch.no_grad():
            self.output_bias().copy_(torch.from_numpy(vec))

    def match_marginals(self, log_probs: Sequence[np.ndarray], gen: torch.Generator, *,
                        rows: int = MATCH_ROWS, sweeps: int = MATCH_SWEEPS) -> None:
        """Shift each column's output biases until the generator's marginals are the DP one-way
        marginals `log_probs` (post-processing: the trained parameters and the released counts).

        DP-SGD's noise moves every bias by about the learning rate per step whatever its
        gradient (Adam), so a trained generator's marginals drift (1-way TVD 0.02-0.05 on
        binary columns at ε = 10); a bias shift changes a column's conditionals by one factor
        per value, so what the network learned about dependence stays. Each sweep samples
        `rows` rows and moves column j's biases by log(target / sampled), in column order.
        """
        targets = [np.exp(np.asarray(lp, dtype=np.float64)) for lp in log_probs]
        starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        bias = self.output_bias()
        for _ in range(sweeps):
            codes = self.sample(rows, gen)
            with torch.no_grad():
                for j, k in enumerate(self.sizes):
                    got = np.bincount(codes[:, j], minlength=k) + 0.5
                    shift = np.log(targets[j] / targets[j].sum()) - np.log(got / got.sum())
                    bias[int(starts[j]):int(starts[j + 1])] += torch.from_numpy(
                        np.clip(shift, -MAX_SHIFT, MAX_SHIFT)).to(bias.dtype)

    def _nll(self, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(codes.shape[0])
        start = 0
        for j, k in enumerate(self.sizes):
            out = out + nn.functional.cross_entropy(logits[:, start:start + k], codes[:, j],
                                                    reduction="none")
            start += k
        return out


class Made(Generator):
    """Autoregressive: p(x) = prod_j p(x_j | x_<j), one masked MLP (Germain et al. 2015)."""

    def __init__(self, sizes: Sequence[int], hidden: int) -> None:
        super().__init__()
        self.sizes = [int(s) for s in sizes]
        d = len(self.sizes)
        deg_in = torch.cat([torch.full((k,), j + 1) for j, k in enumerate(self.sizes)])
        deg_h = torch.arange(hidden) % max(1, d - 1) + 1
        m1 = deg_h[:, None] >= deg_in[None, :]
        m2 = deg_h[:, None] >= deg_h[None, :]
        m3 = deg_in[:, None] > deg_h[None, :]
        n = int(deg_in.numel())
        self.l1, self.l2 = MaskedLinear(n, hidden, m1), MaskedLinear(hidden, hidden, m2)
        self.l3 = MaskedLinear(hidden, n, m3)

    def output_bias(self) -> torch.Tensor:
        return self.l3.bias

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.l1(x))
        return self.l3(torch.relu(self.l2(h)))

    def row_loss(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self._nll(self.logits(x), codes)

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator) -> np.ndarray:
        """Rows drawn column by column; rows that agree on the columns so far draw the next one
        with numbers spread evenly over [0, 1) (`_draw`), as the marginal method's sampler
        rounds: the first columns' joint counts follow the generator up to rounding. Once the
        groups of agreeing rows would average under MIN_STRATUM rows they are refined no more:
        a later column is spread evenly within the last groups, whose rows' distributions are
        alike, instead of being drawn row by row (on 1,486 rows and 32 values, independent
        draws alone make a 1-way TVD of about 0.06)."""
        rng = _numpy_rng(gen)
        x = torch.zeros(n, sum(self.sizes))
        codes = np.zeros((n, len(self.sizes)), dtype=np.int64)
        key = np.zeros(n, dtype=np.int64)  # which rows agree on every column so far
        start = 0
        for j, k in enumerate(self.sizes):
            p = torch.softmax(self.logits(x)[:, start:start + k], dim=1).double().numpy()
            codes[:, j] = _draw(p, key, rng)
            x[torch.arange(n), start + torch.from_numpy(codes[:, j])] = 1.0
            finer = np.unique(key * k + codes[:, j], return_inverse=True)[1].astype(np.int64)
            if n >= MIN_STRATUM * (int(finer.max(initial=0)) + 1):  # else the strata stay
                key = finer
            start += k
        return codes


class Vae(Generator):
    """A variational autoencoder with a Gaussian latent and one softmax per column."""

    def __init__(self, sizes: Sequence[int], hidden: int, latent: int) -> None:
        super().__init__()
        self.sizes = [int(s) for s in sizes]
        n = sum(self.sizes)
        self.latent = latent
        self.enc = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, n))

    def output_bias(self) -> torch.Tensor:
        last: nn.Linear = self.dec[-1]  # type: ignore[assignment]
        return last.bias

    def row_loss(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.enc(x).chunk(2, dim=1)
        logvar = logvar.clamp(-8, 8)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1)
        return self._nll(self.dec(z), codes) + kl

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator) -> np.ndarray:
        logits = self.dec(torch.randn(n, self.latent, generator=gen))
        rng = _numpy_rng(gen)
        codes = np.empty((n, len(self.sizes)), dtype=np.int64)
        start = 0
        for j, k in enumerate(self.sizes):
            p = torch.softmax(logits[:, start:start + k], dim=1).double().numpy()
            codes[:, j] = _draw(p, np.zeros(n, dtype=np.int64), rng)
            start += k
        return codes


def _numpy_rng(gen: torch.Generator) -> np.random.Generator:
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))


def _draw(p: np.ndarray, key: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One code per row from its probabilities `p` (rows x values), read at a number spread
    evenly among the rows of equal `key` (encoding.stratified_uniform): rows with the same
    distribution then take each value in proportion up to rounding, not with the sampling
    noise of independent draws. Each row's code still follows its own distribution."""
    if not np.isfinite(p).all():
        raise ValueError("the generator gives non-finite probabilities (its parameters overflow)")
    u = stratified_uniform(key, rng)
    cum = np.cumsum(p, axis=1)
    cum /= cum[:, -1:]
    return np.minimum((cum <= u[:, None]).sum(axis=1), p.shape[1] - 1)


def parameter_count(plan: TrainPlan, sizes: Sequence[int]) -> int:
    return sum(p.numel() for p in build(plan, sizes).parameters())


def build(plan: TrainPlan, sizes: Sequence[int]) -> Generator:
    """The plan's generator with its public initial parameters. With a domain round its
    output biases are not trained (`frozen_output_bias`)."""
    torch.manual_seed(plan.init_seed)
    model: Generator = (Made(sizes, plan.hidden) if plan.model == "made"
                        else Vae(sizes, plan.hidden, plan.latent))
    if plan.frozen_output_bias:
        model.output_bias().requires_grad_(False)
    return model


def sampling_generator(seed: int) -> torch.Generator:
    """The generator rows are sampled with (post-processing: a public seed is fine)."""
    return torch.Generator().manual_seed(int(seed))


# --- parameters as one vector ------------------------------------------------------------


def trained_coordinates(model: nn.Module) -> np.ndarray:
    """Which coordinates of the parameter vector DP-SGD trains (False: frozen)."""
    return np.concatenate([np.full(p.numel(), p.requires_grad) for p in model.parameters()])


def get_vector(model: nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy()


def set_vector(model: nn.Module, vec: np.ndarray) -> None:
    vec = np.asarray(vec, dtype=np.float64)
    n = sum(p.numel() for p in model.parameters())
    if vec.shape != (n,) or not np.all(np.isfinite(vec)):
        raise ValueError(f"a parameter vector of shape {vec.shape} (finite) for a model with "
                         f"{n} parameters")
    start = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(vec[start:start + p.numel()]).reshape(p.shape))
            start += p.numel()


def vector_bytes(vec: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(vec, dtype=np.float64), allow_pickle=False)
    return buf.getvalue()


def vector_from_bytes(data: bytes, length: int) -> np.ndarray:
    try:
        vec = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"the parameter vector does not parse: {exc}") from None
    if vec.dtype != np.float64 or vec.shape != (length,) or not np.all(np.isfinite(vec)):
        raise ValueError(f"a parameter vector must be {length} finite float64 values")
    if np.abs(vec).max(initial=0.0) > PARAMETER_BOUND:
        raise ValueError(f"a parameter vector must stay within ±{PARAMETER_BOUND:g}")
    return np.asarray(vec)


# --- one party's local training ----------------------------------------------------------


def one_hot(codes: np.ndarray, sizes: Sequence[int]) -> torch.Tensor:
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    x = torch.zeros(codes.shape[0], int(sum(sizes)))
    idx = torch.from_numpy(codes.astype(np.int64) + offsets[None, :])
    x.scatter_(1, idx, 1.0)
    return x


def train_local(plan: TrainPlan, sizes: Sequence[int], start: np.ndarray,
                codes: np.ndarray, *, seed: int | None = None) -> np.ndarray:
    """One round of DP-SGD on this party's rows from the global parameters `start`; returns
    the update (trained minus `start`). `seed` is for tests only: None draws the noise and the
    sampling from OS entropy."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # inputs are data
    model = build(plan, sizes)
    set_vector(model, start)
    gen = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
    torch.manual_seed(secrets.randbits(63) if seed is None else seed + 1)  # latent draws
    n = len(codes)
    gsm = GradSampleModule(model)
    opt = DPOptimizer(torch.optim.Adam(gsm.parameters(), lr=plan.lr),
                      noise_multiplier=plan.noise_multiplier(len(sizes)), max_grad_norm=plan.clip,
                      expected_batch_size=plan.batch_scale, generator=gen)
    for _ in range(plan.steps_per_round):
        # Poisson sampling in float64 (float32's 2^-24 grid would sample small q far too often)
        rows = torch.nonzero(torch.rand(n, generator=gen, dtype=torch.float64)
                             < plan.sampling_rate)[:, 0]
        parts = list(torch.split(rows, MICRO_BATCH)) or [rows]
        for i, part in enumerate(parts):  # Opacus accumulates clipped sums over micro-batches
            opt.signal_skip_step(do_skip=i < len(parts) - 1)
            if len(part):
                batch, real = padded(codes[part.numpy()], MICRO_BATCH)
                model_loss(gsm, one_hot(batch, sizes), torch.from_numpy(batch)).backward()
                _drop_rows(gsm, real)
            else:  # an empty batch still takes a step: noise only
                for p in (q for q in gsm.parameters() if q.requires_grad):
                    p.grad_sample = torch.zeros((0, *p.shape))
            opt.step()
            opt.zero_grad()
    update = get_vector(model) - np.asarray(start, dtype=np.float64)
    # non-finite coordinates (a function of the noisy clipped sums alone): post-processing
    return np.where(np.isfinite(update), update, 0.0)


def clipped_gradient_sum(plan: TrainPlan, sizes: Sequence[int], params: np.ndarray,
                         codes: np.ndarray, *, seed: int | None = None) -> np.ndarray:
    """One distributed step's contribution: the sum over ALL of this party's rows of each
    row's loss gradient at the global `params`, clipped to L2 norm `clip` (a row whose gradient
    is not finite counts as zero). Not private by itself: the caller rounds it to the step's
    grid and adds its noise share before it leaves (client_node.train).

    Every parameter of both generators sits in a linear layer (MaskedLinear or nn.Linear)
    applied once per row, so a row's gradient is, per layer, the outer product of the
    layer's backprop b (d loss_row / d output) and input a, times the layer's 0/1 mask M,
    plus b for the bias. Its squared norm is then sum_jk M_jk b_j^2 a_k^2 + |b|^2 = (b^2)^T M
    (a^2) + |b|^2, and the clipped sum over rows is B^T diag(f) A (times M) with f the rows'
    clip factors: two matrix products per layer, in float64, instead of materializing every
    row's gradient (Opacus's per-sample gradients took 13-29x the time: benchmarks/results/
    dpsgd-step.md). The norm is that of the exact per-row gradient, so the
    clip bound, and with it the step's sensitivity (`step_grid`), is the same; float64 keeps the
    sum's rounding independent of the other rows far below the grid's 1/128 slack."""
    torch.set_num_threads(1)
    model = build(plan, sizes)
    set_vector(model, params)
    torch.manual_seed(secrets.randbits(63) if seed is None else seed)  # vae latent draws
    layers = _linear_layers(model)
    seen: dict[nn.Linear, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(layer: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        assert isinstance(layer, nn.Linear)
        if layer in seen:
            raise RuntimeError("a linear layer applied twice in one pass: the per-row "
                               "gradient is no longer one outer product")
        if inputs[0].dim() != 2:  # rows x features: one outer product per row
            raise RuntimeError(f"a linear layer on a {inputs[0].dim()}-d input")
        seen[layer] = (inputs[0], out)

    hooks = [layer.register_forward_hook(keep) for layer in layers]
    total: dict[torch.Tensor, torch.Tensor] = {
        p: torch.zeros(p.shape, dtype=torch.float64) for p in model.parameters()}
    try:
        for start in range(0, len(codes), GRADIENT_BATCH):
            batch, real = padded(codes[start:start + GRADIENT_BATCH], GRADIENT_BATCH)
            seen.clear()
            loss = model.row_loss(one_hot(batch, sizes), torch.from_numpy(batch)).sum()
            backs = torch.autograd.grad(loss, [seen[layer][1] for layer in layers])
            ab = [(seen[layer][0].detach().double(), b.double())
                  for layer, b in zip(layers, backs, strict=True)]
            sq = torch.zeros(GRADIENT_BATCH, dtype=torch.float64)
            for layer, (a, b) in zip(layers, ab, strict=True):
                if layer.weight.requires_grad:
                    sq += ((b * b) @ _mask(layer) * (a * a)).sum(dim=1)
                if layer.bias is not None and layer.bias.requires_grad:
                    sq += (b * b).sum(dim=1)
            # a row whose gradient is not finite (or whose norm overflows) gets factor 0, and so
            # does the padding (`padded`)
            kept = torch.isfinite(sq) & (torch.arange(GRADIENT_BATCH) < real)
            factor = torch.where(kept, torch.clamp(plan.clip / (sq.sqrt() + 1e-12), max=1.0),
                                 0.0)
            for layer, (a, b) in zip(layers, ab, strict=True):
                # zeroed, not multiplied: 0 * inf is nan
                a = torch.where(kept[:, None], a, 0.0)
                b = torch.where(kept[:, None], b * factor[:, None], 0.0)
                if layer.weight.requires_grad:
                    total[layer.weight] += (b.T @ a) * _mask(layer)
                if layer.bias is not None and layer.bias.requires_grad:
                    total[layer.bias] += b.sum(dim=0)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat([total[p].reshape(-1) for p in model.parameters()]).numpy()


def _linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's linear layers, checked to hold every parameter (else clipped_gradient_sum's
    per-row norms would miss some)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if any(type(m) not in (nn.Linear, MaskedLinear) for m in layers):  # another forward
        raise TypeError(f"{type(model).__name__} has a linear layer of another kind")
    held = [id(p) for m in layers for p in m.parameters(recurse=False)]
    if len(set(held)) < len(held):  # a shared weight: its row gradient is a sum of products
        raise TypeError(f"{type(model).__name__} shares a parameter between linear layers")
    if any(id(p) not in held for p in model.parameters()):
        raise TypeError(f"{type(model).__name__} has parameters outside linear layers")
    return layers


def _mask(layer: nn.Linear) -> torch.Tensor:
    """The 0/1 mask a layer's weight is multiplied by (all ones for a plain linear layer)."""
    mask = getattr(layer, "mask", None)
    if mask is None:
        return torch.ones(layer.weight.shape, dtype=torch.float64)
    return mask.to(torch.float64)


def server_step(model: Generator, optimizer: torch.optim.Optimizer, gradient: np.ndarray
                ) -> None:
    """One optimizer step of the global generator along `gradient` (a noisy mean gradient:
    post-processing of a distributed step's release)."""
    start = 0
    for p in model.parameters():
        k = p.numel()
        if p.requires_grad:  # a frozen parameter's coordinates hold noise only
            p.grad = torch.from_numpy(gradient[start:start + k]).reshape(p.shape).to(p.dtype)
        start += k
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def padded(codes: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """`codes` (at most `size` rows) padded with all-zero rows to exactly `size` rows, and the
    number of real rows; the caller gives the padding rows no weight.

    Why every backward pass has the same shape: the clip bound (and so the step's sensitivity)
    assumes a row's clipped gradient is a function of that row and the parameters alone. In
    float32 a library may compute a row differently in a batch of another shape (MKL sends a
    one-row batch through matrix-vector code), and parameters crafted so that a row's
    pre-activation cancels exactly let that rounding decide which units are active: a review
    moved one row's contribution by √5 · clip that way, by adding another row so that it sat
    alone in the last batch. At one shape a row's arithmetic did not depend on the other rows
    or on its position (tests/unit/dpsgd/test_distributed.py checks it on the running
    library; the privacy report lists the assumption)."""
    real = len(codes)
    if real > size:
        raise ValueError(f"{real} rows in a batch of {size}")
    pad = np.zeros((size - real, codes.shape[1]), dtype=np.int64)
    return np.concatenate([codes.astype(np.int64), pad]), real


def _drop_rows(gsm: GradSampleModule, real: int) -> None:
    """The padding rows (from `real` on) and every row whose gradient is not finite contribute
    nothing (zero, within the clip norm), so parameters crafted to overflow on some rows' values
    cannot turn them into an error."""
    params = [p for p in gsm.parameters() if getattr(p, "grad_sample", None) is not None]
    if not params:
        return
    bad = torch.arange(params[0].grad_sample.shape[0]) >= real
    for p in params:
        bad |= ~torch.isfinite(p.grad_sample.reshape(len(bad), -1)).all(dim=1)
    if bool(bad.any()):
        for p in params:
            p.grad_sample[bad] = 0.0


def model_loss(gsm: GradSampleModule, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Mean per-row loss of the wrapped generator (the optimizer scales by the expected batch)."""
    inner: Any = gsm._module
    loss: torch.Tensor = inner.row_loss(x, codes).mean()
    return loss
