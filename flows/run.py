"""Run a flow from the command line: ``python -m flows.run train epochs=100 normalize=none``.

Each ``key=value`` is a flow parameter (``--help`` lists them, from the flow's settings model); values are
read as JSON, else YAML, else text, and a list may be written ``a,b``. The environment is applied first
(``tasks.environment``); with no Prefect server configured the flow runs on Prefect's temporary local API,
and per-run heartbeats (only useful to a long-lived server) are switched off.

The garbage collector is paused while torch, Prefect, MLflow and the flow are imported, and what they built is
then frozen (``gc.freeze``): those objects live until the process ends, so collecting them is wasted work,
about 0.6 s at import and 1.1 s at exit (``make bench`` shows the run's phases).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from tasks import environment

# each flow and its settings model (in training.settings), imported when used
FLOWS = {
    "train": ("flows.train:train", "TrainSettings"),
    "predict": ("flows.predict:predict", "PredictSettings"),
    "sweep": ("flows.sweep:sweep", "SweepSettings"),
}
USAGE = f"usage: python -m flows.run {{{','.join(FLOWS)}}} [--help] [--dry-run] [key=value ...]"


def start_temporary_api() -> Callable[[], None]:
    """Start Prefect's temporary local API for this run; return a function that waits until it answers.

    The same server Prefect's client would start on its own (its uvicorn command and settings, its database in
    ``PREFECT_HOME``), started as the process's first step so that its seconds of start-up overlap this
    process's imports instead of following them. It listens on a socket this process binds on the loopback
    and hands over, so no other program can take the port in between. Stopped at exit, after Prefect has sent
    its last logs and events (exit handlers run last-registered first, and Prefect registers its own later).
    """
    home = Path(os.environ["PREFECT_HOME"])
    home.mkdir(parents=True, exist_ok=True)  # its database lives there
    sock = socket.create_server((environment.LOOPBACK, 0))
    url = f"http://{environment.LOOPBACK}:{sock.getsockname()[1]}/api"
    _note(f"Starting temporary server on {url}")
    command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
    server = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    process = subprocess.Popen(
        [*command, "--fd", str(sock.fileno()), "--log-level", "error", "--lifespan", "on"],
        pass_fds=[sock.fileno()],
        env=os.environ | server,
    )
    sock.close()  # the server holds it now
    os.environ["PREFECT_API_URL"] = url

    def stop() -> None:
        _note(f"Stopping temporary server on {url}")
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    atexit.register(stop)

    def ready() -> None:
        limit = time.monotonic() + float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
        while process.poll() is None and time.monotonic() < limit:
            with contextlib.suppress(OSError), direct.open(f"{url}/health", timeout=1):
                return
            time.sleep(0.05)
        raise RuntimeError(f"Prefect's temporary server at {url} did not start (exit {process.poll()})")

    return ready


def _note(message: str) -> None:
    """A line in the format of Prefect's log (before Prefect's logging exists)."""
    print(f"{datetime.now():%H:%M:%S.%f}"[:-3] + f" | INFO    | flows.run - {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in FLOWS:
        print(USAGE, file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    environment.apply()  # before prefect is imported: it reads PREFECT_HOME and the API URL at import
    embedded = not os.environ.get("PREFECT_API_URL")
    runs = not {"-h", "--help", "--dry-run"} & set(rest)
    return _run(name, rest, embedded, start_temporary_api() if embedded and runs else lambda: None)


def _run(name: str, rest: list[str], embedded: bool, api_ready: Callable[[], None]) -> int:
    gc.disable()  # until the imports are done (module docstring)
    from flows.parameters import help_text, parse_args
    from training import settings as models
    from training.errors import ConfigError

    target, model = FLOWS[name][0], getattr(models, FLOWS[name][1])
    if {"-h", "--help"} & set(rest):
        print(f"{USAGE}\n\nParameters of flow {name!r} (key=default):\n{help_text(model)}")
        return 0
    dry_run = "--dry-run" in rest
    try:
        params = parse_args(model, [arg for arg in rest if arg != "--dry-run"])
        if dry_run:  # the settings the flow would run with, validated, and nothing run
            print(model.parse(params).model_dump_json(indent=1))
            return 0
    except ConfigError as exc:
        print(f"{name}: {exc}; nothing was run ({name} --help lists the parameters)", file=sys.stderr)
        return 2

    from prefect.exceptions import ParameterTypeError
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    module, _, attribute = target.partition(":")
    flow = getattr(importlib.import_module(module), attribute)
    gc.freeze()
    gc.enable()
    if name == "train":
        from tasks import recorder_process

        recorder_process.start()  # forked now, with everything imported and no other thread yet
    api_ready()
    if embedded:  # heartbeats serve a long-lived server's zombie automation only
        os.environ.pop("PIPELINE_HEARTBEAT_SECONDS", None)
    # the flow sends its own (tasks/heartbeat.py); Prefect's engine would send its own too (every 180 s by
    # default) from a thread the run waits up to a second for at its end
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        try:
            state = flow(**params, return_state=True)
        except ParameterTypeError as exc:
            print(f"\n{flow.name}: invalid parameters, nothing was run:\n{exc}", file=sys.stderr)
            return 2
    gc.freeze()  # what the run built is freed at exit without a collection
    if state.is_completed():
        if embedded:
            print(
                "\nBrowse this run: `make ui`, then MLflow at http://127.0.0.1:5000 and Prefect at http://127.0.0.1:4200"
            )
        return 0
    print(f"\n{flow.name} ended {state.name}: {state.message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
