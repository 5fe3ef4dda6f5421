"""Retries and their limits, proved with faults caused at the boundary: a data file that appears late, an
MLflow server that answers 503 at first, a connection cut right after a child run is created; and bad input
that moves no champion. Nothing here patches the project's code: the faults are files, sockets, real servers.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.train import train

from .conftest import DATA
from .faultproxy import FaultProxy
from .test_bad_inputs import CASES, CORPUS

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

EPOCHS = 50
VARIANTS = ["autograd", "manual", "optimizer"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def attempts(state, *expected: str) -> dict[str, int]:
    """How many times each task run of a finished flow run ran, as the Prefect API records it.

    Task runs and their states reach the API as events, a moment after the flow returns: wait until the
    ``expected`` task runs exist and every one is final.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=flow_run)
            names = {r.name for r in runs}
            final = all(r.state is not None and r.state.is_final() for r in runs)
            if runs and set(expected) <= names and final:
                return {r.name: r.run_count for r in runs}
            if time.monotonic() > deadline:
                pytest.fail(f"task runs never all final: {[(r.name, r.state_name) for r in runs]}")
            time.sleep(0.2)


class _RetryWatch(logging.Handler):
    """Runs ``action`` in the task's own thread when Prefect logs that task run ``name`` will be retried."""

    def __init__(self, name: str, action: Callable[[], None]) -> None:
        super().__init__(logging.INFO)
        self.name_, self.action, self.retries = name, action, []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if getattr(record, "task_run_name", None) == self.name_ and " - Retry " in message:
            self.retries.append(message)
            if len(self.retries) == 1:
                self.action()


@contextmanager
def on_first_retry(task_run_name: str, action: Callable[[], None]) -> Iterator[_RetryWatch]:
    watch = _RetryWatch(task_run_name, action)
    logger = logging.getLogger("prefect.task_runs")
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)


def test_a_data_file_that_appears_after_the_first_attempt_is_read_on_the_retry(tmp_path):
    late = tmp_path / "late.csv"

    def arrive() -> None:  # lands whole, as a finished copy or sync does: written aside, then renamed
        staged = tmp_path / "staged.part"
        staged.write_bytes(DATA.read_bytes())
        staged.replace(late)

    with on_first_retry("load-dataset", arrive) as watch:
        state = train(
            data=str(late), experiment=unique("late"), epochs=EPOCHS, variants=["manual"], return_state=True
        )
    assert state.is_completed(), state.message
    [retry] = watch.retries  # the first attempt failed on the missing file; the second read it
    assert "DataUnavailable" in retry and "file not found" in retry and "Retry 1/2" in retry, retry
    tries = attempts(state, "load-dataset", "split-normalize")
    assert tries["load-dataset"] == 2 and tries["split-normalize"] == 1, tries


