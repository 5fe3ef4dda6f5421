"""Faults caused for real: the MLflow server killed in the middle of a run and not back (its restart a
minute later is ``test_restart.py``), requests delayed or cut by the fault proxy, and what ``make upload``
does then."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from ops import servers
from tasks.tracking import history_epochs

from . import sockets
from .conftest import subprocess_env
from .faultproxy import FaultProxy

REPO = Path(__file__).resolve().parents[1]
# Long enough runs that a kill as the first child run appears lands while the variants are being recorded
# (the test of a kill after them, as the parent run closes, sets that moment up itself).
EPOCHS = 5000  # the book's run length
LONG_EPOCHS = 20000  # the run whose results must still be waiting in the spool
pytestmark = pytest.mark.integration


def start_mlflow(port: int, tmp: Path) -> subprocess.Popen:
    cmd = servers.mlflow_command("127.0.0.1", port, f"sqlite:///{tmp}/mlflow.db", tmp / "artifacts")
    proc = servers.spawn(cmd, servers.mlflow_env(), tmp / "mlflow.log")
    try:
        servers.wait_http(f"http://127.0.0.1:{port}/health", 180, proc, tmp / "mlflow.log")
    except BaseException:
        servers.stop_group(proc.pid)  # not left running after the test
        raise
    return proc


def flow_env(tmp: Path, url: str, prefect_api: str) -> dict[str, str]:
    return subprocess_env(tmp, MLFLOW_TRACKING_URI=url, PREFECT_API_URL=prefect_api)


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


def test_mlflow_gone_for_good_keeps_the_results_and_upload_records_them_later(prefect_server, tmp_path):
    port = sockets.free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_mlflow(port, tmp_path)
    env = flow_env(tmp_path, url, prefect_server) | {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    flow = subprocess.Popen(
        [sys.executable, "-m", "flows.run", "train", f"epochs={LONG_EPOCHS}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_child_run(MlflowClient(url), time.monotonic() + 180, flow)
        servers.stop_group(server.pid, timeout=0.1)  # and it does not come back
        output = flow.communicate(timeout=400)[0]
    finally:
        flow.kill()
    assert flow.returncode == 1, output[-4000:]
    message = ("RecordingFailed", "could not record", "make upload")
    assert all(m in output for m in message), output[-4000:]
    spooled = sorted((tmp_path / "spool").glob("*/*/payload.json"))
    assert spooled, output[-3000:]
    assert all((p.parent / "model" / "weights.pt").exists() for p in spooled)

    server = start_mlflow(port, tmp_path)  # the same store, later
    try:
        out = subprocess.run(
            [sys.executable, "-m", "ops.upload"], cwd=REPO, env=flow_env(tmp_path, url, prefect_server),
            capture_output=True, text=True, timeout=300,
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
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "train_loss"))
            assert steps == history_epochs(LONG_EPOCHS)  # the history keeps CURVE_POINTS epochs, once each
            table = pd.read_parquet(
                client.download_artifacts(child.info.run_id, "curves.parquet", str(tmp_path))
            )
            assert table["epoch"].tolist() == list(range(1, LONG_EPOCHS + 1))  # and the artifact every one
            assert "model_uri" in child.data.tags
        assert not [r for r in runs if r.info.status == "RUNNING"]
    finally:
        servers.stop_group(server.pid)


def test_upload_while_a_run_records_leaves_that_run_alone(prefect_server, tmp_path):
    """`make upload` while a run is recording the results it spooled: the upload skips them (recording them
    too would give each variant two child runs), and the run finishes with one child run per variant."""
    port = sockets.free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_mlflow(port, tmp_path)
    try:
        with FaultProxy(url) as proxy:
            proxy.delay(20, path="/runs/create")  # each run's creation waits: the spool stays while it does
            flow = subprocess.Popen(
                [sys.executable, "-m", "flows.run", "train", "epochs=500", "model_name=null"],
                cwd=REPO, env=flow_env(tmp_path, proxy.url, prefect_server),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 180
                while not list((tmp_path / "spool").glob("*/*/payload.json")):
                    assert flow.poll() is None and time.monotonic() < deadline, "no results were spooled"
                    time.sleep(0.1)
                direct = flow_env(tmp_path, url, prefect_server)  # to the server, not through the proxy
                out = subprocess.run(
                    [sys.executable, "-m", "ops.upload"], cwd=REPO, env=direct,
                    capture_output=True, text=True, timeout=120,
                )  # fmt: skip
                assert out.returncode == 0 and "skipped" in out.stdout, out.stdout + out.stderr
                proxy.heal()
                output = flow.communicate(timeout=300)[0]
            finally:
                flow.kill()
        assert flow.returncode == 0, output[-4000:]
        client = MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("thermometer").experiment_id])
        [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert parent.info.status == "FINISHED"
        assert sorted(r.data.tags["variant"] for r in children) == ["autograd", "manual", "optimizer"]
        assert {r.info.status for r in children} == {"FINISHED"}
        assert not list((tmp_path / "spool").glob("*"))
    finally:
        servers.stop_group(server.pid)


def helper_of(flow: subprocess.Popen) -> int:
    """The pid of the flow process's recording helper: its child forked from it (the same command line)."""
    own = Path(f"/proc/{flow.pid}/cmdline").read_bytes()
    children = Path(f"/proc/{flow.pid}/task/{flow.pid}/children").read_text().split()
    [helper] = [int(pid) for pid in children if Path(f"/proc/{pid}/cmdline").read_bytes() == own]
    return helper


