"""What Prefect says about the flow run in progress: its ids as tags, and a line saying who produced a run."""

from __future__ import annotations

import functools

from prefect.context import FlowRunContext
from prefect.runtime import deployment, flow_run
from prefect.settings import get_current_settings


def _run() -> tuple[str, str, str | None, str | None]:
    """The flow run's id and name, and its deployment's id and name (None without one).

    Read from the flow run in context where there is one: ``prefect.runtime.deployment`` asks the API for the
    flow run on every call, even for a run that has no deployment (each request with a new client).
    """
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return (
            str(flow_run.get_id() or ""),
            str(flow_run.get_name() or ""),
            deployment.get_id(),
            deployment.get_name(),
        )
    run = ctx.flow_run
    deployment_id = str(run.deployment_id) if run.deployment_id else None
    return str(run.id), run.name, deployment_id, _deployment_name(deployment_id) if deployment_id else None


@functools.cache
def _deployment_name(deployment_id: str) -> str | None:
    """The deployment's name, asked of the API once per deployment (the id is the cache's key)."""
    return deployment.get_name()


def prefect_tags() -> dict[str, str]:
    """The flow run's id and name (and deployment, when it has one) as MLflow tags."""
    run_id, name, _, deployment_name = _run()
    tags = {"prefect.flow_run_id": run_id, "prefect.flow_run_name": name}
    if deployment_name:
        tags["prefect.deployment"] = deployment_name
    return tags


def provenance() -> str:
    """A markdown line: which Prefect flow run (and deployment) produced the run, linked when a UI exists."""
    run_id, name, deployment_id, deployment_name = _run()
    ui = get_current_settings().ui_url
    who = f"[{name}]({ui}/runs/flow-run/{run_id})" if ui and run_id else f"{name} (`{run_id}`)"
    line = f"Produced by Prefect flow run {who}"
    if deployment_name:
        link = f"[{deployment_name}]({ui}/deployments/deployment/{deployment_id})" if ui else deployment_name
        line += f" of deployment {link}"
    return line + "."
