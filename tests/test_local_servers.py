"""`make run`, `make ui`, `make run` again and `make stop`, as a user would, on temporary stores and ports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ops import servers

from . import sockets
from .conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def run(args: list[str], env: dict[str, str], timeout: float = 240) -> str:
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    return text


def test_ui_servers_show_earlier_runs_take_new_ones_and_stop_cleanly(tmp_path):
    home = tmp_path / "fresh" / "state"  # not there yet: the first run creates it
    env = subprocess_env(home, PIPELINE_DETECT_SERVERS="true")  # as a user's shell: servers are found
    train = ["-m", "flows.run", "train", "epochs=30", 'variants=["manual"]']

    # 1. make run with embedded defaults on a new state directory: no server, no traceback
    first = run(train, env)
    assert "Traceback" not in first and "Finished in state Completed()" in first

    # 2. make ui on the same stores
    prefect_port, mlflow_port = sockets.free_port(), sockets.free_port()
    try:
        printed = run(
            [
                "-m",
                "ops.servers",
                "up",
                "--prefect-port",
                str(prefect_port),
                "--mlflow-port",
                str(mlflow_port),
            ],
            env,
        )
        assert f"http://127.0.0.1:{prefect_port}" in printed and f"http://127.0.0.1:{mlflow_port}" in printed
        state = {n: json.loads((home / ".run" / f"{n}.json").read_text()) for n in ("prefect", "mlflow")}

        mlflow = MlflowClient(f"http://127.0.0.1:{mlflow_port}")
        experiment = mlflow.get_experiment_by_name("thermometer")
        assert len(mlflow.search_runs([experiment.experiment_id])) == 2  # the earlier parent and child

        # 3. make run again: detected servers are used (the run links to the MLflow server, Prefect keeps it)
        second = run(train, env)
        assert f"http://127.0.0.1:{mlflow_port}/#/experiments/" in second and "Traceback" not in second
        assert len(mlflow.search_runs([experiment.experiment_id])) == 4
        flow_runs = prefect_flow_runs(f"http://127.0.0.1:{prefect_port}/api")
        assert len(flow_runs) == 2 and all(r == "Completed" for r in flow_runs)  # the first, embedded one too
    finally:
        # 4. make stop: exactly those processes
        stopped = run(["-m", "ops.servers", "down"], env)
    assert "prefect" in stopped and "mlflow" in stopped
    assert not any(servers.alive(s["pid"]) for s in state.values())
    assert not list((home / ".run").glob("*.json"))


def prefect_flow_runs(api_url: str) -> list[str]:
    import asyncio

    from prefect.client.orchestration import PrefectClient

    async def read():
        async with PrefectClient(api_url) as client:
            return [r.state_name for r in await client.read_flow_runs()]

    return asyncio.run(read())
