"""Scale-out as the README's "Scaling out" section tells it, on one machine standing in for three.

A Prefect server on PostgreSQL and an MLflow server on PostgreSQL with an artifact directory (each on a fresh
database of the session's PostgreSQL server, on free loopback ports); the work pool created and the real
prefect.yaml applied as `make deploy` does; two process workers on that one pool, each in its own copy of the
checkout (the files git tracks, as a clone has them) with its own state directory, told only where the Prefect
server is, as on two worker machines. Eight runs of the on-demand training deployment, triggered at once, must
be shared by both workers, all Completed, and all in MLflow: a FINISHED parent per flow run with its FINISHED
children, each run in the copy of the worker that took it. The eight also register one model, and up to four
run on each worker at once (more than four must overlap): this is the load test on PostgreSQL
(tests/test_load.py runs it on SQLite), with every epoch of every curve recorded once and the best of the
eight as champion. Every process is stopped and both
databases are dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from ops import servers
from training.settings import TrainSettings

from . import sockets
from .conftest import postgres_database, subprocess_env
from .test_load import EPOCHS, RUNS, check_curves, check_registry

REPO = Path(__file__).resolve().parents[1]
POOL = "thermometer"  # prefect.yaml's work pool, as `make deploy` and `make worker` use it
DEPLOYMENT = "train/on-demand"
EXPERIMENT = "thermometer"  # the settings' default
MODEL = "scale-out"
VARIANTS = TrainSettings().variants  # the default: three child runs each
# the load test's eight lengths (different validation losses, so one best for the champion)
PARAMETERS = [{"epochs": epochs, "model_name": MODEL} for epochs in EPOCHS]
WORKERS = ("worker-a", "worker-b")
LIMIT = 4  # runs a worker takes at once (`make worker WORKER_LIMIT=4`): the two can run all eight at once
MAKE_WORKER = [sys.executable, "-m", "ops.env", "prefect", "worker", "start", "--type", "process"]

pytestmark = pytest.mark.integration


def copy_checkout(dest: Path) -> Path:
    """Copy to ``dest`` the files of this checkout that a clone would hold (tracked, new and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the work tree is gone from the copy too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


class Servers:
    """The shared Prefect and MLflow servers, both on PostgreSQL, and what a client needs to reach them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.prefect_port, self.mlflow_port = sockets.free_port(), sockets.free_port()
        self.prefect_api = f"http://127.0.0.1:{self.prefect_port}/api"
        self.mlflow = f"http://127.0.0.1:{self.mlflow_port}"
        self.artifacts = tmp / "artifacts"

    def api(self, coroutine_fn):
        """Run ``coroutine_fn(client)`` against the Prefect server."""
        from prefect.client.orchestration import PrefectClient

        async def go():
            async with PrefectClient(self.prefect_api) as client:
                return await coroutine_fn(client)

        return asyncio.run(go())


@pytest.fixture
def shared_servers(tmp_path):
    """Both servers as the README starts them, each on a fresh PostgreSQL database, dropped afterwards."""
    s = Servers(tmp_path)
    with postgres_database() as prefect_db, postgres_database() as mlflow_db, ExitStack() as stop:
        prefect_store = {
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": prefect_db.replace(
                "postgresql", "postgresql+asyncpg", 1
            )
        }
        started = [
            (
                servers.spawn(
                    servers.prefect_command("127.0.0.1", s.prefect_port),
                    servers.prefect_env(tmp_path / "prefect-server", s.prefect_api, prefect_store),
                    tmp_path / "prefect.log",
                ),
                f"{s.prefect_api}/health",
                tmp_path / "prefect.log",
            ),
            (
                servers.spawn(
                    servers.mlflow_command("127.0.0.1", s.mlflow_port, mlflow_db, s.artifacts),
                    servers.mlflow_env(),
                    tmp_path / "mlflow.log",
                ),
                f"{s.mlflow}/health",
                tmp_path / "mlflow.log",
            ),
        ]
        for proc, _, _ in started:  # stopped before their databases are dropped
            stop.callback(servers.stop_group, proc.pid)
        for proc, health, log in started:  # both start at once; migrations on PostgreSQL take a while
            servers.wait_http(health, 240, proc, log)
        yield s


def cli(s: Servers, *command: str) -> None:
    """A command of `make deploy PIPELINE_MLFLOW_URI=...`, run from this checkout as the Makefile runs it."""
    env = subprocess_env(
        s.tmp / "deployer", PREFECT_API_URL=s.prefect_api, PIPELINE_MLFLOW_URI=s.mlflow, PYTHONPATH=str(REPO)
    )
    out = subprocess.run(
        [sys.executable, "-m", "ops.env", *command],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, f"{' '.join(command)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"


def start_worker(s: Servers, name: str, stop: ExitStack, pool: str = POOL) -> Path:
    """A worker machine: its own copy of the checkout and state directory, `make worker` run there."""
    machine = s.tmp / name
    checkout = copy_checkout(machine / "checkout")
    (machine / "state").mkdir()
    # all the README asks of a worker machine: PREFECT_API_URL (the runs get MLflow's URI from the deployment)
    env = subprocess_env(
        machine / "state",
        PREFECT_API_URL=s.prefect_api,
        PYTHONPATH=str(checkout),  # the copy's code, as the copy's own .venv would import it
        PREFECT_WORKER_QUERY_SECONDS="2",  # poll every 2 s rather than 10: quicker, no different
    )
    log = machine / "worker.log"
    command = [*MAKE_WORKER, "--pool", pool, "--limit", str(LIMIT), "--name", name]
    proc = servers.spawn(command, env, log, cwd=checkout)
    stop.callback(servers.stop_group, proc.pid)
    return log


def kill_leftovers(root: Path) -> None:
    """SIGKILL whatever still works in a directory under ``root``: a flow run that its stopped worker left."""
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")).is_relative_to(root):
                os.kill(int(proc.name), signal.SIGKILL)


def wait_until_final(s: Servers, ids: list, logs: list[Path], timeout: float = 600) -> list:
    """The flow runs, once every one is in a final state."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def read(client):
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = s.api(read)
        if len(runs) == len(ids) and all(r.state is not None and r.state.is_final() for r in runs):
            return runs
        time.sleep(2)
    tails = "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}" for log in logs)
    pytest.fail(f"flow runs not final within {timeout:.0f} s: {[r.state_name for r in runs]}\n{tails}")


