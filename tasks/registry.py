"""The registry task: register the best variant and decide, under a lock, whether it becomes the champion."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import pandas as pd
import torch
from prefect import get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run

from tasks import tracking
from tasks.data import LoadedData, PreparedData
from tasks.record import VariantRecord
from training.evaluation import Evaluation
from training.model import regression_metrics

CHAMPION = "champion"
# fault injection for the tests: hold the registry lock this long after reading the champion
HOLD_ENV = "PIPELINE_REGISTRY_HOLD_SECONDS"


@dataclass(frozen=True)
class Promotion:
    """What the registry step did."""

    model_name: str
    version: str | None  # the new version, None when nothing was registered
    variant: str
    decision: str  # "first", "promoted", "kept" or "blocked"
    challenger_mse: float
    champion_mse: float | None  # the incumbent on the same rows, None when there was none
    champion_version: str | None  # the champion after the decision
    message: str


def best_variant(evaluations: dict[str, Evaluation]) -> str:
    """Lowest validation MSE, or lowest training MSE when there is no validation split."""
    return min(evaluations, key=lambda v: (evaluations[v].val or evaluations[v].train)["mse"])


def _mse(model_uri: str, frame: pd.DataFrame, target: str) -> float:
    """MSE of a registered model on rows in original units, through the pyfunc interface users call."""
    predicted = tracking.load_model(model_uri).predict(frame.drop(columns=[target]))[target]
    actual, predicted = torch.tensor(frame[target].to_numpy()), torch.tensor(predicted.to_numpy())
    return regression_metrics(actual, predicted)["mse"]


def _ensure_lock(name: str) -> None:
    """Create the registry's global concurrency limit (one slot) unless it exists."""
    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except Exception:  # ObjectAlreadyExists, or a lost race to create it first
            client.read_global_concurrency_limit_by_name(name)  # raises if it really is missing


@task(name="register-model", task_run_name="register-model", cache_policy=NO_CACHE)
def register_best(
    model_name: str,
    records: list[VariantRecord],
    evaluations: dict[str, Evaluation],
    loaded: LoadedData,
    prepared: PreparedData,
    target: str,
    max_val_rmse: float | None = None,
) -> Promotion:
    """Register the best converged variant and move the champion alias only if it beats the incumbent."""
    logger = get_run_logger()
    variant = best_variant(evaluations)
    ev = evaluations[variant]
    scored = ev.val or ev.train
    rows = prepared.val_frame if prepared.has_val else prepared.train_frame
    which = "validation" if prepared.has_val else "training (no validation split)"
    if max_val_rmse is not None and not scored["rmse"] <= max_val_rmse:
        message = (
            f"registration blocked by the quality gate: {variant}'s {which} RMSE {scored['rmse']:.4f} "
            f"exceeds max_val_rmse={max_val_rmse}"
        )
        logger.warning(message)
        return Promotion(model_name, None, variant, "blocked", scored["mse"], None, None, message)

    features = list(prepared.normalizer.features)
    incumbent = tracking.alias_version(model_name, CHAMPION)
    if incumbent is not None:
        champion_features, _ = tracking.model_io(tracking.version_model_uri(model_name, incumbent))
        if champion_features != features:
            message = (
                f"not registered: {model_name}'s champion v{incumbent} takes {champion_features}, "
                f"this model takes {features}; choose another model_name for a model of other inputs"
            )
            logger.warning(message)
            return Promotion(model_name, None, variant, "blocked", scored["mse"], None, incumbent, message)

    record = next(r for r in records if r.variant == variant)
    tags = {
        "variant": variant,
        **{k: f"{v:.10g}" for k, v in ev.metrics().items() if math.isfinite(v)},
        "prefect.flow_run_id": str(flow_run.get_id() or ""),
        "prefect.flow_run_name": str(flow_run.get_name() or ""),
        "data_hash": loaded.digest,
    }
    version = tracking.register_version(model_name, record.model_uri, record.run_id, tags)
    challenger = _mse(tracking.version_model_uri(model_name, version), rows, target)

    lock = f"model-registry-{model_name}"
    _ensure_lock(lock)
    with concurrency(lock, occupy=1, timeout_seconds=600, strict=True):
        incumbent = tracking.alias_version(model_name, CHAMPION)
        if hold := float(os.environ.get(HOLD_ENV, 0)):
            time.sleep(hold)
        if incumbent is None:
            decision, champion_mse, winner = "first", None, version
        else:
            champion_mse = _mse(tracking.version_model_uri(model_name, incumbent), rows, target)
            # strictly better wins; a tie keeps the incumbent
            decision, winner = ("promoted", version) if challenger < champion_mse else ("kept", incumbent)
        if winner == version:
            tracking.set_alias(model_name, CHAMPION, version)
    against = f"champion v{incumbent} MSE {champion_mse:.6f}" if incumbent is not None else "no champion yet"
    message = (
        f"{model_name} v{version} ({variant}) {which} MSE {challenger:.6f} vs {against} on {len(rows)} rows: "
        + {
            "first": "first version, now champion",
            "promoted": "promoted to champion",
            "kept": "champion kept",
        }[decision]
    )
    tracking.set_version_tags(
        model_name,
        version,
        {
            "promotion.decision": decision,
            "promotion.challenger_mse": f"{challenger:.10g}",
            "promotion.champion_mse": "" if champion_mse is None else f"{champion_mse:.10g}",
            "promotion.champion_version": incumbent or "",
            "promotion.rows": f"{len(rows)} {which}",
        },
    )
    logger.info(message)
    return Promotion(model_name, version, variant, decision, challenger, champion_mse, winner, message)


@task(name="report-promotion", task_run_name="report-promotion", cache_policy=NO_CACHE)
def report_promotion(promotion: Promotion, parent_run_id: str) -> None:
    """Publish the registry decision as a Prefect artifact and as tags on the MLflow parent run."""
    lines = [
        "# Model registry",
        "",
        promotion.message[0].upper() + promotion.message[1:] + ".",
        "",
        "| model | new version | variant | decision | challenger MSE | champion MSE | champion now |",
        "|---|---|---|---|---|---|---|",
        f"| {promotion.model_name} | {promotion.version or '-'} | {promotion.variant} | "
        f"{promotion.decision} | {promotion.challenger_mse:.6f} | "
        f"{'-' if promotion.champion_mse is None else f'{promotion.champion_mse:.6f}'} | "
        f"{promotion.champion_version or '-'} |",
    ]
    create_markdown_artifact(
        markdown="\n".join(lines) + "\n", key="model-promotion", description=promotion.message
    )
    tracking.set_tags(
        parent_run_id,
        {
            "registry.model": promotion.model_name,
            "registry.version": promotion.version or "",
            "registry.decision": promotion.decision,
            "registry.message": promotion.message,
        },
    )
