"""Embedded defaults: one machine, no server to start, all state inside the repository (git-ignored).

Applied when the ``tasks`` package is imported, before anything imports prefect. Every value is a default
only: a variable already set in the environment wins (``PREFECT_API_URL`` for a Prefect server,
``MLFLOW_TRACKING_URI`` for an MLflow server or database). ``PIPELINE_STATE_DIR`` moves all local state
(default: the repository itself).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def state_dir(environ: MutableMapping[str, str] = os.environ) -> Path:
    """Where local state lives: ``PIPELINE_STATE_DIR``, else the repository."""
    return Path(environ.get("PIPELINE_STATE_DIR") or REPO_ROOT).resolve()


def defaults(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """The embedded defaults for a state directory."""
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
        # a tracking server that went away: retry each request 7 times, waiting 1, 2, 4, ... 64 s (about two
        # minutes in all), so a server restarted within a minute loses nothing and one gone for good fails
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        # artifacts of experiments created on a database store (ignored when a tracking server decides)
        "PIPELINE_ARTIFACT_ROOT": str(base / "mlartifacts"),
    }


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each default that the environment does not already set.

    While ``make ui``'s servers run (see ``ops.servers``), they are the defaults instead: flow runs then
    appear in the Prefect UI and record to the MLflow server; ``PIPELINE_DETECT_SERVERS=false`` turns that
    off.
    """
    if environ.get("PIPELINE_DETECT_SERVERS", "true").lower() not in ("false", "0", "no"):
        from ops.servers import recorded

        if prefect := recorded("prefect", environ):
            environ.setdefault("PREFECT_API_URL", prefect.url)
        if mlflow := recorded("mlflow", environ):
            environ.setdefault("MLFLOW_TRACKING_URI", mlflow.url)
    for key, value in defaults(environ).items():
        environ.setdefault(key, value)
