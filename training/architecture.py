"""Which model is trained: the line ``x @ w + b`` (``training.model``) or chapter 6's network
(``training.network``).

Both keep their parameters in one flat tensor, in the order of their torch modules' state dicts (the line's
``[w..., b]`` is ``nn.Linear(k, 1)``'s), so the loops, the evaluation, the saved model and the tracking record
handle either through an ``Architecture``: its size, its predictions, its gradient check, its JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from training import model as line
from training import network
from training.errors import ConfigError

MODELS: tuple[str, ...] = ("linear", "mlp")


@dataclass(frozen=True)
class Architecture:
    """The model's kind and sizes; build one with ``line(k)`` or ``network(k, hidden, activation)``."""

    model: str  # "linear" or "mlp"
    features: int  # k, the number of inputs
    hidden: int = 0  # the network's hidden units (0 for the line)
    activation: str | None = None  # the network's activation (None for the line)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; expected one of {', '.join(MODELS)}")
        if self.features < 1:
            raise ConfigError(f"a model needs at least one feature, got {self.features}")
        if self.model == "linear" and (self.hidden or self.activation is not None):
            raise ConfigError("the line has no hidden layer: give neither hidden nor activation")
        if self.model == "mlp":
            if self.hidden < 1:
                raise ConfigError(f"the network needs at least one hidden unit, got {self.hidden}")
            if self.activation not in network.ACTIVATIONS:
                known = ", ".join(network.ACTIVATIONS)
                raise ConfigError(f"unknown activation {self.activation!r}; expected one of {known}")

    @classmethod
    def line(cls, features: int) -> Architecture:
        """The line ``t_p = x @ w + b`` over ``features`` inputs."""
        return cls("linear", features)

    @classmethod
    def network(cls, features: int, hidden: int = 8, activation: str = "tanh") -> Architecture:
        """``Linear(features, hidden) -> activation -> Linear(hidden, 1)``."""
        return cls("mlp", features, hidden, activation)

    @property
    def is_linear(self) -> bool:
        """True for the line."""
        return self.model == "linear"

    @property
    def n_params(self) -> int:
        """The length of the flat parameter tensor."""
        return self.features + 1 if self.is_linear else network.n_params(self.features, self.hidden)

    def describe(self) -> str:
        """In words: ``line`` or ``network 1-8-1, tanh``."""
        if self.is_linear:
            return "line"
        return f"network {self.features}-{self.hidden}-1, {self.activation}"

    def predict(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Predictions (n,) for normalised inputs ``x`` (n, k) at the flat ``params`` (p,)."""
        if self.is_linear:
            return line.predict(x, params)
        return network.predict(x, params, self.hidden, self.activation)

    def gradient_gap(self, x: torch.Tensor, t: torch.Tensor, params: torch.Tensor) -> float:
        """Relative gap between the hand-written and the autograd gradient of the MSE at ``params``."""
        if self.is_linear:
            return line.gradient_gap(x, t, params)
        return network.gradient_gap(x, t, params, self.hidden, self.activation)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``from_dict`` reverses it. The line's has no hidden layer to describe."""
        data: dict[str, Any] = {"model": self.model, "features": self.features}
        if not self.is_linear:
            data.update(hidden=self.hidden, activation=self.activation)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        """Rebuild an architecture from ``to_dict``'s output.

        Raises:
            ConfigError: for an unknown model or activation, or sizes that make no model.
        """
        return cls(
            model=str(data["model"]),
            features=int(data["features"]),
            hidden=int(data.get("hidden", 0)),
            activation=None if data.get("activation") is None else str(data["activation"]),
        )
