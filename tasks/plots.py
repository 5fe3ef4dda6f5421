"""Figures for the tracking record, drawn with matplotlib's object API (thread-safe, no pyplot state).

Cheap by design, since every run draws several: fixed margins instead of a layout engine (which measured every
text box and took half the drawing time), curves thinned to at most ``CURVE_POINTS`` points (a 7-inch plot
cannot show more), and at most ``SCATTER_POINTS`` data rows per split, sampled, with the title saying so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from training.serving import Predictor

CURVE_POINTS = 2000
SCATTER_POINTS = 2000
MARGINS = {"left": 0.11, "right": 0.97, "bottom": 0.12, "top": 0.91}


def _figure(width: float = 7, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(**MARGINS)
    return fig


def _loss_axes(fig: Figure, epochs: int):
    ax = fig.add_subplot()
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE loss (log scale)")
    ax.set_yscale("log")
    ax.set_xlim(1, max(2, epochs))
    ax.grid(True, which="both", alpha=0.3)
    return ax


def _finite(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and values to draw: positive finite ones, thinned evenly to ``CURVE_POINTS`` (the last kept)."""
    y = np.asarray(values, dtype=float)
    x = np.arange(1, len(y) + 1)
    if len(y) > CURVE_POINTS:
        step = np.unique(np.linspace(0, len(y) - 1, CURVE_POINTS).round().astype(int))
        x, y = x[step], y[step]
    keep = np.isfinite(y) & (y > 0)
    return x[keep], y[keep]


def _sample(frame: pd.DataFrame, limit: int = SCATTER_POINTS, seed: int = 0) -> pd.DataFrame:
    """At most ``limit`` rows of ``frame``, drawn at random (seeded)."""
    return frame if len(frame) <= limit else frame.sample(limit, random_state=seed)


@dataclass(frozen=True)
class FitRows:
    """What a fit plot draws of the data: at most ``SCATTER_POINTS`` rows per split (sampled, seeded), how
    many each split has, and each column's range over all rows. Small, whatever the table's size: the
    recording helper process gets these instead of the table."""

    train: pd.DataFrame
    val: pd.DataFrame
    n_train: int
    n_val: int
    ranges: dict[str, tuple[float, float]]


def fit_rows(train_frame: pd.DataFrame, val_frame: pd.DataFrame) -> FitRows:
    """The rows and ranges ``fit_plot`` needs from the training and validation rows."""
    low = pd.concat([train_frame.min(), val_frame.min()], axis=1).min(axis=1)  # an empty split is skipped
    high = pd.concat([train_frame.max(), val_frame.max()], axis=1).max(axis=1)
    ranges = {str(c): (float(low[c]), float(high[c])) for c in train_frame.columns}
    return FitRows(_sample(train_frame), _sample(val_frame), len(train_frame), len(val_frame), ranges)


def loss_curve(variant: str, train_loss: Sequence[float], val_loss: Sequence[float], epochs: int) -> Figure:
    """One variant's training (and validation) loss per epoch."""
    fig = _figure()
    ax = _loss_axes(fig, epochs)
    ax.plot(*_finite(train_loss), label="train")
    if len(val_loss):
        ax.plot(*_finite(val_loss), label="validation", linestyle="--")
    ax.set_title(f"{variant}: loss per epoch")
    ax.legend()
    return fig


def loss_curves(curves: Mapping[str, Sequence[float]], epochs: int, optimum: float | None = None) -> Figure:
    """Every variant's training loss on one plot, with the least-squares optimum as a floor."""
    fig = _figure()
    ax = _loss_axes(fig, epochs)
    for (variant, values), style in zip(curves.items(), ("-", "--", ":", "-."), strict=False):
        ax.plot(*_finite(values), label=variant, linestyle=style)
    if optimum is not None and math.isfinite(optimum) and optimum > 0:
        ax.axhline(optimum, color="black", linewidth=0.8, label=f"least-squares optimum {optimum:.6g}")
    ax.set_title("training loss of each variant")
    ax.legend()
    return fig


