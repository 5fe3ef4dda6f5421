"""Run a command with the project's environment: ``python -m ops.env prefect worker start ...``.

Applies the embedded defaults and the running ``make ui`` servers (see ``tasks.environment``), so the Prefect
CLI, workers and deployments talk to the same servers as ``make run``. Commands that need a Prefect server
(deploy, worker, serve) fail with a clear message when none is configured.
"""

from __future__ import annotations

import os
import sys

import tasks  # applies the defaults to os.environ on import


def main(argv: list[str]) -> None:
    """Exec ``argv`` in the project's environment (``--no-prefect``: the command needs no Prefect server)."""
    needs_prefect = not (argv and argv[0] == "--no-prefect")
    argv = argv if needs_prefect else argv[1:]
    if not argv:
        raise SystemExit("usage: python -m ops.env [--no-prefect] COMMAND [ARGS...]")
    if needs_prefect and not os.environ.get("PREFECT_API_URL"):
        raise SystemExit("no Prefect server: start one with `make ui`, or set PREFECT_API_URL to yours")
    tracking = os.environ["MLFLOW_TRACKING_URI"]
    default_mlflow = tracking if tracking.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    os.environ.setdefault("PIPELINE_MLFLOW_URI", default_mlflow)
    os.environ.setdefault("PIPELINE_DIR", str(tasks.environment.REPO_ROOT))
    bin_dir = os.path.dirname(sys.executable)
    # a process worker starts each flow run with the `python` on PATH: make it this environment's
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
