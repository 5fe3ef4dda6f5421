"""Figures for the tracking record, drawn with matplotlib's object API (thread-safe, no pyplot state)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from training.serving import Predictor


def _loss_axes(fig: Figure, epochs: int):
    ax = fig.add_subplot()
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE loss (log scale)")
    ax.set_yscale("log")
    ax.set_xlim(1, max(2, epochs))
    ax.grid(True, which="both", alpha=0.3)
    return ax


def _finite(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(values, dtype=float)
    x = np.arange(1, len(y) + 1)
    keep = np.isfinite(y) & (y > 0)
    return x[keep], y[keep]


def loss_curve(variant: str, train_loss: Sequence[float], val_loss: Sequence[float], epochs: int) -> Figure:
    """One variant's training (and validation) loss per epoch."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = _loss_axes(fig, epochs)
    ax.plot(*_finite(train_loss), label="train")
    if len(val_loss):
        ax.plot(*_finite(val_loss), label="validation", linestyle="--")
    ax.set_title(f"{variant}: loss per epoch")
    ax.legend()
    return fig


def loss_curves(curves: Mapping[str, Sequence[float]], epochs: int, optimum: float | None = None) -> Figure:
    """Every variant's training loss on one plot, with the least-squares optimum as a floor."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
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


def fit_plot(predictor: Predictor, train_frame, val_frame, title: str = "") -> Figure:
    """Data and fitted model in original units, as the book's figure: the model drawn across the data's range
    (widened by ``plot_range``) for one feature, its value at each data row marked; predicted-vs-actual for
    several features."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    target = predictor.target
    frames = [("train", train_frame, "o"), ("validation", val_frame, "s")]
    if len(predictor.features) == 1:
        feature = predictor.features[0]
        for label, frame, marker in frames:
            if len(frame):
                ax.scatter(frame[feature], frame[target], marker=marker, label=label)
        both = np.concatenate([train_frame[feature].to_numpy(), val_frame[feature].to_numpy()])
        grid = np.linspace(*plot_range(both), 281)  # fine enough for a curve
        ax.plot(grid, predictor.predict({feature: grid})[target], color="black", label="model")
        ax.scatter(both, predictor.predict({feature: both})[target], marker="x", color="black", zorder=3)
        ax.set_xlabel(feature)
        ax.set_ylabel(target)
    else:
        for label, frame, marker in frames:
            if len(frame):
                ax.scatter(frame[target], predictor.predict(frame)[target], marker=marker, label=label)
        ax.axline((0, 0), slope=1, color="black", linewidth=0.8, label="perfect prediction")
        ax.set_xlabel(f"actual {target}")
        ax.set_ylabel(f"predicted {target}")
    ax.set_title(title or f"{predictor.variant}: {predictor.architecture.describe()}, in original units")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig
