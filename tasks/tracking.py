"""The project's only door to MLflow.

Every call takes an explicit ``run_id`` and goes through ``MlflowClient``: Prefect runs tasks in worker
threads and MLflow's active run is thread-local, so nothing here relies on ``mlflow.start_run``.
The tracking URI comes from ``MLFLOW_TRACKING_URI`` (embedded default: the repository's SQLite file).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import pandas as pd
import tenacity
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema

from tasks import environment, stores
from training.serving import Predictor, save_model

logger = logging.getLogger(__name__)
T = TypeVar("T")

MODEL_NAME = "model"  # the logged model's name inside its run
LOADER_MODULE = "training.serving"
BATCH = 1000  # metrics per log_batch request (the server's limit)
SENDERS = 8  # log_batch requests in flight at once against a tracking server
CURVE_POINTS = 1_000  # the most points of one curve in a run's metric history (every epoch up to this)
# SQLite store URIs this process has found at the current schema, or created and migrated under the lock.
_OPENED: set[str] = set()
_OPENING = threading.Lock()
# Model.log fills MLflow's caches on first use without a lock (the map of installed packages that checks the
# requirements takes 0.3 s to build, and threads arriving together each build it): one model at a time.
_MODEL_LOG_LOCK = threading.Lock()


def tracking_uri() -> str:
    """The tracking URI in force (environment, else MLflow's own default)."""
    return mlflow.get_tracking_uri()


class TrackingUnavailable(ConnectionError):
    """The MLflow tracking server does not answer."""


def check_reachable(timeout: float = 3.0) -> str:
    """Fail fast, naming the server, when an HTTP tracking URI does not answer; return the URI.

    One attempt: the flow's ``check-tracking-server`` task retries it. Any HTTP answer counts (a server with
    authentication answers 401 to an anonymous request).
    """
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return uri
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return uri
    except urllib.error.HTTPError:
        return uri
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
        raise TrackingUnavailable(
            f"cannot reach the MLflow tracking server at {uri} ({reason}); start it (make ui) or point "
            "MLFLOW_TRACKING_URI at a running one"
        ) from None


def client() -> MlflowClient:
    """A client for the tracking URI in force."""
    return MlflowClient(_open_stores())


def _open_stores() -> str:
    """Make sure the tracking (and registry) store exists at the current schema; return the tracking URI.

    MLflow creates and migrates a SQLite store's schema when a process first opens it, with no lock between
    processes: flows started together on a fresh state directory would migrate at once and fail (``duplicate
    column name``). A process that finds a SQLite store missing or behind opens it holding the store's
    creation lock (``tasks/stores.py``); a store at the current schema is opened with no lock, and each store
    is checked once per process. Servers and PostgreSQL take no lock.
    """
    uri = tracking_uri()
    for store_uri in dict.fromkeys((uri, mlflow.get_registry_uri())):
        database = stores.sqlite_file(store_uri)
        if store_uri in _OPENED or database is None:
            continue
        with _OPENING:
            if store_uri not in _OPENED and not _at_head(database):
                with stores.creating(store_uri):
                    if not _at_head(database):  # else another process created it while we waited
                        MlflowClient(store_uri)  # builds the store: creates and migrates its schema
            _OPENED.add(store_uri)
    return uri


def _at_head(database: Path) -> bool:
    """True when the SQLite file holds MLflow's schema at its latest revision and the default experiment, so
    that opening it writes nothing; False at any doubt (no file, mid-migration, busy, unreadable)."""
    if not database.exists():
        return False
    try:
        # the revision MLflow's store requires when it opens a database (MLflow's own helper)
        from mlflow.store.db.utils import _get_latest_schema_revision

        head = _get_latest_schema_revision()
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            version = db.execute("SELECT version_num FROM alembic_version").fetchall()
            default = db.execute("SELECT 1 FROM experiments WHERE experiment_id = 0").fetchall()
    except Exception:  # the creation lock is always safe; this only spares it
        return False
    return version == [(head,)] and default == [(1,)]


def ensure_experiment(name: str) -> str:
    """Return the id of experiment ``name``, creating it if missing.

    On a database store (no tracking server), artifacts go under ``PIPELINE_ARTIFACT_ROOT``; a tracking
    server chooses its own artifact location.
    """
    c = client()
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    root = environment.artifact_root()
    if root and not tracking_uri().startswith(("http://", "https://", "databricks")):
        location = Path(root, name).resolve().as_uri()
    try:
        # the kind makes the MLflow UI open it as a model-training experiment, not a GenAI one
        return c.create_experiment(
            name, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"}
        )
    except mlflow.exceptions.MlflowException:
        # another run created it between our lookup and our create
        existing = c.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


def start_run(
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    parent_run_id: str | None = None,
    start_time_ms: int | None = None,
    on_created: Callable[[str], None] | None = None,
) -> str:
    """Create a run (a child when ``parent_run_id`` is given), log its params once, return its id.

    ``on_created`` gets the id as soon as the run exists, before the params are sent: a caller that must
    close the run after a failure learns it even when the params request is the one that fails.
    """
    all_tags = dict(tags)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client().create_run(experiment_id, start_time=start_time_ms, tags=all_tags, run_name=run_name)
    run_id = run.info.run_id
    if on_created:
        on_created(run_id)
    client().log_batch(run_id, params=[Param(k, _param_value(v)) for k, v in params.items()])
    return run_id


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def set_tags(run_id: str, tags: Mapping[str, str]) -> None:
    """Set several tags on a run in one request."""
    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log final (single-value) metrics in one request; non-finite values are skipped."""
    now = _now_ms()
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]
    _log_metric_batches(run_id, batch)


def history_epochs(epochs: int, limit: int = CURVE_POINTS) -> list[int]:
    """The epochs (1-based) a curve of ``epochs`` points keeps in the metric history: every one up to
    ``limit``, else ``limit`` of them evenly spaced, the first and the last included."""
    if epochs <= limit:
        return list(range(1, epochs + 1))
    return sorted({1 + round(i * (epochs - 1) / (limit - 1)) for i in range(limit)})


def log_curves(run_id: str, curves: Mapping[str, Sequence[float]]) -> int:
    """Log per-epoch curves (index i is epoch i + 1) as metric histories; return how many points were logged.

    A curve longer than ``CURVE_POINTS`` keeps that many epochs, evenly spaced (MLflow's charts draw 320
    points anyway); ``log_curve_table`` keeps every epoch. Non-finite points (the epoch a run diverged at) are
    not stored: MLflow cannot plot them. Against a tracking server the batches go out concurrently.
    """
    now = _now_ms()
    batch = [
        Metric(name, values[epoch - 1], now, epoch)
        for name, values in curves.items()
        for epoch in history_epochs(len(values))
        if math.isfinite(values[epoch - 1])
    ]
    _log_metric_batches(run_id, batch, concurrent=tracking_uri().startswith(("http://", "https://")))
    return len(batch)


def log_curve_table(run_id: str, curves: Mapping[str, Sequence[float]]) -> None:
    """Every epoch of every curve as ``curves.parquet`` (columns ``epoch`` and one per curve)."""
    length = max((len(v) for v in curves.values()), default=0)
    table = pd.DataFrame({"epoch": range(1, length + 1)})
    for name, values in curves.items():
        table[name] = pd.Series(values, dtype="float64").reindex(range(length))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "curves.parquet")
        table.to_parquet(path, index=False)
        client().log_artifact(run_id, str(path))


def _log_metric_batches(run_id: str, metrics: list[Metric], concurrent: bool = False) -> None:
    """``log_batch`` requests of ``BATCH`` metrics; with ``concurrent``, up to ``SENDERS`` at a time.

    Our own threads, not MLflow's asynchronous logging: its queue is one per store, and ending any run
    shuts it down, failing the batches that another variant's thread has in flight.
    """
    c = client()
    parts = [metrics[start : start + BATCH] for start in range(0, len(metrics), BATCH)]
    if not concurrent or len(parts) < 2:
        for part in parts:
            c.log_batch(run_id, metrics=part)
        return
    with ThreadPoolExecutor(max_workers=min(SENDERS, len(parts))) as pool:
        for future in [pool.submit(c.log_batch, run_id, metrics=part) for part in parts]:
            future.result()


def log_figure(run_id: str, figure: Figure, filename: str) -> None:
    """Save a matplotlib figure as an artifact of the run."""
    client().log_figure(run_id, figure, filename)


def log_artifact(run_id: str, path: Path | str) -> None:
    """Upload a local file as an artifact of the run."""
    client().log_artifact(run_id, str(path))


def log_dict(run_id: str, data: Mapping[str, Any], filename: str) -> None:
    """Save a JSON artifact on the run."""
    client().log_dict(run_id, dict(data), filename)


# MLflow's schema types of the column dtypes a validated table holds
_COLUMN_TYPES = {
    "float64": "double",
    "float32": "float",
    "int64": "long",
    "int32": "integer",
    "bool": "boolean",
}


def log_dataset(run_id: str, frame: pd.DataFrame, source: str, digest: str, context: str) -> None:
    """Record the data set as the run's input (the MLflow UI's Datasets column): name, digest, file, schema
    and size. Built from the column types and the row count, as ``mlflow.data.from_pandas`` would record it,
    without its check of every value for missing ones (33 s at a million rows; the table is validated)."""
    schema = Schema([ColSpec(_COLUMN_TYPES.get(str(t), "string"), str(c)) for c, t in frame.dtypes.items()])
    dataset = Dataset(
        name=Path(source).name,
        digest=digest[:20],
        source_type="local",
        source=json.dumps({"uri": str(Path(source).resolve())}),
        schema=json.dumps({"mlflow_colspec": schema.to_dict()}),
        profile=json.dumps({"num_rows": len(frame), "num_elements": int(frame.size)}),
    )
    entity = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])
    retry_on_conflict(client().log_inputs, run_id, datasets=[entity])


# What SQLite, PostgreSQL and MySQL say when an INSERT breaks a unique constraint.
_CONFLICTS = ("UNIQUE constraint failed", "duplicate key value violates unique", "Duplicate entry")


def _lost_insert_race(exc: BaseException) -> bool:
    return isinstance(exc, mlflow.exceptions.MlflowException) and any(m in str(exc) for m in _CONFLICTS)


def retry_on_conflict(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, tried up to five times while the tracking store reports a lost insert race.

    MLflow's SQL store looks a data set up and inserts it when missing, in one transaction: two runs that
    log the same data set at the same moment both miss it and the second INSERT breaks the unique key
    (experiment, name, digest). The failed transaction is rolled back, so the retry finds the winner's row.
    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_lost_insert_race),
        stop=tenacity.stop_after_attempt(5),
        wait=tenacity.wait_incrementing(start=0.05, increment=0.05),
        reraise=True,
    )
    return retrying(call, *args, **kwargs)


def log_model(run_id: str, experiment_id: str, predictor: Predictor, input_example: pd.DataFrame) -> str:
    """Log ``predictor`` as an MLflow pyfunc model of the run and return its ``models:/`` URI.

    The model directory holds a tensor state dict and JSON (see ``training.serving``); MLflow loads it
    through ``loader_module``, so no Python object is pickled or unpickled.
    """
    signature = ModelSignature(
        inputs=Schema([ColSpec("double", f) for f in predictor.features]),
        outputs=Schema([ColSpec("double", predictor.target)]),
    )
    # created here, not by Model.log, which would file it under the thread's active experiment (Default)
    logged = client().create_logged_model(
        experiment_id, name=MODEL_NAME, source_run_id=run_id, tags={"variant": predictor.variant}
    )
    with tempfile.TemporaryDirectory() as tmp, _MODEL_LOG_LOCK:
        data_path = save_model(Path(tmp, predictor.architecture.model), predictor)  # data/linear or data/mlp
        info = Model.log(
            artifact_path=None,
            name=MODEL_NAME,
            flavor=_Pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            loader_module=LOADER_MODULE,
            data_path=str(data_path),
            signature=signature,
            input_example=input_example,
            pip_requirements=_pip_requirements(),
            validate_serving_input=False,
        )
    return info.model_uri


def warm_up() -> None:
    """Pay the first model's one-off costs now, before a run waits for them: saving a throwaway model locally
    makes MLflow build its map of installed packages (0.3 to 0.6 s), with which it checks the requirements."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "data").mkdir()
        mlflow.pyfunc.save_model(
            Path(tmp, "model"),
            loader_module=LOADER_MODULE,
            data_path=str(Path(tmp, "data")),
            pip_requirements=_pip_requirements(),
        )


