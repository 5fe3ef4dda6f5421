"""Tasks that write the MLflow record: a parent run per flow run, a child run per variant."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment, flow_run
from prefect.settings import get_current_settings

from tasks import plots, spool, tracking
from tasks.data import LoadedData, PreparedData
from tasks.train import TimedResult
from training.config import TrainSettings
from training.evaluation import Evaluation
from training.serving import LinearPredictor


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


def _prefect_tags() -> dict[str, str]:
    tags = {
        "prefect.flow_run_id": str(flow_run.get_id() or ""),
        "prefect.flow_run_name": str(flow_run.get_name() or ""),
    }
    if deployment.get_name():
        tags["prefect.deployment"] = str(deployment.get_name())
    return tags


@task(name="check-tracking-server", task_run_name="check-tracking-server", cache_policy=NO_CACHE)
def check_tracking() -> str:
    """Before any work: is the MLflow tracking server there? Fails within seconds, naming it, if not."""
    uri = tracking.check_reachable()
    get_run_logger().info("Tracking to %s", uri)
    return uri


def provenance() -> str:
    """A markdown line: which Prefect flow run (and deployment) produced the run, linked when a UI exists."""
    run_id, name = flow_run.get_id(), flow_run.get_name()
    ui = get_current_settings().ui_url
    who = f"[{name}]({ui}/runs/flow-run/{run_id})" if ui and run_id else f"{name} (`{run_id}`)"
    line = f"Produced by Prefect flow run {who}"
    if deployment.get_name():
        dep_id = deployment.get_id()
        dep = (
            f"[{deployment.get_name()}]({ui}/deployments/deployment/{dep_id})"
            if ui
            else deployment.get_name()
        )
        line += f" of deployment {dep}"
    return line + "."


def sweep_orphans(experiment_id: str) -> list[str]:
    """Mark KILLED the MLflow runs left RUNNING by flow runs that Prefect knows have ended (crashed, killed).

    A process killed with SIGKILL runs no cleanup; its worker reports the flow run Crashed, and the next run
    of the pipeline closes what it left open. Runs of flow runs this Prefect API does not know are left alone.
    """
    ended: dict[str, str | None] = {}
    notes = []
    with get_client(sync_client=True) as prefect:
        for run_id, flow_run_id in tracking.running_runs(experiment_id):
            if not flow_run_id or flow_run_id == str(flow_run.get_id()):
                continue
            if flow_run_id not in ended:
                try:
                    state = prefect.read_flow_run(flow_run_id).state
                except (ObjectNotFound, ValueError):
                    state = None
                ended[flow_run_id] = state.name if state is not None and state.is_final() else None
            if ended[flow_run_id]:
                note = (
                    f"Left RUNNING by Prefect flow run {flow_run_id}, which ended {ended[flow_run_id]}; "
                    f"marked KILLED by flow run {flow_run.get_name()}."
                )
                tracking.end_run(run_id, tracking.KILLED, note=note)
                notes.append(f"MLflow run {run_id}: {note}")
    return notes


# No task-level retries on the tasks that write to MLflow: re-running one after a partial success would
# create a second run and leave the first RUNNING. MLflow's client retries each request instead (seven
# times, 1 to 64 s apart; tasks/environment.py), which is safe because each request is all-or-nothing.
@task(name="start-mlflow-run", task_run_name="start-mlflow-run", cache_policy=NO_CACHE)
def start_tracking(settings: TrainSettings, loaded: LoadedData) -> Tracking:
    """Create the parent run: flow parameters, Prefect ids, data hash, and the data set as input."""
    logger = get_run_logger()
    experiment_id = tracking.ensure_experiment(settings.experiment)
    for orphan in sweep_orphans(experiment_id):
        logger.warning(orphan)
    tags = {**_prefect_tags(), "data_hash": loaded.digest, "data_source": loaded.source}
    run_name = tags["prefect.flow_run_name"] or "train"
    tags["mlflow.note.content"] = provenance()
    run_id = tracking.start_run(experiment_id, run_name, tags, settings.as_params())
    tracking.log_dataset(run_id, loaded.frame, loaded.source, loaded.digest, settings.target, "training")
    url = tracking.run_url(run_id, experiment_id)
    logger.info(
        "MLflow run %s in experiment %r (%s)", run_id, settings.experiment, url or tracking.tracking_uri()
    )
    return Tracking(experiment_id=experiment_id, parent_run_id=run_id, url=url)


def _coefficients(predictor: LinearPredictor) -> dict[str, float]:
    folded = predictor.normalizer.fold(predictor.params).tolist()
    return {
        **{f"coef_{f}": w for f, w in zip(predictor.features, folded[:-1], strict=True)},
        "intercept": folded[-1],
    }


class RecordingFailed(RuntimeError):
    """MLflow could not take a variant's results; they wait in the spool for ``make upload``."""


