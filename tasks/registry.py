"""The registry tasks: register the best variant, decide under a lock whether it becomes the champion, report.

The decisions themselves are pure functions in ``training.decisions``; this module fetches what they need
from MLflow, calls them, and records the outcome.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch
from prefect import get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency

from tasks import tracking
from tasks.data import LoadedData
from tasks.recorder import VariantRecord
from tasks.runinfo import prefect_tags
from training import decisions
from training.data import Prepared
from training.model import regression_metrics
from training.runs import Trained

CHAMPION = "champion"


@dataclass(frozen=True)
class Promotion:
    """What the registry step did."""

    model_name: str
    version: str | None  # the new version, None when nothing was registered
    variant: str
    decision: decisions.Decision
    challenger_mse: float
    champion_mse: float | None  # the incumbent on the same rows, None when there was none
    champion_version: str | None  # the champion after the decision
    message: str


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


def _scoring_rows(prepared: Prepared) -> tuple[pd.DataFrame, str]:
    """The rows both models are scored on, in original units, and what they are."""
    if prepared.has_val:
        return prepared.val_frame, "validation"
    return prepared.train_frame, "training (no validation split)"


def _refusal(
    model_name: str,
    variant: str,
    scored: dict[str, float],
    which: str,
    max_val_rmse: float | None,
    features: list[str],
) -> tuple[str, str | None] | None:
    """Why the best variant may not be registered (the gate, or a champion of other inputs), or None."""
    incumbent = tracking.alias_version(model_name, CHAMPION)
    if not decisions.gate(scored["rmse"], max_val_rmse):
        why = f"{variant}'s {which} RMSE {scored['rmse']:.4f} exceeds max_val_rmse={max_val_rmse}"
        return f"registration blocked by the quality gate: {why}", incumbent
    if incumbent is not None:
        inputs, _ = tracking.model_io(tracking.version_model_uri(model_name, incumbent))
        if inputs != features:
            why = f"{model_name}'s champion v{incumbent} takes {inputs}, this model takes {features}"
            return f"not registered: {why}; choose another model_name for a model of other inputs", incumbent
    return None


def _promote(model_name: str, version: str, variant: str, rows: pd.DataFrame, which: str) -> Promotion:
    """Score the new version on ``rows`` (``which`` says what they are), then, under a lock so that two runs
    finishing together cannot both win: read the champion, score it on the same rows, move the alias if the
    challenger wins; tag the decision."""
    target = rows.columns[-1]
    challenger = _mse(tracking.version_model_uri(model_name, version), rows, target)
    lock = f"model-registry-{model_name}"
    _ensure_lock(lock)
    with concurrency(lock, occupy=1, timeout_seconds=600, strict=True):
        incumbent = tracking.alias_version(model_name, CHAMPION)
        champion_mse = None
        if incumbent is not None:
            champion_mse = _mse(tracking.version_model_uri(model_name, incumbent), rows, target)
        decision = decisions.champion(challenger, champion_mse)
        if decision != "kept":
            tracking.set_alias(model_name, CHAMPION, version)
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
    against = "no champion yet" if incumbent is None else f"champion v{incumbent} MSE {champion_mse:.6f}"
    outcome = {
        "first": "first version, now champion",
        "promoted": "promoted to champion",
        "kept": "champion kept",
    }
    message = (
        f"{model_name} v{version} ({variant}) {which} MSE {challenger:.6f} vs {against} on {len(rows)} rows: "
        + outcome[decision]
    )
    winner = incumbent if decision == "kept" else version
    return Promotion(model_name, version, variant, decision, challenger, champion_mse, winner, message)


@task(name="register-model", task_run_name="register-model", cache_policy=NO_CACHE)
def register_model(
    model_name: str,
    max_val_rmse: float | None,
    candidates: list[tuple[Trained, VariantRecord]],
    loaded: LoadedData,
    prepared: Prepared,
) -> Promotion:
    """Register the best converged candidate and move the champion alias only if it beats the incumbent."""
    logger = get_run_logger()
    evaluated = {record.run_id: (t, record) for t, record in candidates if t.evaluation is not None}
    scores = {run_id: t.evaluation.scored["mse"] for run_id, (t, _) in evaluated.items()}
    best, record = evaluated[decisions.best(scores)]
    scored = best.evaluation.scored
    features = list(prepared.normalizer.features)
    rows, which = _scoring_rows(prepared)
    if refused := _refusal(model_name, best.variant, scored, which, max_val_rmse, features):
        message, incumbent = refused
        logger.warning(message)
        return Promotion(model_name, None, best.variant, "blocked", scored["mse"], None, incumbent, message)
    # a new version of the best model's logged model, tagged with its metrics and lineage
    metrics = {k: f"{v:.10g}" for k, v in best.evaluation.metrics().items() if math.isfinite(v)}
    tags = {"variant": best.variant, **metrics, **prefect_tags(), "data_hash": loaded.digest}
    version = tracking.register_version(model_name, record.model_uri, record.run_id, tags)
    promotion = _promote(model_name, version, best.variant, rows, which)
    logger.info(promotion.message)
    return promotion


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
