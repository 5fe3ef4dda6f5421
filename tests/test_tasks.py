"""Tasks called through ``.fn``: the thin layer around the library does its own part right."""

from __future__ import annotations

import math
import re

import pytest
import torch
from prefect.logging import disable_run_logger

from tasks.data import load_dataset, prepare_data
from tasks.evaluate import evaluate_variants
from tasks.train import train_task
from training.errors import ConfigError, DataError
from training.settings import TrainSettings

from .conftest import DATA


@pytest.fixture(autouse=True)
def _no_run_logger():
    with disable_run_logger():
        yield


def test_load_dataset_records_the_absolute_source_and_hash():
    loaded = load_dataset.fn(str(DATA), ["t_u"], "t_c")
    assert loaded.source == str(DATA) and len(loaded.digest) == 64 and len(loaded.frame) == 11


def test_load_dataset_does_not_retry_bad_data_but_would_retry_io(write):
    assert load_dataset.retries == 2
    with pytest.raises(DataError, match="column 't_u'"):
        load_dataset.fn(write("bad.csv", "x,t_c\n1,2\n"), ["t_u"], "t_c")


def test_prepare_data_splits_and_normalises_with_training_statistics():
    loaded = load_dataset.fn(str(DATA), ["t_u"], "t_c")
    p = prepare_data.fn(loaded, TrainSettings(normalize="zscore", val_fraction=0.2, seed=42))
    assert len(p.y_train) == 9 and len(p.y_val) == 2 and p.has_val
    assert p.x_train.mean().abs() < 1e-5  # zscore on the training rows
    raw = torch.tensor(p.train_frame["t_u"].to_numpy(), dtype=torch.float32)
    assert torch.allclose(p.normalizer.apply(raw.unsqueeze(1)), p.x_train)
    assert set(p.train_frame["t_u"]).isdisjoint(set(p.val_frame["t_u"]))


def test_train_and_evaluate_tasks_on_the_books_setting():
    settings = TrainSettings(val_fraction=0.0, epochs=5000)
    loaded = load_dataset.fn(str(DATA), ["t_u"], "t_c")
    p = prepare_data.fn(loaded, settings)
    trained = train_task.fn("manual", p, settings)
    assert trained.result.train_loss[-1] == pytest.approx(2.927648, abs=1e-5) and trained.seconds > 0
    [evaluated] = evaluate_variants.fn([trained], p, settings)
    ev = evaluated.evaluation
    assert ev.optimum_mse == pytest.approx(2.9276455709, abs=1e-6)
    assert 0 <= ev.optimum_gap < 1e-5
    assert ev.grad_check_init < 1e-12 and ev.grad_check_final < 1e-12
    assert ev.val == {}


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"features": ["t_u", "t_c"]}, "target 't_c' is also listed"),
        ({"features": []}, "features: List should have at least 1 item"),
        ({"features": ["t_u", "t_u"]}, "features: lists a column twice"),
        ({"optimizer": "Adamm"}, "optimizer: Input should be 'ASGD'"),
        ({"optimizer_options": {"momentun": 0.9}}, "momentun"),
        ({"optimizer_options": {"lr": 0.9}}, "as lr"),
        ({"val_fraction": 1.0}, "val_fraction: Input should be less than 1"),
        ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
        ({"lr": -1.0}, "lr: Input should be greater than 0"),
        ({"scale": 0.0}, "scale: Input should be greater than 0"),
        ({"variants": ["manual", "newton"]}, "variants.1: Input should be 'manual'"),
        ({"init": {"weight": [1.0, 2.0]}}, "2 weights for 1 features"),
        ({"epoch": 10}, "epoch: Extra inputs are not permitted"),
        ({"model": "mlp", "init": {"weight": 2.0}}, "init sets the line's starting parameters"),
        ({"model": "cnn"}, "model: Input should be 'linear' or 'mlp'"),
        ({"hidden": 0}, "hidden: Input should be greater than or equal to 1"),
        ({"activation": "gelu"}, "activation: Input should be 'tanh', 'relu' or 'sigmoid'"),
        ({"val_indices": [7, 7]}, "val_indices: lists a row twice: [7, 7]"),
        ({"val_indices": [-1]}, "val_indices.0: Input should be greater than or equal to 0"),
    ],
)
def test_settings_are_checked_before_anything_runs(change, pattern):
    with pytest.raises(ConfigError, match=re.escape(pattern)):
        TrainSettings.parse(change)


def test_reads_retry_while_maths_and_run_creating_writes_do_not():
    from tasks.evaluate import evaluate_variants
    from tasks.predict import record_predictions, resolve_model
    from tasks.record import check_tracking, finish_tracking, log_variant, start_tracking

    for read in (load_dataset, resolve_model, check_tracking):  # idempotent: safe to run again
        assert read.retries >= 2, read.name
    # deterministic maths gains nothing from a retry; a retried run-creating write would duplicate the run
    # (MLflow's client retries each request instead: tests/test_faults.py)
    writes = (start_tracking, log_variant, finish_tracking, record_predictions)
    for task_ in (prepare_data, train_task, evaluate_variants, *writes):
        assert not task_.retries, task_.name


