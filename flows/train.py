"""The training flow: load, split and normalise, train each variant, evaluate, record, report, register.

Run it with ``make run ARGS="epochs=100"`` (``python -m flows.run train --help`` lists the parameters, from
``training.settings.TrainSettings``); schedule it from ``prefect.yaml``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, wait
from prefect.utilities.annotations import quote

from flows.parameters import takes
from tasks.data import load_dataset, prepare_data
from tasks.errors import fail_cleanly
from tasks.evaluate import evaluate_variants
from tasks.heartbeat import with_heartbeats
from tasks.record import (
    abort_tracking,
    check_tracking,
    finish_tracking,
    log_variant,
    start_tracking,
)
from tasks.recorder import VariantRecord
from tasks.registry import register_model, report_promotion
from tasks.report import outcome, outcome_line, report
from tasks.train import train_task
from training.loops import HINT
from training.runs import Trained
from training.settings import TrainSettings


class NoVariantConverged(RuntimeError):
    """Every variant diverged: there is no model to keep."""


@flow(
    name="train",
    description="Fit t_c = w * t_u + b (or any linear model, or chapter 6's network) three ways and record "
    "it in MLflow.",
)
@fail_cleanly(NoVariantConverged)
@with_heartbeats
@takes(TrainSettings)
def train(settings: TrainSettings) -> dict[str, Any]:
    """Train the model (the line or the network) with each chosen variant and record everything in MLflow."""
    check_tracking()
    loaded = load_dataset(settings.data, settings.features, settings.target)
    prepared = prepare_data(loaded, settings)
    run = start_tracking(settings, loaded)
    trained: list[Trained] = []
    logging: list[PrefectFuture[VariantRecord]] = []
    try:
        # one variant after another: the loops are CPU-bound Python, and threads would only contend for the
        # interpreter. Each variant is recorded (in a helper process where one runs) while the next trains.
        # quote(): results go in as they are; Prefect need not walk every epoch's loss looking for futures
        for variant in settings.variants:
            [done] = evaluate_variants(quote([train_task(variant, prepared, settings)]), prepared, settings)
            trained.append(done)
            logging.append(log_variant.submit(run, quote(done), loaded, prepared, settings))
        records = [future.result() for future in logging]
        finish_tracking(run, quote(trained), settings, report(run, quote(trained), records))
        promotion = None
        if settings.model_name and any(t.converged for t in trained):
            # last, so that a run failing in any step before never registers a model or moves the alias
            candidates = [(t, r) for t in trained for r in records if r.variant == t.variant]
            promotion = register_model(
                settings.model_name, settings.max_val_rmse, candidates, loaded, prepared
            )
            report_promotion(promotion, run.parent_run_id)
    except BaseException as exc:
        wait(logging)  # no child run is still being written when the parent is marked FAILED
        abort_tracking(run, repr(exc))
        raise

    if not any(t.converged for t in trained):
        where = ", ".join(f"{t.variant} at epoch {t.result.epochs_run}" for t in trained)
        raise NoVariantConverged(
            f"no variant converged: the loss became non-finite ({where}, lr={settings.lr}); {HINT}. "
            f"MLflow run {run.parent_run_id} records the curves."
        )
    logger = get_run_logger()
    for t in trained:
        logger.info("%-9s %s", t.variant, outcome_line(t))
    logger.info("Recorded in MLflow run %s", run.url or run.parent_run_id)
    return outcome(run, trained, records, promotion)
