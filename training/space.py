"""A sweep's search space: the training settings it varies, checked before any work and expanded into points.

A space maps a setting's name (a field of ``TrainingConfig``, ``variant``, or ``optimizer_options.<name>``)
to a list of values or to a range ``{"low": x, "high": y, "log": true}``, with ``"num"`` for a grid over it.
``grid`` expands it into every combination; ``sample`` draws points at random from a seeded generator. A
point is a dict from those names to values; ``configure`` turns one into the trial's settings.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import TypeAdapter, ValidationError

from training.errors import ConfigError
from training.loops import VARIANTS, make_optimizer
from training.settings import TrainingConfig

OPTIONS = "optimizer_options."
RANGE_KEYS = {"low", "high", "log", "num"}


@dataclass(frozen=True)
class Axis:
    """One swept setting: a list of values, or a range (grid over ``num`` points when given)."""

    key: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    num: int | None = None

    @property
    def is_range(self) -> bool:
        """True for ``{"low": ..., "high": ...}``."""
        return self.low is not None

    @property
    def integer(self) -> bool:
        """Whether the setting takes whole numbers (epochs, seed)."""
        field = TrainingConfig.model_fields.get(self.key)
        return field is not None and field.annotation is int

    def grid(self) -> tuple[Any, ...]:
        """The values a grid takes on this axis."""
        if not self.is_range:
            return self.values
        if self.num is None:
            raise ConfigError(f"space[{self.key!r}]: a range needs 'num' for a grid (or use strategy=random)")
        if self.num == 1:
            return (self._cast(self.low),)
        if self.log:  # powers of ten, so that a decade's grid holds 1e-3, not 0.0010000000000000002
            a, b = math.log10(self.low), math.log10(self.high)
            points = [10 ** (a + (b - a) * i / (self.num - 1)) for i in range(self.num)]
        else:
            points = [self.low + (self.high - self.low) * i / (self.num - 1) for i in range(self.num)]
        points[0], points[-1] = self.low, self.high  # exact ends, whatever the rounding
        return tuple(dict.fromkeys(self._cast(p) for p in points))

    def draw(self, rng: random.Random) -> Any:
        """One value at random: uniform over a list, uniform (or log-uniform) over a range."""
        if not self.is_range:
            return self.values[rng.randrange(len(self.values))]
        if self.log:
            return self._cast(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return self._cast(rng.uniform(self.low, self.high))

    def _cast(self, value: float) -> Any:
        return round(value) if self.integer else float(value)


def _adapter(key: str) -> TypeAdapter:
    field = TrainingConfig.model_fields[key]
    return TypeAdapter(Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)


def _check_value(key: str, value: Any, base: TrainingConfig, optimizers: set[str]) -> Any:
    """A valid value for ``key`` (as the setting would hold it), or a ConfigError naming the key."""
    if key == "variant":
        if value not in VARIANTS:
            raise ConfigError(f"space['variant']: {value!r} is not one of {', '.join(VARIANTS)}")
        return value
    if key.startswith(OPTIONS):
        option = key.removeprefix(OPTIONS)
        for optimizer in optimizers:
            try:
                make_optimizer(
                    optimizer,
                    [torch.zeros(1, requires_grad=True)],
                    base.lr,
                    {**base.optimizer_options, option: value},
                )
            except ConfigError as exc:
                raise ConfigError(f"space[{key!r}]: {exc}") from None
        return value
    try:
        return _adapter(key).validate_python(value)
    except ValidationError as exc:
        problem = "; ".join(e["msg"] for e in exc.errors())
        raise ConfigError(f"space[{key!r}]: {value!r} is not a valid {key} ({problem})") from None


def _axis(key: str, spec: Any, base: TrainingConfig, optimizers: set[str]) -> Axis:
    if isinstance(spec, Mapping):
        unknown = set(spec) - RANGE_KEYS
        if unknown or not {"low", "high"} <= set(spec):
            raise ConfigError(
                f"space[{key!r}]: a range is {{'low': x, 'high': y, 'log': bool, 'num': n}}, got {dict(spec)}"
            )
        low, high = (_check_value(key, spec[end], base, optimizers) for end in ("low", "high"))
        if not isinstance(low, int | float) or not isinstance(high, int | float) or isinstance(low, bool):
            raise ConfigError(f"space[{key!r}]: a range needs numbers, got low={low!r}, high={high!r}")
        if low > high:
            raise ConfigError(f"space[{key!r}]: low {low} > high {high}")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise ConfigError(f"space[{key!r}]: a log range needs low > 0, got {low}")
        num = spec.get("num")
        if num is not None and (not isinstance(num, int) or num < 1):
            raise ConfigError(f"space[{key!r}]: num must be a whole number >= 1, got {num!r}")
        return Axis(key, low=float(low), high=float(high), log=log, num=num)
    values = spec if isinstance(spec, list | tuple) else [spec]
    if not values:
        raise ConfigError(f"space[{key!r}]: the list of values is empty")
    return Axis(key, values=tuple(dict.fromkeys(_check_value(key, v, base, optimizers) for v in values)))


def parse_space(space: Mapping[str, Any], base: TrainingConfig) -> list[Axis]:
    """Check a search space against the settings; return its axes in the space's order.

    Raises:
        ConfigError: naming the key, for an unknown setting, an empty list, a malformed or inverted range, a
            value the setting refuses (``lr`` <= 0 among them) or an option the optimizer rejects.
    """
    if not space:
        raise ConfigError("space is empty: name at least one setting to sweep, e.g. {'lr': [0.001, 0.01]}")
    known = [*TrainingConfig.model_fields, "variant"]
    for key in space:
        if key not in known and not (key.startswith(OPTIONS) and key != OPTIONS):
            raise ConfigError(
                f"space[{key!r}]: not a setting; sweep any of {', '.join(known)} or optimizer_options.<name>"
            )
    if "optimizer_options" in space:
        raise ConfigError(
            "space['optimizer_options']: sweep one option at a time, as 'optimizer_options.<name>'"
        )
    optimizers = {base.optimizer}
    if "optimizer" in space:
        optimizers = set(_axis("optimizer", space["optimizer"], base, set()).values)
    return [_axis(key, spec, base, optimizers) for key, spec in space.items()]


# settings whose values must agree with one another (checked by TrainingConfig's model validator)
_COUPLED = ("features", "target", "init", "optimizer", "lr")


def check_points(base: TrainingConfig, points: list[dict[str, Any]]) -> None:
    """Validate each distinct combination of coupled settings among the points (features with init, target
    with features, an optimizer with its options) as full settings.

    Raises:
        ConfigError: naming the settings of the first combination that cannot train.
    """
    seen = set()
    for point in points:
        config, _ = configure(base, point, "manual")
        coupled = {k: getattr(config, k) for k in _COUPLED} | {"optimizer_options": config.optimizer_options}
        key = repr(coupled)
        if key not in seen:
            seen.add(key)
            TrainingConfig.parse(config.model_dump())


def grid(axes: list[Axis]) -> list[dict[str, Any]]:
    """Every combination of the axes' grid values, the last axis varying fastest."""
    keys = [a.key for a in axes]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(a.grid() for a in axes))]


def sample(axes: list[Axis], trials: int, seed: int) -> list[dict[str, Any]]:
    """``trials`` points drawn at random (seeded: the same seed gives the same points)."""
    rng = random.Random(seed)
    return [{a.key: a.draw(rng) for a in axes} for _ in range(trials)]


def configure(base: TrainingConfig, point: Mapping[str, Any], variant: str) -> tuple[TrainingConfig, str]:
    """The settings and the variant of one point (values were checked by ``parse_space``)."""
    update = {k: v for k, v in point.items() if k != "variant" and not k.startswith(OPTIONS)}
    options = {k.removeprefix(OPTIONS): v for k, v in point.items() if k.startswith(OPTIONS)}
    if options:
        update["optimizer_options"] = {**base.optimizer_options, **options}
    return base.model_copy(update=update), point.get("variant", variant)
