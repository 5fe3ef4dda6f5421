"""Test session set-up: every store in a temporary directory, one Prefect test harness per session.

The environment is applied here, the test suite's entry point, before any test module imports prefect or
mlflow, so nothing a test does touches the repository's own .prefect/, mlflow.db or mlartifacts/.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from ops import servers
from tasks import environment

from . import sockets

SESSION_DIR = Path(tempfile.mkdtemp(prefix="thermo-tests-"))
for var in (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_HOME",
    "MLFLOW_TRACKING_URI",
    "PIPELINE_ARTIFACT_ROOT",
):
    os.environ.pop(var, None)
os.environ.update(
    {
        "PIPELINE_STATE_DIR": str(SESSION_DIR),
        # never pick up the user's `make ui` servers
        "PIPELINE_DETECT_SERVERS": "false",
        # the models this project logs must load without unpickling anything
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }
)
environment.apply()

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "thermometer.csv"


def subprocess_env(state_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment for a pipeline subprocess with its own state directory and embedded defaults.

    Drops this session's Prefect and MLflow settings, so the child derives its stores from ``state_dir``
    and finds no server unless ``overrides`` name one.
    """
    dropped = ("PREFECT_", "MLFLOW_TRACKING_URI", "PIPELINE_ARTIFACT_ROOT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    return env | {"PIPELINE_STATE_DIR": str(state_dir), "PIPELINE_DETECT_SERVERS": "false", **overrides}


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for every flow test in the session (it costs 12-15 s to start)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=90),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture(scope="session")
def mlflow_client():
    """A client on the session's temporary SQLite store."""
    from mlflow import MlflowClient

    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


@pytest.fixture
def write(tmp_path):
    """Write text (or bytes) to a file in the test's temp dir and return its path as a string."""

    def _write(name: str, content: str | bytes) -> str:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return str(path)

    return _write


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server():
    """A real `mlflow server` on a free loopback port; the flows of this module record to it."""
    from mlflow import MlflowClient

    tmp = Path(tempfile.mkdtemp(prefix="thermo-registry-"))
    port = sockets.free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = servers.mlflow_command("127.0.0.1", port, f"sqlite:///{tmp}/mlflow.db", tmp / "artifacts")
    with (
        pytest.MonkeyPatch.context() as mp,
        servers.running(cmd, servers.mlflow_env(), tmp / "mlflow.log", f"{url}/health"),
    ):
        mp.setenv("MLFLOW_TRACKING_URI", url)
        yield MlflowClient(url)
    shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def postgres_database():
    """A fresh database on the local PostgreSQL server, dropped afterwards."""
    import psycopg

    name = f"thermo_test_{uuid.uuid4().hex[:8]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real Prefect server for a module's pipeline subprocesses.

    A flow run on it skips the temporary server's start-up (about 11 s); the registry lock lives there.
    """
    tmp = tmp_path_factory.mktemp("prefect-server")
    port = sockets.free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = servers.prefect_env(tmp / "home", api)
    with servers.running(
        servers.prefect_command("127.0.0.1", port), env, tmp / "prefect.log", f"{api}/health"
    ):
        yield api