def test_the_recording_helper_killed_mid_recording_leaves_a_complete_run(prefect_server, tmp_path):
    """The helper process that records the variants is killed (SIGKILL) while it writes a child run: that
    variant and the next are recorded in the flow's own process, the cut-off child run is closed KILLED, and
    the run ends Completed: one complete child run per variant, nothing RUNNING or left in the spool."""
    port = sockets.free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_mlflow(port, tmp_path)
    try:
        flow = subprocess.Popen(
            [sys.executable, "-m", "flows.run", "train", f"epochs={LONG_EPOCHS}", "model_name=null"],
            cwd=REPO, env=flow_env(tmp_path, url, prefect_server),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            client = MlflowClient(url)
            wait_for_child_run(client, time.monotonic() + 180, flow)
            helper = helper_of(flow)
            os.kill(helper, signal.SIGKILL)
            [cut] = [r for r in client.search_runs(["1"]) if "mlflow.parentRunId" in r.data.tags]
            output = flow.communicate(timeout=300)[0]
        finally:
            flow.kill()
        assert flow.returncode == 0, output[-4000:]
        assert "the recording process died" in output and not Path(f"/proc/{helper}").exists(), output[-4000:]
        runs = client.search_runs(["1"])
        [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert parent.info.status == "FINISHED"
        complete = [r for r in children if r.info.status == "FINISHED"]
        assert sorted(r.data.tags["variant"] for r in complete) == ["autograd", "manual", "optimizer"]
        # the child run the helper was writing when it died: closed, its variant recorded again in full
        assert client.get_run(cut.info.run_id).info.status == "KILLED"
        assert {r.info.status for r in children} == {"FINISHED", "KILLED"}
        for child in complete:
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "train_loss"))
            assert steps == history_epochs(LONG_EPOCHS)
        assert not list((tmp_path / "spool").glob("*"))
    finally:
        servers.stop_group(server.pid)


def trained(settings):
    """The flow's first steps, through the tasks: loaded data, split, three trained and evaluated variants."""
    from tasks.data import load_dataset, prepare_data
    from tasks.evaluate import evaluate_variants
    from tasks.train import train_task

    loaded = load_dataset.fn(str(REPO / "data" / "thermometer.csv"), ["t_u"], "t_c")
    prepared = prepare_data.fn(loaded, settings)
    results = [train_task.fn(v, prepared, settings) for v in settings.variants]
    return loaded, prepared, evaluate_variants.fn(results, prepared, settings)


