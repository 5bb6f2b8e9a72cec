"""Distributed-noise DP-SGD (`noise: distributed`): one full-batch gradient step per round, each
party's clipped gradient sum rounded to a public grid with its Skellam noise share added, so the
secure sum carries the whole Skellam noise. The rounding keeps the plan's sensitivity, the plan
spends exactly the job's ε, a party's gradient sum is the sum of its rows' clipped gradients,
and in a job the ledgers hold one Skellam release per step while the sums carry noise of the
release's variance even when every party's gradient fails."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from fedsynth import progress  # noqa: E402
from fedsynth.client_node.ledger import Ledger  # noqa: E402
from fedsynth.coordinator import rounds as rounds_module  # noqa: E402
from fedsynth.coordinator.job import JobOptions  # noqa: E402
from fedsynth.crypto import fixed_point, noise  # noqa: E402
from fedsynth.crypto.accountant import ORDERS, Accountant  # noqa: E402
from fedsynth.simulations import datasets  # noqa: E402
from fedsynth.simulations.run import simulate  # noqa: E402
from fedsynth.synthesis import dpsgd  # noqa: E402

SIZES = [3, 5, 2, 4]


@settings(max_examples=60, deadline=None)
@given(parameters=st.integers(1, 3000), clip=st.floats(1e-3, 1e3),
       seed=st.integers(0, 2**32 - 1), spread=st.floats(1e-3, 1e6))
def test_a_rounded_gradient_sum_moves_by_at_most_the_plans_sensitivity(
        parameters: int, clip: float, seed: int, spread: float) -> None:
    """One row added: the real sum moves by a vector of L2 norm at most `clip`; the integer
    vector that leaves (rounded, clipped to the bound) moves by at most (Δ1, Δ2)."""
    plan = dpsgd.TrainPlan(epsilon=1.0, delta=1e-6, noise="distributed", clip=clip)
    rng = np.random.default_rng(seed)
    x = rng.normal(0, spread * clip, parameters)
    row = rng.normal(0, 1, parameters)
    row *= clip * rng.uniform(0, 1) / np.linalg.norm(row)
    scale, l1, l2 = plan.grid(len(SIZES), parameters)
    diff = (fixed_point.to_grid(x + row, scale) - fixed_point.to_grid(x, scale)).astype(float)
    assert np.abs(diff).sum() <= l1 and np.linalg.norm(diff) <= l2


@pytest.mark.parametrize(("eps", "rounds", "parameters"), [(10.0, 200, 80_000), (1.0, 200, 80_000),
                                                           (0.3, 200, 20_000)])
def test_the_step_grid_is_fine_unless_the_noise_would_leave_the_samplers_exact_range(
        eps: float, rounds: int, parameters: int) -> None:
    plan = dpsgd.TrainPlan(epsilon=eps, delta=1e-6, noise="distributed", rounds=rounds)
    scale, _, l2 = plan.grid(4, parameters)
    fine, _, fine_l2 = dpsgd.step_grid(parameters, plan.clip, None)
    assert fine_l2 <= fine * plan.clip * (1 + 1 / 128)  # rounding adds at most 1/128 of clip
    variance = plan.round_release(4, parameters)["variance"]
    assert variance <= dpsgd.STEP_VARIANCE_LIMIT <= noise.MAX_VARIANCE
    assert scale == fine or 4 * variance > dpsgd.STEP_VARIANCE_LIMIT  # the finest that fits
    assert l2 <= scale * plan.clip * 1.25
    with pytest.raises(ValueError, match="too much noise for the step's integer grid"):
        dpsgd.TrainPlan(epsilon=0.05, delta=1e-6, noise="distributed",
                        rounds=2000).noise_multiplier(4, parameters)


def test_skellam_draws_at_large_variance_keep_their_low_bits_and_spread() -> None:
    """numpy's Poisson sampler loses low bits at large λ (all even past 2^53); crypto.noise
    draws in chunks of λ <= 2^32 and refuses past its limit."""
    rng = np.random.default_rng(5)
    x = noise.skellam(2.0**42, 20_000, rng)  # λ = 2^41: 512 draws a value
    assert np.std(x) == pytest.approx(2.0**21, rel=0.02)
    assert abs(np.mean(x % 4 == 0) - 0.25) < 0.02 and abs(np.mean(x % 2 == 1) - 0.5) < 0.02
    with pytest.raises(ValueError, match="cannot be drawn exactly"):
        noise.skellam(noise.MAX_VARIANCE * 2, 3, rng)


@pytest.mark.parametrize(("eps", "share", "rounds"), [(1.0, 0.3, 50), (10.0, 0.3, 300),
                                                      (3.0, 0.0, 100)])
def test_distributed_steps_and_the_domain_round_spend_exactly_the_job_epsilon(
        eps: float, share: float, rounds: int) -> None:
    plan = dpsgd.TrainPlan(epsilon=eps, delta=1e-6, noise="distributed", rounds=rounds,
                           domain_share=share)
    columns, parameters = len(SIZES), dpsgd.parameter_count(plan, SIZES)
    sigma = plan.noise_multiplier(columns, parameters)
    release = plan.round_release(columns, parameters)
    _, l1, l2 = plan.grid(columns, parameters)
    assert release == {"label": "train", "count": 1, "variance": (sigma * l2) ** 2, "l1": l1,
                       "l2": l2, "mechanism": "skellam", "sampling_rate": 1.0}

    def spent(s: float) -> float:
        acc = Accountant()
        if share:
            acc.add(step=dpsgd.DOMAIN_STEP, count=columns,
                    variance=plan.domain_variance(columns))
        for _ in range(rounds):  # as the ledger holds them: one release per round
            acc.add(step="train", count=1, variance=(s * l2) ** 2, l1=l1, l2=l2)
        return acc.epsilon(plan.delta)

    assert spent(sigma) <= eps < spent(sigma / 1.01)
    # at this grid the Skellam steps cost what central full-batch Gaussian steps of the same
    # noise multiplier would (their RDP curve, rounds * α / (2 σ²))
    steps = Accountant()
    steps.add(step="train", count=rounds, variance=(sigma * l2) ** 2, l1=l1, l2=l2)
    assert np.allclose(steps.rdp(), np.asarray(ORDERS) * rounds / (2 * sigma**2), rtol=1e-3)


@pytest.mark.parametrize(("model", "domain_share", "output_bias"),
                         [("made", 0.0, "auto"), ("made", 0.3, "frozen"),
                          ("made", 0.3, "trained"), ("vae", 0.3, "frozen"),
                          ("vae", 0.0, "auto")])
def test_a_partys_gradient_sum_is_the_sum_of_its_rows_clipped_gradients(
        model: str, domain_share: float, output_bias: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a backward pass per row: frozen output biases are zero in the sum, and a row's
    clip norm is the norm of the rest of its gradient (the step computes the norms from the
    layers' inputs and backprops, never a row's gradient itself)."""
    # the vae's latent draws, the same in both computations
    monkeypatch.setattr(torch, "randn_like", lambda t: torch.full_like(t, 0.5))
    plan = dpsgd.TrainPlan(epsilon=1.0, delta=1e-6, noise="distributed", hidden=16,
                           domain_share=domain_share, output_bias=output_bias, model=model)
    frozen = output_bias == "frozen"
    rng = np.random.default_rng(0)
    params = dpsgd.get_vector(dpsgd.build(plan, SIZES))
    params = params + rng.normal(0, 0.3, len(params))
    codes = np.stack([rng.integers(0, k, 300) for k in SIZES], axis=1)  # > one backward batch
    net = dpsgd.build(plan, SIZES)
    dpsgd.set_vector(net, params)
    rows = []
    for i in range(len(codes)):
        net.zero_grad()
        c = torch.from_numpy(codes[i:i + 1])
        net.row_loss(dpsgd.one_hot(codes[i:i + 1], SIZES), c).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) if p.requires_grad else torch.zeros(p.numel())
                               for p in net.parameters()]).double().numpy())
    norms = np.linalg.norm(rows, axis=1)
    # a clip between the rows' norms: both sides of it are exercised
    plan = dataclasses.replace(plan, clip=float(np.median(norms)))
    assert 0 < (norms > plan.clip).sum() < len(codes)
    want = sum(g * min(1.0, plan.clip / n) for g, n in zip(rows, norms, strict=True))
    got = dpsgd.clipped_gradient_sum(plan, SIZES, params, codes, seed=1)
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
    bias = np.zeros(len(params), dtype=bool)
    bias[-sum(SIZES):] = True  # both models' output biases are their last parameters
    assert plan.frozen_output_bias == frozen
    assert (np.abs(got[bias]).max() == 0) == frozen
    # the coordinator does not step along frozen coordinates, whatever noise they hold
    before = dpsgd.get_vector(net)
    dpsgd.server_step(net, torch.optim.Adam(net.parameters(), lr=0.1),
                      rng.normal(0, 1.0, len(params)))
    moved = dpsgd.get_vector(net) != before
    assert moved[~bias].all() and moved[bias].all() == (not frozen)
    # and no more than each row's clip norm in all
    assert np.linalg.norm(got) <= plan.clip * len(codes)