def test_a_network_is_evaluated_without_an_optimum_and_with_its_backward_pass_checked():
    from tasks.report import outcome_line, summary_rows

    settings = TrainSettings(model="mlp", lr=1e-3, epochs=200, val_indices=[7, 10])
    loaded = load_dataset.fn(str(DATA), ["t_u"], "t_c")
    p = prepare_data.fn(loaded, settings)
    assert p.val_index.tolist() == [7, 10]
    trained = [train_task.fn(v, p, settings) for v in ("manual", "optimizer")]
    evaluated = evaluate_variants.fn(trained, p, settings)
    for t in evaluated:
        ev = t.evaluation
        assert not ev.has_optimum and math.isnan(ev.optimum_gap)
        assert ev.grad_check_init < 1e-12 and ev.grad_check_final < 1e-12
        assert ev.train["mse"] == pytest.approx(
            t.result.train_loss[-1], rel=0.05
        )  # after vs before the update
        assert "gap to optimum none" in outcome_line(t)
    row = summary_rows(evaluated, [])[0]
    assert row["gap to optimum"] == "none" and row["params"] == "25 values (see the MLflow run)"

    line = TrainSettings(epochs=200, val_indices=[7, 10])
    [evaluated] = evaluate_variants.fn([train_task.fn("manual", p, line)], p, line)
    assert evaluated.evaluation.has_optimum
    row = summary_rows([evaluated], [])[0]
    assert float(row["gap to optimum"]) > 0 and len(row["params"].split(", ")) == 2


def test_the_fit_plot_draws_the_model_over_the_books_range_with_the_data():
    from tasks.plots import fit_plot, fit_rows, plot_range
    from training import network
    from training.architecture import Architecture
    from training.normalize import Normalizer
    from training.serving import Predictor

    assert plot_range([21.8, 81.9]) == (20, 90)  # the thermometer's t_u: the book's figure
    assert plot_range([0.12, 0.93]) == pytest.approx((0.1, 1.0)) and plot_range([3.0, 3.0]) == (2.0, 4.0)
    loaded = load_dataset.fn(str(DATA), ["t_u"], "t_c")
    p = prepare_data.fn(loaded, TrainSettings(val_indices=[7, 10]))
    normalizer = Normalizer("scale", ("t_u",), (0.0,), (0.1,))
    predictor = Predictor(network.seeded_init(1, 8, 0), normalizer, "t_c", "manual", Architecture.network(1))
    ax = fit_plot(predictor, fit_rows(p.train_frame, p.val_frame)).axes[0]
    [curve] = ax.lines
    assert (curve.get_xdata().min(), curve.get_xdata().max()) == (20, 90)
    expected = predictor.predict({"t_u": curve.get_xdata()})["t_c"].to_numpy()
    assert curve.get_ydata() == pytest.approx(expected)
    points = sorted(tuple(xy) for c in ax.collections[:2] for xy in c.get_offsets().tolist())
    assert points == sorted(zip(loaded.frame["t_u"], loaded.frame["t_c"], strict=True))  # every reading
    assert "network 1-8-1, tanh" in ax.get_title()


def test_a_fit_plot_of_a_large_table_draws_a_sample_over_the_whole_range_and_says_so():
    """``plots.fit_rows``: what the recording helper gets instead of the table. At most 2,000 rows per split,
    the sizes of both splits, and each column's range over every row, which the model's line spans."""
    import numpy as np
    import pandas as pd

    from tasks.plots import SCATTER_POINTS, fit_plot, fit_rows, plot_range
    from training.normalize import Normalizer
    from training.serving import Predictor

    g = np.random.default_rng(0)
    train = pd.DataFrame({"t_u": g.uniform(30, 60, 5000), "t_c": g.normal(size=5000)})
    train.loc[1234, "t_u"] = 3.0  # the extremes, each in one row that a sample of 2,000 may well miss
    val = pd.DataFrame({"t_u": [95.0, *g.uniform(30, 60, 99)], "t_c": g.normal(size=100)})
    rows = fit_rows(train, val)
    assert (len(rows.train), len(rows.val), rows.n_train, rows.n_val) == (SCATTER_POINTS, 100, 5000, 100)
    assert rows.ranges["t_u"] == (3.0, 95.0)
    normalizer = Normalizer("none", ("t_u",), (0.0,), (1.0,))
    predictor = Predictor(torch.tensor([1.0, 0.0]), normalizer, "t_c", "manual")
    ax = fit_plot(predictor, rows).axes[0]
    assert ax.get_title().endswith("(2,100 of 5,100 rows)")
    [line] = ax.lines
    assert (line.get_xdata().min(), line.get_xdata().max()) == plot_range([3.0, 95.0])
