"""The DP-generator method (`--method dpsgd`): parties train one generator together with DP-SGD.

Two ways to noise the training, set by the public plan's `noise` (synthesis.dpsgd.TrainPlan):

- "distributed" (the default): every round is ONE full-batch gradient step. Each party answers
  with the sum of its rows' clipped gradients at the global parameters, rounded to a public
  grid, plus its Skellam share of the step's noise (client_node.train); the secure sum's total
  carries the whole noise, so the coordinator holds what a central curator running DP gradient
  descent on the pooled rows would (noise sd σ·clip on the sum of all parties' gradients,
  against σ·clip on each party's own sum in the local variant: about sqrt(parties) less noise on
  the mean, and as many round trips as steps). The coordinator takes an Adam step along the
  noisy mean gradient (post-processing). A step is a Skellam release of an integer vector with
  the plan's sensitivity (dpsgd.step_grid), charged as such; the noise is integer Skellam from
  the OS-keyed generator, so the floating-point caveat of local DP-SGD does not apply. Against
  "local" with the same code at ε = 10 (benchmarks/results/dpsgd-local-current.md): 0.68x-0.87x
  the 2-way TVD on all 8 rows and 0.3x-0.55x the seconds (each step's clipped sum comes from
  the layers' inputs and backprops: synthesis.dpsgd.clipped_gradient_sum), at ten times the
  bytes (one vector per step).
- "local": every round the coordinator sends the global generator's parameters and
  the plan; each party trains from them on its own rows with DP-SGD for `local_epochs`
  expected passes and answers with its update (trained minus global) in fixed point
  (crypto.fixed_point) through the job's channel, so the coordinator sees only the sum over at
  least t parties. The global parameters move by the mean update (federated averaging). Each
  update is DP on its own (local DP-SGD, synthesis.dpsgd's docstring argues it); the secure
  sum hides single updates but adds no noise. Where it still wins: its guarantee does not
  rest on the secure sum's honest survivors (each update is DP even if every other party and
  the coordinator collude), and it sends a tenth of the bytes.

Privacy. Every party charges its ledger with the round's release (TrainPlan.round_release: the
same event the coordinator's accountant adds) before its reply leaves; the plan is a function
of public values only, and a party pins it at its first round and refuses a changed plan or a
round past `rounds`, so a job never spends more than its ε at any party.

The domain. Unless the plan's `domain_share` is 0, the job starts with one counting round:
every column's fine one-way counts through the channel at the plan's Skellam variance
(`TrainPlan.domain_variance`, charged by the accountant and every ledger like any counting
round, and priced into the training noise multiplier so the whole job spends exactly ε). Its
noisy counts, post-processed, give the generator's domain (about equal-mass groups,
synthesis.dpsgd.data_domain), sent with every training request; its starting output biases
(each column's noisy marginal); the values drawn inside a group; and the noisy count of rows
that sets the synthetic table's size. Measured on AER/CPS1988 at ε = 10 (5 parties): the wage
column's 1-way TVD was 0.069 with public runs of bins, 0.011 with the domain round (30%).
The trained generator is kept (synthesis.generator_model: model.json and model.npz in the
output folder), so `fedsynth sample --model RUN_DIR --rows N` draws more rows from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch

from fedsynth.coordinator.methods import Synthesis
from fedsynth.coordinator.options import JobOptions
from fedsynth.coordinator.rounds import Rounds
from fedsynth.crypto import fixed_point
from fedsynth.crypto.accountant import StepBudget
from fedsynth.evaluation.meter import StepMeter
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.synthesis import dpsgd
from fedsynth.synthesis.encoding import FLOOR_SDS, Encoding
from fedsynth.synthesis.generator_model import GeneratorModel

# the clip bound needs each row's clipped gradient to be a function of that row and the
# parameters alone (synthesis.dpsgd.padded argues and tests/unit/dpsgd checks it)
FLOAT_ROWS = ("dpsgd: a row's gradient is computed in float32 in batches of one fixed shape; the "
              "clip bound assumes the math library computes a row the same whatever the other "
              "rows of its batch (true where tested; a library that did not could let crafted "
              "parameters move one row's contribution past the clip norm)")

OUTSIDE = {
    "local": [
        "dpsgd: the Gaussian noise is drawn in floating point by torch's generator (seeded "
        "from OS entropy each round, but not a cryptographic generator)",
        "dpsgd: each party's update is DP by its own DP-SGD noise; the secure sum hides single "
        "updates but adds no noise, so the ε is that of each party's local training",
        "dpsgd: a party's training time grows with its row count (a step takes about q * n "
        "rows), which a coordinator can time",
        FLOAT_ROWS,
    ],
    "distributed": [
        "dpsgd: a party's gradient time grows with its row count (every step reads all its "
        "rows), which a coordinator can time",
        FLOAT_ROWS,
        "dpsgd, model vae only: the latent draws in each row's gradient come from torch's "
        "generator (seeded from OS entropy each round, not a cryptographic generator); the "
        "sensitivity argument needs them unknown to the coordinator",
    ],
}

MECHANISM = {
    "local": "each party trains with DP-SGD on its own rows: Poisson sampling at rate q, "
             "per-row gradients clipped to L2 norm `clip`, Gaussian noise of sd "
             "noise_multiplier * clip on each step's sum (Opacus); its update goes through the "
             "channel in fixed point, and the coordinator sees only the sum",
    "distributed": "one full-batch gradient step a round: each party sums its rows' gradients "
                   "at the global parameters, each clipped to L2 norm `clip`, rounds the sum "
                   "to the public grid `grid_scale` and adds its Skellam share of the step's "
                   "noise (variance (noise_multiplier * Δ2)^2 over t - c honest survivors); "
                   "the coordinator sees only the noisy sum and takes an Adam step along it",
}


class DpsgdMethod:
    name = "dpsgd"

    def synthesize(self, rounds: Rounds, opt: JobOptions, meter: StepMeter,
                   say: Callable[[str], None]) -> Synthesis:
        spec = rounds.spec
        enc = Encoding.from_schema(spec.schema)
        d = len(enc.codecs)
        plan = dpsgd.TrainPlan.from_options(spec.epsilon, spec.delta, opt.train)
        steps = []
        total: float | None = None
        fine_counts = [np.ones(c.size) for c in enc.codecs]  # uniform inside public groups
        floor = 0.0
        plan.check(spec.schema)  # before any release: an infeasible plan stops here
        meter.begin("train")
        if plan.domain_share > 0:
            var1 = plan.domain_variance(d)
            rounds.variances[dpsgd.DOMAIN_STEP] = var1
            say("measuring one-way marginals (domain step)")
            cells = dpsgd.domain_cells(spec.schema, plan)
            one, realized = rounds.measure(dpsgd.DOMAIN_STEP, cells, [(j,) for j in range(d)],
                                           options_json=plan.to_json())
            fine_counts = [dpsgd.spread(g, o) for g, o in zip(cells, one, strict=True)]
            groupings = dpsgd.data_domain(spec.schema, fine_counts)
            floor = FLOOR_SDS * float(np.sqrt(realized))
            # each column's noisy total, weighted by its precision (1 / cells): the row count
            total = float(np.average([c.sum() for c in fine_counts],
                                     weights=[1.0 / len(c) for c in fine_counts]))
            steps.append(StepBudget(dpsgd.DOMAIN_STEP, d, plan.domain_share))
        else:
            groupings = dpsgd.domain(spec.schema)
        sizes = [g.size for g in groupings]
        model = dpsgd.build(plan, sizes)
        marginals = dpsgd.group_log_probs(groupings, fine_counts)
        if plan.domain_share > 0:
            model.start_from(marginals)
        params = dpsgd.get_vector(model)
        length = len(params)
        sigma = plan.noise_multiplier(d, length)
        release = plan.round_release(d, length)
        scale, l1, l2 = plan.grid(d, length) if plan.distributed else (0.0, 0.0, 0.0)
        say(f"training a {plan.model} generator ({length} parameters) with "
            + (f"{plan.rounds} distributed DP-SGD steps (full batch, Skellam noise shared "
               f"through the secure sum), noise multiplier {sigma:.3f}" if plan.distributed
               else f"DP-SGD: {plan.rounds} rounds of {plan.steps_per_round} local steps, "
                    f"noise multiplier {sigma:.3f}"))
        optimizer = torch.optim.Adam(model.parameters(), lr=plan.lr)
        for r in range(plan.rounds):
            req = pb.TrainRequest(parameters=dpsgd.vector_bytes(params),
                                  options_json=plan.to_json())
            if plan.domain_share > 0:
                req.groupings.extend(pb.Grouping(index=g.index.tolist()) for g in groupings)
            res = rounds.train(req, length, release)
            if plan.distributed:  # the noisy clipped gradient sum, as a mean gradient
                norm = max(1.0, total) if total is not None else float(plan.batch_scale)
                dpsgd.server_step(model, optimizer,
                                  res.total.astype(np.float64) / (scale * norm))
                params = dpsgd.get_vector(model)
                if (r + 1) % max(1, plan.rounds // 10) == 0 or r + 1 == plan.rounds:
                    say(f"step {r + 1} of {plan.rounds}: {len(res.contributors)} parties' "
                        "gradient sums")
            else:
                mean = fixed_point.decode_mean(res.total, len(res.contributors))
                params = params + np.where(dpsgd.trained_coordinates(model), mean, 0.0)
                say(f"round {r + 1} of {plan.rounds}: {len(res.contributors)} parties' "
                    "updates averaged")
        meter.end()
        dpsgd.set_vector(model, params)
        if plan.domain_share > 0:
            say("matching the generator's marginals to the one-way counts")
            model.match_marginals(marginals, dpsgd.sampling_generator(opt.seed + 1))
        if opt.rows is not None:
            rows = opt.rows
        elif total is not None:
            rows = max(1, round(total))
        else:
            raise ValueError("the dpsgd method without a domain round (domain_share 0) has no "
                             "noisy row count: give the number of synthetic rows (--rows)")
        kept = GeneratorModel(spec.schema, plan, groupings, fine_counts, floor,
                              dpsgd.get_vector(model))
        with meter.step("sample", rows=rows):
            say(f"sampling {rows} rows from the generator")
            synthetic = kept.sample(rows, seed=opt.seed)
        steps.append(StepBudget("train", plan.steps, 1.0 - plan.domain_share))
        done = sum(r.get("steps", 0) for r in rounds.log_rows if r["step"] == "train")
        report = {"method": "dpsgd", "outside_the_guarantee": OUTSIDE[plan.noise],
                  "mechanism": MECHANISM[plan.noise],
                  "accounting": "Rényi DP of the domain round's Skellam counting release (if "
                                "any) and of the training releases ("
                                + ("Poisson-subsampled Gaussian steps, dp-accounting"
                                   if not plan.distributed else
                                   "one Skellam release of an integer gradient sum a step")
                                + "), composed over all rounds and converted to (ε, δ); unit: "
                                  "one row of one party (add/remove)",
                  "budget_split": [
                      *([{"step": dpsgd.DOMAIN_STEP, "share_planned": plan.domain_share,
                          "marginals": d, "noise_variance": plan.domain_variance(d)}]
                        if plan.domain_share > 0 else []),
                      {"step": "train", "share_planned": 1.0 - plan.domain_share,
                       "steps_planned": plan.steps, "steps": done}],
                  "training_plan": {**asdict(plan), "noise_multiplier": sigma,
                                    "steps_per_round": plan.steps_per_round,
                                    "parameters": len(params),
                                    **({"grid_scale": scale, "sensitivity_l1_l2": [l1, l2]}
                                       if plan.distributed else {})}}
        return Synthesis(synthetic, kept, steps, total, report)