def runs_of(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_mlflow_answering_503_at_first_completes_and_records_nothing_twice(mlflow_server, monkeypatch):
    client = mlflow_server  # reads go straight to the server, not through the proxy
    name = unique("flaky")
    injected = [  # (path, method, how many 503s, after how many requests of that path)
        ("/experiments/get-by-name", None, 2, 0),  # the flow's first MLflow calls
        ("/runs/create", "POST", 2, 1),  # past the parent's: a child run's creation, twice refused
        ("/runs/log-batch", "POST", 3, 4),  # past the parent's params: batches of the child runs
        ("/mlflow-artifacts/artifacts/", "PUT", 1, 0),  # the first upload (its file is read again to retry)
    ]
    with FaultProxy(client.tracking_uri) as proxy:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
        for path, method, n, skip in injected:
            proxy.fail_next(n, status=503, path=path, method=method, skip=skip)
        state = train(experiment=name, epochs=EPOCHS, return_state=True)
        assert state.is_completed(), state.message
        assert proxy.count(status=503, forwarded=False) == sum(i[2] for i in injected)  # every 503 was met
        assert proxy.count("/runs/create", "POST", forwarded=True) == 1 + len(VARIANTS)  # none created twice
    tries = attempts(state, "finish-mlflow-run")
    assert set(tries.values()) == {1}, tries  # the client retried each request; no task ran again

    runs = runs_of(client, name)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 1 + len(children)
    assert sorted(c.data.tags["variant"] for c in children) == VARIANTS  # one child per variant
    assert all(r.info.status == "FINISHED" for r in runs)
    assert parent.data.params["epochs"] == str(EPOCHS)
    for child in children:
        run_id = child.info.run_id
        for curve in ("train_loss", "val_loss"):
            steps = sorted(m.step for m in client.get_metric_history(run_id, curve))
            assert steps == list(range(1, EPOCHS + 1)), (child.data.tags["variant"], curve)  # each step once
        for metric in child.data.metrics:
            if metric not in ("train_loss", "val_loss"):
                assert len(client.get_metric_history(run_id, metric)) == 1, metric  # logged once
        assert child.data.params["variant"] == child.data.tags["variant"]
        assert set(child.data.params) == set(parent.data.params) | {"variant"}
        table = pd.read_parquet(client.download_artifacts(run_id, "curves.parquet"))
        assert table["epoch"].tolist() == list(range(1, EPOCHS + 1))
        artifacts = {a.path: a.file_size for a in client.list_artifacts(run_id) if not a.is_dir}
        assert {"loss_curve.png", "fit.png", "coefficients.json", "curves.parquet"} <= set(artifacts)
        assert all(artifacts.values()), artifacts  # no upload was retried with an empty body
        assert child.data.tags["model_uri"].startswith("models:/")


def test_maths_and_bad_input_fail_at_the_first_attempt(mlflow_server):
    name = unique("once")
    diverged = train(experiment=name, normalize="none", epochs=100, return_state=True)
    assert diverged.is_failed() and "no variant converged" in diverged.message, diverged.message
    tries = attempts(diverged, "train-manual", "train-autograd", "train-optimizer")
    assert {"train-manual", "train-autograd", "train-optimizer"} <= set(tries), tries
    assert set(tries.values()) == {1}, tries

    beyond = train(experiment=name, val_indices=[99], epochs=EPOCHS, return_state=True)  # a setting the data
    assert beyond.is_failed() and "val_indices [99] are beyond" in beyond.message, beyond.message  # refutes
    once = {"check-tracking-server": 1, "load-dataset": 1}
    assert attempts(beyond, "split-normalize") == {**once, "split-normalize": 1}

    bad = train(data=str(CORPUS / "non_numeric.csv"), experiment=name, return_state=True)
    assert bad.is_failed() and "non-numeric value" in bad.message, bad.message
    assert attempts(bad, "load-dataset") == once  # a bad file stays bad


def test_bad_input_moves_no_champion_and_adds_no_version(mlflow_server):
    client = mlflow_server
    name = unique("champion")
    first = train(experiment=name, model_name=name, epochs=EPOCHS, return_state=True).result()["promotion"]
    assert first["decision"] == "first"

    def registry() -> tuple:
        versions = sorted(v.version for v in client.search_model_versions(f"name = '{name}'"))
        champion = client.get_model_version_by_alias(name, "champion").version
        runs = sorted((r.info.run_id, r.info.status) for r in runs_of(client, name))
        return champion, versions, runs

    before = registry()
    assert before[:2] == ("1", ["1"])
    for file, params, problem in CASES:
        path = str(CORPUS / file)
        state = train(data=path, experiment=name, model_name=name, return_state=True, **params)
        assert state.is_failed() and path in state.message and problem in state.message, (file, state.message)
        assert registry() == before, (file, params)


def test_a_child_run_cut_off_after_its_creation_is_closed_killed_by_the_upload(
    mlflow_server, monkeypatch, tmp_path
):
    from ops.upload import upload
    from tasks import spool

    client = mlflow_server
    name = unique("cut")
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path))  # the spool of this test alone
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # the server is gone: fail in seconds
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    with FaultProxy(client.tracking_uri) as proxy:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
        # the parent run's creation goes through; the child's is the last answer the flow gets from the server
        proxy.drop_after("/runs/create", "POST", skip=1)
        state = train(experiment=name, epochs=EPOCHS, variants=["manual"], return_state=True)
        assert proxy.cut and proxy.count("/runs/create", "POST", forwarded=True) == 2
    assert state.is_failed() and "could not record manual" in state.message, state.message
    [half] = [r for r in runs_of(client, name) if "mlflow.parentRunId" in r.data.tags]
    assert half.info.status == "RUNNING" and half.data.params == {}  # created, then cut off

    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)  # the server reachable again: make upload
    [waiting] = spool.pending()
    parent_run_id = upload(waiting)

    runs = runs_of(client, name)
    assert client.get_run(half.info.run_id).info.status == "KILLED"
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert client.get_run(parent_run_id).info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_run_id]
    assert sorted((c.data.tags["variant"], c.info.status) for c in children) == [
        ("manual", "FINISHED"),
        ("manual", "KILLED"),
    ]
    [whole] = [c for c in children if c.info.status == "FINISHED"]
    steps = sorted(m.step for m in client.get_metric_history(whole.info.run_id, "train_loss"))
    assert steps == list(range(1, EPOCHS + 1))
    assert not spool.pending()