class _Shared(dpsgd.Made):
    """A MADE whose second layer is applied twice: a row's gradient there is no longer one
    outer product, so its norm cannot come from one input and one backprop."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.l1(x))
        return self.l3(torch.relu(self.l2(torch.relu(self.l2(h)))))


class _Scaled(dpsgd.Made):
    """A MADE with a parameter outside its linear layers."""

    def __init__(self, sizes: Any, hidden: int) -> None:
        super().__init__(sizes, hidden)
        self.gain = torch.nn.Parameter(torch.ones(1))


@pytest.mark.parametrize(("cls", "error"), [(_Shared, "applied twice"),
                                            (_Scaled, "outside linear layers")])
def test_a_generator_the_step_cannot_clip_exactly_is_refused(
        cls: type, error: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-row norms come from each linear layer's input and backprop; a generator where
    that would miss part of a row's gradient is an error, never a sum clipped too loosely."""
    plan = dpsgd.TrainPlan(epsilon=1.0, delta=1e-6, hidden=16)
    monkeypatch.setattr(dpsgd, "Made", cls)
    params = dpsgd.get_vector(dpsgd.build(plan, SIZES))
    codes = np.zeros((5, len(SIZES)), dtype=np.int64)
    with pytest.raises((RuntimeError, TypeError), match=error):
        dpsgd.clipped_gradient_sum(plan, SIZES, params, codes, seed=1)


