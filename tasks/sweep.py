"""Tasks of the sweep flow: plan the trials, train them in batches (here or on Dask), tabulate, record.

The maths is ``training.sweep`` (B configurations as one tensor program, exact against ``loops.train``) and
``training.space`` (the search space); this module groups trials by data set, runs chunks as Prefect tasks,
asks Optuna for points, and writes the sweep's MLflow parent run and the Prefect artifacts.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from tasks import environment, plots, stores, tracking
from tasks.data import LoadedData
from tasks.recorder import Tracking, VariantRecord, build_payload, record_variant
from tasks.runinfo import prefect_tags, provenance
from training.data import Prepared
from training.errors import ConfigError
from training.evaluation import optimum_mse
from training.runs import Trained, evaluate_trained, prepare_config
from training.settings import SweepSettings, TrainingConfig
from training.space import Axis, check_points, configure, grid, parse_space, sample
from training.sweep import Trial, sweep

DATA_FIELDS = ("data", "features", "target", "normalize", "scale", "val_fraction", "val_indices", "seed")


@dataclass(frozen=True)
class Job:
    """One chunk of trials on one prepared data set: what a ``train-chunk`` task trains."""

    key: int  # which data set
    index: list[int]  # the trials' positions in the sweep
    trials: list[Trial]
    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]
    chunk_size: int | None
    device: str
    threads: int


def data_key(config: TrainingConfig) -> tuple:
    """Trials with equal keys share one prepared data set (file, columns, split, normalisation)."""
    return tuple(tuple(v) if isinstance(v := getattr(config, f), list) else v for f in DATA_FIELDS)


def by_data(configs: list[tuple[TrainingConfig, str]], index: list[int]) -> dict[tuple, list[int]]:
    """The trials of ``index`` grouped by the data set they train on (``data_key``), in order."""
    groups: dict[tuple, list[int]] = {}
    for i in index:
        groups.setdefault(data_key(configs[i][0]), []).append(i)
    return groups


def engine_trial(config: TrainingConfig, variant: str) -> Trial:
    """The sweep engine's view of one trial."""
    weight = config.init.weight
    return Trial(
        variant,
        config.lr,
        config.epochs,
        config.optimizer,
        config.optimizer_options,
        tuple(weight) if isinstance(weight, list) else weight,
        config.init.bias,
    )


def plan(settings: SweepSettings) -> tuple[list[Axis], list[dict[str, Any]]]:
    """The space's axes and, for grid and random, every point; checked before any work (ConfigError)."""
    base = settings.base()
    if base.model != "linear" or set(settings.space.get("model") or []) - {"linear"}:
        raise ConfigError(
            "model: the sweep engine trains the line (model=linear) as one batched program; train a network "
            'with the train flow (make run ARGS="model=mlp ..."), one configuration a run'
        )
    axes = parse_space(settings.space, base)
    if settings.strategy == "grid":
        points = grid(axes)
    elif settings.strategy == "random":
        points = sample(axes, settings.trials, settings.seed)
    else:
        points = sample(axes, 1, settings.seed)  # optuna asks for its points as it goes; this checks one
    check_points(base, points)
    return axes, points


def jobs_for(
    configs: list[tuple[TrainingConfig, str]],
    prepared: Mapping[tuple, Prepared],
    settings: SweepSettings,
    pieces: int = 1,
) -> list[Job]:
    """Chunks of trials, one data set each, at most ``chunk_size`` and at least ``pieces`` per data set."""
    jobs = []
    for key_no, (key, index) in enumerate(by_data(configs, list(range(len(configs)))).items()):
        p = prepared[key]
        tensors = (p.x_train, p.y_train, p.x_val if p.has_val else None, p.y_val if p.has_val else None)
        size = min(settings.chunk_size or len(index), math.ceil(len(index) / pieces))
        for start in range(0, len(index), size):
            part = index[start : start + size]
            trials = [engine_trial(*configs[i]) for i in part]
            jobs.append(
                Job(key_no, part, trials, tensors, settings.chunk_size, settings.device, settings.threads)
            )
    return jobs


