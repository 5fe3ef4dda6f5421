"""What Prefect says about the flow run in progress: its ids as tags, and a line saying who produced a run."""

from __future__ import annotations

from prefect.runtime import deployment, flow_run
from prefect.settings import get_current_settings


def prefect_tags() -> dict[str, str]:
    """The flow run's id and name (and deployment, when it has one) as MLflow tags."""
    tags = {
        "prefect.flow_run_id": str(flow_run.get_id() or ""),
        "prefect.flow_run_name": str(flow_run.get_name() or ""),
    }
    if deployment.get_name():
        tags["prefect.deployment"] = str(deployment.get_name())
    return tags


def provenance() -> str:
    """A markdown line: which Prefect flow run (and deployment) produced the run, linked when a UI exists."""
    run_id, name = flow_run.get_id(), flow_run.get_name()
    ui = get_current_settings().ui_url
    who = f"[{name}]({ui}/runs/flow-run/{run_id})" if ui and run_id else f"{name} (`{run_id}`)"
    line = f"Produced by Prefect flow run {who}"
    if dep := deployment.get_name():
        link = f"[{dep}]({ui}/deployments/deployment/{deployment.get_id()})" if ui else dep
        line += f" of deployment {link}"
    return line + "."
