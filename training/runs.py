"""One variant trained on prepared data with one configuration, then evaluated: what the pipeline records.

``train_variant`` runs the shared loop with a configuration's settings and times it; ``evaluate_trained``
adds the metrics. The ``train`` flow does this for each variant; a sweep does it again for its best trials,
exactly (the sweep engine equals ``loops.train`` configuration by configuration).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import pandas as pd

from training.data import Prepared, prepare
from training.evaluation import Evaluation, evaluate
from training.loops import EpochCallback, TrainResult, train
from training.settings import TrainingConfig


@dataclass(frozen=True)
class Trained:
    """One trained variant: its result, its wall-clock span and, once evaluated, its metrics."""

    result: TrainResult
    started_ms: int  # for the tracking record's start time
    seconds: float
    evaluation: Evaluation | None = None  # None until evaluated, and for a variant that diverged

    @property
    def variant(self) -> str:
        """``manual``, ``autograd`` or ``optimizer``."""
        return self.result.variant

    @property
    def converged(self) -> bool:
        """True when every epoch ran with a finite loss."""
        return self.result.converged


def prepare_config(frame: pd.DataFrame, config: TrainingConfig, source: str) -> Prepared:
    """The configuration's split and normalisation of the rows of ``frame`` (read from ``source``)."""
    c = config
    return prepare(
        frame, c.features, c.target, c.normalize, c.scale, c.val_fraction, c.seed, source, c.val_indices
    )


def train_variant(
    variant: str, prepared: Prepared, config: TrainingConfig, on_epoch: EpochCallback | None = None
) -> Trained:
    """Train ``variant`` on the prepared split with the configuration's model, optimiser, epochs and start."""
    started_ms, t0 = int(time.time() * 1000), time.perf_counter()
    result = train(
        variant,
        prepared.x_train,
        prepared.y_train,
        lr=config.lr,
        epochs=config.epochs,
        init=config.initial_params(),
        x_val=prepared.x_val,  # train skips a validation split without rows
        y_val=prepared.y_val,
        optimizer=config.optimizer,
        optimizer_options=config.optimizer_options,
        on_epoch=on_epoch,
        model=config.architecture(),
    )
    return Trained(result=result, started_ms=started_ms, seconds=time.perf_counter() - t0)


def evaluate_trained(trained: Trained, prepared: Prepared, config: TrainingConfig, optimum: float) -> Trained:
    """The same value with its evaluation (unchanged when it diverged: there is nothing to evaluate).

    ``optimum`` is the line's least-squares training MSE; a network's evaluation reports none.
    """
    if not trained.converged:
        return trained
    ev = evaluate(
        trained.result.params,
        config.initial_params(),
        prepared.x_train,
        prepared.y_train,
        prepared.x_val,  # evaluate skips it likewise
        prepared.y_val,
        best_mse=optimum,
        model=config.architecture(),
    )
    return replace(trained, evaluation=ev)
