"""Tasks that write the MLflow record of a flow run; ``tasks.recorder`` does the writing.

No task-level retries here: re-running one after a partial success would create a second run and leave the
first RUNNING. MLflow's client retries each request instead (``tasks/environment.py``), which is safe because
each request is all-or-nothing.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from tasks import plots, recorder_process, spool, tracking
from tasks.data import LoadedData
from tasks.orphans import close_orphans
from tasks.recorder import (
    RecordingFailed,
    Tracking,
    VariantRecord,
    build_payload,
    close_parent,
    closing,
)
from tasks.runinfo import prefect_tags, provenance
from training.data import Prepared
from training.runs import Trained
from training.settings import TrainSettings


@task(
    name="check-tracking-server",
    task_run_name="check-tracking-server",
    retries=2,
    retry_delay_seconds=1,
    cache_policy=NO_CACHE,
)
def check_tracking() -> str:
    """Before any work: is the MLflow tracking server there? Fails within seconds, naming it, if not."""
    uri = tracking.check_reachable()
    get_run_logger().info("Tracking to %s", uri)
    return uri


@task(name="start-mlflow-run", task_run_name="start-mlflow-run", cache_policy=NO_CACHE)
def start_tracking(settings: TrainSettings, loaded: LoadedData) -> Tracking:
    """Create the parent run: flow parameters, Prefect ids, data hash, and the data set as input."""
    logger = get_run_logger()
    experiment_id = tracking.ensure_experiment(settings.experiment)
    for orphan in close_orphans(experiment_id, (str(flow_run.get_id()), str(flow_run.get_name()))):
        logger.warning(orphan)
    tags = {**prefect_tags(), "data_hash": loaded.digest, "data_source": loaded.source}
    tags["mlflow.note.content"] = provenance()
    run_id = tracking.start_run(
        experiment_id, tags["prefect.flow_run_name"] or "train", tags, settings.as_params()
    )
    tracking.log_dataset(run_id, loaded.frame, loaded.source, loaded.digest, "training")
    url = tracking.run_url(run_id, experiment_id)
    logger.info(
        "MLflow run %s in experiment %r (%s)", run_id, settings.experiment, url or tracking.tracking_uri()
    )
    return Tracking(experiment_id=experiment_id, parent_run_id=run_id, url=url)


def spool_variant(
    run: Tracking, trained: Trained, loaded: LoadedData, prepared: Prepared, settings: TrainSettings
) -> str:
    """Keep one variant's results on local disk until MLflow has recorded them; return its folder."""
    tags = prefect_tags()
    payload = build_payload(trained, prepared, settings, tags, loaded.source, loaded.digest)
    # what closing the parent run needs, whichever variants are already recorded when MLflow goes away
    parent = {
        "experiment": settings.experiment,
        "epochs": settings.epochs,
        "tags": tags,
        "params": settings.as_params(),
        **closing([trained]),
    }
    return spool.write(run.parent_run_id, parent, payload)


@task(name="log-variant", task_run_name="log-{trained.variant}", cache_policy=NO_CACHE)
def log_variant(
    run: Tracking, trained: Trained, loaded: LoadedData, prepared: Prepared, settings: TrainSettings
) -> VariantRecord:
    """Spool one variant, then record it as a child run (in the recording helper process, beside the
    training of the next variant); on success its local copy is deleted."""
    variant = trained.variant
    folder = spool_variant(run, trained, loaded, prepared, settings)
    rows = plots.fit_rows(prepared.train_frame, prepared.val_frame)
    logger = get_run_logger()
    try:
        record = recorder_process.record(folder, run.experiment_id, run.parent_run_id, rows, logger.warning)
    except Exception as exc:
        raise RecordingFailed(
            f"could not record {variant} in MLflow at {tracking.tracking_uri()}: {exc}. Its weights and "
            f"curves are kept in {folder}; when the server is back, `make upload` records them as a full run"
        ) from exc
    spool.remove(folder)
    logger.info("%s recorded as MLflow run %s, model %s", variant, record.run_id, record.model_uri)
    return record


@task(name="finish-mlflow-run", task_run_name="finish-mlflow-run", cache_policy=NO_CACHE)
def finish_tracking(run: Tracking, trained: list[Trained], settings: TrainSettings, summary: str) -> str:
    """Close the parent run with the overlay plot, the best variant's metrics and the summary as its note.

    The spool keeps what closing needs until it is done: if MLflow goes away here, ``make upload`` closes it.
    """
    note = f"{provenance()}\n\n{summary}"
    try:
        status = close_parent(run.parent_run_id, **closing(trained), epochs=settings.epochs, note=note)
    except Exception as exc:
        raise RecordingFailed(
            f"could not close MLflow run {run.parent_run_id} at {tracking.tracking_uri()}: {exc}. Every "
            f"variant is recorded; the run's summary is kept in {spool.folder(run.parent_run_id)}; when the "
            "server is back, `make upload` closes the run"
        ) from exc
    spool.cleanup(run.parent_run_id)
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
