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


def _eps(plan: dpsgd.TrainPlan, sigma: float) -> float:
    acc = Accountant()
    acc.add(step="train", count=plan.steps, variance=sigma**2, mechanism="subsampled_gaussian",
            sampling_rate=plan.sampling_rate)
    return acc.epsilon(plan.delta)


@pytest.mark.parametrize(("eps", "q", "rounds"), [(1.0, 0.05, 10), (10.0, 0.02, 5),
                                                  (3.0, 0.1, 3)])
def test_the_noise_multiplier_spends_the_job_epsilon_as_opacus_prices_it(
        eps: float, q: float, rounds: int) -> None:
    plan = dpsgd.TrainPlan(epsilon=eps, delta=1e-6, sampling_rate=q, rounds=rounds)
    sigma = plan.noise_multiplier()
    assert _eps(plan, sigma) <= eps
    assert _eps(plan, sigma / 1.01) > eps  # the smallest such noise, to 1%
    opacus = RDPAccountant()
    opacus.history = [(sigma, q, plan.steps)]
    # Opacus composes the same steps on its own order grid: within 3% of ours
    assert opacus.get_epsilon(plan.delta) == pytest.approx(eps, rel=0.03)


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
    plan = dpsgd.TrainPlan(epsilon=3.0, delta=1e-6, model=kind, hidden=16, latent=4, rounds=2,
                           local_epochs=1.0, sampling_rate=0.2)
    rng = np.random.default_rng(2)
    codes = np.stack([rng.integers(0, k, 200) for k in SIZES], axis=1)
    start = dpsgd.get_vector(dpsgd.build(plan, SIZES))
    a = dpsgd.train_local(plan, SIZES, start, codes, seed=7)
    b = dpsgd.train_local(plan, SIZES, start, codes, seed=7)
    assert a.shape == start.shape and np.all(np.isfinite(a)) and np.abs(a).max() > 0
    assert np.array_equal(a, b)  # a test seed reproduces; the default draws from OS entropy
    model = dpsgd.build(plan, SIZES)
    dpsgd.set_vector(model, start + a)
    drawn = model.sample(500, dpsgd.sampling_generator(0))
    assert drawn.shape == (500, len(SIZES))
    assert all(drawn[:, j].max() < k for j, k in enumerate(SIZES))


def test_a_plan_outside_its_ranges_is_refused_and_round_trips_as_json() -> None:
    plan = dpsgd.TrainPlan(epsilon=1.0, delta=1e-6)
    assert dpsgd.TrainPlan.from_json(plan.to_json()) == plan
    with pytest.raises(ValueError, match="sampling_rate"):
        dpsgd.TrainPlan(epsilon=1.0, delta=1e-6, sampling_rate=1.5)
    with pytest.raises(ValueError, match="does not parse"):
        dpsgd.TrainPlan.from_json('{"epsilon": 1, "delta": 1e-6, "surprise": 1}')
    with pytest.raises(ValueError, match="finite float64"):
        dpsgd.vector_from_bytes(dpsgd.vector_bytes(np.array([1.0, np.nan])), 2)


def test_parameters_crafted_to_overflow_on_one_value_give_a_finite_update() -> None:
    """A coordinator that weights one input value at the bound cannot make the rows holding it
    fail training (an error would be an uncharged answer about them): their gradients count
    as zero and the update stays finite; beyond the bound, parameters are refused."""
    plan = dpsgd.TrainPlan(epsilon=3.0, delta=1e-6, hidden=16, rounds=2, local_epochs=1.0,
                           sampling_rate=0.2)
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
    kw = {"epsilon": 1.0, "delta": 1e-6, field: value}
    if field == "local_epochs":
        kw["sampling_rate"] = 1e-4  # 10^6 steps a round
    with pytest.raises(ValueError, match=needle):
        dpsgd.TrainPlan(**kw)  # type: ignore[arg-type]