def plot_range(values: Sequence[float]) -> tuple[float, float]:
    """The data's range widened to whole steps of the power of ten below its span.

    For the thermometer's t_u (21.8 to 81.9) that is 20 to 90, the range of the book's figure.
    """
    low, high = float(np.min(values)), float(np.max(values))
    span = high - low
    if span == 0:
        return low - 1, high + 1
    step = 10.0 ** math.floor(math.log10(span))
    return math.floor(low / step) * step, math.ceil(high / step) * step


def fit_plot(predictor: Predictor, rows: FitRows) -> Figure:
    """Data and fitted model in original units, as the book's figure: the model drawn across the data's range
    (widened by ``plot_range``) for one feature, its value at each data row marked; predicted-vs-actual for
    several features."""
    fig = _figure()
    ax = fig.add_subplot()
    target = predictor.target
    train, val = rows.train, rows.val
    frames = [("train", train, "o"), ("validation", val, "s")]
    n_shown, n_all = len(train) + len(val), rows.n_train + rows.n_val
    shown = "" if n_shown == n_all else f" ({n_shown:,} of {n_all:,} rows)"
    if len(predictor.features) == 1:
        feature = predictor.features[0]
        for label, frame, marker in frames:
            if len(frame):
                ax.scatter(frame[feature], frame[target], marker=marker, label=label, s=12)
        grid = np.linspace(*plot_range(rows.ranges[feature]), 281)  # fine enough for a curve
        ax.plot(grid, predictor.predict({feature: grid})[target], color="black", label="model")
        shown_x = np.concatenate([train[feature].to_numpy(), val[feature].to_numpy()])  # the sampled rows
        ax.scatter(
            shown_x, predictor.predict({feature: shown_x})[target], marker="x", color="black", zorder=3
        )
        ax.set_xlabel(feature)
        ax.set_ylabel(target)
    else:
        for label, frame, marker in frames:
            if len(frame):
                ax.scatter(frame[target], predictor.predict(frame)[target], marker=marker, label=label, s=12)
        ax.axline((0, 0), slope=1, color="black", linewidth=0.8, label="perfect prediction")
        ax.set_xlabel(f"actual {target}")
        ax.set_ylabel(f"predicted {target}")
    ax.set_title(f"{predictor.variant}: {predictor.architecture.describe()}, in original units{shown}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def lr_map(table, base_lr: float) -> Figure:
    """A sweep's map: the objective against the learning rate, one line per optimizer, normalisation and
    variant swept; a diverged trial is an ``x`` on the top edge, at its learning rate."""
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    lr = table["lr"].astype(float) if "lr" in table else np.full(len(table), base_lr)
    groups = [c for c in ("optimizer", "normalize", "variant") if c in table and table[c].nunique() > 1]
    finite = np.isfinite(table["objective"].astype(float).to_numpy())
    top = float(table["objective"][finite].max()) * 3 if finite.any() else 1.0
    keys = table[groups].astype(str).agg(" / ".join, axis=1) if groups else np.full(len(table), "trials")
    for (key, rows), style in zip(
        table.assign(_lr=lr, _key=keys).groupby("_key", sort=True), _STYLES, strict=False
    ):
        ok = rows[np.isfinite(rows["objective"].astype(float))].sort_values("_lr")
        line = ax.plot(ok["_lr"], ok["objective"], style, label=key, markersize=4)[0]
        bad = rows[~np.isfinite(rows["objective"].astype(float))]
        if len(bad):
            ax.plot(bad["_lr"], np.full(len(bad), top), "x", color=line.get_color(), label=f"{key}: diverged")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("objective: validation MSE (training MSE without a split)")
    ax.set_title("Where training converges: objective by learning rate (x: diverged)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


_STYLES = ("o-", "s--", "^-.", "v:", "D-", "P--", "*-.", "X:")
