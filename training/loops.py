"""One training skeleton, three ways to take a gradient step: manual, autograd, torch.optim.

The skeleton owns everything the variants share (init, data, loss, the loss-before-update rule, the
non-finite stop); a variant is only the block that computes the gradient and updates the parameters.
Tracking is injected through ``on_epoch``; this module never knows where the numbers go.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from training.errors import ConfigError
from training.model import design_matrix, mse, mse_grad_design, predict_design

logger = logging.getLogger(__name__)

Variant = Literal["manual", "autograd", "optimizer"]
VARIANTS: tuple[str, ...] = ("manual", "autograd", "optimizer")

HINT = "normalise the inputs (normalize=scale, zscore or minmax) or use a smaller learning rate"
# (params) -> (loss before the update, params after it)
Step = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# (epoch, train loss, validation loss or None), called once per epoch
EpochCallback = Callable[[int, float, float | None], None]


@dataclass
class TrainResult:
    """What a training loop returns: final parameters, loss curves and why it stopped."""

    variant: str
    params: torch.Tensor  # (k + 1,) = [w..., b], in the normalised input space
    train_loss: list[float] = field(default_factory=list)  # index i holds epoch i + 1
    val_loss: list[float] = field(default_factory=list)  # empty without a validation split
    stop_reason: Literal["completed", "diverged"] = "completed"
    message: str = ""

    @property
    def converged(self) -> bool:
        """True when every epoch ran with a finite loss."""
        return self.stop_reason == "completed"

    @property
    def epochs_run(self) -> int:
        """How many epochs computed a loss (the last one may be the non-finite one)."""
        return len(self.train_loss)


def optimizer_classes() -> list[str]:
    """Names of every optimizer class in ``torch.optim``."""
    return sorted(
        name
        for name, obj in vars(torch.optim).items()
        if inspect.isclass(obj)
        and issubclass(obj, torch.optim.Optimizer)
        and obj is not torch.optim.Optimizer
    )


def make_optimizer(
    name: str, params: list[torch.Tensor], lr: float, options: dict | None = None
) -> torch.optim.Optimizer:
    """Build ``torch.optim.<name>(params, lr=lr, **options)``.

    Raises:
        ConfigError: for a name that is not a ``torch.optim`` optimizer or an option it rejects.
    """
    if name not in optimizer_classes():
        raise ConfigError(f"unknown optimizer {name!r}; torch.optim has: {', '.join(optimizer_classes())}")
    options = dict(options or {})
    if "lr" in options:
        raise ConfigError("give the learning rate as lr, not inside optimizer_options")
    try:
        return getattr(torch.optim, name)(params, lr=lr, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"torch.optim.{name} rejects optimizer_options {options}: {exc}") from exc


def initial_params(
    n_features: int, init_weight: float | list[float] = 1.0, init_bias: float = 0.0
) -> torch.Tensor:
    """The book's start generalised: every weight ``init_weight`` (or one per feature), bias ``init_bias``.

    Raises:
        ConfigError: when a list of weights does not have one entry per feature.
    """
    weights = [float(init_weight)] * n_features if isinstance(init_weight, int | float) else init_weight
    if len(weights) != n_features:
        raise ConfigError(f"init has {len(weights)} weights for {n_features} features")
    return torch.tensor([*weights, float(init_bias)])


def _manual_step(design: torch.Tensor, y: torch.Tensor, lr: float) -> Step:
    def step(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t_p = predict_design(design, params)
        loss = mse(t_p, y)
        return loss, params - lr * mse_grad_design(design, y, t_p)

    return step


def _autograd_step(design: torch.Tensor, y: torch.Tensor, lr: float) -> Step:
    def step(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if params.grad is not None:
            params.grad.zero_()
        loss = mse(predict_design(design, params), y)
        loss.backward()
        with torch.no_grad():
            params -= lr * params.grad  # in place: rebinding would drop requires_grad (the blog's bug)
        return loss, params

    return step


def _optimizer_step(optimizer: torch.optim.Optimizer, design: torch.Tensor, y: torch.Tensor) -> Step:
    def step(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = mse(predict_design(design, params), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss, params

    return step


def train(
    variant: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    epochs: int,
    init: torch.Tensor,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    optimizer: str = "SGD",
    optimizer_options: dict | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Fit ``t_p = x @ w + b`` by gradient descent with one of the three variants.

    The loss reported for epoch N is computed before the Nth update, as in the book. A non-finite
    loss stops the loop at once and the result says at which epoch.

    Args:
        variant: ``manual`` (hand-derived gradient), ``autograd`` (``loss.backward()`` and an in-place
            update under ``torch.no_grad()``) or ``optimizer`` (``torch.optim.<optimizer>``).
        x: training inputs (n, k), already normalised.
        y: training targets (n,).
        lr: learning rate.
        epochs: number of updates.
        init: starting ``[w..., b]`` (k + 1,); it is copied, never modified.
        x_val: optional validation inputs (m, k); their loss is recorded at every epoch, before the update.
        y_val: validation targets (m,).
        optimizer: the ``torch.optim`` class name for the ``optimizer`` variant.
        optimizer_options: extra keyword arguments for that class (e.g. ``{"momentum": 0.9}``).
        on_epoch: called as ``on_epoch(epoch, train_loss, val_loss)`` after each epoch's loss is known.

    Returns:
        A ``TrainResult`` with the final parameters (detached), the curves and the stop reason.
    """
    params = init.detach().clone().to(x.dtype)
    design = design_matrix(x)  # once, not every epoch
    if variant == "manual":
        step = _manual_step(design, y, lr)
    elif variant == "autograd":
        params.requires_grad_(True)
        step = _autograd_step(design, y, lr)
    elif variant == "optimizer":
        params.requires_grad_(True)
        step = _optimizer_step(make_optimizer(optimizer, [params], lr, optimizer_options), design, y)
    else:
        raise ConfigError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")

    has_val = x_val is not None and y_val is not None and len(y_val) > 0
    design_val = design_matrix(x_val) if has_val else None
    result = TrainResult(variant=variant, params=params)
    train_curve, val_curve = result.train_loss, result.val_loss
    for epoch in range(1, epochs + 1):
        val_value = None
        if has_val:
            with torch.no_grad():
                val_value = mse(predict_design(design_val, params), y_val).item()
            val_curve.append(val_value)
        loss, params = step(params)
        value = loss.item()
        train_curve.append(value)
        if on_epoch is not None:
            on_epoch(epoch, value, val_value)
        if not math.isfinite(value):
            result.stop_reason = "diverged"
            result.message = (
                f"{variant}: the training loss became {value} at epoch {epoch} of {epochs} (lr={lr}); {HINT}"
            )
            logger.debug(result.message)
            break
    result.params = params.detach().clone()
    return result