def _worker() -> str:
    """Who trains: the Dask worker's address inside a Dask task, else this host and process."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


@task(name="train-chunk", task_run_name="train-chunk-{job.key}-{job.index[0]}", cache_policy=NO_CACHE)
def train_chunk(job: Job) -> dict[str, Any]:
    """Train one chunk of trials as batched tensor programs; return their results as plain columns."""
    x, y, x_val, y_val = job.tensors
    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    try:
        r = sweep(job.trials, x, y, x_val, y_val, chunk_size=job.chunk_size, device=job.device)
    finally:
        torch.set_num_threads(threads)
    worker = _worker()
    get_run_logger().info(
        "%d trials trained by %s; %d diverged", len(job.trials), worker, int((r.diverged_at > 0).sum())
    )
    return {
        "index": job.index,
        "final_loss": r.final_loss.tolist(),
        "train_mse": r.train_mse.tolist(),
        "val_mse": r.val_mse.tolist(),
        "objective": r.objective.tolist(),
        "diverged_at": r.diverged_at.tolist(),
        "worker": [worker] * len(job.index),
    }


def results_table(
    points: list[dict[str, Any]], configs: list[tuple[TrainingConfig, str]], chunks: list[dict[str, Any]]
) -> pd.DataFrame:
    """One row per trial: every swept setting (named as in the space), the variant, results, worker."""
    rows = pd.DataFrame([{k: _cell(v) for k, v in p.items()} for p in points])
    rows["variant"] = [variant for _, variant in configs]
    for column in ("final_loss", "train_mse", "val_mse", "objective", "diverged_at", "worker"):
        values: list[Any] = [None] * len(points)
        for chunk in chunks:
            for i, value in zip(chunk["index"], chunk[column], strict=True):
                values[i] = value
        rows[column] = values
    rows["diverged_at"] = rows["diverged_at"].map(lambda e: pd.NA if e == 0 else e).astype("Int64")
    return rows


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def optuna_study(settings: SweepSettings):
    """The study to create or resume: its name from the settings (or the flow run), stored in a database."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = settings.study_storage or f"sqlite:///{environment.state_dir() / 'optuna.db'}"
    name = settings.study_name or f"sweep-{flow_run.get_name() or 'run'}"
    sampler = optuna.samplers.TPESampler(seed=settings.seed)
    with stores.creating(storage):  # like MLflow, Optuna creates a SQLite file's tables with no lock
        return optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, direction="minimize", load_if_exists=True
        )


def distributions(axes: list[Axis]) -> dict[str, Any]:
    """Optuna's distribution for each axis: a list is categorical, a range float or int (log when asked)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for a in axes:
        if not a.is_range:
            out[a.key] = CategoricalDistribution(list(a.values))
        elif a.integer:
            out[a.key] = IntDistribution(int(a.low), int(a.high), log=a.log)
        else:
            out[a.key] = FloatDistribution(a.low, a.high, log=a.log)
    return out


@task(name="start-sweep-run", task_run_name="start-sweep-run", cache_policy=NO_CACHE)
def start_sweep_run(settings: SweepSettings, loaded: list[LoadedData]) -> Tracking:
    """Create the sweep's parent run: base settings, space, strategy; the data set as input."""
    experiment_id = tracking.ensure_experiment(settings.experiment)
    tags = {**prefect_tags(), "sweep": "true", "mlflow.note.content": provenance()}
    tags["data_hash"] = ",".join(d.digest for d in loaded)
    params = {
        **settings.base().as_params(),
        "variant": settings.variant,
        "space": settings.space,
        "strategy": settings.strategy,
        "trials": settings.trials,
        "top_k": settings.top_k,
        "executor": settings.executor,
        "device": settings.device,
    }
    run_id = tracking.start_run(experiment_id, tags["prefect.flow_run_name"] or "sweep", tags, params)
    for d in loaded:
        tracking.log_dataset(run_id, d.frame, d.source, d.digest, "training")
    url = tracking.run_url(run_id, experiment_id)
    get_run_logger().info("MLflow sweep run %s (%s)", run_id, url or tracking.tracking_uri())
    return Tracking(experiment_id, run_id, url)


@task(name="record-trials", task_run_name="record-trials", cache_policy=NO_CACHE)
def record_trials(run: Tracking, table: pd.DataFrame, settings: SweepSettings) -> None:
    """The parent run's metrics and artifacts: ``trials.parquet`` and ``lr_map.png``."""
    finite = table["objective"][table["objective"].map(math.isfinite)]
    metrics = {"trials": float(len(table)), "diverged": float(table["diverged_at"].notna().sum())}
    if len(finite):
        metrics["best_objective"] = float(finite.min())
    tracking.log_metrics(run.parent_run_id, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "trials.parquet")
        table.to_parquet(path, index=False)
        tracking.log_artifact(run.parent_run_id, path)
    tracking.log_figure(run.parent_run_id, plots.lr_map(table, settings.lr), "lr_map.png")


@task(name="retrain-top-trials", task_run_name="retrain-top-trials", cache_policy=NO_CACHE)
def retrain_top(
    top: list[int],
    configs: list[tuple[TrainingConfig, str]],
    prepared: Mapping[tuple, Prepared],
    device: str,
) -> dict[int, Trained]:
    """The best trials again with every epoch's curves, as one batched program per data set, evaluated.

    The engine equals ``loops.train`` trial by trial, so these are the numbers the sweep's table reports;
    ``seconds`` is the batch's time divided among its trials.
    """
    out = {}
    for key, index in by_data(configs, top).items():
        p = prepared[key]
        val = (p.x_val, p.y_val) if p.has_val else (None, None)
        started_ms, t0 = int(time.time() * 1000), time.perf_counter()
        trials = [engine_trial(*configs[i]) for i in index]
        result = sweep(trials, p.x_train, p.y_train, *val, keep_curves=True, device=device)
        seconds = (time.perf_counter() - t0) / len(index)
        optimum = optimum_mse(p.x_train, p.y_train)
        for j, i in enumerate(index):
            trained = Trained(result.train_result(j), started_ms, seconds)
            out[i] = evaluate_trained(trained, p, configs[i][0], optimum)
    return out


