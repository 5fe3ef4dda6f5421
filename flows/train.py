"""The training flow: load, split and normalise, train each variant, evaluate, record, report.

Run it with ``make run`` or ``python -m flows.train [--epochs 100 ...]``; schedule it from ``prefect.yaml``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from tasks.data import load_dataset, prepare_data
from tasks.errors import fail_cleanly
from tasks.evaluate import evaluate_variants
from tasks.record import (
    abort_tracking,
    check_tracking,
    finish_tracking,
    log_variant,
    spool_results,
    start_tracking,
)
from tasks.registry import register_best, report_promotion
from tasks.report import outcome, outcome_lines, report
from tasks.train import train_variant
from training.config import TrainSettings, check_settings
from training.loops import HINT, VARIANTS, optimizer_classes

Normalize = Literal["none", "scale", "zscore", "minmax"]
VariantName = Literal["manual", "autograd", "optimizer"]
OptimizerName = Literal[tuple(optimizer_classes())]  # every torch.optim class, as a drop-down in the UI


class Init(BaseModel):
    """Starting parameters: one weight for every feature (or a list, one per feature) and the bias."""

    weight: float | list[float] = 1.0
    bias: float = 0.0


class NoVariantConverged(RuntimeError):
    """Every variant diverged: there is no model to keep."""


@flow(
    name="train",
    description="Fit t_c = w * t_u + b (or any linear model) three ways and record it in MLflow.",
)
@fail_cleanly(NoVariantConverged)
def train(
    data: str = "data/thermometer.csv",
    features: Annotated[list[str], Field(min_length=1)] = ["t_u"],  # noqa: B006 (never mutated; shown in the UI form)
    target: str = "t_c",
    normalize: Normalize = "scale",
    scale: Annotated[float, Field(gt=0)] = 0.1,
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2,
    seed: int = 42,
    variants: Annotated[list[VariantName], Field(min_length=1)] = list(VARIANTS),  # noqa: B006
    optimizer: OptimizerName = "SGD",
    optimizer_options: dict[str, Any] = {},  # noqa: B006
    lr: Annotated[float, Field(gt=0)] = 1e-2,
    epochs: Annotated[int, Field(ge=1)] = 5000,
    init: Init | None = None,
    experiment: Annotated[str, Field(min_length=1)] = "thermometer",
    model_name: Annotated[str, Field(min_length=1)] | None = "thermometer",
    max_val_rmse: Annotated[float, Field(gt=0)] | None = None,
) -> dict[str, Any]:
    """Train the linear model with each chosen variant and record everything in MLflow."""
    logger = get_run_logger()
    init = init or Init()
    settings = TrainSettings(
        data=data,
        features=tuple(features),
        target=target,
        normalize=normalize,
        scale=scale,
        val_fraction=val_fraction,
        seed=seed,
        variants=tuple(dict.fromkeys(variants)),
        optimizer=optimizer,
        optimizer_options=dict(optimizer_options),
        lr=lr,
        epochs=epochs,
        init_weight=tuple(init.weight) if isinstance(init.weight, list) else init.weight,
        init_bias=init.bias,
        experiment=experiment,
        model_name=model_name,
        max_val_rmse=max_val_rmse,
    )
    check_settings(settings)

    check_tracking()
    loaded = load_dataset(data, list(features), target)
    prepared = prepare_data(loaded, list(features), target, normalize, scale, val_fraction, seed)
    run = start_tracking(settings, loaded)
    try:
        # one after another: the loops are CPU-bound Python, and threads would only contend for the GIL
        results = [train_variant(v, prepared, settings) for v in settings.variants]
        evaluations = evaluate_variants(results, prepared, settings)
        spooled = spool_results(run, results, evaluations, prepared, settings)
        logged = [log_variant.submit(run, variant, folder) for variant, folder in spooled.items()]
        records = [future.result() for future in logged]
        summary = report(run, results, evaluations, records)
        finish_tracking(run, results, evaluations, settings, summary)
        # last, so that a run failing in any step before never registers a model or moves the alias
        promotion = None
        if model_name and evaluations:
            promotion = register_best(
                model_name, records, evaluations, loaded, prepared, target, max_val_rmse
            )
            report_promotion(promotion, run.parent_run_id)
    except BaseException as exc:
        abort_tracking(run, repr(exc))
        raise

    if not evaluations:
        where = ", ".join(f"{t.result.variant} at epoch {t.result.epochs_run}" for t in results)
        raise NoVariantConverged(
            f"no variant converged: the loss became non-finite ({where}, lr={lr}); {HINT}. "
            f"MLflow run {run.parent_run_id} records the curves."
        )
    for line in outcome_lines(results, evaluations):
        logger.info(line)
    logger.info("Recorded in MLflow run %s", run.url or run.parent_run_id)
    return outcome(run, results, evaluations, records, promotion)
