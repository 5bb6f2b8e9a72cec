"""The DP-generator method (`--method dpsgd`): parties train one generator together with DP-SGD.

Every round the coordinator sends the global generator's parameters and the public training
plan (synthesis.dpsgd.TrainPlan); each party trains from them on its own rows with DP-SGD for
`local_epochs` expected passes and answers with its update (trained minus global) in fixed
point (crypto.fixed_point) through the job's channel, so the coordinator sees only the sum over
at least t parties. The global parameters move by the mean update (federated averaging); after
the last round rows are sampled from the global generator and decoded to typed values.

Privacy. Each party's update is already differentially private on its own (local DP-SGD,
record level: synthesis.dpsgd's docstring argues it), and every party charges its ledger with
the round's steps (a subsampled Gaussian event) before its reply leaves; the plan is a function
of public values only, and a party pins it at its first round and refuses a changed plan or a
round past `rounds`, so a job never spends more than its ε at any party. Secure aggregation
adds no noise here: it hides single updates. (A distributed-noise variant, with clipped
gradient sums and noise shares through the secure sum at every step, would reach central
DP-SGD's utility at one round trip per step; not built.)

Preprocessing is from the schema alone (`encoding.public_grouping`): a method that trains on
rows from the first step may not shape its domain from data, as the marginal method's one-way
round does with DP counts. Its fitted model is not saved for `fedsynth sample` (yet): the
output folder has no model files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import numpy as np

from fedsynth.coordinator.methods import Synthesis
from fedsynth.coordinator.options import JobOptions
from fedsynth.coordinator.rounds import Rounds
from fedsynth.crypto import fixed_point
from fedsynth.crypto.accountant import StepBudget
from fedsynth.evaluation.meter import StepMeter
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.synthesis import dpsgd
from fedsynth.synthesis.encoding import Encoding, decode_groups

OUTSIDE = [
    "dpsgd: the Gaussian noise is drawn in floating point by torch's generator (seeded from OS "
    "entropy each round, but not a cryptographic generator)",
    "dpsgd: each party's update is DP by its own DP-SGD noise; the secure sum hides single "
    "updates but adds no noise, so the ε is that of each party's local training",
    "dpsgd: a party's training time grows with its row count (a step takes about q * n rows), "
    "which a coordinator can time",
]


class DpsgdMethod:
    name = "dpsgd"

    def synthesize(self, rounds: Rounds, opt: JobOptions, meter: StepMeter,
                   say: Callable[[str], None]) -> Synthesis:
        spec = rounds.spec
        enc = Encoding.from_schema(spec.schema)
        groupings = dpsgd.domain(spec.schema)
        sizes = [g.size for g in groupings]
        plan = dpsgd.TrainPlan(epsilon=spec.epsilon, delta=spec.delta, **dict(opt.train or {}))
        sigma = plan.noise_multiplier()
        model = dpsgd.build(plan, sizes)
        params = dpsgd.get_vector(model)
        say(f"training a {plan.model} generator ({len(params)} parameters) with DP-SGD: "
            f"{plan.rounds} rounds of {plan.steps_per_round} local steps, noise multiplier "
            f"{sigma:.3f}")
        meter.begin("train")
        for r in range(plan.rounds):
            req = pb.TrainRequest(parameters=dpsgd.vector_bytes(params),
                                  options_json=plan.to_json())
            res = rounds.train("train", req, len(params), steps=plan.steps_per_round,
                               variance=(sigma * plan.clip) ** 2,
                               sampling_rate=plan.sampling_rate, l2=plan.clip)
            params = params + fixed_point.decode_mean(res.total, len(res.contributors))
            say(f"round {r + 1} of {plan.rounds}: {len(res.contributors)} parties' updates "
                "averaged")
        meter.end()
        dpsgd.set_vector(model, params)
        if opt.rows is None:
            raise ValueError("the dpsgd method has no noisy row count of its own: give the "
                             "number of synthetic rows (--rows)")
        rows = opt.rows
        with meter.step("sample", rows=rows):
            say(f"sampling {rows} rows from the generator")
            codes = model.sample(rows, dpsgd.sampling_generator(opt.seed))
            synthetic = decode_groups(enc, groupings, codes,
                                      [np.ones(c.size) for c in enc.codecs],
                                      np.random.default_rng(opt.seed))
        plan_step = StepBudget("train", plan.steps, 1.0)
        done = sum(r.get("steps", 0) for r in rounds.log_rows if r["step"] == "train")
        report = {"method": "dpsgd", "outside_the_guarantee": OUTSIDE,
                  "mechanism": "each party trains with DP-SGD on its own rows: Poisson "
                               "sampling at rate q, per-row gradients clipped to L2 norm "
                               "`clip`, Gaussian noise of sd noise_multiplier * clip on each "
                               "step's sum (Opacus); its update goes through the channel in "
                               "fixed point, and the coordinator sees only the sum",
                  "accounting": "Rényi DP of Poisson-subsampled Gaussian steps (dp-accounting), "
                                "composed over all steps of all rounds and converted to (ε, δ); "
                                "unit: one row of one party (add/remove)",
                  "budget_split": [{"step": "train", "share_planned": 1.0,
                                    "steps_planned": plan.steps, "steps": done}],
                  "training_plan": {**asdict(plan),
                                                       "noise_multiplier": sigma,
                                                       "steps_per_round": plan.steps_per_round,
                                                       "parameters": len(params)}}
        return Synthesis(synthetic, None, [plan_step], None, report)
