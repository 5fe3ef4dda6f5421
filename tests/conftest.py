"""Test session set-up: every store in a temporary directory, one Prefect server per session.

A session is one pytest process: `make test` runs four (pytest-xdist), each with its own state directory,
Prefect server (started when a test first needs it) and, where needed, PostgreSQL cluster.

The environment is applied here, the test suite's entry point, before any test module imports prefect or
mlflow, so nothing a test does touches the repository's own .prefect/, mlflow.db or mlartifacts/.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from ops import servers
from tasks import environment

from . import postgres, sockets

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
# PostgreSQL for the tests that ask for it: the local server, else a throwaway cluster started on first use
POSTGRES = postgres.SharedServer()


def subprocess_env(state_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment for a pipeline subprocess with its own state directory and embedded defaults.

    Drops this session's Prefect and MLflow settings, so the child derives its stores from ``state_dir``
    and finds no server unless ``overrides`` name one.
    """
    dropped = ("PREFECT_", "MLFLOW_TRACKING_URI", "PIPELINE_ARTIFACT_ROOT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    return env | {"PIPELINE_STATE_DIR": str(state_dir), "PIPELINE_DETECT_SERVERS": "false", **overrides}


@pytest.fixture(scope="session")
def prefect_api(prefect_server):
    """The flows that tests call in this process run against the session's Prefect server, no heartbeats."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
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


# `make test` spreads the suite over processes a file at a time (pytest-xdist, --dist loadfile). These files
# take longest, most of it waiting (outages, killed processes, workers polling, eight runs at once): they
# start first so that their waits overlap the rest; the other files follow in their usual order.
SLOWEST_FIRST = (
    "test_faults.py",
    "test_servers.py",
    "test_load.py",
    "test_restart.py",
    "test_security.py",
    "test_scale_out.py",
    "test_local_servers.py",
    "test_registry.py",
    "test_sweep_flow.py",
)


def pytest_configure(config):
    stale = [name for name in SLOWEST_FIRST if not (REPO / "tests" / name).is_file()]
    if stale:  # a renamed file would silently lose its early start
        raise pytest.UsageError(f"tests/conftest.py: SLOWEST_FIRST names no such test file: {stale}")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order


def pytest_sessionfinish(session, exitstatus):
    POSTGRES.close()
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


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the session's PostgreSQL server: the local one, else a throwaway cluster (lazily)."""
    return POSTGRES.get().url


@contextmanager
def postgres_database():
    """A fresh database on the session's PostgreSQL server (see ``postgres_server``), dropped afterwards."""
    with postgres.fresh_database(POSTGRES.get().url) as url:
        yield url


@pytest.fixture(scope="session")
def prefect_server():
    """The session's real Prefect server, started on first use: the pipeline subprocesses of the tests run
    their flows on it, and so do the flows that tests call in this process (``prefect_api``).

    One per session (a start costs 12-14 CPU-seconds, and an idle server about 3% of a core); a flow run on
    it skips the temporary server's start-up (about 11 s); the registry lock lives there.
    """
    tmp = SESSION_DIR / "prefect-server"
    port = sockets.free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = servers.prefect_env(tmp / "home", api)
    command = servers.prefect_command("127.0.0.1", port)
    with servers.running(command, env, tmp / "prefect.log", f"{api}/health", timeout=300):  # 88 s at load 11
        yield api
