"""The DP-SGD generators: the plan's noise is calibrated to the job's ε as Opacus's own
accountant prices it, the autoregressive masks hold, per-row gradients of masked layers are
exact, and a round of local training returns a finite update of the model's shape."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from opacus.accountants import RDPAccountant  # noqa: E402

from fedsynth.crypto.accountant import Accountant  # noqa: E402
from fedsynth.synthesis import dpsgd  # noqa: E402

SIZES = [3, 5, 2, 4]


def _eps(plan: dpsgd.TrainPlan, sigma: float, columns: int = 0) -> float:
    acc = Accountant()
    if plan.domain_share:  # the domain round, as every ledger charges it
        acc.add(step=dpsgd.DOMAIN_STEP, count=columns, variance=plan.domain_variance(columns))
    acc.add(step="train", count=plan.steps, variance=sigma**2, mechanism="subsampled_gaussian",
            sampling_rate=plan.sampling_rate)
    return acc.epsilon(plan.delta)


@pytest.mark.parametrize(("eps", "q", "rounds"), [(1.0, 0.05, 10), (10.0, 0.02, 5),
                                                  (3.0, 0.1, 3)])
def test_the_noise_multiplier_spends_the_job_epsilon_as_opacus_prices_it(
        eps: float, q: float, rounds: int) -> None:
    plan = dpsgd.TrainPlan(epsilon=eps, delta=1e-6, noise="local", sampling_rate=q,
                           rounds=rounds, domain_share=0.0)
    sigma = plan.noise_multiplier(len(SIZES))
    assert _eps(plan, sigma) <= eps
    assert _eps(plan, sigma / 1.01) > eps  # the smallest such noise, to 1%
    opacus = RDPAccountant()
    opacus.history = [(sigma, q, plan.steps)]
    # Opacus composes the same steps on its own order grid: within 3% of ours
    assert opacus.get_epsilon(plan.delta) == pytest.approx(eps, rel=0.03)


@pytest.mark.parametrize(("eps", "share", "columns"), [(1.0, 0.1, 7), (10.0, 0.3, 20),
                                                       (3.0, 0.05, 2)])
def test_the_domain_round_and_the_training_steps_together_spend_the_job_epsilon(
        eps: float, share: float, columns: int) -> None:
    plan = dpsgd.TrainPlan(epsilon=eps, delta=1e-6, noise="local", rounds=4,
                           domain_share=share)
    sigma = plan.noise_multiplier(columns)
    assert _eps(plan, sigma, columns) <= eps
    assert _eps(plan, sigma / 1.01, columns) > eps  # the smallest such noise, to 1%
    # the domain round alone takes about its share of ρ: more noise than without it, less ε
    alone = Accountant()
    alone.add(step=dpsgd.DOMAIN_STEP, count=columns, variance=plan.domain_variance(columns))
    assert 0 < alone.epsilon(plan.delta) < eps
    assert sigma > dpsgd.TrainPlan(epsilon=eps, delta=1e-6, noise="local", rounds=4,
                                   domain_share=0.0).noise_multiplier(columns)


def test_matching_marginals_moves_the_generator_to_the_counts_and_keeps_its_dependence(
        ) -> None:
    torch.manual_seed(0)
    sizes = [3, 4]
    model = dpsgd.Made(sizes, hidden=16)
    with torch.no_grad():  # a strong dependence of column 1 on column 0
        model.l3.weight.mul_(0).add_(torch.randn_like(model.l3.weight) * 3)
    gen = dpsgd.sampling_generator(1)
    before = model.sample(50_000, gen)
    cond_before = [np.bincount(before[before[:, 0] == v, 1], minlength=4) / max(
        1, (before[:, 0] == v).sum()) for v in range(3)]
    target = [np.array([0.6, 0.3, 0.1]), np.array([0.1, 0.2, 0.3, 0.4])]
    model.match_marginals([np.log(t) for t in target], gen)
    after = model.sample(50_000, gen)
    for j, t in enumerate(target):
        got = np.bincount(after[:, j], minlength=len(t)) / len(after)
        assert 0.5 * np.abs(got - t).sum() < 0.01, (j, got, t)
    # column 0's values keep distinct conditionals of column 1 (the dependence survives)
    cond_after = [np.bincount(after[after[:, 0] == v, 1], minlength=4) / (after[:, 0] == v).sum()
                  for v in range(3)]
    spread = lambda c: max(0.5 * np.abs(a - b).sum() for a in c for b in c)  # noqa: E731
    assert spread(cond_after) > 0.5 * spread(cond_before) > 0.05


def test_sampling_rounds_the_first_column_to_its_probabilities() -> None:
    model = dpsgd.Made([5, 3], hidden=8)
    probs = np.array([0.05, 0.15, 0.2, 0.25, 0.35])
    model.start_from([np.log(probs), np.log(np.ones(3) / 3)])
    for seed in range(5):
        codes = model.sample(1000, dpsgd.sampling_generator(seed))
        counts = np.bincount(codes[:, 0], minlength=5)
        # independent draws would miss by about sqrt(1000 p (1 - p)), up to 15 rows
        assert np.abs(counts - 1000 * probs).max() <= 1, counts


def test_each_column_depends_only_on_the_columns_before_it() -> None:
    model = dpsgd.Made(SIZES, hidden=32)
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, k, 16) for k in SIZES], axis=1)
    x = dpsgd.one_hot(codes, SIZES)
    base = model.logits(x)
    starts = np.concatenate([[0], np.cumsum(SIZES)])
    for j in range(len(SIZES)):  # change column j: logits of columns 0..j stay the same
        other = codes.copy()
        other[:, j] = (other[:, j] + 1) % SIZES[j]
        moved = model.logits(dpsgd.one_hot(other, SIZES))
        same = slice(0, int(starts[j + 1]))
        assert torch.allclose(moved[:, same], base[:, same])
        if j < len(SIZES) - 1:
            assert not torch.allclose(moved[:, int(starts[j + 1]):], base[:, int(starts[j + 1]):])


def test_per_row_gradients_of_masked_layers_are_the_rows_own() -> None:
    from opacus.grad_sample import GradSampleModule

    model = dpsgd.Made(SIZES, hidden=16)
    gsm = GradSampleModule(model)
    rng = np.random.default_rng(1)
    codes = np.stack([rng.integers(0, k, 4) for k in SIZES], axis=1)
    x, c = dpsgd.one_hot(codes, SIZES), torch.from_numpy(codes)
    dpsgd.model_loss(gsm, x, c).backward()
    per_row = [p.grad_sample.clone() for p in model.parameters()]  # type: ignore[attr-defined]
    assert per_row[0][:, ~model.l1.mask.bool()].abs().max() == 0  # masked weights: no gradient
    gsm.disable_hooks()
    for i in range(4):
        model.zero_grad()
        model.row_loss(x[i:i + 1], c[i:i + 1]).sum().backward()
        for p, gs in zip(model.parameters(), per_row, strict=True):
            assert p.grad is not None
            assert torch.allclose(gs[i], p.grad, atol=1e-5)


@pytest.mark.parametrize("kind", dpsgd.MODELS)
def test_a_round_of_local_training_returns_a_finite_update(kind: str) -> None:
    plan = dpsgd.TrainPlan(epsilon=10.0, delta=1e-6, model=kind, hidden=16, latent=4,
                           noise="local", rounds=2, local_epochs=1.0, sampling_rate=0.2)
    rng = np.random.default_rng(2)
    codes = np.stack([rng.integers(0, k, 200) for k in SIZES], axis=1)
    start = dpsgd.get_vector(dpsgd.build(plan, SIZES))
    a = dpsgd.train_local(plan, SIZES, start, codes, seed=7)
    b = dpsgd.train_local(plan, SIZES, start, codes, seed=7)
    assert a.shape == start.shape and np.all(np.isfinite(a)) and np.abs(a).max() > 0
    assert np.array_equal(a, b)  # a test seed reproduces; the default draws from OS entropy
    # the output biases (set from the domain round's counts) are not trained
    model0 = dpsgd.build(plan, SIZES)
    assert plan.frozen_output_bias and not model0.output_bias().requires_grad
    numel = [q.numel() for q in model0.parameters()]
    k = next(j for j, q in enumerate(model0.parameters()) if q is model0.output_bias())
    assert np.abs(a[sum(numel[:k]):sum(numel[:k + 1])]).max() == 0
    model = dpsgd.build(plan, SIZES)
    dpsgd.set_vector(model, start + a)
    drawn = model.sample(500, dpsgd.sampling_generator(0))
    assert drawn.shape == (500, len(SIZES))
    assert all(drawn[:, j].max() < k for j, k in enumerate(SIZES))


def test_a_plan_outside_its_ranges_is_refused_and_round_trips_as_json() -> None:
    plan = dpsgd.TrainPlan(epsilon=1.0, delta=1e-6)
    assert dpsgd.TrainPlan.from_json(plan.to_json()) == plan
    with pytest.raises(ValueError, match="sampling_rate"):
        dpsgd.TrainPlan(epsilon=1.0, delta=1e-6, noise="local", sampling_rate=1.5)
    with pytest.raises(ValueError, match="does not parse"):
        dpsgd.TrainPlan.from_json('{"epsilon": 1, "delta": 1e-6, "surprise": 1}')
    with pytest.raises(ValueError, match="finite float64"):
        dpsgd.vector_from_bytes(dpsgd.vector_bytes(np.array([1.0, np.nan])), 2)


def test_parameters_crafted_to_overflow_on_one_value_give_a_finite_update() -> None:
    """A coordinator that weights one input value at the bound cannot make the rows holding it
    fail training (an error would be an uncharged answer about them): their gradients count
    as zero and the update stays finite; beyond the bound, parameters are refused."""
    plan = dpsgd.TrainPlan(epsilon=3.0, delta=1e-6, hidden=16, noise="local", rounds=2,
                           local_epochs=1.0, sampling_rate=0.2)
    rng = np.random.default_rng(3)
    codes = np.stack([rng.integers(0, k, 200) for k in SIZES], axis=1)
    model = dpsgd.build(plan, SIZES)
    with torch.no_grad():
        model.l1.weight[:, 1] = dpsgd.PARAMETER_BOUND  # column 0 = value 1
        model.l2.weight.fill_(dpsgd.PARAMETER_BOUND)
        model.l3.weight.fill_(dpsgd.PARAMETER_BOUND)
    start = dpsgd.get_vector(model)
    update = dpsgd.train_local(plan, SIZES, start, codes, seed=1)
    assert np.all(np.isfinite(update))
    # a distributed step's gradient sum likewise: those rows count as zero
    step = dpsgd.TrainPlan(epsilon=3.0, delta=1e-6, hidden=16, noise="distributed")
    total = dpsgd.clipped_gradient_sum(step, SIZES, start, codes, seed=1)
    assert np.all(np.isfinite(total)) and np.linalg.norm(total) <= step.clip * len(codes)
    with pytest.raises(ValueError, match="within"):
        dpsgd.vector_from_bytes(dpsgd.vector_bytes(start * 10), len(start))


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("rounds", 1.5, "rounds must be a whole number"),
    ("rounds", True, "rounds must be a whole number"),
    ("sampling_rate", 1e-12, "sampling_rate must be a number"),
    ("clip", 5e-45, "clip must be a number"),
    ("lr", float("inf"), "lr must be a number"),
    ("local_epochs", 100.0, "local steps per round"),
])
def test_plans_that_would_break_the_accounting_are_refused(field: str, value: object,
                                                           needle: str) -> None:
    kw = {"epsilon": 1.0, "delta": 1e-6, "noise": "local", field: value}
    if field == "local_epochs":
        kw["sampling_rate"] = 1e-4  # 10^6 steps a round
    with pytest.raises(ValueError, match=needle):
        dpsgd.TrainPlan(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", dpsgd.LOCAL_ONLY)
def test_a_distributed_plan_refuses_the_fields_only_local_noise_reads(field: str) -> None:
    """The default noise is distributed (full-batch steps): a local-only field a user sets
    there would be ignored silently, so the plan names it and the fix. A plan read back from a
    saved model (all fields written out) is not refused."""
    with pytest.raises(ValueError, match=f"{field} applies to noise \"local\" only.*noise=local"):
        dpsgd.TrainPlan.from_options(1.0, 1e-6, {field: 0.5})
    plan = dpsgd.TrainPlan.from_options(1.0, 1e-6, {field: 0.5, "noise": "local"})
    assert getattr(plan, field) == 0.5 and plan.distributed is False
    assert dpsgd.TrainPlan.from_options(1.0, 1e-6, {}).distributed  # the default
    saved = dpsgd.TrainPlan(epsilon=1.0, delta=1e-6, **{field: 0.5})  # type: ignore[arg-type]
    assert dpsgd.TrainPlan.from_json(saved.to_json()) == saved


def test_output_biases_are_frozen_from_epsilon_5_unless_the_plan_says_otherwise() -> None:
    def frozen(**kw: object) -> bool:
        return dpsgd.TrainPlan(delta=1e-6, **kw).frozen_output_bias  # type: ignore[arg-type]

    assert frozen(epsilon=10.0) and frozen(epsilon=dpsgd.FROZEN_BIAS_EPSILON)
    assert not frozen(epsilon=3.0) and not frozen(epsilon=1.0)
    assert frozen(epsilon=1.0, output_bias="frozen")
    assert not frozen(epsilon=10.0, output_bias="trained")
    assert not frozen(epsilon=10.0, domain_share=0.0, output_bias="frozen")  # nothing sets them
    with pytest.raises(ValueError, match="output_bias 'off' is not one of"):
        dpsgd.TrainPlan(epsilon=10.0, delta=1e-6, output_bias="off")