def build_payload(
    timed: TimedResult, evaluation: Evaluation | None, prepared: PreparedData, settings: TrainSettings
) -> spool.VariantPayload:
    """Everything the child run of one variant will hold, as plain data."""
    r = timed.result
    columns = [*settings.features, settings.target]
    return spool.VariantPayload(
        variant=r.variant,
        started_ms=timed.started_ms,
        seconds=timed.seconds,
        params=r.params.tolist(),
        train_loss=r.train_loss,
        val_loss=r.val_loss,
        stop_reason=r.stop_reason,
        message=r.message,
        metrics=evaluation.metrics() if evaluation else None,
        tags={**_prefect_tags(), "variant": r.variant, "stop_reason": r.stop_reason},
        run_params={**settings.as_params(), "variant": r.variant},
        features=list(settings.features),
        target=settings.target,
        epochs=settings.epochs,
        normalizer=prepared.normalizer.to_dict(),
        train_rows=prepared.train_frame[columns].to_dict(orient="records"),
        val_rows=prepared.val_frame[columns].to_dict(orient="records"),
    )


def record_payload(
    payload: spool.VariantPayload, experiment_id: str, parent_run_id: str, folder: str | None = None
) -> VariantRecord:
    """Record one variant as a child run: curves, metrics, plots and, if it converged, the model.

    Used by the flow and by ``ops.upload``. A child run left by an earlier failed attempt is closed as KILLED.
    """
    p = payload
    if p.partial_run_id:
        tracking.end_run(
            p.partial_run_id, tracking.KILLED, note="superseded by a complete upload of the same results"
        )
    run_id = tracking.start_run(
        experiment_id,
        p.variant,
        p.tags,
        p.run_params,
        parent_run_id=parent_run_id,
        start_time_ms=p.started_ms,
        # remembered at once: if MLflow goes away from here on, the upload closes this half-written run
        on_created=(lambda run_id: spool.note_partial_run(Path(folder), run_id)) if folder else None,
    )
    try:
        model_uri = None
        train_frame, val_frame = p.frames()
        if p.converged:
            predictor = p.predictor()
            # first: Model.log reads back the run's whole metric history, which is still empty here
            model_uri = tracking.log_model(run_id, experiment_id, predictor, train_frame[p.features].head(3))
        tracking.log_curves(run_id, {"train_loss": p.train_loss, "val_loss": p.val_loss})
        summary = {"epochs_run": float(len(p.train_loss)), "train_seconds": p.seconds}
        tracking.log_figure(
            run_id, plots.loss_curve(p.variant, p.train_loss, p.val_loss, p.epochs), "loss_curve.png"
        )
        if not p.converged:
            tracking.log_metrics(run_id, summary)
            tracking.end_run(run_id, tracking.FAILED, note=p.message)
            return VariantRecord(p.variant, run_id, tracking.FAILED, None)
        trained = {f"w_{f}": w for f, w in zip(p.features, p.params[:-1], strict=True)}
        trained["b"] = p.params[-1]
        coefficients = _coefficients(predictor)
        tracking.log_metrics(run_id, {**summary, **trained, **coefficients, **p.metrics})
        tracking.log_dict(
            run_id, {"trained_space": trained, "original_units": coefficients}, "coefficients.json"
        )
        tracking.log_figure(run_id, plots.fit_plot(predictor, train_frame, val_frame), "fit.png")
        tracking.set_tags(run_id, {"model_uri": model_uri})
        tracking.end_run(run_id, tracking.FINISHED)
    except BaseException as exc:
        with contextlib.suppress(Exception):  # the server may be the thing that failed
            tracking.end_run(run_id, tracking.FAILED, note=f"recording failed: {exc!r}")
        raise
    return VariantRecord(p.variant, run_id, tracking.FINISHED, model_uri)


