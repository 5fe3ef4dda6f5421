"""The fault-injecting proxy itself, against a real `mlflow server` and MLflow's own client."""

from __future__ import annotations

import http.client
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from .faultproxy import Exchange, FaultProxy

pytestmark = pytest.mark.integration

CREATE = "/runs/create"


@pytest.fixture(autouse=True)
def no_client_retries(monkeypatch):
    """MLflow's client retries nothing unless a test says so: a proxy fault must not be hidden by a retry."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")  # an int: no pause between tries


@pytest.fixture
def upstream(mlflow_server) -> MlflowClient:
    """A client talking to the real server directly, not through the proxy."""
    return mlflow_server


@pytest.fixture
def proxy(upstream):
    with FaultProxy(upstream.tracking_uri) as p:
        yield p


@pytest.fixture
def client(proxy) -> MlflowClient:
    return MlflowClient(proxy.url)


def experiment(client: MlflowClient) -> str:
    return client.create_experiment(f"faultproxy-{uuid.uuid4().hex[:8]}")


def wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def test_passes_runs_batches_and_artifacts_through_unchanged(client, upstream, proxy, tmp_path):
    exp = experiment(client)
    run = client.create_run(exp).info.run_id
    metrics = [Metric("loss", 1.0 / (step + 1), 0, step) for step in range(2500)]  # three requests of <=1000
    client.log_batch(run, metrics=metrics, params=[Param("lr", "0.01")])
    payload = bytes(range(256)) * (3 * 4096 + 7)  # about 3 MB, every byte value
    (tmp_path / "blob.bin").write_bytes(payload)
    client.log_artifact(run, str(tmp_path / "blob.bin"), artifact_path="data")
    client.set_terminated(run)

    back = client.download_artifacts(run, "data/blob.bin", str(tmp_path / "back"))
    assert Path(back).read_bytes() == payload
    assert [a.path for a in client.list_artifacts(run, "data")] == ["data/blob.bin"]
    direct = upstream.get_run(run)  # what the server stored, read without the proxy
    assert direct.data.params == {"lr": "0.01"}
    assert direct.info.status == "FINISHED"
    history = upstream.get_metric_history(run, "loss")
    assert [m.step for m in history] == list(range(2500))
    assert proxy.count(CREATE, forwarded=True, status=200) == 1
    assert proxy.count("/artifacts/", "PUT", forwarded=True, status=200) == 1
    assert all(e.forwarded and e.status == 200 for e in proxy.log)


def test_several_clients_at_once_each_request_forwarded_exactly_once(client, upstream, proxy):
    exp = experiment(client)
    threads, clients = 8, [MlflowClient(proxy.url) for _ in range(8)]
    barrier = threading.Barrier(threads)
    runs: list[str] = []
    errors: list[BaseException] = []

    def work(c: MlflowClient, i: int) -> None:
        barrier.wait()
        try:
            run = c.create_run(exp).info.run_id
            c.log_batch(run, metrics=[Metric("x", float(i), 0, s) for s in range(200)])
            c.set_terminated(run)
            runs.append(run)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(c, i)) for i, c in enumerate(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors[0]
    assert len(upstream.search_runs([exp])) == threads
    assert proxy.count(CREATE, forwarded=True) == threads
    assert proxy.count("/runs/log-batch", forwarded=True) == threads
    assert all(e.forwarded and e.status == 200 for e in proxy.log)


def test_injected_503s_are_retried_by_the_client_and_never_reach_the_server(
    client, upstream, proxy, monkeypatch
):
    exp = experiment(client)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    proxy.fail_next(2, status=503, path=CREATE)

    run = client.create_run(exp).info.run_id

    assert [(e.status, e.forwarded) for e in proxy.exchanges(CREATE)] == [
        (503, False),
        (503, False),
        (200, True),
    ]
    assert [r.info.run_id for r in upstream.search_runs([exp])] == [run]


def test_an_injected_503_without_retries_fails_the_call_and_then_the_rule_is_spent(client, upstream, proxy):
    exp = experiment(client)
    proxy.fail_next(1, status=503, path=CREATE)

    with pytest.raises(MlflowException, match="503"):
        client.create_run(exp)
    assert upstream.search_runs([exp]) == []
    assert proxy.exchanges(CREATE) == proxy.exchanges(CREATE, forwarded=False, status=503)

    client.create_run(exp)  # the rule is spent
    assert proxy.count(CREATE, forwarded=True, status=200) == 1


def test_fail_next_matches_only_its_path(client, proxy):
    exp = experiment(client)
    proxy.fail_next(1, status=500, path=CREATE)
    client.get_experiment(exp)  # another path: forwarded, the rule still armed
    with pytest.raises(MlflowException, match="500"):
        client.create_run(exp)
    assert proxy.count("/experiments/get", forwarded=True) == 1


def test_fail_next_with_skip_lets_the_first_matches_through(client, proxy):
    exp = experiment(client)
    proxy.fail_next(1, status=503, path=CREATE, skip=1)
    client.create_run(exp)
    with pytest.raises(MlflowException, match="503"):
        client.create_run(exp)
    client.create_run(exp)  # the rule is spent
    statuses = [(e.status, e.forwarded) for e in proxy.exchanges(CREATE)]
    assert statuses == [(200, True), (503, False), (200, True)]


def test_drop_after_create_leaves_the_run_on_the_server_and_the_next_request_fails(client, upstream, proxy):
    exp = experiment(client)
    proxy.drop_after(CREATE)

    run = client.create_run(exp).info.run_id  # its answer is delivered
    assert upstream.get_run(run).info.status == "RUNNING"  # the server created it
    with pytest.raises(MlflowException):
        client.log_param(run, "lr", "0.01")
    with pytest.raises((OSError, http.client.HTTPException)):
        urllib.request.urlopen(f"{proxy.url}/health", timeout=30)  # a new connection: no better

    assert proxy.count(CREATE, forwarded=True) == 1
    assert proxy.exchanges("/runs/log-parameter") == proxy.exchanges("/runs/log-parameter", status=None)
    assert proxy.exchanges("/health") == [Exchange("GET", "/health", None, False)]
    assert CREATE in [e for e in proxy.log if e.forwarded][-1].path  # nothing forwarded after it
    assert upstream.get_run(run).data.params == {}

    proxy.heal()
    client.log_param(run, "lr", "0.01")  # the same client works again
    assert upstream.get_run(run).data.params == {"lr": "0.01"}
    assert proxy.count(CREATE, forwarded=True) == 1


def test_drop_after_with_skip_lets_the_first_matches_through(client, upstream, proxy):
    exp = experiment(client)
    proxy.drop_after(CREATE, skip=1)

    first = client.create_run(exp).info.run_id  # let through: the proxy still forwards everything
    client.log_param(first, "lr", "0.01")
    second = client.create_run(exp).info.run_id  # the trigger: its answer is delivered, then the vanish
    with pytest.raises(MlflowException):
        client.log_param(second, "lr", "0.01")

    assert sorted(r.info.run_id for r in upstream.search_runs([exp])) == sorted([first, second])
    assert upstream.get_run(first).data.params == {"lr": "0.01"}
    assert upstream.get_run(second).data.params == {}
    assert proxy.count(CREATE, forwarded=True) == 2


def test_cut_now_fails_every_request_until_heal(client, proxy):
    exp = experiment(client)
    proxy.cut_now()
    with pytest.raises(MlflowException):
        client.get_experiment(exp)
    assert proxy.exchanges("/experiments/get") == proxy.exchanges("/experiments/get", forwarded=False)
    proxy.heal()
    assert client.get_experiment(exp).experiment_id == exp


def test_a_delayed_request_is_held_before_the_server_sees_it_until_heal(client, upstream, proxy):
    exp = experiment(client)
    proxy.delay(600, path=CREATE)
    created: list[str] = []
    caller = threading.Thread(target=lambda: created.append(client.create_run(exp).info.run_id))
    caller.start()

    wait_until(lambda: proxy.held == 1, "the request is held")
    assert upstream.search_runs([exp]) == []  # held in the proxy, not yet at the server
    client.get_experiment(exp)  # other paths are not delayed

    proxy.heal()
    caller.join(timeout=60)
    assert len(created) == 1
    assert [r.info.run_id for r in upstream.search_runs([exp])] == created
    assert proxy.held == 0
