"""The training task: one variant of the shared training loop, with its progress in the Prefect log."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from training.data import Prepared
from training.runs import Trained, train_variant
from training.settings import TrainingConfig

PROGRESS_LINES = 10  # progress messages per variant in the Prefect log


@task(name="train", task_run_name="train-{variant}", cache_policy=NO_CACHE)
def train_task(variant: str, prepared: Prepared, config: TrainingConfig) -> Trained:
    """Train one variant and log its progress about ten times."""
    logger = get_run_logger()
    every = max(1, config.epochs // PROGRESS_LINES)

    def on_epoch(epoch: int, loss: float, val_loss: float | None) -> None:
        if epoch % every == 0 or epoch == 1:
            shown = f", validation loss {val_loss:.6f}" if val_loss is not None else ""
            logger.info("%s epoch %d/%d: training loss %.6f%s", variant, epoch, config.epochs, loss, shown)

    trained = train_variant(variant, prepared, config, on_epoch)
    if trained.converged:
        r = trained.result
        logger.info(
            "%s finished %d epochs in %.2f s: loss %.6f",
            variant,
            r.epochs_run,
            trained.seconds,
            r.train_loss[-1],
        )
    else:
        logger.warning(trained.result.message)
    return trained
