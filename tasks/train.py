"""The training task: one run of one variant of the shared training loop."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.data import PreparedData
from training.config import TrainSettings
from training.loops import TrainResult, initial_params, train

PROGRESS_LINES = 10  # progress messages per variant in the Prefect log


@dataclass(frozen=True)
class TimedResult:
    """A training result with its wall-clock span (for the MLflow run's start and end)."""

    result: TrainResult
    started_ms: int
    seconds: float


@task(name="train", task_run_name="train-{variant}", cache_policy=NO_CACHE)
def train_variant(variant: str, prepared: PreparedData, settings: TrainSettings) -> TimedResult:
    """Train one variant and log its progress about ten times."""
    logger = get_run_logger()
    every = max(1, settings.epochs // PROGRESS_LINES)

    def on_epoch(epoch: int, loss: float, val_loss: float | None) -> None:
        if epoch % every == 0 or epoch == 1:
            shown = f", validation loss {val_loss:.6f}" if val_loss is not None else ""
            logger.info("%s epoch %d/%d: training loss %.6f%s", variant, epoch, settings.epochs, loss, shown)

    started_ms, t0 = int(time.time() * 1000), time.perf_counter()
    result = train(
        variant,
        prepared.x_train,
        prepared.y_train,
        lr=settings.lr,
        epochs=settings.epochs,
        init=initial_params(len(settings.features), settings.init_weight, settings.init_bias),
        x_val=prepared.x_val if prepared.has_val else None,
        y_val=prepared.y_val if prepared.has_val else None,
        optimizer=settings.optimizer,
        optimizer_options=settings.optimizer_options,
        on_epoch=on_epoch,
    )
    seconds = time.perf_counter() - t0
    if result.converged:
        logger.info(
            "%s finished %d epochs in %.2f s: loss %.6f",
            variant,
            result.epochs_run,
            seconds,
            result.train_loss[-1],
        )
    else:
        logger.warning(result.message)
    return TimedResult(result=result, started_ms=started_ms, seconds=seconds)
