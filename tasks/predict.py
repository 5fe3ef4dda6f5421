"""Tasks of the batch prediction flow: find the model, predict, write the file, record the run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from tasks import tracking
from tasks.data import LoadedData, retry_unless


class ModelNotFound(LookupError):
    """No registered model, or no version behind the alias."""


@dataclass(frozen=True)
class ResolvedModel:
    """One registered model version, pinned (an alias can move while we work)."""

    name: str
    alias: str
    version: str
    uri: str  # models:/name/version
    features: list[str]
    target: str


def default_output(data: str) -> str:
    """``data/readings.csv`` -> ``data/readings.predictions.csv`` (same folder, same format)."""
    path = Path(data)
    return str(path.with_name(f"{path.stem}.predictions{path.suffix or '.csv'}"))


@task(
    name="resolve-model",
    task_run_name="resolve-model",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless(ModelNotFound),
    cache_policy=NO_CACHE,
)
def resolve_model(model_name: str, alias: str) -> ResolvedModel:
    """Pin the version behind ``model_name@alias`` and read its input columns from the signature."""
    logger = get_run_logger()
    aliases = tracking.registered_aliases(model_name)
    if aliases is None:
        raise ModelNotFound(f"no registered model named {model_name!r}; train one first (make run)")
    if alias not in aliases:
        known = ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
        raise ModelNotFound(f"model {model_name!r} has no alias {alias!r} (its aliases: {known})")
    version = aliases[alias]
    uri = tracking.version_model_uri(model_name, version)
    features, target = tracking.model_io(uri)
    logger.info("%s@%s is version %s: %s -> %s", model_name, alias, version, features, target)
    return ResolvedModel(model_name, alias, version, uri, features, target)


@task(name="predict", task_run_name="predict", cache_policy=NO_CACHE)
def predict_rows(model: ResolvedModel, loaded: LoadedData) -> pd.DataFrame:
    """The input rows with the prediction (original units) and the model version added."""
    predicted = tracking.load_model(model.uri).predict(loaded.frame[model.features])
    out = loaded.frame.copy()
    out[f"{model.target}_predicted"] = predicted[model.target].to_numpy()
    out["model_version"] = f"{model.name}/{model.version}"
    return out


@task(name="write-predictions", task_run_name="write-predictions", cache_policy=NO_CACHE)
def write_predictions(frame: pd.DataFrame, output: str) -> str:
    """Write CSV or Parquet (by suffix) atomically: a reader never sees half a file."""
    path = Path(output).expanduser().resolve()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    get_run_logger().info("Wrote %d predictions to %s", len(frame), path)
    return str(path)


def record_batch(
    model: ResolvedModel, loaded: LoadedData, rows: int, output: str, experiment: str
) -> tuple[str, str | None]:
    """One MLflow run for the batch: input lineage, row count, model version; return its id and link."""
    experiment_id = tracking.ensure_experiment(experiment)
    tags = {
        "prefect.flow_run_id": str(flow_run.get_id() or ""),
        "model.name": model.name,
        "model.alias": model.alias,
        "model.version": model.version,
        "model.uri": model.uri,
        "data_hash": loaded.digest,
    }
    params = {"data": loaded.source, "output": output, "model_name": model.name, "alias": model.alias}
    run_id = tracking.start_run(experiment_id, f"predict-{flow_run.get_name() or 'batch'}", tags, params)
    try:
        tracking.log_dataset(run_id, loaded.frame[model.features], loaded.source, loaded.digest, "prediction")
        tracking.log_metrics(run_id, {"rows": float(rows)})
        tracking.end_run(run_id, tracking.FINISHED)
    except BaseException as exc:
        tracking.end_run(run_id, tracking.FAILED, note=f"recording failed: {exc!r}")
        raise
    return run_id, tracking.run_url(run_id, experiment_id)


# one MLflow run per batch: no task retries, which could record it twice (MLflow retries each request)
@task(name="record-predictions", task_run_name="record-predictions", cache_policy=NO_CACHE)
def record_predictions(
    model: ResolvedModel, loaded: LoadedData, predictions: pd.DataFrame, output: str, experiment: str
) -> str:
    """Record the batch in MLflow and as Prefect artifacts: a preview of the rows and a summary."""
    run_id, url = record_batch(model, loaded, len(predictions), output, experiment)
    preview = predictions.head(20).astype(str).to_dict(orient="records")
    create_table_artifact(table=preview, key="predictions-preview", description=f"First rows of {output}")
    create_markdown_artifact(
        key="predictions-summary",
        markdown=(
            f"# Batch prediction\n\n{len(predictions)} rows from `{loaded.source}` predicted by "
            f"**{model.name} v{model.version}** (`@{model.alias}`), written to `{output}`.\n\n"
            f"MLflow run `{run_id}`" + (f": {url}\n" if url else "\n")
        ),
    )
    return run_id
