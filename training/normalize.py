"""Feature normalisation as a pure affine map, fitted on the training split only.

Every method is ``x_n = (x - shift) * factor`` per feature, so the fitted statistics are two short lists
that travel with the model as JSON, and a model trained on ``x_n`` folds back into original units exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

METHODS: tuple[str, ...] = ("none", "scale", "zscore", "minmax")


@dataclass(frozen=True)
class Normalizer:
    """Fitted statistics: ``x_n = (x - shift) * factor``, one entry per feature."""

    method: str
    features: tuple[str, ...]
    shift: tuple[float, ...]
    factor: tuple[float, ...]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``(n, features)``; the result keeps ``x``'s dtype."""
        if self.method == "none":
            return x
        shift = torch.tensor(self.shift, dtype=x.dtype)
        factor = torch.tensor(self.factor, dtype=x.dtype)
        if self.method == "scale":
            return x * factor  # the book's t_un = 0.1 * t_u, bit for bit
        return (x - shift) * factor

    def fold(self, params: torch.Tensor) -> torch.Tensor:
        """Express parameters ``[w..., b]`` trained on normalised inputs in the original units.

        ``((x - s) * f) @ w + b = x @ (f * w) + (b - sum(s * f * w))``.
        """
        p = params.detach().to(torch.float64)
        shift = torch.tensor(self.shift, dtype=torch.float64)
        factor = torch.tensor(self.factor, dtype=torch.float64)
        w = p[:-1] * factor
        b = p[-1] - (shift * w).sum()
        return torch.cat([w, b.reshape(1)])

    def to_dict(self) -> dict:
        """A JSON-ready dict; ``from_dict`` reverses it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Normalizer:
        """Rebuild a normalizer from ``to_dict``'s output."""
        return cls(
            method=str(data["method"]),
            features=tuple(data["features"]),
            shift=tuple(float(v) for v in data["shift"]),
            factor=tuple(float(v) for v in data["factor"]),
        )


def fit_normalizer(x: torch.Tensor, features: list[str], method: str, scale: float = 0.1) -> Normalizer:
    """Fit normalisation statistics on training inputs ``x`` of shape ``(n, features)``.

    Args:
        x: the training split only; the validation rows must not influence the statistics.
        features: column names, for the record and for error messages.
        method: ``none`` (identity), ``scale`` (multiply by ``scale``, the book's 0.1), ``zscore``
            (subtract the mean, divide by the population standard deviation) or ``minmax`` (map to [0, 1]).
        scale: the factor for ``scale``.

    Raises:
        ValueError: for an unknown method, or a constant feature under ``zscore`` or ``minmax`` (it would
            divide by zero; ``training.data.prepare`` refuses constant features under every method first,
            with a ``DataError`` naming the file).
    """
    k = x.shape[1]
    x64 = x.to(torch.float64)
    if method == "none":
        shift, factor = [0.0] * k, [1.0] * k
    elif method == "scale":
        shift, factor = [0.0] * k, [float(scale)] * k
    elif method in ("zscore", "minmax"):
        if method == "zscore":
            center, spread = x64.mean(dim=0), x64.std(dim=0, correction=0)
        else:
            center, spread = x64.min(dim=0).values, x64.max(dim=0).values - x64.min(dim=0).values
        for name, s in zip(features, spread.tolist(), strict=True):
            if s == 0.0:
                raise ValueError(f"feature '{name}' is constant, so '{method}' would divide by zero")
        shift, factor = center.tolist(), (1.0 / spread).tolist()
    else:
        raise ValueError(f"unknown normalisation {method!r}; expected one of {', '.join(METHODS)}")
    return Normalizer(method, tuple(features), tuple(shift), tuple(factor))
