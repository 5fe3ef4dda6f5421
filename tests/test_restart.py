"""A fault caused for real: the MLflow server killed as a run records, and back about a minute later.

Its own file (the other outages are in ``test_faults.py``) so that, with the suite spread over processes, this
test's minute of waiting overlaps other work.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pandas as pd
import pytest
from mlflow import MlflowClient

from ops import servers
from tasks.tracking import history_epochs

from . import sockets
from .test_faults import EPOCHS, REPO, flow_env, start_mlflow, wait_for_child_run

# "back within a minute": the server is down at least this long, plus its own start-up
OUTAGE = 50.0
pytestmark = pytest.mark.integration


def test_mlflow_restarted_mid_run_loses_nothing(prefect_server, tmp_path):
    """The server killed as the run starts recording and back about a minute later: nothing is lost.

    MLflow's client (7 retries, ``tasks/environment.py``) sleeps 0, 2, 4 ... 64 s between attempts (urllib3
    backs off ``factor * 2 ** (n - 1)`` after the n-th consecutive error, none after the first), so a request
    refused when the server dies is tried again 0, 2, 6, 14, 30, 62 and 126 s later: an outage of up to two
    minutes is covered, one of a minute with margin. The outage is measured, not assumed.
    """
    port = sockets.free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_mlflow(port, tmp_path)
    flow = subprocess.Popen(
        [sys.executable, "-m", "flows.run", "train", f"epochs={EPOCHS}"],
        cwd=REPO, env=flow_env(tmp_path, url, prefect_server),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_child_run(MlflowClient(url), time.monotonic() + 180, flow)  # recording has begun
        killed = time.monotonic()
        servers.stop_group(server.pid, timeout=0.1)  # SIGTERM, then SIGKILL: gone mid-recording
        gone = time.monotonic()  # nothing of it listens any more
        time.sleep(max(0.0, gone + OUTAGE - time.monotonic()))
        if flow.poll() is not None:
            pytest.fail(f"the run ended while the server was down:\n{flow.stdout.read()[-4000:]}")
        restarting = time.monotonic()  # the new server cannot answer before it exists
        server = start_mlflow(port, tmp_path)
        back = time.monotonic()
        output = flow.communicate(timeout=400)[0]
    finally:
        flow.kill()
        servers.stop_group(server.pid)
        server = start_mlflow(port, tmp_path)  # read back below
    try:
        assert flow.returncode == 0, output[-4000:]
        # at least OUTAGE s without a server, at most until the new one answered
        print(f"MLflow server down {restarting - gone:.1f} s to {back - killed:.1f} s")
        assert restarting - gone >= OUTAGE
        assert "Retrying" in output  # requests did hit the dead server, and were retried
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("thermometer")
        runs = client.search_runs([experiment.experiment_id])
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(children) == 3 and all(r.info.status == "FINISHED" for r in runs)
        for child in children:
            for curve in ("train_loss", "val_loss"):
                # a list, so an epoch recorded twice (a retried batch the server had taken) shows
                steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, curve))
                assert steps == history_epochs(EPOCHS), (child.data.tags["variant"], curve, len(steps))
            curves = client.download_artifacts(child.info.run_id, "curves.parquet", str(tmp_path))
            table = pd.read_parquet(curves)
            assert table["epoch"].tolist() == list(range(1, EPOCHS + 1)) and table.notna().all().all()
            artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
            assert {"loss_curve.png", "fit.png", "coefficients.json"} <= artifacts
            assert "model_uri" in child.data.tags
    finally:
        servers.stop_group(server.pid)