class _Pyfunc:
    """``mlflow.pyfunc`` as the flavor ``Model.log`` saves with, taking ``Model.log``'s own option
    ``validate_serving_input`` (which it passes on to the flavor, as MLflow's transformers flavor does).

    Off: that check loads the saved copy and serves the input example through it, and only warns if it fails
    (the tests load and predict with every logged model instead).
    """

    @staticmethod
    def save_model(validate_serving_input: bool = True, **kwargs: Any) -> None:
        mlflow.pyfunc.save_model(**kwargs)


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "pandas", "mlflow")]


def end_run(run_id: str, status: str, note: str | None = None) -> None:
    """End a run as FINISHED, FAILED or KILLED, with an optional note shown as its description."""
    if note:
        set_tags(run_id, {"mlflow.note.content": note})
    client().set_terminated(run_id, status=status, end_time=_now_ms())


def running_runs(experiment_id: str) -> list[tuple[str, str]]:
    """``(run_id, prefect flow run id)`` of every run still RUNNING in the experiment."""
    runs = client().search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
    return [(r.info.run_id, r.data.tags.get("prefect.flow_run_id", "")) for r in runs]


def run_url(run_id: str, experiment_id: str) -> str | None:
    """A browser link to the run when tracking goes through an MLflow server; else None."""
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    # workflowType: open MLflow's "Model training" view, not its GenAI one
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def load_model(model_uri: str) -> Any:
    """Load a logged model as an MLflow pyfunc model."""
    _open_stores()
    return mlflow.pyfunc.load_model(model_uri)


