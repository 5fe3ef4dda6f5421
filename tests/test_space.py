"""A sweep's search space: parsed against the settings, refused before any work when wrong, expanded."""

from __future__ import annotations

import itertools

import pytest

from training.errors import ConfigError
from training.settings import TrainingConfig
from training.space import check_points, configure, grid, parse_space, sample

BASE = TrainingConfig()


def test_a_log_grid_has_exact_ends_and_even_ratios():
    [axis] = parse_space({"lr": {"low": 1e-5, "high": 1.0, "log": True, "num": 6}}, BASE)
    values = axis.grid()
    assert values[0] == 1e-5 and values[-1] == 1.0 and len(values) == 6
    assert all(b / a == pytest.approx(10.0) for a, b in itertools.pairwise(values))


def test_grid_is_the_full_product_in_order():
    axes = parse_space(
        {"normalize": ["none", "scale"], "lr": [0.1, 0.01], "variant": ["manual", "optimizer"]}, BASE
    )
    points = grid(axes)
    assert len(points) == 8
    assert points[0] == {"normalize": "none", "lr": 0.1, "variant": "manual"}
    assert points[1] == {"normalize": "none", "lr": 0.1, "variant": "optimizer"}
    assert len({tuple(p.values()) for p in points}) == 8


def test_random_points_are_seeded_and_within_the_range():
    axes = parse_space(
        {"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "epochs": {"low": 10, "high": 20}}, BASE
    )
    a, b = sample(axes, 50, seed=3), sample(axes, 50, seed=3)
    assert a == b and a != sample(axes, 50, seed=4)
    assert all(
        1e-4 <= p["lr"] <= 1e-1 and isinstance(p["epochs"], int) and 10 <= p["epochs"] <= 20 for p in a
    )


def test_configure_sets_fields_options_and_variant():
    point = {"lr": 0.5, "optimizer_options.momentum": 0.9, "variant": "optimizer", "normalize": "none"}
    config, variant = configure(
        BASE.model_copy(update={"optimizer_options": {"dampening": 0.1}}), point, "manual"
    )
    assert variant == "optimizer" and config.lr == 0.5 and config.normalize == "none"
    assert config.optimizer_options == {"dampening": 0.1, "momentum": 0.9}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "space is empty"),
        ({"learning_rate": [0.1]}, "space['learning_rate']: not a setting"),
        ({"lr": []}, "space['lr']: the list of values is empty"),
        ({"lr": {"low": 1.0, "high": 0.1}}, "space['lr']: low 1.0 > high 0.1"),
        ({"lr": [0.1, 0.0]}, "space['lr']: 0.0 is not a valid lr"),
        ({"lr": {"low": -1.0, "high": 0.1}}, "space['lr']: -1.0 is not a valid lr"),
        ({"lr": {"low": 0.1}}, "space['lr']: a range is"),
        ({"epochs": [0, 10]}, "space['epochs']: 0 is not a valid epochs"),
        ({"normalize": ["scale", "l2"]}, "space['normalize']: 'l2' is not a valid normalize"),
        ({"variant": ["newton"]}, "space['variant']: 'newton' is not one of"),
        ({"optimizer_options.momentun": [0.9]}, "space['optimizer_options.momentun']"),
        ({"optimizer_options.momentum": [-0.5]}, "space['optimizer_options.momentum']"),
        ({"optimizer": ["Adam"], "optimizer_options.momentum": [0.9]}, "space['optimizer_options.momentum']"),
        ({"optimizer_options": [{"momentum": 0.9}]}, "sweep one option at a time"),
        ({"lr": {"low": 0.0, "high": 1.0, "log": True}}, "space['lr']"),
        ({"lr": {"low": 0.1, "high": 1.0, "num": 0}}, "space['lr']: num must be"),
    ],
)
def test_a_bad_space_is_refused_naming_the_key(space, message):
    with pytest.raises(ConfigError) as err:
        parse_space(space, BASE)
    assert message in str(err.value)


def test_a_range_on_a_grid_needs_num():
    [axis] = parse_space({"lr": {"low": 1e-3, "high": 1e-1}}, BASE)
    with pytest.raises(ConfigError, match="needs 'num'"):
        axis.grid()


def test_settings_that_disagree_across_axes_are_refused_before_any_work():
    base = BASE.model_copy(update={"optimizer_options": {"momentum": 0.9}})
    points = grid(parse_space({"optimizer": ["SGD", "Adam"]}, base))  # Adam takes no momentum
    with pytest.raises(ConfigError, match="momentum"):
        check_points(base, points)
    check_points(BASE, grid(parse_space({"optimizer": ["SGD", "Adam"], "lr": [0.1, 0.01]}, BASE)))
