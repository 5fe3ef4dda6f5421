"""The sweep engine against its oracle: every configuration equals its own sequential ``loops.train`` run.

Configurations are random (seeded): learning rates on a log scale that spans converging and diverging
runs, random momentum, betas, weight decay, ... for every batched optimizer and for manual and autograd,
in float32 and float64, with and without a validation split, with one and with three features.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from torch.testing import assert_close

from training.errors import ConfigError
from training.evaluation import evaluate
from training.loops import initial_params, train
from training.sweep import (
    BATCHED_OPTIMIZERS,
    Trial,
    check_trials,
    default_checkpoints,
    run_sweep,
    sweep,
    train_batch,
)

from .test_model import book_data

TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 0.0}, torch.float64: {"rtol": 1e-9, "atol": 0.0}}


# ----------------------------------------------------------------------------------------------------------
# data and random configurations


def book(dtype, scale=0.1, val=False):
    """The book's thermometer data (11 rows); with val, the last two rows are the validation split."""
    x, t = book_data(dtype)
    x = scale * x
    if val:
        return x[:9], t[:9], x[9:], t[9:]
    return x, t, None, None


def three_features(dtype, val=False):
    """24 random rows of a 3-feature linear problem (seeded); with val, the last 6 are validation rows."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(24, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [1.0, 2.0, 0.5], dtype=torch.float64
    )
    t = x @ torch.tensor([1.5, -0.7, 3.0], dtype=torch.float64) + 2.0 + 0.5 * torch.randn(24, generator=g)
    x, t = x.to(dtype), t.to(dtype)
    if val:
        return x[:18], t[:18], x[18:], t[18:]
    return x, t, None, None


SETTINGS = {
    "1 feature, float32, no validation": (torch.float32, lambda d: book(d)),
    "3 features, float32, validation": (torch.float32, lambda d: three_features(d, val=True)),
    "1 feature, float64, validation": (torch.float64, lambda d: book(d, val=True)),
    "3 features, float64, no validation": (torch.float64, lambda d: three_features(d)),
}


def _uniform(g, low, high):
    return low + (high - low) * torch.rand((), generator=g, dtype=torch.float64).item()


def _sometimes(g, value, p=0.5):
    """``value`` with probability p, else 0.0: batches mix rows with and without an option."""
    return value if torch.rand((), generator=g).item() < p else 0.0


def _lr(g, adaptive, dtype):
    """Log-uniform; for the adaptive optimizers a quarter of the rows get a rate large enough to overflow.

    An adaptive step moves each parameter by about lr whatever the gradient, so the loss reaches about lr^2
    after one step: past float32's 3.4e38 from lr 1e20, past float64's 1.8e308 from lr 1e155.
    """
    if adaptive and torch.rand((), generator=g).item() < 0.25:
        return 10 ** _uniform(g, 20, 24) if dtype == torch.float32 else 10 ** _uniform(g, 156, 160)
    return 10 ** _uniform(g, -3.5, 1.0 if adaptive else 0.5)


def _betas(g):
    return (_uniform(g, 0.0, 0.99), _uniform(g, 0.5, 0.9999))


# name: (variant, optimizer, adaptive lr range, fn(g) -> one row's options)
CASES = {
    "manual": ("manual", "SGD", False, lambda g: {}),
    "autograd": ("autograd", "SGD", False, lambda g: {}),
    "SGD": (
        "optimizer",
        "SGD",
        False,
        lambda g: {
            "momentum": _sometimes(g, _uniform(g, 0.0, 0.95), 0.7),
            "dampening": _sometimes(g, _uniform(g, 0.0, 0.5)),
            "weight_decay": _sometimes(g, _uniform(g, 0.0, 0.2)),
        },
    ),
    "SGD nesterov": (
        "optimizer",
        "SGD",
        False,
        lambda g: {
            "momentum": _uniform(g, 0.05, 0.95),
            "nesterov": True,
            "weight_decay": _uniform(g, 0, 0.1),
        },
    ),
    "SGD maximize": (
        "optimizer",
        "SGD",
        False,
        lambda g: {"maximize": True, "momentum": _uniform(g, 0, 0.9)},
    ),
    "Adam": (
        "optimizer",
        "Adam",
        True,
        lambda g: {
            "betas": _betas(g),
            "eps": 10 ** _uniform(g, -10, -2),
            "weight_decay": _sometimes(g, _uniform(g, 0, 0.2)),
        },
    ),
    "Adam amsgrad": (
        "optimizer",
        "Adam",
        True,
        lambda g: {"betas": _betas(g), "amsgrad": True, "weight_decay": _sometimes(g, _uniform(g, 0, 0.2))},
    ),
    "Adam decoupled_weight_decay": (
        "optimizer",
        "Adam",
        True,
        lambda g: {"betas": _betas(g), "decoupled_weight_decay": True, "weight_decay": _uniform(g, 0, 0.2)},
    ),
    "AdamW": (
        "optimizer",
        "AdamW",
        True,
        lambda g: {
            "betas": _betas(g),
            "eps": 10 ** _uniform(g, -10, -2),
            "weight_decay": _uniform(g, 0, 0.2),
        },
    ),
    "AdamW amsgrad maximize": (
        "optimizer",
        "AdamW",
        True,
        lambda g: {"betas": _betas(g), "amsgrad": True, "maximize": True},
    ),
    "RMSprop": (
        "optimizer",
        "RMSprop",
        True,
        lambda g: {
            "alpha": _uniform(g, 0.5, 0.999),
            "eps": 10 ** _uniform(g, -10, -2),
            "weight_decay": _sometimes(g, _uniform(g, 0, 0.2)),
            "momentum": _sometimes(g, _uniform(g, 0, 0.9)),
        },
    ),
    "RMSprop centered": (
        "optimizer",
        "RMSprop",
        True,
        lambda g: {
            "alpha": _uniform(g, 0.5, 0.999),
            "centered": True,
            "momentum": _sometimes(g, _uniform(g, 0, 0.9)),
        },
    ),
    "Adagrad": (
        "optimizer",
        "Adagrad",
        True,
        lambda g: {
            "lr_decay": _sometimes(g, _uniform(g, 0, 0.1)),
            "weight_decay": _sometimes(g, _uniform(g, 0, 0.2)),
            "initial_accumulator_value": _sometimes(g, _uniform(g, 0, 1)),
            "eps": 10 ** _uniform(g, -12, -3),
        },
    ),
}
BOOLEAN = ("nesterov", "maximize", "amsgrad", "decoupled_weight_decay", "centered")


def random_rows(case, n, dtype, seed):
    """n random configurations of one case: (lrs, per-row option dicts for loops.train)."""
    _, _, adaptive, options = CASES[case]
    g = torch.Generator().manual_seed(seed)
    lrs, rows = [], []
    for _ in range(n):
        lrs.append(_lr(g, adaptive, dtype))
        rows.append(options(g))
    return lrs, rows


def batch_options(rows):
    """Per-row option dicts as train_batch takes them: a (B,) tensor per float option, betas a pair."""
    if not rows or not rows[0]:
        return {}
    out = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        if name in BOOLEAN:
            out[name] = values[0]
        elif name == "betas":
            out[name] = tuple(torch.tensor([v[i] for v in values], dtype=torch.float64) for i in (0, 1))
        else:
            out[name] = torch.tensor(values, dtype=torch.float64)
    return out


# ----------------------------------------------------------------------------------------------------------
# the oracle comparison


def assert_row_matches(result, i, ref, dtype):
    """Row i of a BatchResult (with curves) equals the sequential TrainResult ``ref``."""
    tol = TOLERANCE[dtype]
    run = ref.epochs_run
    assert int(result.epochs_run[i]) == run, (i, int(result.epochs_run[i]), run)
    assert int(result.diverged_at[i]) == (0 if ref.converged else run), i
    assert_close(
        result.train_curve[i, :run], torch.tensor(ref.train_loss, dtype=dtype), equal_nan=True, **tol
    )
    assert torch.isnan(result.train_curve[i, run:]).all()
    assert_close(result.params[i], ref.params, equal_nan=True, **tol)
    assert_close(result.final_loss[i], torch.tensor(ref.train_loss[-1], dtype=dtype), equal_nan=True, **tol)
    if ref.val_loss:
        assert_close(
            result.val_curve[i, :run], torch.tensor(ref.val_loss, dtype=dtype), equal_nan=True, **tol
        )
        assert_close(
            result.final_val_loss[i], torch.tensor(ref.val_loss[-1], dtype=dtype), equal_nan=True, **tol
        )
    else:
        assert result.val_curve is None and torch.isnan(result.final_val_loss[i])


def _pairs():
    """Every case in every setting, except the adaptive optimizers in float32 with several features.

    With one feature a batch row equals its sequential run bit for bit here. With several, the batch's
    matrix product rounds differently from loops' matrix-vector product in the last bit (both are BLAS
    kernels; the vector kernel adds the products without fused multiply-adds), and Adam, RMSprop and
    Adagrad hopping around the optimum amplify that past float32's 1e-5 within tens of epochs (seen at
    lr 0.01 to 10). Those optimizers are checked with several features in float64.
    """
    for case, (_, _, adaptive, _) in CASES.items():
        for setting in SETTINGS:
            if not (adaptive and setting == "3 features, float32, validation"):
                yield case, setting


@pytest.mark.parametrize(("case", "setting"), list(_pairs()))
def test_every_configuration_equals_its_sequential_run(case, setting):
    dtype, data = SETTINGS[setting]
    x, y, x_val, y_val = data(dtype)
    variant, optimizer, _, _ = CASES[case]
    epochs = 50
    lrs, rows = random_rows(case, 6, dtype, zlib.crc32(f"{case}/{setting}".encode()))
    k = x.shape[1]
    init = torch.stack([initial_params(k, 1.0 + 0.1 * i, -0.5 * i) for i in range(len(lrs))])
    result = train_batch(
        variant,
        x,
        y,
        lr=torch.tensor(lrs, dtype=torch.float64),
        epochs=epochs,
        init=init,
        x_val=x_val,
        y_val=y_val,
        optimizer=optimizer,
        options=batch_options(rows),
    )
    assert result.batched and result.params.dtype == dtype
    for i, (lr, options) in enumerate(zip(lrs, rows, strict=True)):
        ref = train(
            variant,
            x,
            y,
            lr=lr,
            epochs=epochs,
            init=init[i],
            x_val=x_val,
            y_val=y_val,
            optimizer=optimizer,
            optimizer_options=options,
        )
        assert_row_matches(result, i, ref, dtype)


# ----------------------------------------------------------------------------------------------------------
# the book's numbers, each in a batch with other configurations


@pytest.mark.parametrize("variant", ["manual", "autograd", "optimizer"])
def test_books_raw_inputs_diverge_at_epoch_11_while_the_rest_of_the_batch_trains_on(variant):
    x, t, _, _ = book(torch.float32, scale=1.0)
    lrs = [1e-3, 1e-2, 1e-4, 3e-4, 1e-5]
    result = train_batch(variant, x, t, lr=lrs, epochs=100, init=initial_params(1))
    curve = result.train_curve[1]
    assert int(result.diverged_at[1]) == 11 and int(result.epochs_run[1]) == 11
    assert curve[0].item() == pytest.approx(1763.8846, abs=1e-3)
    assert curve[1].item() == pytest.approx(5802485.5, rel=1e-6)
    assert curve[10].item() == math.inf and torch.isnan(curve[11:]).all()
    assert result.final_loss[1].item() == math.inf
    # the book's 100-epoch run at lr 1e-4, two rows further on
    assert int(result.diverged_at[2]) == 0
    assert result.final_loss[2].item() == pytest.approx(29.022669, abs=1e-5)
    assert_close(result.params[2], torch.tensor([0.2327, -0.0438]), atol=1e-4, rtol=0)
    for i, lr in enumerate(lrs):
        assert_row_matches(
            result, i, train(variant, x, t, lr=lr, epochs=100, init=initial_params(1)), torch.float32
        )


@pytest.mark.parametrize("variant", ["manual", "autograd", "optimizer"])
def test_books_5000_epochs_on_scaled_inputs_in_a_batch(variant):
    x, t, _, _ = book(torch.float32)
    lrs = [5e-3, 1e-2, 0.1, 2e-2, 1e-3]  # 0.1 diverges on 0.1 * t_u
    result = train_batch(variant, x, t, lr=lrs, epochs=5000, init=initial_params(1), keep_curves=False)
    assert result.train_curve is None
    assert result.final_loss[1].item() == pytest.approx(2.927648, abs=1e-5)
    assert_close(result.params[1], torch.tensor([5.3671, -17.3012]), atol=1e-3, rtol=0)
    assert result.diverged_at.tolist()[2] > 0 and result.diverged_at.tolist()[:2] == [0, 0]
    assert result.checkpoint_epochs == (1, 10, 100, 1000, 5000)
    assert result.checkpoint_loss[1, -1] == result.final_loss[1]
    if variant == "manual":  # the oracle, 5000 epochs (the other variants' 5000-epoch runs are in test_loops)
        ref = train(variant, x, t, lr=1e-2, epochs=5000, init=initial_params(1))
        assert result.final_loss[1].item() == ref.train_loss[-1]
        assert torch.equal(result.params[1], ref.params)


# ----------------------------------------------------------------------------------------------------------
# divergence bookkeeping, the fallback, curves and checkpoints


def test_a_few_diverging_rows_are_masked_without_compaction_and_the_rest_are_unaffected():
    # 64 rows, 3 of which diverge at different epochs: fewer than a sixteenth, so they stay in the batch
    x, t, x_val, t_val = book(torch.float32, val=True)
    lrs = torch.full((64,), 1e-3)
    lrs[[5, 17, 40]] = torch.tensor([0.05, 0.1, 0.2])  # diverge at epochs 75, 29 and 19
    lrs[:5] = torch.tensor([1e-2, 2e-2, 5e-3, 3e-2, 2e-4])
    result = train_batch("manual", x, t, lr=lrs, epochs=80, init=initial_params(1), x_val=x_val, y_val=t_val)
    diverged = (result.diverged_at > 0).nonzero().squeeze(1).tolist()
    assert diverged == [5, 17, 40] and len(set(result.diverged_at[diverged].tolist())) == 3
    for i in [*range(6), 17, 18, 40, 63]:
        ref = train(
            "manual", x, t, lr=float(lrs[i]), epochs=80, init=initial_params(1), x_val=x_val, y_val=t_val
        )
        assert_row_matches(result, i, ref, torch.float32)


@pytest.mark.parametrize("val", [False, True])
def test_a_row_that_diverges_at_the_last_epoch_is_dropped_and_the_others_finish(val):
    # lr 1e-2 on raw t_u diverges at epoch 11: with 11 epochs the batch shrinks at its very end
    x, t, x_val, t_val = book(torch.float32, scale=1.0, val=val)
    lrs = [1e-4, 1e-2, 1e-5]
    result = train_batch("manual", x, t, lr=lrs, epochs=11, init=initial_params(1), x_val=x_val, y_val=t_val)
    assert result.diverged_at.tolist() == [0, 11, 0]
    for i, lr in enumerate(lrs):
        ref = train("manual", x, t, lr=lr, epochs=11, init=initial_params(1), x_val=x_val, y_val=t_val)
        assert_row_matches(result, i, ref, torch.float32)


@pytest.mark.parametrize(
    ("optimizer", "options"),
    [
        ("NAdam", {"momentum_decay": torch.tensor([4e-3, 1e-2, 4e-3])}),
        ("Adamax", {"betas": (0.8, 0.99)}),
        ("SGD", {"momentum": 0.9, "foreach": False}),  # an implementation option: one by one
    ],
)
def test_other_optimizers_run_one_by_one_through_loops_train(optimizer, options):
    x, t, x_val, t_val = book(torch.float64, val=True)
    lrs = [1e-2, 0.5, 1e-3]
    result = train_batch(
        "optimizer",
        x,
        t,
        lr=lrs,
        epochs=40,
        init=initial_params(1),
        x_val=x_val,
        y_val=t_val,
        optimizer=optimizer,
        options=options,
    )
    assert not result.batched
    for i, lr in enumerate(lrs):
        row = {k: (v[i].item() if isinstance(v, torch.Tensor) else v) for k, v in options.items()}
        ref = train(
            "optimizer",
            x,
            t,
            lr=lr,
            epochs=40,
            init=initial_params(1),
            x_val=x_val,
            y_val=t_val,
            optimizer=optimizer,
            optimizer_options=row,
        )
        assert_row_matches(result, i, ref, torch.float64)


def test_an_optimizer_loops_train_refuses_is_refused_with_the_same_error():
    x, t, _, _ = book(torch.float32)
    with pytest.raises(ConfigError) as ours:
        train_batch("optimizer", x, t, lr=[0.1, 0.2], epochs=5, init=initial_params(1), optimizer="Sgd")
    with pytest.raises(ConfigError) as theirs:
        train("optimizer", x, t, lr=0.1, epochs=5, init=initial_params(1), optimizer="Sgd")
    assert str(ours.value) == str(theirs.value)
    assert "unknown optimizer 'Sgd'" in str(ours.value)


def test_without_curves_the_finals_and_checkpoints_are_the_same():
    x, t, x_val, t_val = book(torch.float32, val=True)
    lrs, rows = random_rows("SGD", 12, torch.float32, seed=5)
    kwargs = dict(
        lr=torch.tensor(lrs, dtype=torch.float64),
        epochs=120,
        init=initial_params(1),
        x_val=x_val,
        y_val=t_val,
        optimizer="SGD",
        options=batch_options(rows),
        checkpoints=[1, 7, 50, 120],
    )
    full = train_batch("optimizer", x, t, keep_curves=True, **kwargs)
    lean = train_batch("optimizer", x, t, keep_curves=False, **kwargs)
    assert lean.train_curve is None and lean.val_curve is None
    assert 0 < int((full.diverged_at > 0).sum()) < 12
    for name in (
        "params",
        "final_loss",
        "final_val_loss",
        "diverged_at",
        "checkpoint_loss",
        "checkpoint_val_loss",
    ):
        assert_close(getattr(lean, name), getattr(full, name), rtol=0, atol=0, equal_nan=True, msg=name)
    epochs = torch.tensor(full.checkpoint_epochs) - 1
    assert_close(full.checkpoint_loss, full.train_curve[:, epochs], rtol=0, atol=0, equal_nan=True)
    assert_close(full.checkpoint_val_loss, full.val_curve[:, epochs], rtol=0, atol=0, equal_nan=True)
    stopped = full.diverged_at > 0
    after = epochs.unsqueeze(0) >= full.diverged_at.unsqueeze(1)  # checkpoint past the stop
    assert torch.isnan(full.checkpoint_loss[stopped.unsqueeze(1) & after]).all()
    assert default_checkpoints(5000) == (1, 10, 100, 1000, 5000) and default_checkpoints(1) == (1,)


# ----------------------------------------------------------------------------------------------------------
# trials: grouping, order, chunks, metrics


def mixed_trials():
    trials = [
        Trial("manual", 1e-2, 60),
        Trial("manual", 0.2, 60),  # diverges
        Trial("manual", 5e-3, 35, init_weight=0.5, init_bias=-2.0),
        Trial("autograd", 1e-2, 60),
        Trial("optimizer", 1e-2, 60, "SGD", {"momentum": 0.9}),
        Trial("optimizer", 3e-2, 60, "SGD", {"momentum": 0.5, "nesterov": True}),
        Trial("optimizer", 1e-2, 60, "SGD", {"weight_decay": 0.01, "dampening": 0.1, "momentum": 0.3}),
        Trial("optimizer", 0.5, 60, "Adam"),
        Trial("optimizer", 0.1, 60, "Adam", {"betas": [0.8, 0.99], "amsgrad": True}),
        Trial("optimizer", 0.1, 60, "AdamW", {"weight_decay": 0.1}),
        Trial("optimizer", 1e-2, 30, "NAdam"),
        Trial("optimizer", 1e-2, 60, "RMSprop", {"centered": True, "momentum": 0.5}),
        Trial("optimizer", 0.5, 60, "Adagrad", {"lr_decay": 0.01}),
        Trial("optimizer", 1e-2, 45, "SGD"),
        Trial("optimizer", 1e25, 60, "Adam"),  # overflows
        Trial("optimizer", 1e-3, 60, "SGD", {"momentum": 0.9}),
    ]
    order = torch.randperm(len(trials), generator=torch.Generator().manual_seed(0)).tolist()
    return [trials[i] for i in order]


def test_trials_of_every_kind_come_back_in_their_order_and_equal_their_sequential_runs():
    x, t, x_val, t_val = book(torch.float32, val=True)
    trials = mixed_trials()
    result = sweep(trials, x, t, x_val, t_val, keep_curves=True)
    assert result.trials == tuple(trials) and len(result) == len(trials)
    assert result.checkpoint_epochs == (1, 10, 30, 35, 45, 60)
    for i, trial in enumerate(trials):
        init = initial_params(1, trial.init_weight, trial.init_bias)
        ref = train(
            trial.variant,
            x,
            t,
            lr=trial.lr,
            epochs=trial.epochs,
            init=init,
            x_val=x_val,
            y_val=t_val,
            optimizer=trial.optimizer,
            optimizer_options=trial.options,
        )
        mine = result.train_result(i)
        assert mine.train_loss == ref.train_loss or (
            len(mine.train_loss) == len(ref.train_loss) and math.isnan(ref.train_loss[-1])
        ), trial
        assert mine.val_loss == ref.val_loss, trial
        assert_close(mine.params, ref.params, rtol=0, atol=0, equal_nan=True)
        assert (mine.stop_reason, mine.message) == (ref.stop_reason, ref.message)
        assert int(result.epochs_run[i]) == ref.epochs_run
        assert int(result.diverged_at[i]) == (0 if ref.converged else ref.epochs_run)
        assert result.final_loss[i].item() == ref.train_loss[-1] or math.isnan(ref.train_loss[-1])
        assert result.final_val_loss[i].item() == ref.val_loss[-1]
        if ref.converged:
            metrics = evaluate(ref.params, init, x, t, x_val, t_val, best_mse=0.0)
            assert result.train_mse[i].item() == pytest.approx(metrics.train["mse"], rel=1e-12)
            assert result.val_mse[i].item() == pytest.approx(metrics.val["mse"], rel=1e-12)
            assert result.objective[i].item() == result.val_mse[i].item()
        else:
            assert result.objective[i].item() == math.inf
    assert sum(int(d > 0) for d in result.diverged_at) == 2
    best = result.best(3)
    assert [float(result.objective[i]) for i in best] == sorted(result.objective.tolist())[:3]


def test_chunks_give_the_same_results_as_one_batch():
    x, t, _, _ = book(torch.float32)
    trials = mixed_trials()
    whole = sweep(trials, x, t)
    for chunk in (1, 3):
        chunked = sweep(trials, x, t, chunk_size=chunk)
        for name in (
            "params",
            "final_loss",
            "final_val_loss",
            "train_mse",
            "val_mse",
            "objective",
            "diverged_at",
            "epochs_run",
            "checkpoint_loss",
            "checkpoint_val_loss",
        ):
            assert_close(
                getattr(chunked, name), getattr(whole, name), rtol=0, atol=0, equal_nan=True, msg=name
            )
    # no validation split: the objective is the training MSE, NaN validation columns
    assert torch.isnan(whole.val_mse).all() and torch.isnan(whole.final_val_loss).all()
    converged = whole.diverged_at == 0
    assert torch.equal(whole.objective[converged], whole.train_mse[converged])
    assert whole.train_curves is None


def test_run_sweep_prepares_each_data_set_once_and_checks_every_trial_first():
    prepared = []

    def prepare(key):
        prepared.append(key)
        scale, val = key
        return book(torch.float64, scale=scale, val=val)

    trials = [Trial("manual", 1e-4, 30), Trial("optimizer", 1e-2, 30, "SGD", {"momentum": 0.9})]
    results = run_sweep({(1.0, False): trials, (0.1, True): trials[::-1]}, prepare)
    assert prepared == [(1.0, False), (0.1, True)] and list(results) == prepared
    assert results[(0.1, True)].trials == tuple(trials[::-1])
    x, t, _, _ = book(torch.float64, scale=1.0)
    ref = train("manual", x, t, lr=1e-4, epochs=30, init=initial_params(1))
    assert results[(1.0, False)].final_loss[0].item() == ref.train_loss[-1]

    prepared.clear()
    bad = {(1.0, False): trials, (0.1, True): [Trial("optimizer", 0.1, 5, "Adam", {"betas": (0.9, 1.5)})]}
    with pytest.raises(ConfigError, match=r"data \(0\.1, True\): trial 0: .*'betas'"):
        run_sweep(bad, prepare)
    assert prepared == []  # nothing prepared or trained before the check


def test_trials_are_hashable_values():
    a = Trial("optimizer", 0.1, 10, "Adam", {"betas": [0.9, 0.99], "amsgrad": True})
    b = Trial("optimizer", 0.1, 10, "Adam", {"amsgrad": True, "betas": (0.9, 0.99)})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a.options == {"amsgrad": True, "betas": (0.9, 0.99)}


def test_sweep_runs_on_the_device_auto_picks():
    x, t, _, _ = book(torch.float32)
    result = sweep([Trial("manual", 1e-2, 10)], x, t, device="auto")
    assert result.params.device.type == "cpu"
    assert (
        result.final_loss[0].item()
        == train("manual", x, t, lr=1e-2, epochs=10, init=initial_params(1)).train_loss[-1]
    )


# ----------------------------------------------------------------------------------------------------------
# bad settings


@pytest.mark.parametrize(
    ("optimizer", "options", "match"),
    [
        ("SGD", {"momentun": 0.9}, r"torch.optim.SGD has no option 'momentun'"),
        ("Adam", {"lr": 0.1}, r"as lr"),
        (
            "SGD",
            {"momentum": torch.tensor([0.9, -0.1])},
            r"SGD option 'momentum' must be >= 0.*configuration 1",
        ),
        ("SGD", {"momentum": 0.9, "dampening": 0.1, "nesterov": True}, r"'nesterov' requires"),
        ("Adam", {"betas": (0.9, 1.0)}, r"Adam option 'betas' must be in \[0.0, 1.0\), got 1.0"),
        ("AdamW", {"eps": -1e-8}, r"AdamW option 'eps' must be >= 0"),
        ("RMSprop", {"alpha": -0.5}, r"RMSprop option 'alpha'"),
        ("Adagrad", {"lr_decay": float("nan")}, r"Adagrad option 'lr_decay'"),
        ("Adam", {"amsgrad": torch.tensor([True, False])}, r"'amsgrad' must be one value per batch"),
        ("Adam", {"weight_decay": torch.tensor([0.1, 0.2, 0.3])}, r"'weight_decay' has shape \(3,\)"),
        ("NAdam", {"momentun_decay": 0.1}, r"torch.optim.NAdam has no option 'momentun_decay'"),
    ],
)
def test_bad_options_are_refused_naming_the_option(optimizer, options, match):
    x, t, _, _ = book(torch.float32)
    with pytest.raises(ConfigError, match=match):
        train_batch(
            "optimizer",
            x,
            t,
            lr=[0.1, 0.2],
            epochs=5,
            init=initial_params(1),
            optimizer=optimizer,
            options=options,
        )


def test_bad_batch_settings_are_refused():
    x, t, _, _ = book(torch.float32)
    init = initial_params(1)
    with pytest.raises(ConfigError, match=r"lr must be > 0, got 0.0 \(configuration 1\)"):
        train_batch("manual", x, t, lr=[0.1, 0.0], epochs=5, init=init)
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        train_batch("manual", x, t, lr=[0.1], epochs=0, init=init)
    with pytest.raises(ConfigError, match="unknown variant 'newton'"):
        train_batch("newton", x, t, lr=[0.1], epochs=1, init=init)
    with pytest.raises(ConfigError, match=r"init has shape \(3,\)"):
        train_batch("manual", x, t, lr=[0.1], epochs=1, init=torch.zeros(3))
    with pytest.raises(ConfigError, match="share one floating dtype"):
        train_batch("manual", x, t.double(), lr=[0.1], epochs=1, init=init)
    with pytest.raises(ConfigError, match="checkpoints"):
        train_batch("manual", x, t, lr=[0.1], epochs=5, init=init, checkpoints=[6])


def test_bad_trials_are_refused_naming_the_trial():
    x, t, _, _ = book(torch.float32)
    ok = Trial("manual", 1e-2, 5)
    cases = [
        (Trial("optimizer", 0.1, 5, "SGD", {"momentun": 0.9}), r"trial 1: .*'momentun'"),
        (Trial("optimizer", 0.1, 5, "Sgd"), r"trial 1: unknown optimizer 'Sgd'"),
        (
            Trial("optimizer", 0.1, 5, "NAdam", {"momentum_decay": -1.0}),
            r"trial 1: torch.optim.NAdam rejects",
        ),
        (Trial("manual", -0.1, 5), r"trial 1: lr must be > 0"),
        (Trial("manual", 0.1, 0), r"trial 1: epochs must be"),
        (
            Trial("optimizer", 0.1, 5, "SGD", {"momentum": -0.5}),
            r"trial 1: SGD option 'momentum' must be >= 0",
        ),
    ]
    for trial, match in cases:
        with pytest.raises(ConfigError, match=match):
            check_trials([ok, trial])
        with pytest.raises(ConfigError, match=match):
            sweep([ok, trial], x, t)
    with pytest.raises(ConfigError, match="trial 1: init has 2 weights for 1 features"):
        sweep([ok, Trial("manual", 0.1, 5, init_weight=(1.0, 2.0))], x, t)
    with pytest.raises(ConfigError, match="chunk_size"):
        sweep([ok], x, t, chunk_size=0)


def test_the_batched_optimizers_are_the_ones_written_here():
    assert set(BATCHED_OPTIMIZERS) == {"SGD", "Adam", "AdamW", "RMSprop", "Adagrad"}
