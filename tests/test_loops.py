"""The three training variants: the book's numbers, agreement with each other, determinism, divergence."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from training.errors import ConfigError
from training.loops import initial_params, make_optimizer, optimizer_classes, train
from training.model import least_squares

from .test_model import book_data

VARIANTS = ["manual", "autograd", "optimizer"]


def book(dtype=torch.float32):
    x, t = book_data(dtype)
    return x, t


@pytest.mark.parametrize("variant", VARIANTS)
def test_5000_epochs_on_scaled_inputs_reach_the_books_loss_and_params(variant):
    x, t = book()
    r = train(variant, 0.1 * x, t, lr=1e-2, epochs=5000, init=initial_params(1))
    assert r.converged and r.epochs_run == 5000
    assert r.train_loss[-1] == pytest.approx(2.927648, abs=1e-5)
    w, b = r.params.tolist()
    assert w == pytest.approx(5.3671, abs=1e-3)
    assert b == pytest.approx(-17.3012, abs=1e-3)


def test_adam_on_raw_inputs_matches_the_books_curve():
    x, t = book()
    r = train("optimizer", x, t, lr=1e-1, epochs=2000, init=initial_params(1), optimizer="Adam")
    for epoch, loss in [(500, 7.612903), (1000, 3.086700), (1500, 2.928578), (2000, 2.927646)]:
        assert r.train_loss[epoch - 1] == pytest.approx(loss, abs=1e-5), epoch
    w, b = r.params.tolist()
    assert w == pytest.approx(0.5367, abs=1e-3)
    assert b == pytest.approx(-17.3021, abs=1e-3)


@pytest.mark.parametrize(
    ("scale", "lr", "loss", "params"),
    [(1.0, 1e-4, 29.022669, (0.2327, -0.0438)), (0.1, 1e-2, 22.148710, (2.7553, -2.5162))],
)
def test_100_epoch_runs_match_the_book(scale, lr, loss, params):
    x, t = book()
    r = train("manual", scale * x, t, lr=lr, epochs=100, init=initial_params(1))
    assert r.train_loss[-1] == pytest.approx(loss, abs=1e-5)
    assert_close(r.params, torch.tensor(params), atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_raw_inputs_with_lr_1e2_diverge_at_epoch_11(variant):
    x, t = book()
    r = train(variant, x, t, lr=1e-2, epochs=100, init=initial_params(1))
    assert not r.converged and r.stop_reason == "diverged"
    assert r.epochs_run == 11 and r.train_loss[-1] == float("inf")
    assert r.train_loss[0] == pytest.approx(1763.8846, abs=1e-3)
    assert r.train_loss[1] == pytest.approx(5802485.5, rel=1e-6)
    assert "epoch 11" in r.message and "normalise" in r.message and "learning rate" in r.message


def test_variants_agree_step_by_step_in_float64():
    x, t = book(torch.float64)
    x = 0.1 * x
    runs = {v: train(v, x, t, lr=1e-2, epochs=300, init=initial_params(1).double()) for v in VARIANTS}
    for v in ("autograd", "optimizer"):
        assert_close(
            torch.tensor(runs[v].train_loss), torch.tensor(runs["manual"].train_loss), rtol=1e-12, atol=0
        )
        assert_close(runs[v].params, runs["manual"].params, rtol=1e-12, atol=0)


def test_several_features_converge_to_least_squares():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(200, 10, generator=g)
    true_w = torch.randn(10, generator=g)
    t = x @ true_w + 3.0 + 0.01 * torch.randn(200, generator=g)
    for v in VARIANTS:
        r = train(v, x, t, lr=0.1, epochs=500, init=initial_params(10))
        assert_close(r.params.double(), least_squares(x, t), atol=1e-4, rtol=0)


def test_same_inputs_same_result_and_init_untouched():
    x, t = book()
    init = initial_params(1)
    a, b = (
        train("optimizer", 0.1 * x, t, lr=1e-2, epochs=200, init=init, optimizer_options={"momentum": 0.9})
        for _ in range(2)
    )
    assert a.train_loss == b.train_loss
    assert torch.equal(a.params, b.params)
    assert torch.equal(init, torch.tensor([1.0, 0.0])) and not init.requires_grad


def test_validation_loss_is_computed_before_each_update_and_callback_sees_every_epoch():
    x, t = book()
    seen = []
    r = train(
        "manual",
        0.1 * x[:9],
        t[:9],
        lr=1e-2,
        epochs=50,
        init=initial_params(1),
        x_val=0.1 * x[9:],
        y_val=t[9:],
        on_epoch=lambda e, loss, val: seen.append((e, loss, val)),
    )
    assert [e for e, _, _ in seen] == list(range(1, 51))
    assert len(r.val_loss) == len(r.train_loss) == 50
    # epoch 1 is evaluated at the initial params w=1, b=0
    expected = ((0.1 * x[9:, 0] - t[9:]) ** 2).mean().item()
    assert r.val_loss[0] == pytest.approx(expected, rel=1e-6)
    assert seen[0][2] == r.val_loss[0]


def test_optimizer_names_and_options_are_checked():
    assert {"SGD", "Adam", "AdamW", "RMSprop"} <= set(optimizer_classes())
    p = [torch.zeros(1, requires_grad=True)]
    with pytest.raises(ConfigError, match="unknown optimizer 'Sgd'.*SGD"):
        make_optimizer("Sgd", p, 0.1)
    with pytest.raises(ConfigError, match="rejects optimizer_options.*momentun"):
        make_optimizer("SGD", p, 0.1, {"momentun": 0.9})
    with pytest.raises(ConfigError, match="as lr"):
        make_optimizer("SGD", p, 0.1, {"lr": 0.9})


def test_bad_loop_settings_are_refused():
    # the bounds of lr and epochs live in the settings model (tests/test_tasks.py checks them)
    x, t = book()
    with pytest.raises(ConfigError, match="unknown variant"):
        train("newton", x, t, lr=1e-2, epochs=1, init=initial_params(1))
    with pytest.raises(ConfigError, match="2 weights for 1 features"):
        initial_params(1, [1.0, 2.0])
