"""The project's environment in one place: the state directory, embedded defaults, `make ui`'s servers.

Standard library only, and importing it changes nothing. Each entry point (``flows/run.py``,
``flows/serve.py``, ``ops/*``, the tests) calls ``apply()`` once, before anything imports prefect, which
reads its settings at import. Every value is a default: a variable already set wins (``PREFECT_API_URL``
for a Prefect server, ``MLFLOW_TRACKING_URI`` for an MLflow server or database). ``PIPELINE_STATE_DIR``
moves all local state (default: the repository itself). This is the only module that reads ``PIPELINE_*``
variables.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"

# Flow runs against a Prefect server send a heartbeat this often (deployed runs through prefect.yaml, which
# `make deploy` fills in); a run whose heartbeats stop for three periods is marked Crashed by the automation
# in ops/automations.py.
HEARTBEAT_SECONDS = 30
ZOMBIE_HEARTBEATS = 3
# MLflow's client retries each request this often, 1, 2, 4 ... 64 s apart (about two minutes in all), so a
# server restarted within a minute loses nothing and one gone for good fails.
MLFLOW_RETRIES, MLFLOW_BACKOFF = 7, 1
SERVERS = ("prefect", "mlflow")


def flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    """A boolean variable: ``true``/``1``/``yes`` or ``false``/``0``/``no`` (any case)."""
    value = environ.get(name)
    return default if value is None else value.strip().lower() in ("true", "1", "yes")


def state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where local state lives: ``PIPELINE_STATE_DIR``, else the repository."""
    return Path(environ.get("PIPELINE_STATE_DIR") or REPO_ROOT).resolve()


def run_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``.run/`` in the state directory: the state files and logs of the servers `make ui` started."""
    return state_dir(environ) / ".run"


def artifact_root(environ: Mapping[str, str] = os.environ) -> str | None:
    """Artifact location for experiments this project creates on a database store."""
    return environ.get("PIPELINE_ARTIFACT_ROOT")


def allow_urls(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a data path may be a URL (``PIPELINE_ALLOW_URLS``)."""
    return flag(environ, "PIPELINE_ALLOW_URLS", False)


def zombie_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """How long a deployed run may go without a heartbeat before it counts as dead."""
    return float(environ.get("PIPELINE_ZOMBIE_SECONDS") or ZOMBIE_HEARTBEATS * HEARTBEAT_SECONDS)


@dataclass(frozen=True)
class Server:
    """A server process that `make ui` started, as its state file records it."""

    name: str  # "prefect" or "mlflow"
    pid: int  # leader of its process group
    url: str  # base URL (Prefect: the API URL, ending in /api)
    ui: str  # what to open in a browser
    log: str  # its log file


def server_file(name: str, environ: Mapping[str, str] = os.environ) -> Path:
    """The state file of server ``name``."""
    return run_dir(environ) / f"{name}.json"


def alive(pid: int) -> bool:
    """True when a process with this pid exists (a zombie child of ours is reaped first)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recorded(name: str, environ: Mapping[str, str] = os.environ) -> Server | None:
    """The server ``name`` that `make ui` started, if it is still running."""
    path = server_file(name, environ)
    if not path.exists():
        return None
    server = Server(**json.loads(path.read_text()))
    return server if alive(server.pid) else None


def embedded(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The defaults: one machine, no server to start, every store inside the state directory (and, for runs
    against a Prefect server, the heartbeat its zombie automation expects)."""
    base = state_dir(environ)
    return {
        # Prefect: the temporary local API keeps its database here instead of ~/.prefect
        "PREFECT_HOME": str(base / ".prefect"),
        # its telemetry service is the source of "database is locked" tracebacks on SQLite
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # a cold temporary server takes 12-19 s on a busy 2-core machine; the 20 s default is too tight
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        # MLflow: a SQLite file at an absolute path, so a worker in another directory finds the same store
        "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}",
        # MLflow 3 reports usage telemetry by default; this machine has no network and users may not want it
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(MLFLOW_RETRIES),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(MLFLOW_BACKOFF),
        # a flow run against a Prefect server sends a heartbeat this often (tasks/heartbeat.py; Prefect's own,
        # PREFECT_FLOWS_HEARTBEAT_FREQUENCY, holds up the end of every run for up to a second); flows/run.py
        # turns them off on the temporary API
        "PIPELINE_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        # a worker's health-check server (off unless asked for) would otherwise listen on every interface
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        # artifacts of experiments created on a database store (ignored when a tracking server decides)
        "PIPELINE_ARTIFACT_ROOT": str(base / "mlartifacts"),
    }


def resolve(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables ``apply`` would set: those the environment lacks, with their values.

    While `make ui`'s servers run they come first, so flow runs appear in the Prefect UI and record to the
    MLflow server; ``PIPELINE_DETECT_SERVERS=false`` turns that off.
    """
    found: dict[str, str] = {}
    if flag(environ, "PIPELINE_DETECT_SERVERS", True):
        if prefect := recorded("prefect", environ):
            found["PREFECT_API_URL"] = prefect.url
        if mlflow := recorded("mlflow", environ):
            found["MLFLOW_TRACKING_URI"] = mlflow.url
    return {key: value for key, value in (embedded(environ) | found).items() if key not in environ}


def apply(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set every default the environment lacks (see ``resolve``); return what was set."""
    missing = resolve(environ)
    environ.update(missing)
    return missing


def deployment_variables(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What `make deploy` hands to prefect.yaml's templates: the tracking server and the heartbeat.

    ``PIPELINE_MLFLOW_URI`` (the tracking server deployed runs record to) defaults to the MLflow server in
    use, else the one `make ui` would start.
    """
    tracking = environ.get("MLFLOW_TRACKING_URI", "")
    server = tracking if tracking.startswith(("http://", "https://")) else f"http://{LOOPBACK}:5000"
    return {
        "PIPELINE_MLFLOW_URI": environ.get("PIPELINE_MLFLOW_URI") or server,
        "PIPELINE_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
    }


def checkout() -> dict[str, str]:
    """The deployments' pull step: a flow run works in the checkout that its worker runs the project from.

    A worker started by `make worker` (``python -m ops.env``) starts flow runs with its checkout's ``python``,
    which imports this module from that checkout (its ``.venv`` installs it editable), so each worker machine
    runs its own clone's code and reads relative data paths there, wherever it cloned the repository. Prefect
    changes to the ``directory`` a pull step returns before it loads the flow.
    """
    return {"directory": str(REPO_ROOT)}