def test_upload_to_a_server_that_never_saw_the_run_creates_it_whole(tmp_path, monkeypatch):
    """Results spooled against one server, uploaded to another: the parent run is created again."""
    from prefect.logging import disable_run_logger

    from ops.upload import upload
    from tasks import spool, tracking
    from tasks.record import spool_variant
    from tasks.recorder import Tracking
    from training.settings import TrainSettings

    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/other.db")
    monkeypatch.setenv("PIPELINE_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    settings = TrainSettings(epochs=300, experiment="elsewhere")
    with disable_run_logger():
        loaded, prepared, variants = trained(settings)
        lost = Tracking(experiment_id="0", parent_run_id="f" * 32, url=None)  # a run this store never had
        for variant in variants:
            spool_variant(lost, variant, loaded, prepared, settings)
    [waiting] = spool.pending()
    # a child run an interrupted attempt created, noted the way record_variant notes it
    first = spool.variants(waiting)[0]
    half = tracking.start_run(
        tracking.ensure_experiment("elsewhere"), first.name, {}, {},
        on_created=lambda run_id: spool.note_partial_run(first, run_id),
    )  # fmt: skip
    parent_run_id = upload(waiting)
    client = MlflowClient()
    assert client.get_run(half).info.status == "KILLED"  # closed, not left RUNNING
    parent = client.get_run(parent_run_id)
    assert parent_run_id != lost.parent_run_id and parent.info.status == "FINISHED"
    assert parent.data.params["epochs"] == "300" and parent.data.metrics["variants_converged"] == 3
    experiment = client.get_experiment_by_name("elsewhere")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    assert sorted(c.data.tags["variant"] for c in children) == ["autograd", "manual", "optimizer"]
    for child in children:
        assert child.info.status == "FINISHED" and "model_uri" in child.data.tags
        steps = {m.step for m in client.get_metric_history(child.info.run_id, "train_loss")}
        assert steps == set(range(1, 301))
    assert not spool.pending()


def test_mlflow_gone_while_the_parent_run_closes_then_upload_closes_it(prefect_api, tmp_path, monkeypatch):
    """Every variant recorded, then the server dies: a clear message, and `make upload` finishes the run."""
    from prefect.logging import disable_run_logger

    from ops.upload import upload
    from tasks import spool
    from tasks.record import finish_tracking, log_variant, start_tracking
    from tasks.recorder import RecordingFailed
    from training.settings import TrainSettings

    port = sockets.free_port()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    server = start_mlflow(port, tmp_path)
    settings = TrainSettings(epochs=300)
    with disable_run_logger():
        loaded, prepared, variants = trained(settings)
        try:
            run = start_tracking.fn(settings, loaded)
            for variant in variants:
                log_variant.fn(run, variant, loaded, prepared, settings)
        finally:
            servers.stop_group(server.pid, timeout=0.1)  # gone before the parent run is closed
        closing = "could not close MLflow run .*`make upload` closes the run"
        with pytest.raises(RecordingFailed, match=closing):
            finish_tracking.fn(run, variants, settings, "summary")
    [waiting] = spool.pending()
    assert not spool.variants(waiting)  # the variants are recorded; only the parent's summary waits

    server = start_mlflow(port, tmp_path)
    try:
        assert upload(waiting) == run.parent_run_id
        client = MlflowClient(url)
        parent = client.get_run(run.parent_run_id)
        assert parent.info.status == "FINISHED"
        assert parent.data.metrics["variants_converged"] == 3  # every variant, though none was in the spool
        best = min(t.evaluation.metrics()["val_mse"] for t in variants)
        assert parent.data.metrics["best_val_mse"] == pytest.approx(best)
        assert "loss_curves.png" in {a.path for a in client.list_artifacts(run.parent_run_id)}
        assert not spool.pending()
    finally:
        servers.stop_group(server.pid)
