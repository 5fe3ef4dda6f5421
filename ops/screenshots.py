"""Screenshots of both UIs after a run, by headless Chromium from the running servers (``make screenshots``).

Needs ``make ui`` and one completed deployment run (``make deploy``, ``make worker``, a triggered run);
writes PNGs to ``docs/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

from tasks import environment
from tasks.environment import recorded

DOCS = Path(__file__).resolve().parents[1] / "docs"
ML = "workflowType=machine_learning"  # the MLflow UI's "Model training" view rather than its GenAI one
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000", "--virtual-time-budget=20000",
]  # fmt: skip


def chromium() -> str:
    """Path of Debian's chromium (``make chromium`` installs it)."""
    found = shutil.which("chromium")
    if not found:
        raise SystemExit("chromium is not installed: run `make chromium`")
    return found


def screenshot(url: str, out: Path) -> Path:
    """Render ``url`` in headless Chromium and save a PNG."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", url],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    return out


def latest_runs() -> tuple[str, str, str, str, list[str], str]:
    """The newest deployment flow run and its MLflow record: ids and names for the URLs."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.sorting import FlowRunSort

    from tasks import tracking

    prefect, mlflow = recorded("prefect"), recorded("mlflow")
    if not (prefect and mlflow):
        raise SystemExit("start the servers first: make ui")

    with SyncPrefectClient(prefect.url) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=20)
    flow_run = next(r for r in runs if r.state and r.state.is_completed() and r.deployment_id)
    experiment_id, parent_id, child_ids = tracking.flow_run_record("thermometer", str(flow_run.id))
    return prefect.ui, mlflow.ui, str(flow_run.id), experiment_id, child_ids, parent_id


def main() -> int:
    """Take the README's screenshots."""
    environment.apply()  # the servers `make ui` started, before prefect is imported
    prefect_ui, mlflow_ui, flow_run_id, experiment_id, child_ids, parent_id = latest_runs()
    DOCS.mkdir(exist_ok=True)
    compare = urllib.parse.quote(json.dumps(child_ids)), urllib.parse.quote(json.dumps([experiment_id]))
    shots = {
        "prefect-flow-run.png": f"{prefect_ui}/runs/flow-run/{flow_run_id}",
        "prefect-deployments.png": f"{prefect_ui}/deployments",
        "mlflow-runs.png": f"{mlflow_ui}/#/experiments/{experiment_id}/runs?{ML}",
        "mlflow-parent-run.png": f"{mlflow_ui}/#/experiments/{experiment_id}/runs/{parent_id}?{ML}",
        "mlflow-compare.png": f"{mlflow_ui}/#/compare-runs?runs={compare[0]}&experiments={compare[1]}&{ML}",
    }
    for name, url in shots.items():
        print(f"{name:<26} {url}")
        screenshot(url, DOCS / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
