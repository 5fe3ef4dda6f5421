"""The model's maths against autograd (the oracle) and against the book's closed-form optimum."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from training.model import (
    autograd_grad,
    gradient_gap,
    least_squares,
    mse,
    mse_grad,
    predict,
    regression_metrics,
)

T_U = [35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4]
T_C = [0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0]


def book_data(dtype=torch.float64):
    return torch.tensor(T_U, dtype=dtype).unsqueeze(1), torch.tensor(T_C, dtype=dtype)


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hand_written_gradient_matches_autograd_in_float64(k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(50, k, generator=g, dtype=torch.float64) * 10
    t = torch.randn(50, generator=g, dtype=torch.float64)
    params = torch.randn(k + 1, generator=g, dtype=torch.float64)
    manual = mse_grad(x, t, predict(x, params))
    assert_close(manual, autograd_grad(x, t, params), rtol=1e-12, atol=1e-12)
    assert gradient_gap(x, t, params) < 1e-12


@pytest.mark.parametrize(
    "wrong",
    [
        lambda x, t, t_p: mse_grad(x, t, t_p) * 0.5,  # a forgotten factor 2
        lambda x, t, t_p: -mse_grad(x, t, t_p),  # (t - t_p) instead of (t_p - t)
        lambda x, t, t_p: mse_grad(x, t, t_p) * torch.tensor([1.0, 0.0], dtype=x.dtype),  # no dL/db
    ],
    ids=["half", "sign", "no-bias"],
)
def test_gradient_gap_detects_a_wrong_derivation(wrong):
    x, t = book_data()
    params = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert gradient_gap(x, t, params) < 1e-12  # the same check passes the right derivation
    assert gradient_gap(x, t, params, grad=wrong) > 0.01


def test_initial_gradient_and_loss_are_the_books():
    x, t = book_data(torch.float32)
    params = torch.tensor([1.0, 0.0])
    t_p = predict(x, params)
    assert mse(t_p, t).item() == pytest.approx(1763.8846, abs=1e-3)
    assert_close(mse_grad(x, t, t_p), torch.tensor([4517.2969, 82.6000]), rtol=1e-6, atol=1e-3)


def test_least_squares_is_the_exact_optimum():
    x, t = book_data()
    w, b = least_squares(x, t).tolist()
    assert w == pytest.approx(152075 / 283314, rel=1e-12)
    assert b == pytest.approx(-2451344 / 141657, rel=1e-12)
    assert mse(predict(x, least_squares(x, t)), t).item() == pytest.approx(2.9276455709, rel=1e-9)


def test_regression_metrics_by_hand():
    t = torch.tensor([1.0, 2.0, 3.0, 4.0])
    t_p = torch.tensor([1.0, 2.0, 4.0, 2.0])  # errors 0, 0, 1, -2
    m = regression_metrics(t, t_p)
    assert m["mse"] == pytest.approx(5 / 4)
    assert m["rmse"] == pytest.approx(math.sqrt(5 / 4))
    assert m["mae"] == pytest.approx(3 / 4)
    assert m["r2"] == pytest.approx(1 - 5 / 5)  # total sum of squares is 5


def test_exact_optimum_r2_is_the_books():
    x, t = book_data()
    m = regression_metrics(t, predict(x, least_squares(x, t)))
    assert m["r2"] == pytest.approx(0.96204584, abs=1e-8)
    assert m["rmse"] == pytest.approx(1.711036, abs=1e-6)
