"""Safe defaults: authentication on both servers, credentials never written anywhere, loopback binding."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from ops import servers

from . import sockets
from .conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def auth_mlflow(tmp_path_factory):
    """`mlflow server --app-name basic-auth` with its user store in a temp dir and a random admin password."""
    tmp = tmp_path_factory.mktemp("auth-mlflow")
    (tmp / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp}/auth.db\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    password = "pw-" + secrets.token_hex(12)
    env = servers.mlflow_env(
        {
            "MLFLOW_AUTH_CONFIG_PATH": str(tmp / "auth.ini"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        }
    )
    port = sockets.free_port()
    cmd = servers.mlflow_command(
        "127.0.0.1", port, f"sqlite:///{tmp}/mlflow.db", tmp / "artifacts", app="basic-auth"
    )
    url = f"http://127.0.0.1:{port}"
    with servers.running(cmd, env, tmp / "mlflow.log", f"{url}/health"):
        yield url, password, tmp


def test_mlflow_refuses_anonymous_requests(auth_mlflow):
    url, password, _ = auth_mlflow
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, timeout=10).status_code == 401
    assert requests.get(search, auth=("admin", "wrong"), timeout=10).status_code == 401
    assert requests.get(search, auth=("admin", password), timeout=10).status_code == 200


def test_pipeline_runs_with_credentials_from_the_environment_and_writes_them_nowhere(auth_mlflow, tmp_path):
    url, password, server_dir = auth_mlflow
    credentials = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
    env = subprocess_env(tmp_path, MLFLOW_TRACKING_URI=url, **credentials)
    out = subprocess.run(
        [sys.executable, "-m", "flows.run", "train", "epochs=50", 'variants=["manual"]', "model_name=secure"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    logs = out.stdout + out.stderr
    assert out.returncode == 0, logs[-3000:]
    assert "registered" in logs or "now champion" in logs

    from mlflow import MlflowClient

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "admin", password
    try:
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("thermometer")
        runs = client.search_runs([experiment.experiment_id])
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
        written = {"the flow's output": logs}
        for r in runs:
            written[f"run {r.info.run_id}'s params and tags"] = str(r.data.params) + str(r.data.tags)
            client.download_artifacts(r.info.run_id, "", str(tmp_path / r.info.run_id))  # scanned below
        written["the model version's tags"] = str(client.get_model_version("secure", "1").tags)
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    # every file on disk: the flow's state directory (the temporary Prefect API's SQLite database with the
    # flow run, its task runs, logs and artifacts; the spool; the downloaded MLflow artifacts) and the MLflow
    # server's directory (its log, its store, its user database, its artifact store)
    files = {p: p.read_bytes() for d in (tmp_path, server_dir) for p in d.rglob("*") if p.is_file()}
    prefect_db = b"".join(
        c for p, c in files.items() if p.parent == tmp_path / ".prefect" and "prefect.db" in p.name
    )
    assert b"secure" in prefect_db  # the database that holds this flow run (model_name=secure)
    assert server_dir / "mlflow.log" in files and len(files) > 10
    written |= {str(p): content.decode("latin-1") for p, content in files.items()}
    assert [where for where, text in written.items() if password in text] == []


def test_prefect_server_with_an_auth_string(tmp_path):
    auth = "admin:" + secrets.token_hex(8)
    port = sockets.free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = servers.prefect_env(tmp_path / "home", api, {"PREFECT_SERVER_API_AUTH_STRING": auth})
    with servers.running(
        servers.prefect_command("127.0.0.1", port), env, tmp_path / "prefect.log", f"{api}/health"
    ):
        assert requests.post(f"{api}/flows/filter", json={}, timeout=10).status_code == 401
        assert requests.post(f"{api}/flows/filter", json={}, auth=tuple(auth.split(":")), timeout=10).ok

        run_env = subprocess_env(tmp_path, PREFECT_API_URL=api, PREFECT_API_AUTH_STRING=auth)
        train = ["-m", "flows.run", "train", "epochs=50", 'variants=["manual"]', "model_name=null"]
        out = subprocess.run(
            [sys.executable, *train], cwd=REPO, env=run_env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
        assert auth.split(":")[1] not in out.stdout + out.stderr

        from prefect.client.orchestration import PrefectClient

        async def flow_runs():
            async with PrefectClient(api, auth_string=auth) as client:
                return [r.state_name for r in await client.read_flow_runs()]

        assert asyncio.run(flow_runs()) == ["Completed"]

        # a worker with the auth string runs a deployment of the real prefect.yaml
        spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
        spec["deployments"] = [d for d in spec["deployments"] if d["name"] == "nightly"]
        spec["deployments"][0]["parameters"].update(epochs=50, variants=["manual"], model_name=None)
        spec["deployments"][0].pop("schedules")  # only the triggered run
        (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(spec))
        cli_env = run_env | {"PIPELINE_MLFLOW_URI": f"sqlite:///{tmp_path}/mlflow.db"}
        prefect = [sys.executable, "-m", "ops.env", "prefect"]
        for args in (["work-pool", "create", "thermometer", "--type", "process"],
                     ["--no-prompt", "deploy", "--all", "--prefect-file", str(tmp_path / "prefect.yaml")],
                     ["deployment", "run", "train/nightly"]):  # fmt: skip
            done = subprocess.run([*prefect, *args], cwd=REPO, env=cli_env, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
        worker = servers.spawn(
            [*prefect, "worker", "start", "--pool", "thermometer"], cli_env, tmp_path / "w.log"
        )
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and sorted(asyncio.run(flow_runs())) != [
                "Completed",
                "Completed",
            ]:
                time.sleep(1)
        finally:
            servers.stop_group(worker.pid)
        assert sorted(asyncio.run(flow_runs())) == ["Completed", "Completed"], (
            tmp_path / "w.log"
        ).read_text()[-3000:]
