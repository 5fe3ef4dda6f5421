"""Tasks that write the MLflow record: a parent run per flow run, a child run per variant."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment, flow_run
from prefect.settings import get_current_settings

from tasks import plots, tracking
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


@task(
    name="start-mlflow-run",
    task_run_name="start-mlflow-run",
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
)
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


@task(name="log-variant", task_run_name="log-{timed.result.variant}", cache_policy=NO_CACHE)
def log_variant(
    run: Tracking,
    timed: TimedResult,
    evaluation: Evaluation | None,
    prepared: PreparedData,
    settings: TrainSettings,
) -> VariantRecord:
    """Record one variant as a child run: curves, metrics, plots and, if it converged, the model."""
    logger = get_run_logger()
    r = timed.result
    tags = {**_prefect_tags(), "variant": r.variant, "stop_reason": r.stop_reason}
    params = {**settings.as_params(), "variant": r.variant}
    run_id = tracking.start_run(
        run.experiment_id,
        r.variant,
        tags,
        params,
        parent_run_id=run.parent_run_id,
        start_time_ms=timed.started_ms,
    )
    try:
        model_uri = None
        if r.converged:
            predictor = LinearPredictor(r.params, prepared.normalizer, settings.target, r.variant)
            example = prepared.train_frame[list(settings.features)].head(3)
            # first: Model.log reads back the run's whole metric history, which is still empty here
            model_uri = tracking.log_model(run_id, run.experiment_id, predictor, example)
        tracking.log_curves(run_id, {"train_loss": r.train_loss, "val_loss": r.val_loss})
        summary = {"epochs_run": float(r.epochs_run), "train_seconds": timed.seconds}
        curve_plot = plots.loss_curve(r.variant, r.train_loss, r.val_loss, settings.epochs)
        tracking.log_figure(run_id, curve_plot, "loss_curve.png")
        if not r.converged:
            tracking.log_metrics(run_id, summary)
            tracking.end_run(run_id, tracking.FAILED, note=r.message)
            return VariantRecord(r.variant, run_id, tracking.FAILED, None)
        trained = {f"w_{f}": w for f, w in zip(settings.features, r.params[:-1].tolist(), strict=True)}
        trained["b"] = float(r.params[-1])
        coefficients = _coefficients(predictor)
        tracking.log_metrics(run_id, {**summary, **trained, **coefficients, **evaluation.metrics()})
        tracking.log_dict(
            run_id, {"trained_space": trained, "original_units": coefficients}, "coefficients.json"
        )
        fit = plots.fit_plot(predictor, prepared.train_frame, prepared.val_frame)
        tracking.log_figure(run_id, fit, "fit.png")
        tracking.set_tags(run_id, {"model_uri": model_uri})
        tracking.end_run(run_id, tracking.FINISHED)
    except BaseException as exc:
        tracking.end_run(run_id, tracking.FAILED, note=f"recording failed: {exc!r}")
        raise
    logger.info("%s recorded as MLflow run %s, model %s", r.variant, run_id, model_uri)
    return VariantRecord(r.variant, run_id, tracking.FINISHED, model_uri)


@task(
    name="finish-mlflow-run",
    task_run_name="finish-mlflow-run",
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
)
def finish_tracking(
    run: Tracking,
    results: list[TimedResult],
    evaluations: dict[str, Evaluation],
    settings: TrainSettings,
    summary: str,
) -> str:
    """Close the parent run with the overlay plot, the best variant's metrics and the summary as its note."""
    curves = {t.result.variant: t.result.train_loss for t in results}
    optimum = next(iter(evaluations.values())).optimum_mse if evaluations else None
    tracking.log_figure(
        run.parent_run_id, plots.loss_curves(curves, settings.epochs, optimum), "loss_curves.png"
    )
    metrics = {"variants_converged": float(len(evaluations))}
    if evaluations:
        # the best variant's headline numbers; each child run holds its own full set
        metrics["optimum_mse"] = optimum
        metrics["best_train_mse"] = min(ev.train["mse"] for ev in evaluations.values())
        if any(ev.val for ev in evaluations.values()):
            metrics["best_val_mse"] = min(ev.val["mse"] for ev in evaluations.values())
            metrics["best_val_rmse"] = min(ev.val["rmse"] for ev in evaluations.values())
    tracking.log_metrics(run.parent_run_id, metrics)
    status = tracking.FINISHED if evaluations else tracking.FAILED
    tracking.end_run(run.parent_run_id, status, note=f"{provenance()}\n\n{summary}")
    return status


@task(name="abort-mlflow-run", task_run_name="abort-mlflow-run", cache_policy=NO_CACHE)
def abort_tracking(run: Tracking, reason: str) -> None:
    """Mark the parent run FAILED with the reason, so no run is left RUNNING."""
    tracking.end_run(
        run.parent_run_id, tracking.FAILED, note=f"{provenance()}\n\nThe flow run failed: {reason}"
    )
