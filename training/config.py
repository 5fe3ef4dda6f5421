"""The training configuration as one immutable value, checked before any work starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from training.errors import ConfigError
from training.loops import VARIANTS, make_optimizer
from training.normalize import METHODS


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run depends on; the flow's parameters map onto it one to one."""

    data: str = "data/thermometer.csv"
    features: tuple[str, ...] = ("t_u",)
    target: str = "t_c"
    normalize: str = "scale"
    scale: float = 0.1
    val_fraction: float = 0.2
    seed: int = 42
    variants: tuple[str, ...] = VARIANTS
    optimizer: str = "SGD"
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-2
    epochs: int = 5000
    init_weight: float | tuple[float, ...] = 1.0
    init_bias: float = 0.0
    experiment: str = "thermometer"
    model_name: str | None = "thermometer"  # registered model; None skips registration
    max_val_rmse: float | None = None  # quality gate for registration

    def as_params(self) -> dict[str, Any]:
        """The settings as a flat dict of simple values (for tracking and reports)."""
        params = asdict(self)
        params["features"] = list(self.features)
        params["variants"] = list(self.variants)
        if isinstance(self.init_weight, tuple):
            params["init_weight"] = list(self.init_weight)
        return params


def check_settings(settings: TrainSettings) -> None:
    """Refuse settings that cannot train, before any data is read or any run is recorded.

    Raises:
        ConfigError: naming the setting and what is wrong with it.
    """
    s = settings
    if not s.features:
        raise ConfigError("features is empty; name at least one input column")
    if len(set(s.features)) != len(s.features):
        raise ConfigError(f"features lists a column twice: {list(s.features)}")
    if s.target in s.features:
        raise ConfigError(f"the target {s.target!r} is also listed in features {list(s.features)}")
    if s.normalize not in METHODS:
        raise ConfigError(f"normalize={s.normalize!r}; expected one of {', '.join(METHODS)}")
    if not s.scale > 0:
        raise ConfigError(f"scale must be > 0, got {s.scale}")
    if not 0.0 <= s.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {s.val_fraction}")
    if not s.variants:
        raise ConfigError(f"variants is empty; choose from {', '.join(VARIANTS)}")
    unknown = [v for v in s.variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; expected any of {', '.join(VARIANTS)}")
    if not s.lr > 0:
        raise ConfigError(f"lr must be > 0, got {s.lr}")
    if s.epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {s.epochs}")
    if isinstance(s.init_weight, tuple) and len(s.init_weight) != len(s.features):
        raise ConfigError(f"init has {len(s.init_weight)} weights for {len(s.features)} features")
    if s.max_val_rmse is not None and not s.max_val_rmse > 0:
        raise ConfigError(f"max_val_rmse must be > 0, got {s.max_val_rmse}")
    if "optimizer" in s.variants or s.optimizer_options:
        make_optimizer(s.optimizer, [torch.zeros(1, requires_grad=True)], s.lr, s.optimizer_options)
