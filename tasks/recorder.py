"""The MLflow record of a training run, free of Prefect: used by the flow's tasks and by ``make upload``.

A parent run per flow run; a child run per variant with its curves, metrics, plots and model, recorded from a
``spool.VariantPayload`` (so the same code records live results and results that waited in the spool).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import plots, spool, tracking
from training import network
from training.data import Prepared
from training.runs import Trained
from training.settings import TrainingConfig


@dataclass(frozen=True)
class Tracking:
    """Where a flow run is recorded."""

    experiment_id: str
    parent_run_id: str
    url: str | None  # browser link when an MLflow server is in use


@dataclass(frozen=True)
class VariantRecord:
    """What was recorded for one variant."""

    variant: str
    run_id: str
    status: str  # FINISHED or FAILED
    model_uri: str | None  # models:/m-... for a converged variant


class RecordingFailed(RuntimeError):
    """MLflow could not take a variant's results; they wait in the spool for ``make upload``."""


def build_payload(
    trained: Trained,
    prepared: Prepared,
    settings: TrainingConfig,
    tags: dict[str, str],
    source: str,
    digest: str,
) -> spool.VariantPayload:
    """Everything the child run of one variant will hold, as plain data (the data rows by reference: the file
    ``source`` with its SHA-256 ``digest``, and the split)."""
    r, ev = trained.result, trained.evaluation
    return spool.VariantPayload(
        variant=r.variant,
        started_ms=trained.started_ms,
        seconds=trained.seconds,
        params=r.params.tolist(),
        train_loss=r.train_loss,
        val_loss=r.val_loss,
        stop_reason=r.stop_reason,
        message=r.message,
        metrics=ev.metrics() if ev else None,
        tags={**tags, "variant": r.variant, "stop_reason": r.stop_reason},
        run_params={**settings.as_params(), "variant": r.variant},
        features=list(settings.features),
        target=settings.target,
        epochs=settings.epochs,
        normalizer=prepared.normalizer.to_dict(),
        data=source,
        digest=digest,
        split=settings.model_dump(include={"val_fraction", "seed", "val_indices"}),
        architecture=settings.architecture().to_dict(),
    )


def record_variant(
    payload: spool.VariantPayload,
    experiment_id: str,
    parent_run_id: str,
    folder: str | None = None,
    name: str | None = None,
    rows: plots.FitRows | None = None,
) -> VariantRecord:
    """Record one variant as a child run: curves, metrics, plots and, if it converged, the model.

    A child run left by an earlier failed attempt is closed as KILLED; with ``folder``, the new child run's id
    is noted there as soon as it exists, so a failure from then on leaves nothing RUNNING after the upload.
    ``rows`` are what the fit plot and the model's input example need of the data, when the caller has them
    (else they are read again from the file).
    """
    p = payload
    rows = rows or plots.fit_rows(*p.frames())
    if p.partial_run_id:
        tracking.end_run(
            p.partial_run_id, tracking.KILLED, note="superseded by a complete recording of the same results"
        )
    run_id = tracking.start_run(
        experiment_id,
        name or p.variant,
        p.tags,
        p.run_params,
        parent_run_id=parent_run_id,
        start_time_ms=p.started_ms,
        on_created=(lambda run_id: spool.note_partial_run(Path(folder), run_id)) if folder else None,
    )
    try:
        return _record_child(p, experiment_id, run_id, rows)
    except BaseException as exc:
        with contextlib.suppress(Exception):  # the server may be the thing that failed
            tracking.end_run(run_id, tracking.FAILED, note=f"recording failed: {exc!r}")
        raise


def _record_child(
    p: spool.VariantPayload,
    experiment_id: str,
    run_id: str,
    rows: plots.FitRows,
) -> VariantRecord:
    model_uri = None
    if p.converged:
        # first: Model.log reads back the run's whole metric history, which is still empty here
        model_uri = tracking.log_model(run_id, experiment_id, p.predictor(), rows.train[p.features].head(3))
    curves = {"train_loss": p.train_loss, "val_loss": p.val_loss}
    tracking.log_curves(run_id, curves)
    tracking.log_curve_table(run_id, curves)
    summary = {"epochs_run": float(len(p.train_loss)), "train_seconds": p.seconds}
    tracking.log_figure(
        run_id, plots.loss_curve(p.variant, p.train_loss, p.val_loss, p.epochs), "loss_curve.png"
    )
    if not p.converged:
        tracking.log_metrics(run_id, summary)
        tracking.end_run(run_id, tracking.FAILED, note=p.message)
        return VariantRecord(p.variant, run_id, tracking.FAILED, None)
    predictor = p.predictor()
    arch = predictor.architecture
    if arch.is_linear:  # the line's weights and bias mean something one by one: slopes and intercept
        trained = {f"w_{f}": w for f, w in zip(p.features, p.params[:-1], strict=True)} | {"b": p.params[-1]}
        folded = predictor.normalizer.fold(predictor.params).tolist()  # the same line in original units
        coefficients = {f"coef_{f}": w for f, w in zip(predictor.features, folded[:-1], strict=True)}
        coefficients["intercept"] = folded[-1]
        tracking.log_metrics(run_id, {**summary, **trained, **coefficients, **p.metrics})
        tracking.log_dict(
            run_id, {"trained_space": trained, "original_units": coefficients}, "coefficients.json"
        )
    else:  # a network's weights only mean something together: kept as a whole, by layer
        tracking.log_metrics(run_id, {**summary, **p.metrics})
        layers = network.state_dict(predictor.params, arch.features, arch.hidden)
        weights = {name: value.tolist() for name, value in layers.items()}
        tracking.log_dict(run_id, {"architecture": arch.to_dict(), "weights": weights}, "network.json")
    tracking.log_figure(run_id, plots.fit_plot(predictor, rows), "fit.png")
    tracking.set_tags(run_id, {"model_uri": model_uri})
    tracking.end_run(run_id, tracking.FINISHED)
    return VariantRecord(p.variant, run_id, tracking.FINISHED, model_uri)


def closing(trained: list[Trained]) -> dict[str, Any]:
    """What ``close_parent`` needs: every variant's training curve, every converged variant's metrics."""
    return {
        "curves": {t.variant: t.result.train_loss for t in trained},
        "metrics": {t.variant: t.evaluation.metrics() for t in trained if t.evaluation},
    }


def close_parent(
    parent_run_id: str,
    curves: dict[str, list[float]],
    metrics: dict[str, dict[str, float]],
    epochs: int,
    note: str,
) -> str:
    """Overlay plot, headline metrics of the best variant, note, and FINISHED (FAILED if none converged)."""
    optimum = next(iter(metrics.values()))["optimum_mse"] if metrics else None
    tracking.log_figure(parent_run_id, plots.loss_curves(curves, epochs, optimum), "loss_curves.png")
    headline = {"variants_converged": float(len(metrics))}
    if metrics:
        # the best variant's numbers; each child run holds its own full set
        headline["optimum_mse"] = optimum
        headline["best_train_mse"] = min(m["train_mse"] for m in metrics.values())
        if all("val_mse" in m for m in metrics.values()):
            headline["best_val_mse"] = min(m["val_mse"] for m in metrics.values())
            headline["best_val_rmse"] = min(m["val_rmse"] for m in metrics.values())
    tracking.log_metrics(parent_run_id, headline)
    status = tracking.FINISHED if metrics else tracking.FAILED
    tracking.end_run(parent_run_id, status, note=note)
    return status
