"""The linear model ``t_p = x @ w + b``, its loss, the hand-derived gradient, and evaluation maths.

Parameters live in one tensor ``params = [w_1, ..., w_k, b]`` of shape ``(k + 1,)``, as the book's
``params = [w, b]`` generalised to ``k`` features.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def design_matrix(x: torch.Tensor) -> torch.Tensor:
    """``[x, 1]``, shape (n, k + 1): with it the model is one product, ``design_matrix(x) @ params``."""
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)


def predict(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Linear model: ``x`` (n, k), ``params`` (k + 1,) = ``[w..., b]`` -> predictions (n,): ``x @ w + b``."""
    return predict_design(design_matrix(x), params)


def predict_design(design: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """``predict`` for a precomputed ``design_matrix``: one matrix-vector product, one autograd node.

    The training loops build the design matrix once; each epoch is then a single product, with no slicing
    of ``params`` into ``w`` and ``b`` (views that autograd would have to track every epoch).
    """
    return design @ params


def mse(t_p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean squared error of predictions ``t_p`` (n,) against targets ``t`` (n,); a 0-d tensor."""
    return ((t_p - t) ** 2).mean()


def mse_grad(x: torch.Tensor, t: torch.Tensor, t_p: torch.Tensor) -> torch.Tensor:
    """Hand-derived gradient of ``mse(predict(x, params), t)`` with respect to ``params``; shape (k + 1,).

    With ``L = 1/n * sum((t_p - t)^2)`` and ``t_p = x @ w + b``:
    ``dL/dw = 2/n * x^T (t_p - t)`` and ``dL/db = 2/n * sum(t_p - t)``
    (the book's ``grad_fn``, generalised to k features).
    """
    return mse_grad_design(design_matrix(x), t, t_p)


def mse_grad_design(design: torch.Tensor, t: torch.Tensor, t_p: torch.Tensor) -> torch.Tensor:
    """``mse_grad`` for a precomputed ``design_matrix``: both parts at once, ``2/n * [x, 1]^T (t_p - t)``."""
    return design.T @ (2 * (t_p - t) / t_p.size(0))


def autograd_grad(x: torch.Tensor, t: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The same gradient as ``mse_grad``, computed by ``loss.backward()``; shape (k + 1,)."""
    p = params.detach().clone().requires_grad_(True)
    mse(predict(x, p), t).backward()
    return p.grad


def gradient_gap(
    x: torch.Tensor,
    t: torch.Tensor,
    params: torch.Tensor,
    grad: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = mse_grad,
) -> float:
    """Largest relative difference between the hand-written and the autograd gradient at ``params``.

    Computed in float64; ``max|g_manual - g_autograd| / max(1, max|g_autograd|)``, so a correct derivation
    gives about 1e-16 and a wrong one gives order 1. ``grad`` is the hand-written gradient under test, called
    as ``mse_grad`` is: ``grad(x, t, t_p)``.
    """
    x64, t64, p64 = x.to(torch.float64), t.to(torch.float64), params.detach().to(torch.float64)
    manual = grad(x64, t64, predict(x64, p64))
    auto = autograd_grad(x64, t64, p64)
    return float((manual - auto).abs().max() / max(1.0, float(auto.abs().max())))


def least_squares(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Closed-form least-squares ``[w..., b]`` for ``x`` (n, k) and ``t`` (n,), in float64 (exact)."""
    design = design_matrix(x.to(torch.float64))
    solution = torch.linalg.lstsq(design, t.to(torch.float64).unsqueeze(1), driver="gelsd").solution
    return solution.squeeze(1)


def regression_metrics(t: torch.Tensor, t_p: torch.Tensor) -> dict[str, float]:
    """MSE, RMSE, MAE and R^2 of predictions ``t_p`` against targets ``t`` (both (n,)), as floats."""
    t64, p64 = t.detach().to(torch.float64), t_p.detach().to(torch.float64)
    err = p64 - t64
    mse_value = float((err**2).mean())
    total = float(((t64 - t64.mean()) ** 2).sum())
    r2 = 1.0 - float((err**2).sum()) / total if total > 0 else float("nan")
    return {
        "mse": mse_value,
        "rmse": math.sqrt(mse_value),
        "mae": float(err.abs().mean()),
        "r2": r2,
    }
