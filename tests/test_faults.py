"""Faults caused for real: the MLflow server killed in the middle of a run, and restarted (or not)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ops import servers

from .conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 20000
pytestmark = pytest.mark.integration


def start_mlflow(port: int, tmp: Path) -> subprocess.Popen:
    cmd = servers.mlflow_command("127.0.0.1", port, f"sqlite:///{tmp}/mlflow.db", tmp / "artifacts")
    proc = servers.spawn(cmd, servers.mlflow_env(), tmp / "mlflow.log")
    servers.wait_http(f"http://127.0.0.1:{port}/health", 120, proc, tmp / "mlflow.log")
    return proc


def flow_env(tmp: Path, url: str) -> dict[str, str]:
    return subprocess_env(tmp, MLFLOW_TRACKING_URI=url)


def wait_for_child_run(client: MlflowClient, deadline: float, flow: subprocess.Popen) -> None:
    while time.monotonic() < deadline:
        if flow.poll() is not None:
            pytest.fail(f"the flow ended early:\n{flow.stdout.read()[-3000:]}")
        experiment = client.get_experiment_by_name("thermometer")
        if experiment and any(
            "mlflow.parentRunId" in r.data.tags for r in client.search_runs([experiment.experiment_id])
        ):
            return
        time.sleep(0.2)
    pytest.fail("no child run appeared")


def test_mlflow_restarted_mid_run_loses_nothing(tmp_path):
    port = servers.free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_mlflow(port, tmp_path)
    flow = subprocess.Popen(
        [sys.executable, "-m", "flows.run", "train", f"epochs={EPOCHS}"],
        cwd=REPO, env=flow_env(tmp_path, url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_child_run(MlflowClient(url), time.monotonic() + 180, flow)  # recording has begun
        servers.stop_group(server.pid, timeout=0.1)  # SIGTERM, then SIGKILL: gone mid-recording
        time.sleep(15)
        server = start_mlflow(port, tmp_path)
        output = flow.communicate(timeout=400)[0]
    finally:
        flow.kill()
        servers.stop_group(server.pid)
        server = start_mlflow(port, tmp_path)  # read back below
    try:
        assert flow.returncode == 0, output[-4000:]
        assert "Retrying" in output  # requests did hit the dead server, and were retried
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("thermometer")
        runs = client.search_runs([experiment.experiment_id])
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(children) == 3 and all(r.info.status == "FINISHED" for r in runs)
        for child in children:
            for curve in ("train_loss", "val_loss"):
                steps = {m.step for m in client.get_metric_history(child.info.run_id, curve)}
                assert steps == set(range(1, EPOCHS + 1)), (child.data.tags["variant"], curve, len(steps))
            artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
            assert {"loss_curve.png", "fit.png", "coefficients.json"} <= artifacts
            assert "model_uri" in child.data.tags
    finally:
        servers.stop_group(server.pid)


def test_mlflow_gone_for_good_keeps_the_results_and_upload_records_them_later(tmp_path):
    port = servers.free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_mlflow(port, tmp_path)
    env = flow_env(tmp_path, url) | {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    flow = subprocess.Popen(
        [sys.executable, "-m", "flows.run", "train", f"epochs={EPOCHS}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_child_run(MlflowClient(url), time.monotonic() + 180, flow)
        servers.stop_group(server.pid, timeout=0.1)  # and it does not come back
        output = flow.communicate(timeout=400)[0]
    finally:
        flow.kill()
    assert flow.returncode == 1
    assert "RecordingFailed" in output and "could not record" in output and "make upload" in output
    spooled = sorted((tmp_path / "spool").glob("*/*/payload.json"))
    assert spooled, output[-3000:]
    assert all((p.parent / "model" / "weights.pt").exists() for p in spooled)

    server = start_mlflow(port, tmp_path)  # the same store, later
    try:
        out = subprocess.run(
            [sys.executable, "-m", "ops.upload"], cwd=REPO, env=flow_env(tmp_path, url), capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert not list((tmp_path / "spool").glob("*"))
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("thermometer")
        runs = client.search_runs([experiment.experiment_id])
        [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert parent.info.status == "FINISHED" and "loss_curves.png" in {
            a.path for a in client.list_artifacts(parent.info.run_id)
        }
        complete = [r for r in runs if r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags]
        assert sorted(r.data.tags["variant"] for r in complete) == ["autograd", "manual", "optimizer"]
        for child in complete:
            steps = {m.step for m in client.get_metric_history(child.info.run_id, "train_loss")}
            assert steps == set(range(1, EPOCHS + 1))
            assert "model_uri" in child.data.tags
        assert not [r for r in runs if r.info.status == "RUNNING"]
    finally:
        servers.stop_group(server.pid)
