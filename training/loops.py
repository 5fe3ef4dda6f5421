"""One training skeleton, three ways to take a gradient step: manual, autograd, torch.optim.

The skeleton owns everything the variants share (init, data, loss, the loss-before-update rule, the
non-finite stop); a variant is only the block that computes the gradient and updates the parameters. The
model is the line ``x @ w + b`` (the default) or chapter 6's network (``training.network``): each offers the
variants what they need (``_Trainee``), and the same three steps train either.
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

from training import network
from training.architecture import Architecture
from training.errors import ConfigError
from training.model import design_matrix, mse, mse_grad_design, predict_design

logger = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("manual", "autograd", "optimizer")

HINT = "normalise the inputs (normalize=scale, zscore or minmax) or use a smaller learning rate"
# one epoch's update: the loss at the current parameters (a 0-d tensor), then the parameters changed in place
Step = Callable[[], torch.Tensor]
# (epoch, train loss, validation loss or None), called once per epoch
EpochCallback = Callable[[int, float, float | None], None]


@dataclass
class TrainResult:
    """What a training loop returns: final parameters, loss curves and why it stopped."""

    variant: str
    params: torch.Tensor  # (p,) flat, in the normalised input space: [w..., b] for the line (p = k + 1)
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


@dataclass(frozen=True)
class _Trainee:
    """A model being trained, as the variants see it."""

    parameters: list[torch.Tensor]  # what an update changes in place (the manual variant's: one flat tensor)
    loss: Callable[[], torch.Tensor]  # the training loss at the current parameters, recorded by autograd
    # (loss, gradient (p,)) written out by hand, for the manual variant (None where a module holds them)
    by_hand: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None
    val_loss: Callable[[], torch.Tensor] | None  # the validation loss at the current parameters
    params: Callable[[], torch.Tensor]  # the current parameters, flat (p,)


def _line(variant: str, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, x_val, y_val) -> _Trainee:
    """The line: one flat tensor ``[w..., b]`` for every variant; the model is one product with ``[x, 1]``."""
    params.requires_grad_(variant != "manual")
    design = design_matrix(x)  # once, not every epoch
    design_val = None if x_val is None else design_matrix(x_val)

    def by_hand() -> tuple[torch.Tensor, torch.Tensor]:
        t_p = predict_design(design, params)
        return mse(t_p, y), mse_grad_design(design, y, t_p)

    return _Trainee(
        parameters=[params],
        loss=lambda: mse(predict_design(design, params), y),
        by_hand=by_hand,
        val_loss=None if design_val is None else lambda: mse(predict_design(design_val, params), y_val),
        params=lambda: params,
    )


def _network(
    variant: str, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, x_val, y_val, arch: Architecture
) -> _Trainee:
    """The network: for ``manual``, the flat tensor and the backward pass by hand; for ``autograd`` and
    ``optimizer``, the ``nn.Sequential`` itself, started from the same numbers."""
    hidden, activation = arch.hidden, arch.activation
    if variant == "manual":  # plain tensors: autograd never records anything

        def by_hand() -> tuple[torch.Tensor, torch.Tensor]:
            t_p, cache = network.forward(x, params, hidden, activation)
            return mse(t_p, y), network.backward(cache, params, y, t_p, activation)

        def predict(inputs: torch.Tensor) -> torch.Tensor:
            return network.predict(inputs, params, hidden, activation)

        parameters, current = [params], lambda: params
    else:
        net = network.module(arch.features, hidden, activation, params)
        by_hand = None

        def predict(inputs: torch.Tensor) -> torch.Tensor:
            return net(inputs).squeeze(1)  # (m, 1) -> (m,)

        parameters, current = list(net.parameters()), lambda: network.flatten(net)
    return _Trainee(
        parameters=parameters,
        loss=lambda: mse(predict(x), y),
        by_hand=by_hand,
        val_loss=None if x_val is None else lambda: mse(predict(x_val), y_val),
        params=current,
    )


def _manual_step(params: torch.Tensor, by_hand: Callable, lr: float) -> Step:
    def step() -> torch.Tensor:
        loss, grad = by_hand()
        params.sub_(lr * grad)
        return loss

    return step


def _autograd_step(parameters: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], lr: float) -> Step:
    def step() -> torch.Tensor:
        for p in parameters:
            if p.grad is not None:
                p.grad.zero_()
        loss = loss_fn()
        loss.backward()
        with torch.no_grad():
            for p in parameters:
                p -= lr * p.grad  # in place: rebinding would drop requires_grad (the blog's bug)
        return loss

    return step


def _optimizer_step(optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]) -> Step:
    def step() -> torch.Tensor:
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

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
    model: Architecture | None = None,
) -> TrainResult:
    """Fit ``t_p = x @ w + b`` (or the network ``model``) by gradient descent with one of the three variants.

    The loss reported for epoch N is computed before the Nth update, as in the book. A non-finite
    loss stops the loop at once and the result says at which epoch.

    Args:
        variant: ``manual`` (hand-derived gradient), ``autograd`` (``loss.backward()`` and an in-place
            update under ``torch.no_grad()``) or ``optimizer`` (``torch.optim.<optimizer>``).
        x: training inputs (n, k), already normalised.
        y: training targets (n,).
        lr: learning rate.
        epochs: number of updates.
        init: the starting parameters, flat (p,): ``[w..., b]`` for the line; it is copied, never modified.
        x_val: optional validation inputs (m, k); their loss is recorded at every epoch, before the update.
        y_val: validation targets (m,).
        optimizer: the ``torch.optim`` class name for the ``optimizer`` variant.
        optimizer_options: extra keyword arguments for that class (e.g. ``{"momentum": 0.9}``).
        on_epoch: called as ``on_epoch(epoch, train_loss, val_loss)`` after each epoch's loss is known.
        model: the architecture; None is the line over ``x``'s features. For the network, ``manual`` runs
            the hand-written backward pass on the flat parameters, ``autograd`` and ``optimizer`` its
            ``nn.Sequential``.

    Returns:
        A ``TrainResult`` with the final parameters (detached, flat), the curves and the stop reason.

    Raises:
        ConfigError: for an unknown variant or optimizer, or an ``init`` of the wrong size.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    arch = model or Architecture.line(x.shape[1])
    params = init.detach().clone().to(x.dtype)
    if params.shape != (arch.n_params,):
        raise ConfigError(
            f"init has shape {tuple(params.shape)}; the {arch.describe()} has {arch.n_params} parameters"
        )
    has_val = x_val is not None and y_val is not None and len(y_val) > 0
    val = (x_val, y_val) if has_val else (None, None)
    if arch.is_linear:
        trainee = _line(variant, params, x, y, *val)
    else:
        trainee = _network(variant, params, x, y, *val, arch)
    if variant == "manual":
        step = _manual_step(params, trainee.by_hand, lr)
    elif variant == "autograd":
        step = _autograd_step(trainee.parameters, trainee.loss, lr)
    else:
        step = _optimizer_step(
            make_optimizer(optimizer, trainee.parameters, lr, optimizer_options), trainee.loss
        )

    result = TrainResult(variant=variant, params=params)
    for epoch in range(1, epochs + 1):
        val_value = None
        if trainee.val_loss is not None:
            with torch.no_grad():
                val_value = trainee.val_loss().item()
            result.val_loss.append(val_value)
        value = step().item()
        result.train_loss.append(value)
        if on_epoch is not None:
            on_epoch(epoch, value, val_value)
        if not math.isfinite(value):
            result.stop_reason = "diverged"
            result.message = (
                f"{variant}: the training loss became {value} at epoch {epoch} of {epochs} (lr={lr}); {HINT}"
            )
            logger.debug(result.message)
            break
    result.params = trainee.params().detach().clone()
    return result