def _now_ms() -> int:
    return int(time.time() * 1000)


FINISHED = RunStatus.to_string(RunStatus.FINISHED)
FAILED = RunStatus.to_string(RunStatus.FAILED)
KILLED = RunStatus.to_string(RunStatus.KILLED)


# --- model registry -----------------------------------------------------------------------------------------


def alias_version(name: str, alias: str) -> str | None:
    """The version number that ``alias`` points to in registered model ``name``, or None."""
    try:
        return client().get_model_version_by_alias(name, alias).version
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def registered_aliases(name: str) -> dict[str, str] | None:
    """``{alias: version}`` of registered model ``name``, or None when no such model exists."""
    try:
        return dict(client().get_registered_model(name).aliases)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def register_version(name: str, model_uri: str, run_id: str, tags: Mapping[str, Any]) -> str:
    """Register ``model_uri`` as a new version of ``name`` (created if missing) and return the version."""
    c = client()
    try:
        c.create_registered_model(name, description="Thermometer calibration: t_u in, Celsius out.")
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    version = c.create_model_version(
        name, model_uri, run_id=run_id, tags={k: str(v) for k, v in tags.items()}, model_id=model_id
    )
    return version.version


def set_version_tags(name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Tag a model version."""
    for key, value in tags.items():
        client().set_model_version_tag(name, version, key, str(value))


def set_alias(name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``."""
    client().set_registered_model_alias(name, alias, version)


def version_model_uri(name: str, version: str) -> str:
    """The URI of one registered version (stable, unlike an alias)."""
    return f"models:/{name}/{version}"


def model_io(model_uri: str) -> tuple[list[str], str]:
    """The input column names and the output column of a logged model, from its signature."""
    _open_stores()
    info = mlflow.models.get_model_info(model_uri)
    if info.signature is None:
        raise ValueError(f"{model_uri} has no signature; cannot tell which columns it needs")
    return info.signature.inputs.input_names(), info.signature.outputs.input_names()[0]


def run_state(run_id: str) -> tuple[str, str] | None:
    """``(status, note)`` of a run, or None when the tracking store does not have it."""
    try:
        run = client().get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return run.info.status, run.data.tags.get("mlflow.note.content", "")


def flow_run_record(experiment: str, flow_run_id: str) -> tuple[str, str, list[str]]:
    """``(experiment id, parent run id, child run ids)`` of what one Prefect flow run recorded."""
    found = client().get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no MLflow experiment named {experiment!r}")
    runs = client().search_runs([found.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return found.experiment_id, parent.info.run_id, children
