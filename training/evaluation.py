"""Evaluation of a trained model against the data and, for the line, against the exact least-squares fit."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from training.architecture import Architecture
from training.model import least_squares, mse, predict, regression_metrics

GRADIENT_TOLERANCE = 1e-10  # relative; a correct hand-written gradient agrees with autograd to ~1e-16


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one trained variant; losses are in the target's units squared."""

    train: dict[str, float]  # mse, rmse, mae, r2 on the training split
    val: dict[str, float] = field(default_factory=dict)  # the same on the validation split, if any
    optimum_mse: float = float("nan")  # training MSE of the closed-form least-squares fit; NaN for a network
    optimum_gap: float = float("nan")  # train mse - optimum_mse (>= 0 up to rounding); NaN for a network
    grad_check_init: float = float("nan")  # relative manual-vs-autograd gradient gap at the initial params
    grad_check_final: float = float("nan")  # ... and at the final params

    @property
    def scored(self) -> dict[str, float]:
        """The split a model is judged on: validation, or training when there is no validation split."""
        return self.val or self.train

    @property
    def has_optimum(self) -> bool:
        """True for the line, whose exact optimum is known; a network has none."""
        return not math.isnan(self.optimum_mse)

    @property
    def grad_check(self) -> float:
        """The larger of the two manual-vs-autograd gradient gaps."""
        return max(self.grad_check_init, self.grad_check_final)

    def metrics(self) -> dict[str, float]:
        """Flat metric names, as recorded: ``train_mse``, ``val_rmse``, ``optimum_gap``, ..."""
        fields = asdict(self)  # the splits' metrics prefixed with the split, then every other field as it is
        flat = {f"{split}_{k}": v for split in ("train", "val") for k, v in fields.pop(split).items()}
        return flat | fields


def optimum_mse(x: torch.Tensor, y: torch.Tensor) -> float:
    """Training MSE of the exact least-squares fit (float64)."""
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    return float(mse(predict(x64, least_squares(x64, y64)), y64))


def evaluate(
    params: torch.Tensor,
    init: torch.Tensor,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    best_mse: float | None = None,
    model: Architecture | None = None,
) -> Evaluation:
    """Evaluate final ``params`` (p,) on normalised inputs ``x_*`` (n, k) and targets ``y_*`` (n,).

    Args:
        params: the trained parameters, flat (the line's ``[w..., b]``).
        init: the starting parameters, for the gradient check at the start.
        x_train: training inputs; y_train: training targets.
        x_val: validation inputs, or None; y_val: validation targets.
        best_mse: the optimum's training MSE if already computed (it is the same for every variant).
        model: the architecture; None is the line. A network has no closed-form optimum: its
            ``optimum_mse`` and ``optimum_gap`` are NaN.
    """
    arch = model or Architecture.line(x_train.shape[1])
    with torch.no_grad():
        p64 = params.to(torch.float64)
        train = regression_metrics(y_train, arch.predict(x_train.to(torch.float64), p64))
        val = {}
        if x_val is not None and y_val is not None and len(y_val) > 0:
            val = regression_metrics(y_val, arch.predict(x_val.to(torch.float64), p64))
    best = float("nan")
    if arch.is_linear:
        best = optimum_mse(x_train, y_train) if best_mse is None else best_mse
    return Evaluation(
        train=train,
        val=val,
        optimum_mse=best,
        optimum_gap=train["mse"] - best,
        grad_check_init=arch.gradient_gap(x_train, y_train, init),
        grad_check_final=arch.gradient_gap(x_train, y_train, params),
    )
