"""A flow run's heartbeat: the event ``prefect.flow-run.heartbeat`` every ``PIPELINE_HEARTBEAT_SECONDS`` while
the flow function runs; the automation in ``ops/automations.py`` marks a run Crashed when they stop.

Prefect's engine sends the same event when ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` is set, from a thread that
sleeps in one-second steps: every run then waits for that thread to wake before it can end (0 to 1 s, half a
second on average, measured at the end of each run against a server). This thread waits on an event, so the
run ends as soon as its work is done. The event names the flow run as its resource and the flow and the
deployment as related resources, as Prefect's does (which also lists the run's tags).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import prefect
from prefect.context import FlowRunContext
from prefect.events import emit_event


def seconds() -> float | None:
    """The heartbeat period in force (``PIPELINE_HEARTBEAT_SECONDS``), or None when off (unset or empty)."""
    value = os.environ.get("PIPELINE_HEARTBEAT_SECONDS", "")
    return float(value) if value.strip() else None


@contextlib.contextmanager
def heartbeats() -> Iterator[None]:
    """Send the current flow run's heartbeats while the block runs (none outside a flow run, or when off)."""
    period, context = seconds(), FlowRunContext.get()
    if not period or context is None or context.flow_run is None:
        yield
        return
    run = context.flow_run
    resource = {
        "prefect.resource.id": f"prefect.flow-run.{run.id}",
        "prefect.resource.name": run.name or "",
        "prefect.version": prefect.__version__,
    }
    related = [{"prefect.resource.id": f"prefect.flow.{run.flow_id}", "prefect.resource.role": "flow"}]
    if run.deployment_id:
        deployment = f"prefect.deployment.{run.deployment_id}"
        related.append({"prefect.resource.id": deployment, "prefect.resource.role": "deployment"})
    stop = threading.Event()

    def beat() -> None:
        while True:
            # a lost heartbeat is the automation's business, not the run's
            with contextlib.suppress(Exception):
                emit_event("prefect.flow-run.heartbeat", resource=resource, related=related)
            if stop.wait(period):
                return

    # in a copy of this context, where the flow run's Prefect settings (its API) live
    context_copy = contextvars.copy_context()
    thread = threading.Thread(target=context_copy.run, args=(beat,), name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)


def with_heartbeats(fn: Callable) -> Callable:
    """Decorate a flow function: its run sends heartbeats while it runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with heartbeats():
            return fn(*args, **kwargs)

    return wrapper
