"""The sweep flow: many configurations of the training settings, trained as batched tensor programs, mapped.

Plan the trials (a grid, random points or Optuna's TPE in batches), train them in chunks (here, or as Prefect
tasks on a Dask cluster), tabulate every trial, record the sweep in MLflow (``trials.parquet``, ``lr_map.png``
and the best ``top_k`` trials as full child runs), and put the best through the registry's champion gate.
Run it with ``make sweep ARGS="..."`` (``python -m flows.run sweep --help`` lists the parameters).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from flows.parameters import takes
from tasks import sweep as s
from tasks.data import load_dataset
from tasks.errors import fail_cleanly
from tasks.heartbeat import with_heartbeats
from tasks.record import abort_tracking, check_tracking
from tasks.registry import register_model, report_promotion
from training.loops import HINT
from training.settings import SweepSettings
from training.space import check_points


class EveryTrialDiverged(RuntimeError):
    """No trial of the sweep converged: there is nothing to keep."""


@flow(name="sweep-chunks", description="Chunks of a sweep's trials as Prefect tasks on a Dask cluster.")
def dask_chunks(jobs: list[s.Job]) -> list[dict[str, Any]]:
    """Submit every chunk; the task runner (prefect-dask's) spreads them over the cluster's workers.

    The jobs go unquoted: on a Dask worker Prefect names the task run before it unwraps ``quote``.
    """
    return [future.result() for future in [s.train_chunk.submit(job) for job in jobs]]


@contextlib.contextmanager
def executor(settings: SweepSettings):
    """A function that trains a list of jobs: in this process, or on a Dask cluster (started here if no
    address is given, with two worker processes, and stopped at the end)."""
    if settings.executor == "local":
        yield lambda jobs: [s.train_chunk(quote(job)) for job in jobs], 1
        return
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    with contextlib.ExitStack() as stack:
        address = settings.dask_address
        if address is None:
            cluster = stack.enter_context(LocalCluster(n_workers=2, threads_per_worker=1, processes=True))
            address = cluster.scheduler_address
        with Client(address) as client:
            workers = max(1, len(client.scheduler_info()["workers"]))
        runner = dask_chunks.with_options(task_runner=DaskTaskRunner(address=address))
        yield runner, 2 * workers


def optimise(settings: SweepSettings, axes, loaded, run_jobs, pieces):
    """Optuna's TPE, ask-and-tell in batches that the engine trains together; returns what a grid returns."""
    study = s.optuna_study(settings)
    space = s.distributions(axes)
    batch = max(1, math.ceil(settings.trials / 8))
    points, configs, chunks, prepared = [], [], [], {}
    while len(points) < settings.trials:
        asked = [study.ask(space) for _ in range(min(batch, settings.trials - len(points)))]
        new = [dict(t.params) for t in asked]
        check_points(settings.base(), new)
        new_configs = s.configs_of(settings, new)
        prepared |= s.prepare_all([c for c in new_configs if s.data_key(c[0]) not in prepared], loaded)
        results = run_jobs(s.jobs_for(new_configs, prepared, settings, pieces))
        objective = {
            i: o for chunk in results for i, o in zip(chunk["index"], chunk["objective"], strict=True)
        }
        for i, trial in enumerate(asked):
            study.tell(trial, objective[i])
        offset = len(points)
        chunks += [{**c, "index": [i + offset for i in c["index"]]} for c in results]
        points, configs = points + new, configs + new_configs
    get_run_logger().info("Optuna study %r now holds %d trials", study.study_name, len(study.trials))
    return points, configs, chunks, prepared


@flow(
    name="sweep",
    description="Train many configurations at once as batched tensor programs; map them in MLflow.",
)
@fail_cleanly(EveryTrialDiverged)
@with_heartbeats
@takes(SweepSettings)
def sweep(settings: SweepSettings) -> dict[str, Any]:
    """Sweep the space over the base configuration; record every trial and the best ones in MLflow."""
    logger = get_run_logger()
    axes, points = s.plan(settings)  # a bad space fails here, before any work
    check_tracking()
    loaded = {
        path: load_dataset(path, columns, None) for path, columns in s.columns_needed(settings, axes).items()
    }
    with executor(settings) as (run_jobs, pieces):
        if settings.strategy == "optuna":
            points, configs, chunks, prepared = optimise(settings, axes, loaded, run_jobs, pieces)
        else:
            configs = s.configs_of(settings, points)
            prepared = s.prepare_all(configs, loaded)
            chunks = run_jobs(s.jobs_for(configs, prepared, settings, pieces))
    table = s.results_table(points, configs, chunks)
    converged = bool(table["diverged_at"].isna().any())
    # the best trial needs a logged model to be registered: it is recorded even with top_k=0
    top = s.best_trials(table, max(settings.top_k, 1) if settings.model_name else settings.top_k)
    logger.info("%d trials, %d diverged", len(table), int(table["diverged_at"].notna().sum()))
    run = s.start_sweep_run(settings, list(loaded.values()))
    try:
        s.record_trials(run, table, settings)
        trained = s.retrain_top(top, quote(configs), quote(prepared), settings.device)
        recorded = [
            s.record_top_trial(
                run,
                rank,
                i,
                quote(trained[i]),
                configs[i][0],
                prepared[s.data_key(configs[i][0])],
                loaded[configs[i][0].data],
            )
            for rank, i in enumerate(top, start=1)
        ]
        s.report_sweep(run, table, top, recorded)
        s.finish_sweep_run(run, table, top, settings)  # FAILED when every trial diverged
        promotion = None
        if settings.model_name and recorded:
            best_config = configs[top[0]][0]
            promotion = register_model(
                settings.model_name,
                settings.max_val_rmse,
                quote([(trained[top[0]], recorded[0])]),
                loaded[best_config.data],
                prepared[s.data_key(best_config)],
            )
            report_promotion(promotion, run.parent_run_id)
    except BaseException as exc:
        abort_tracking(run, repr(exc))
        raise
    if not converged:
        raise EveryTrialDiverged(
            f"every one of the {len(table)} trials diverged (the loss became non-finite); {HINT}. "
            f"MLflow run {run.parent_run_id} records them all."
        )
    first = s.best_trials(table, 1)[0]
    config, variant = configs[first]
    best = {**config.model_dump(), "variant": variant, "objective": float(table["objective"].iloc[first])}
    logger.info("Best trial %d: %s", first, table.iloc[first].to_dict())
    return {
        "parent_run_id": run.parent_run_id,
        "best": best,
        "trials": len(table),
        "diverged": int(table["diverged_at"].notna().sum()),
        "promotion": None if promotion is None else promotion.message,
    }
