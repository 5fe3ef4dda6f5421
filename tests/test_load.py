"""Load: eight training flow runs started at once against one MLflow server on SQLite.

The same eight on PostgreSQL servers, through two workers, are tests/test_scale_out.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ops import servers
from tasks.tracking import history_epochs

from . import sockets
from .conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
RUNS = 8
EPOCHS = [150 * (i + 1) for i in range(RUNS)]  # different lengths: different validation losses, one best

pytestmark = pytest.mark.integration


def test_eight_concurrent_runs_all_complete_with_full_curves_and_the_best_champion(prefect_server, tmp_path):
    from mlflow import MlflowClient

    port = sockets.free_port()
    url = f"http://127.0.0.1:{port}"
    store = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = servers.mlflow_command("127.0.0.1", port, store, tmp_path / "artifacts")
    with servers.running(cmd, servers.mlflow_env(), tmp_path / "mlflow.log", f"{url}/health", timeout=240):
        env = subprocess_env(tmp_path, PREFECT_API_URL=prefect_server, MLFLOW_TRACKING_URI=url)
        model = f"load-{uuid.uuid4().hex[:6]}"
        started = time.monotonic()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flows.run",
                    "train",
                    f"epochs={epochs}",
                    f"model_name={model}",
                    f"experiment={model}",
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for epochs in EPOCHS
        ]
        outputs, seconds = [], []
        for proc in procs:
            outputs.append(proc.communicate(timeout=900)[0])
            seconds.append(time.monotonic() - started)
        wall = time.monotonic() - started
        slowest = max(seconds)
        print(f"\n{RUNS} runs in {wall:.1f} s wall; the slowest process ended at {slowest:.1f} s")
        failed = [o[-3000:] for p, o in zip(procs, outputs, strict=True) if p.returncode != 0]
        assert not failed, failed[0]
        assert not [o for o in outputs if "database is locked" in o]

        client = MlflowClient(url)
        experiment = client.get_experiment_by_name(model)
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(runs) == RUNS * 4 and len(children) == RUNS * 3
        assert all(r.info.status == "FINISHED" for r in runs)
        for child in children:
            check_curves(client, child)
        check_registry(client, model, RUNS)


def check_curves(client, child) -> None:
    """Every epoch of the child run's curves is recorded, each once."""
    for curve in ("train_loss", "val_loss"):
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, curve))
        assert steps == history_epochs(int(child.data.params["epochs"])), (child.info.run_id, curve)


def check_registry(client, model: str, runs: int) -> None:
    """One version per run, the best of them champion, and exactly one that found the registry empty (the
    registry lock on the Prefect server let only one run decide at a time)."""
    versions = client.search_model_versions(f"name = '{model}'")
    assert len(versions) == runs
    best = min(versions, key=lambda v: float(v.tags["val_mse"]))
    champion = client.get_model_version_by_alias(model, "champion")
    assert champion.version == best.version, [(v.version, v.tags["val_mse"]) for v in versions]
    assert [v.tags["promotion.decision"] for v in versions].count("first") == 1
