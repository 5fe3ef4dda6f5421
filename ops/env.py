"""Run a command in the project's environment: ``python -m ops.env prefect worker start ...``.

Applies ``tasks.environment`` (embedded defaults, the running `make ui` servers) and the values prefect.yaml's
templates read (``deployment_variables``), so the Prefect CLI, workers and deployments talk to the same
servers as ``make run``. Commands that need a Prefect server (deploy, worker, serve) fail with a clear
message when none is configured.
"""

from __future__ import annotations

import os
import sys

from tasks import environment


def main(argv: list[str]) -> None:
    """Exec ``argv`` in the project's environment (``--no-prefect``: the command needs no Prefect server)."""
    needs_prefect = not (argv and argv[0] == "--no-prefect")
    argv = argv if needs_prefect else argv[1:]
    if not argv:
        raise SystemExit("usage: python -m ops.env [--no-prefect] COMMAND [ARGS...]")
    environment.apply()
    if needs_prefect and not os.environ.get("PREFECT_API_URL"):
        raise SystemExit("no Prefect server: start one with `make ui`, or set PREFECT_API_URL to yours")
    os.environ.update(environment.deployment_variables())
    # a process worker starts each flow run with the `python` on PATH: make it this environment's
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
