"""Run a flow from the command line: ``python -m flows.run train epochs=100 normalize=none``.

Each ``key=value`` is a flow parameter; the value is read as JSON when it parses (numbers, lists, dicts,
null) and as a plain string otherwise. With no Prefect server configured the flow runs on Prefect's
temporary local API, and per-run heartbeats (only useful to a long-lived server) are switched off.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext
from typing import Any

import tasks  # noqa: F401  (embedded defaults before prefect loads)

FLOWS = {"train": "flows.train:train", "predict": "flows.predict:predict"}


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["epochs=100", "features=[\"t_u\"]"]`` into ``{"epochs": 100, "features": ["t_u"]}``."""
    params = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected key=value, got {pair!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in FLOWS:
        print(f"usage: python -m flows.run {{{','.join(FLOWS)}}} [key=value ...]", file=sys.stderr)
        return 2
    import importlib

    from prefect.exceptions import ParameterTypeError
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    module, _, name = FLOWS[argv[0]].partition(":")
    flow = getattr(importlib.import_module(module), name)
    params = parse_params(argv[1:])
    embedded = not os.environ.get("PREFECT_API_URL")
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