def _cancelling(plan: dpsgd.TrainPlan, sizes: list[int], row: np.ndarray, seed: int
                ) -> np.ndarray:
    """Parameters a curious coordinator might send: large random weights, and first-layer
    biases that cancel `row`'s pre-activations exactly, so float32 rounding alone decides
    which hidden units `row` turns on (a review's construction)."""
    rng = np.random.default_rng(seed)
    m = dpsgd.build(plan, sizes)
    with torch.no_grad():
        for layer, lim in ((m.l1, 2e3), (m.l2, 1e4), (m.l3, 1e4)):
            layer.weight.copy_(torch.from_numpy(rng.uniform(-lim, lim, layer.weight.shape)))
            layer.bias.copy_(torch.from_numpy(rng.uniform(-1e4, 1e4, layer.bias.shape)))
        x = dpsgd.one_hot(row[None, :], sizes).double()
        m.l1.bias.copy_((-(x @ (m.l1.weight * m.l1.mask).double().T))[0].float())
    return dpsgd.get_vector(m)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_row_added_anywhere_moves_a_step_sum_by_at_most_the_clip_norm(seed: int) -> None:
    """The step's sensitivity, on the real function: tables that differ by one row, at sizes
    around the backward batch (so the added row changes how the last batch fills, and shifts
    the rows after it), under parameters crafted to magnify rounding. Without padding every
    batch to one shape, a row alone in a batch was computed differently: √5 · clip."""
    plan = dpsgd.TrainPlan(epsilon=1.0, delta=1e-6, hidden=16, domain_share=0.0)
    sizes = [4, 4, 4, 4, 4]  # where the review's construction moved a sum by √5 · clip
    rng = np.random.default_rng(5)
    target = np.array([1, 2, 3, 0, 1])
    params = _cancelling(plan, sizes, target, seed)
    others = np.stack([rng.integers(0, k, 300) for k in sizes], axis=1)
    batch = dpsgd.GRADIENT_BATCH
    alone = np.vstack([others[:batch], target])  # the target alone in the last batch
    for n, (table, at) in enumerate(((alone, len(alone)), (alone, 0), (target[None, :], 1),
                                     (others[:batch - 1], 0), (others[:batch], batch),
                                     (others, 150))):
        plus = np.insert(table, at, target, axis=0)
        moved = dpsgd.clipped_gradient_sum(plan, sizes, params, plus, seed=1) - \
            dpsgd.clipped_gradient_sum(plan, sizes, params, table, seed=1)
        assert np.linalg.norm(moved) <= plan.clip * (1 + 1e-6), (n, np.linalg.norm(moved))