@pytest.mark.timeout(900)  # eight flow-run processes of a few CPU-seconds each, on a shared 2-core machine
def test_two_workers_on_one_pool_share_eight_runs_and_record_all_of_them(shared_servers, monkeypatch):
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment

    from tasks import tracking

    s = shared_servers
    started = time.monotonic()
    cli(s, "prefect", "work-pool", "create", POOL, "--type", "process")
    with ExitStack() as stop:
        stop.callback(kill_leftovers, s.tmp)  # last: after the workers are stopped
        logs = {name: start_worker(s, name, stop) for name in WORKERS}  # they start while the rest deploys
        cli(s, "prefect", "--no-prompt", "deploy", "--all")
        cli(s, sys.executable, "-m", "ops.automations")
        deployed = time.monotonic()

        async def trigger(client):
            return [
                await run_deployment(DEPLOYMENT, timeout=0, client=client, parameters=parameters)
                for parameters in PARAMETERS
            ]

        ids = [str(run.id) for run in s.api(trigger)]
        runs = wait_until_final(s, ids, list(logs.values()))
    done = time.monotonic()
    print(f"\ndeployed in {deployed - started:.0f} s; {RUNS} runs on two workers in {done - deployed:.0f} s")

    assert sorted(r.state_name for r in runs) == ["Completed"] * RUNS, [
        (r.state_name, r.state.message) for r in runs
    ]
    # who ran which: the worker that won the run labels it (both may try), and the run's output is in its log
    by_run = {str(r.id): r.labels.get("prefect.worker.name") for r in runs}
    assert sorted(set(by_run.values())) == sorted(WORKERS), by_run  # both workers, and no one else
    output = {name: log.read_text(errors="replace") for name, log in logs.items()}
    for r in runs:
        began = {name for name in WORKERS if f"Beginning flow run '{r.name}'" in output[name]}
        assert began == {by_run[str(r.id)]}, (r.name, by_run[str(r.id)], began)
    assert not [name for name in WORKERS if "database is locked" in output[name]]

    # every run is in MLflow, found by the flow run id it records, and ran in its worker's own copy
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.mlflow)  # for tasks.tracking; not set_tracking_uri (for good)
    client = MlflowClient(s.mlflow)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # uploads go through the server
    spans = []  # (start, end) of each parent run, in ms
    for run_id, name in by_run.items():
        _, parent_id, children = tracking.flow_run_record(EXPERIMENT, run_id)
        parent = client.get_run(parent_id)
        spans.append((parent.info.start_time, parent.info.end_time))
        assert parent.info.status == "FINISHED", (run_id, parent.info.status)
        assert parent.data.tags["prefect.deployment"] == DEPLOYMENT.split("/")[1]
        assert parent.data.tags["data_source"] == str(s.tmp / name / "checkout" / "data" / "thermometer.csv")
        assert len(children) == len(VARIANTS), (run_id, children)
        for child_id in children:
            child = client.get_run(child_id)
            assert child.info.status == "FINISHED", (run_id, child_id)
            assert {"loss_curve.png", "fit.png"} <= {a.path for a in client.list_artifacts(child_id)}
            check_curves(client, child)
    check_registry(client, MODEL, RUNS)  # the lock lives on the shared Prefect server, on PostgreSQL
    # a load on the shared servers: more runs recording at the same moment than one worker takes
    overlap = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    print(f"at most {overlap} runs recording at once")
    assert overlap > LIMIT, spans
    # the artifacts are in the server's store; neither worker machine kept a local MLflow store
    assert any(s.artifacts.rglob("fit.png"))
    local = [p for p in s.tmp.glob("worker-*/**/*") if p.name in ("mlflow.db", "mlartifacts", "mlruns")]
    assert not local, local
