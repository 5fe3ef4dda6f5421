"""`make run`, `make ui`, `make run` again, `make serve-model`, `make worker` and `make stop`, as a user
would, on temporary stores and ports.

The servers are started by make itself with the Makefile's default hosts (only ports are chosen, free ones
on loopback), and what they listen on is read from the operating system: the kernel's socket tables matched
to the open files of every process in each server's session, children included.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ops import servers
from tasks import environment

from . import sockets
from .conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
# the dependencies are installed (the tests run in that environment): make must not reinstall them, which it
# would do in a fresh checkout or worktree, whose pyproject.toml is newer than the stamp
MAKE = ["make", "-o", ".venv/.installed-stamp"]
pytestmark = pytest.mark.integration


def run(args: list[str], env: dict[str, str], timeout: float = 240) -> str:
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    return text


def test_ui_servers_show_earlier_runs_take_new_ones_listen_on_loopback_only_and_stop_cleanly(tmp_path):
    home = tmp_path / "fresh" / "state"  # not there yet: the first run creates it
    env = subprocess_env(home, PIPELINE_DETECT_SERVERS="true")  # as a user's shell: servers are found
    train = ["-m", "flows.run", "train", "epochs=30", 'variants=["manual"]']

    # 1. make run with embedded defaults on a new state directory: no server, no traceback
    first = run(train, env)
    assert "Traceback" not in first and "Finished in state Completed()" in first

    # 2. make ui on the same stores, on free ports; the hosts are the defaults
    prefect_port, mlflow_port = sockets.free_port(), sockets.free_port()
    make_env = {k: v for k, v in env.items() if k not in ("MLFLOW_HOST", "MODEL_HOST", "MAKEFLAGS", "MFLAGS")}
    make_env |= {"PREFECT_PORT": str(prefect_port), "MLFLOW_PORT": str(mlflow_port)}
    state = {}
    try:
        printed = make(["ui"], make_env)
        assert f"http://127.0.0.1:{prefect_port}" in printed and f"http://127.0.0.1:{mlflow_port}" in printed
        state = {n: json.loads((home / ".run" / f"{n}.json").read_text()) for n in ("prefect", "mlflow")}
        for name, port in (("prefect", prefect_port), ("mlflow", mlflow_port)):
            assert_listens_on_loopback_only(name, state[name]["pid"], port)

        mlflow = MlflowClient(f"http://127.0.0.1:{mlflow_port}")
        experiment = mlflow.get_experiment_by_name("thermometer")
        assert len(mlflow.search_runs([experiment.experiment_id])) == 2  # the earlier parent and child

        # 3. make run again: detected servers are used (the run links to the MLflow server, Prefect keeps it)
        second = run(train, env)
        assert f"http://127.0.0.1:{mlflow_port}/#/experiments/" in second and "Traceback" not in second
        assert len(mlflow.search_runs([experiment.experiment_id])) == 4
        flow_runs = prefect_flow_runs(f"http://127.0.0.1:{prefect_port}/api")
        assert len(flow_runs) == 2 and all(r == "Completed" for r in flow_runs)  # the first, embedded one too

        # 4. make serve-model: the champion the runs registered, on a free port, its host the Makefile's
        model_port = sockets.free_port()
        with servers.running(
            [*MAKE, "serve-model", f"MODEL_PORT={model_port}"],
            make_env,
            tmp_path / "serve-model.log",
            f"http://127.0.0.1:{model_port}/ping",
        ) as served:
            assert_listens_on_loopback_only("model server", served.pid, model_port)

        # 5. make worker: a Prefect worker listens nowhere unless its health-check web server is on (it
        # is not by default); whatever it or a child listens on must be loopback
        log = tmp_path / "worker.log"
        worker = servers.spawn([*MAKE, "worker"], make_env, log)
        try:
            assert servers.until(lambda: "started!" in log.read_text() or worker.poll() is not None, 120, 0.5)
            assert worker.poll() is None, log.read_text()[-3000:]
            listening = sockets.listening_sockets(sockets.session_processes(worker.pid))
            assert all(sockets.loopback(address) for address, _ in listening), ("worker", listening)
        finally:
            servers.stop_group(worker.pid)
    finally:
        # 6. make stop: exactly those processes
        stopped = make(["stop"], make_env)
    assert "prefect" in stopped and "mlflow" in stopped
    assert not any(environment.alive(s["pid"]) for s in state.values())
    assert not list((home / ".run").glob("*.json"))


def make(targets: list[str], env: dict[str, str], timeout: float = 240) -> str:
    out = subprocess.run(
        [*MAKE, *targets], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    return text


def assert_listens_on_loopback_only(name: str, session: int, port: int) -> None:
    """Every process in ``session`` listens on loopback addresses only, and one of them on ``port``."""
    listening = sockets.listening_sockets(sockets.session_processes(session))
    assert port in {p for _, p in listening}, (name, port, listening)
    exposed = {(a, p) for a, p in listening if not sockets.loopback(a)}
    assert not exposed, f"{name} listens beyond loopback: {sorted(exposed)}"


def prefect_flow_runs(api_url: str) -> list[str]:
    import asyncio

    from prefect.client.orchestration import PrefectClient

    async def read():
        async with PrefectClient(api_url) as client:
            return [r.state_name for r in await client.read_flow_runs()]

    return asyncio.run(read())


def test_a_run_on_the_temporary_api_listens_on_loopback_only_and_leaves_no_server_behind(tmp_path):
    """`make run` with embedded defaults starts Prefect's temporary API itself (``flows/run.py``): it listens
    on loopback only while the run lasts, and nothing of the run's process session outlives the run."""
    train = ["-m", "flows.run", "train", "epochs=2000", 'variants=["manual"]', "model_name=null"]
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, *train],
            cwd=REPO,
            env=subprocess_env(tmp_path / "state"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the run and every process it starts share a session we can list
        )
    try:
        deadline = time.monotonic() + 180
        while "Beginning flow run" not in log.read_text():  # the API answers by then
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        started = re.search(r"Starting temporary server on http://127\.0\.0\.1:(\d+)/api", log.read_text())
        assert_listens_on_loopback_only("temporary Prefect API", proc.pid, int(started[1]))
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
        assert "Stopping temporary server" in log.read_text()
        time.sleep(1)  # a server stopped at exit has gone by now; one left running has not
        left = sockets.session_processes(proc.pid)
        assert not left, f"processes of the run outlived it: {left}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