def test_rows_whose_gradient_overflows_count_as_zero_in_a_step_sum() -> None:
    """Past the bound a party accepts (so only reachable through a bug elsewhere): rows with
    value 1 in column 0 overflow float32 and add nothing; the other rows' sum is unchanged."""
    plan = dpsgd.TrainPlan(epsilon=1.0, delta=1e-6, hidden=16, domain_share=0.0)
    net = dpsgd.build(plan, SIZES)
    with torch.no_grad():
        net.l1.weight[:, 1] = 1e30  # the input of column 0's value 1
        net.l2.weight.fill_(1e30)
    params = dpsgd.get_vector(net)
    rng = np.random.default_rng(4)
    codes = np.stack([rng.integers(0, k, 300) for k in SIZES], axis=1)
    hit = codes[:, 0] == 1
    assert 0 < hit.sum() < len(codes)
    got = dpsgd.clipped_gradient_sum(plan, SIZES, params, codes, seed=1)
    rest = dpsgd.clipped_gradient_sum(plan, SIZES, params, codes[~hit], seed=1)
    assert np.all(np.isfinite(got)) and np.abs(rest).max() > 0
    assert np.allclose(got, rest, rtol=1e-9, atol=1e-12)


def _parties(n: int = 5) -> list[Any]:
    _, train, _, _ = datasets.benchmark_split("ISLR/Default", 0)
    idx = np.random.default_rng(0).permutation(len(train))
    return [train.iloc[i].reset_index(drop=True) for i in np.array_split(idx, n)]


