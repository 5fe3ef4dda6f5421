"""Closing the MLflow runs a dead flow run left RUNNING: Prefect knows which flow runs ended, MLflow which
runs are still open."""

from __future__ import annotations

from prefect import get_client
from prefect.exceptions import ObjectNotFound

from tasks import tracking


def close_orphans(experiment_id: str, current_flow_run: tuple[str, str]) -> list[str]:
    """Mark KILLED the MLflow runs left RUNNING by flow runs that Prefect knows have ended (crashed, killed).

    A process killed with SIGKILL runs no cleanup; its worker (or the zombie automation) reports the flow
    run Crashed, and the next run of the pipeline closes what it left open. ``current_flow_run`` is the
    ``(id, name)`` of the run doing the closing. Runs of flow runs this Prefect API does not know are left
    alone. Returns one line per closed run.
    """
    current_id, current_name = current_flow_run
    ended: dict[str, str | None] = {}
    notes = []
    with get_client(sync_client=True) as prefect:
        for run_id, flow_run_id in tracking.running_runs(experiment_id):
            if not flow_run_id or flow_run_id == current_id:
                continue
            if flow_run_id not in ended:
                try:
                    state = prefect.read_flow_run(flow_run_id).state
                except (ObjectNotFound, ValueError):
                    state = None
                ended[flow_run_id] = state.name if state is not None and state.is_final() else None
            if ended[flow_run_id]:
                note = (
                    f"Left RUNNING by Prefect flow run {flow_run_id}, which ended {ended[flow_run_id]}; "
                    f"marked KILLED by flow run {current_name}."
                )
                tracking.end_run(run_id, tracking.KILLED, note=note)
                notes.append(f"MLflow run {run_id}: {note}")
    return notes
