"""Run a flow from the command line: ``python -m flows.run train epochs=100 normalize=none``.

Each ``key=value`` is a flow parameter (``--help`` lists them, from the flow's settings model); values are
read as JSON, else YAML, else text, and a list may be written ``a,b``. The environment is applied first
(``tasks.environment``); with no Prefect server configured the flow runs on Prefect's temporary local API,
and per-run heartbeats (only useful to a long-lived server) are switched off.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from contextlib import nullcontext
from pathlib import Path

from flows.parameters import help_text, parse_args
from tasks import environment
from training.errors import ConfigError
from training.settings import PredictSettings, Settings, SweepSettings, TrainSettings

FLOWS: dict[str, tuple[str, type[Settings]]] = {
    "train": ("flows.train:train", TrainSettings),
    "predict": ("flows.predict:predict", PredictSettings),
    "sweep": ("flows.sweep:sweep", SweepSettings),
}
USAGE = f"usage: python -m flows.run {{{','.join(FLOWS)}}} [--help] [--dry-run] [key=value ...]"


def _start_temporary_api() -> None:
    """Start the temporary local API that the flow's Prefect client would start (the same instance)."""
    from prefect.server.api.server import SubprocessASGIServer

    # its database lives in PREFECT_HOME, which the importing client has not necessarily created yet
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    SubprocessASGIServer().start()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in FLOWS:
        print(USAGE, file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    target, model = FLOWS[name]
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

    environment.apply()  # before prefect is imported: it reads PREFECT_HOME and the API URL at import
    embedded = not os.environ.get("PREFECT_API_URL")
    # Prefect's temporary API takes seconds to start in its own process: start it now, while this process
    # imports torch, MLflow and the flow, and wait for it only before the flow runs
    api = threading.Thread(target=_start_temporary_api, daemon=True) if embedded else None
    if api:
        api.start()
    from prefect.exceptions import ParameterTypeError
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    module, _, attribute = target.partition(":")
    flow = getattr(importlib.import_module(module), attribute)
    if api:
        api.join()
    settings = temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}) if embedded else nullcontext()
    with settings:
        try:
            state = flow(**params, return_state=True)
        except ParameterTypeError as exc:
            print(f"\n{flow.name}: invalid parameters, nothing was run:\n{exc}", file=sys.stderr)
            return 2
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