@task(name="record-top-trial", task_run_name="record-trial-{rank}", cache_policy=NO_CACHE)
def record_top_trial(
    run: Tracking,
    rank: int,
    trial: int,
    trained: Trained,
    config: TrainingConfig,
    prepared: Prepared,
    data: LoadedData,
) -> VariantRecord:
    """Record one of the best trials as a child run, as the train flow records its variants."""
    tags = {**prefect_tags(), "sweep.trial": str(trial), "sweep.rank": str(rank)}
    payload = build_payload(trained, prepared, config, tags, data.source, data.digest)
    payload.run_params = {**payload.run_params, "trial": trial, "rank": rank}
    rows = plots.fit_rows(prepared.train_frame, prepared.val_frame)
    record = record_variant(payload, run.experiment_id, run.parent_run_id, name=f"trial-{trial}", rows=rows)
    get_run_logger().info("trial %d (rank %d) recorded as MLflow run %s", trial, rank, record.run_id)
    return record


@task(name="report-sweep", task_run_name="report-sweep", cache_policy=NO_CACHE)
def report_sweep(run: Tracking, table: pd.DataFrame, top: list[int], records: list[VariantRecord]) -> None:
    """Prefect artifacts: the best trials as a table, and a link to the MLflow parent run."""
    rows = table.iloc[top].assign(mlflow_run=[r.run_id for r in records] or None)
    create_table_artifact(
        table=rows.astype(str).to_dict(orient="records"),
        key="sweep-top-trials",
        description="The best trials",
    )
    if run.url:
        create_link_artifact(link=run.url, link_text="MLflow sweep run", key="mlflow-sweep-run")


def prepare_all(
    configs: list[tuple[TrainingConfig, str]], loaded: Mapping[str, LoadedData]
) -> dict[tuple, Prepared]:
    """Each distinct data set of the trials, split and normalised once."""
    out = {}
    for config, _ in configs:
        key = data_key(config)
        if key not in out:
            out[key] = prepare_config(loaded[config.data].frame, config, loaded[config.data].source)
    return out


def configs_of(settings: SweepSettings, points: list[dict[str, Any]]) -> list[tuple[TrainingConfig, str]]:
    """Each point's settings and variant."""
    base = settings.base()
    return [configure(base, p, settings.variant) for p in points]


def columns_needed(settings: SweepSettings, axes: list[Axis]) -> dict[str, list[str]]:
    """For each data file the trials may read, every column they may need (features and targets)."""
    swept = {a.key: a.values for a in axes}
    paths = swept.get("data") or (settings.data,)
    columns = [
        *(c for features in swept.get("features") or (settings.features,) for c in features),
        *(swept.get("target") or (settings.target,)),
    ]
    return {path: list(dict.fromkeys(columns)) for path in paths}


def best_trials(table: pd.DataFrame, k: int) -> list[int]:
    """Positions of the ``k`` trials with the lowest finite objective (ties: the earlier trial first)."""
    finite = table["objective"].map(math.isfinite)
    order = table[finite].sort_values("objective", kind="stable")
    return [int(i) for i in order.index[:k]]


def summary(table: pd.DataFrame, top: list[int], settings: SweepSettings) -> str:
    """The sweep in words (the parent run's description)."""
    diverged = int(table["diverged_at"].notna().sum())
    lines = [
        f"{provenance()}",
        "",
        f"Sweep ({settings.strategy}) of {len(table)} trials over {', '.join(settings.space)}: "
        f"{len(table) - diverged} converged, {diverged} diverged.",
    ]
    if best_trials(table, 1):
        best = table.iloc[best_trials(table, 1)[0]]
        swept = ", ".join(f"{k}={best[k]}" for k in settings.space)
        lines.append(f"Best: {swept} (variant {best['variant']}), objective {best['objective']:.6g}.")
    return "\n".join(lines)


@task(name="finish-sweep-run", task_run_name="finish-sweep-run", cache_policy=NO_CACHE)
def finish_sweep_run(run: Tracking, table: pd.DataFrame, top: list[int], settings: SweepSettings) -> str:
    """Close the parent run: FINISHED with the summary, or FAILED when every trial diverged."""
    status = tracking.FINISHED if table["diverged_at"].isna().any() else tracking.FAILED
    tracking.end_run(run.parent_run_id, status, note=summary(table, top, settings))
    return status