def test_a_distributed_job_charges_one_skellam_release_a_step_and_its_sums_carry_that_noise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every party's gradient fails (a crafted failure): the party still sends its noise share,
    so each step's sum is pure noise whose variance is the release's times k / (t - c), and
    every ledger holds the domain round and one Skellam release per step, at the job's ε."""
    progress.show("off")

    def broken(*args: object, **kw: object) -> np.ndarray:
        raise MemoryError("simulated")

    monkeypatch.setattr(dpsgd, "clipped_gradient_sum", broken)
    sums: list[tuple[np.ndarray, dict[str, Any], int]] = []
    real = rounds_module.Rounds.train

    def kept(self: rounds_module.Rounds, req: Any, length: int,
             release: dict[str, Any]) -> Any:
        res = real(self, req, length, release)
        sums.append((np.asarray(res.total, dtype=float), release, len(res.contributors)))
        return res

    monkeypatch.setattr(rounds_module.Rounds, "train", kept)
    train = {"noise": "distributed", "rounds": 3, "hidden": 16}
    res = simulate(parties=_parties(), epsilon=3.0, channel="secagg", holdout=0.0,
                   engine="local", evaluate=False, method="dpsgd", threshold=4,
                   _shared={"work": str(tmp_path)}, options=JobOptions(rows=50, train=train))
    assert len(sums) == 3
    for total, release, k in sums:
        assert k == 5
        # symmetric noise of variance release * 5 / 4 per coordinate (thousands of them)
        assert abs(total.mean()) < 5 * np.sqrt(release["variance"] * 5 / 4 / len(total))
        assert total.var() == pytest.approx(release["variance"] * 5 / 4, rel=0.1)
    assert res.privacy["epsilon_spent"] <= 3.0
    assert res.privacy["epsilon_spent"] == pytest.approx(3.0, rel=0.01)
    ledgers = [Ledger(p, 100.0, 1e-6) for p in sorted(tmp_path.rglob("ledger.jsonl"))]
    assert len(ledgers) == 5
    for ledger in ledgers:
        steps = [e for e in ledger.entries() if e["label"] == "train"]
        assert [(e["mechanism"], e["count"], e["variance"]) for e in steps] == [
            ("skellam", 1, sums[0][1]["variance"])] * 3
        assert ledger.spent() == pytest.approx(res.privacy["epsilon_spent"], rel=1e-9)


def test_simulate_takes_the_plan_from_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from fedsynth.cli import EXIT_INPUT, main

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.integers(0, 10, 300), "b": rng.choice(["x", "y"], 300)}).to_csv(
        "t.csv", index=False)
    base = ["simulate", "--engine", "local", "--data", "t.csv", "--parties", "3",
            "--method", "dpsgd", "--no-evaluate"]
    assert main([*base, "--plan", "bogus=1", "--out", "bad"]) == EXIT_INPUT
    assert "unknown field(s) bogus; the fields are" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main([*base, "--plan", "noise=distributed", "--plan", "rounds=3", "--plan",
                 "hidden=16", "--out", "run"]) == 0
    privacy = json.loads((tmp_path / "run" / "privacy.json").read_text())
    plan = privacy["training_plan"]
    assert (plan["noise"], plan["rounds"], plan["hidden"]) == ("distributed", 3, 16)
    assert privacy["epsilon_spent"] <= 1.0


def test_a_distributed_job_runs_over_the_he_channel(tmp_path: Path) -> None:
    """The step's integer vectors plus their shares stay inside the he channel's per-party
    range (crypto.fixed_point.to_grid), and its key holder decrypts each step's one sum."""
    progress.show("off")
    res = simulate(parties=_parties(3), epsilon=3.0, channel="he", holdout=0.0, engine="local",
                   evaluate=False, method="dpsgd", _shared={"work": str(tmp_path)},
                   options=JobOptions(rows=100, train={"noise": "distributed", "rounds": 2,
                                                       "hidden": 16}))
    assert len(res.synthetic) == 100 and res.privacy["channel"] == "he"
    assert res.privacy["epsilon_spent"] == pytest.approx(3.0, rel=0.01)
    assert res.privacy["epsilon_spent"] <= 3.0


def test_a_distributed_plan_too_noisy_for_its_grid_is_refused_before_any_release(
        tmp_path: Path) -> None:
    progress.show("off")
    with pytest.raises(ValueError, match="too much noise for the step's integer grid"):
        simulate(parties=_parties(), epsilon=0.05, channel="secagg", holdout=0.0,
                 engine="local", evaluate=False, method="dpsgd", _shared={"work": str(tmp_path)},
                 options=JobOptions(rows=50, train={"noise": "distributed", "rounds": 2000}))
    for p in tmp_path.rglob("ledger.jsonl"):  # nothing released, the domain round included
        assert Ledger(p, 100.0, 1e-6).entries() == []