def _closing(results: list[TimedResult], evaluations: dict[str, Evaluation]) -> dict[str, dict]:
    """What ``close_parent`` needs: every variant's training curve, every converged variant's metrics."""
    return {
        "curves": {t.result.variant: t.result.train_loss for t in results},
        "metrics": {variant: ev.metrics() for variant, ev in evaluations.items()},
    }


@task(name="spool-results", task_run_name="spool-results", cache_policy=NO_CACHE)
def spool_results(
    run: Tracking,
    results: list[TimedResult],
    evaluations: dict[str, Evaluation],
    prepared: PreparedData,
    settings: TrainSettings,
) -> dict[str, str]:
    """Keep every variant's results on local disk until MLflow has recorded them."""
    payloads = [build_payload(t, evaluations.get(t.result.variant), prepared, settings) for t in results]
    parent = {
        "experiment": settings.experiment,
        "epochs": settings.epochs,
        "tags": _prefect_tags(),
        "params": settings.as_params(),
        # what closing the parent run needs, whichever variants are already recorded when MLflow goes away
        **_closing(results, evaluations),
    }
    return spool.write(run.parent_run_id, parent, payloads)


@task(name="log-variant", task_run_name="log-{variant}", cache_policy=NO_CACHE)
def log_variant(run: Tracking, variant: str, folder: str) -> VariantRecord:
    """Record one spooled variant as a child run; on success its local copy is deleted."""
    logger = get_run_logger()
    try:
        record = record_payload(spool.read(Path(folder)), run.experiment_id, run.parent_run_id, folder)
    except Exception as exc:
        raise RecordingFailed(
            f"could not record {variant} in MLflow at {tracking.tracking_uri()}: {exc}. Its weights and "
            f"curves are kept in {folder}; when the server is back, `make upload` records them as a full run"
        ) from exc
    spool.remove(folder)
    logger.info("%s recorded as MLflow run %s, model %s", variant, record.run_id, record.model_uri)
    return record


@task(name="finish-mlflow-run", task_run_name="finish-mlflow-run", cache_policy=NO_CACHE)
def finish_tracking(
    run: Tracking,
    results: list[TimedResult],
    evaluations: dict[str, Evaluation],
    settings: TrainSettings,
    summary: str,
) -> str:
    """Close the parent run with the overlay plot, the best variant's metrics and the summary as its note.

    The spool keeps what closing needs until it is done: if MLflow goes away here, ``make upload`` closes it.
    """
    try:
        status = close_parent(
            run.parent_run_id,
            **_closing(results, evaluations),
            epochs=settings.epochs,
            note=f"{provenance()}\n\n{summary}",
        )
    except Exception as exc:
        kept = spool.spool_root() / run.parent_run_id
        raise RecordingFailed(
            f"could not close MLflow run {run.parent_run_id} at {tracking.tracking_uri()}: {exc}. Every "
            f"variant is recorded; the run's summary is kept in {kept}; when the server is back, "
            "`make upload` closes the run"
        ) from exc
    spool.cleanup(run.parent_run_id)
    return status


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


@task(name="abort-mlflow-run", task_run_name="abort-mlflow-run", cache_policy=NO_CACHE)
def abort_tracking(run: Tracking, reason: str) -> None:
    """Mark the parent run FAILED with the reason, so no run is left RUNNING (if the server still answers)."""
    try:
        tracking.end_run(
            run.parent_run_id, tracking.FAILED, note=f"{provenance()}\n\nThe flow run failed: {reason}"
        )
    except Exception as exc:  # the tracking server itself may be what failed
        get_run_logger().warning("could not mark MLflow run %s FAILED: %s", run.parent_run_id, exc)
