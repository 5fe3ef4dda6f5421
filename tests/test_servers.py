"""Scheduled runs, the Prefect UI and the MLflow browser, proven against real servers.

A real ``prefect server start`` and a real ``mlflow server`` are started on free loopback ports with
temporary stores; the real prefect.yaml is deployed (only ``epochs`` overridden, to be fast); a real
process worker runs a triggered flow run; then the Prefect API, the MLflow server and a headless
Chromium rendering both UIs are checked. Every process is stopped at the end, also when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ops import servers
from tasks import environment, spool
from tasks.tracking import CURVE_POINTS

from . import sockets

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EPOCHS = 200
WORKER = [
    sys.executable,
    "-m",
    "ops.env",
    "prefect",
    "worker",
    "start",
    "--pool",
    "thermometer",
    "--type",
    "process",
]

pytestmark = pytest.mark.integration


class Stack:
    """The servers of this module, their URLs and environment for clients."""

    def __init__(self, tmp: Path, prefect_port: int, mlflow_port: int) -> None:
        self.tmp = tmp
        self.prefect_api = f"http://127.0.0.1:{prefect_port}/api"
        self.prefect_ui = f"http://127.0.0.1:{prefect_port}"
        self.mlflow = f"http://127.0.0.1:{mlflow_port}"
        self.client_env = {
            **os.environ,
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_HOME": str(tmp / "client-home"),
            "MLFLOW_TRACKING_URI": self.mlflow,
            "PIPELINE_MLFLOW_URI": self.mlflow,
            "PIPELINE_ZOMBIE_SECONDS": "45",  # one missed 30 s heartbeat, plus margin
        }

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [sys.executable, "-m", "ops.env", "prefect", *args],  # as `make deploy` runs it
            cwd=REPO,
            env=self.client_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out

    def api(self, coroutine_fn):
        """Run ``coroutine_fn(client)`` against this Prefect server."""
        from prefect.client.orchestration import PrefectClient

        async def go():
            async with PrefectClient(self.prefect_api) as client:
                return await coroutine_fn(client)

        return asyncio.run(go())


@pytest.fixture(scope="module")
def stack():
    tmp = Path(tempfile.mkdtemp(prefix="thermo-servers-"))
    s = Stack(tmp, sockets.free_port(), sockets.free_port())
    prefect_port, mlflow_port = int(s.prefect_ui.rsplit(":", 1)[1]), int(s.mlflow.rsplit(":", 1)[1])
    with ExitStack() as stop:
        # start both, then wait for both: their start-ups overlap
        procs = [
            (
                servers.spawn(
                    servers.prefect_command("127.0.0.1", prefect_port),
                    servers.prefect_env(tmp / "prefect-server", s.prefect_api),
                    tmp / "prefect.log",
                ),
                f"{s.prefect_api}/health",
                tmp / "prefect.log",
            ),
            (
                servers.spawn(
                    servers.mlflow_command(
                        "127.0.0.1", mlflow_port, f"sqlite:///{tmp}/mlflow.db", tmp / "artifacts"
                    ),
                    servers.mlflow_env(),
                    tmp / "mlflow.log",
                ),
                f"{s.mlflow}/health",
                tmp / "mlflow.log",
            ),
        ]
        for proc, _, _ in procs:
            stop.callback(servers.stop_group, proc.pid)
        for proc, health, log in procs:
            servers.wait_http(health, 180, proc, log)
        s.procs = [p for p, _, _ in procs]
        yield s
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def deployed(stack):
    """The work pool created and the real prefect.yaml deployed, as `make deploy` does."""
    stack.cli("work-pool", "create", "thermometer", "--type", "process")
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        if deployment["entrypoint"] == "flows/train.py:train":
            deployment["parameters"]["epochs"] = EPOCHS  # the one change: keep the test fast
    fast = stack.tmp / "prefect.yaml"
    fast.write_text(yaml.safe_dump(spec, sort_keys=False))
    stack.cli("--no-prompt", "deploy", "--all", "--prefect-file", str(fast), timeout=180)
    out = subprocess.run(
        [sys.executable, "-m", "ops.env", sys.executable, "-m", "ops.automations"],
        cwd=REPO, env=stack.client_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return spec


def run_worker_until_final(stack: Stack, flow_run_ids: list, timeout: float = 240) -> list:
    """Start a real process worker, wait until the given flow runs are final, stop it; return the runs."""
    worker = servers.spawn(
        WORKER,
        stack.client_env,
        stack.tmp / "worker.log",
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = [stack.api(lambda c, i=i: c.read_flow_run(i)) for i in flow_run_ids]
            if all(r.state is not None and r.state.is_final() for r in runs):
                return runs
            assert worker.poll() is None, (stack.tmp / "worker.log").read_text()[-3000:]
            time.sleep(1)
        pytest.fail(f"flow runs not finished in time:\n{(stack.tmp / 'worker.log').read_text()[-3000:]}")
    finally:
        servers.stop_group(worker.pid)


@pytest.fixture(scope="module")
def finished_run(stack, deployed):
    """One triggered run of the nightly deployment, executed by a real process worker."""
    from prefect.deployments import run_deployment

    async def trigger(client):
        return await run_deployment("train/nightly", timeout=0, client=client)

    flow_run = stack.api(trigger)
    [run] = run_worker_until_final(stack, [flow_run.id])
    return run


def test_servers_bind_to_loopback_only(stack):
    for url in (stack.prefect_ui, stack.mlflow):
        assert sockets.listening_addresses(int(url.rsplit(":", 1)[1])) == {"127.0.0.1"}, url


def test_every_deployment_exists_with_its_cron_schedule_and_upcoming_runs(stack, deployed):
    async def read(client):
        deployments = {d.name: d for d in await client.read_deployments()}
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateName,
        )

        upcoming = {}
        for name, d in deployments.items():
            upcoming[name] = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Scheduled"]))
                ),
            )
        return deployments, upcoming

    specs = {d["name"]: d for d in deployed["deployments"]}
    expected = {name: spec for name, spec in specs.items() if spec.get("schedules")}
    assert set(expected) == {"nightly", "weekly-adam", "weekly-mlp", "lr-map"}
    deadline = time.monotonic() + 90
    while True:
        deployments, upcoming = stack.api(read)
        if all(upcoming.get(name) for name in expected) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert set(deployments) == set(specs)
    assert deployments["predict-readings"].schedules == []  # on demand
    for name, spec in expected.items():
        d = deployments[name]
        assert d.entrypoint == spec["entrypoint"]
        [schedule] = d.schedules
        assert schedule.active and schedule.schedule.cron == spec["schedules"][0]["cron"]
        assert schedule.schedule.timezone == "UTC"
        assert d.work_pool_name == "thermometer"
        assert d.parameters == spec["parameters"]  # the file's overrides (epochs shortened for train)
        assert d.job_variables["env"]["MLFLOW_TRACKING_URI"] == stack.mlflow
        # the heartbeat of tasks/environment.py, which the zombie automation's window is derived from
        assert d.job_variables["env"]["PIPELINE_HEARTBEAT_SECONDS"] == str(environment.HEARTBEAT_SECONDS)
        assert d.pull_steps == [{"tasks.environment.checkout": {}}]  # the worker's own checkout
        assert d.concurrency_options.collision_strategy.value == "CANCEL_NEW"
        assert d.global_concurrency_limit is not None and d.global_concurrency_limit.limit == 1
        runs = upcoming[name]
        assert runs, f"the scheduler created no upcoming runs for {name}"
        assert all(r.expected_start_time.timestamp() > time.time() for r in runs)


def test_triggered_run_completes_with_named_tasks_and_artifacts(stack, finished_run):
    assert finished_run.state.is_completed(), finished_run.state.message

    async def read(client):
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
            FlowRunFilter,
            FlowRunFilterId,
        )

        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[finished_run.id]))
        )
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[finished_run.id]))
        )
        return tasks, artifacts

    tasks, artifacts = stack.api(read)
    names = {t.name for t in tasks}
    assert {
        "load-dataset",
        "split-normalize",
        "start-mlflow-run",
        "train-manual",
        "train-autograd",
        "train-optimizer",
        "evaluate-manual",
        "evaluate-autograd",
        "evaluate-optimizer",
        "log-manual",
        "log-autograd",
        "log-optimizer",
        "report",
        "finish-mlflow-run",
    } <= names
    assert all(t.state.is_completed() for t in tasks)
    by_key = {a.key: a for a in artifacts}
    assert {"training-comparison", "training-summary", "mlflow-run"} <= set(by_key)
    assert f"({stack.mlflow}/#/experiments/" in by_key["mlflow-run"].data  # a link to the parent run


def test_mlflow_server_holds_the_runs_curves_plots_and_a_loadable_model(stack, finished_run, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow)
    experiment = client.get_experiment_by_name("thermometer")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [
        r
        for r in runs
        if r.data.tags.get("prefect.flow_run_id") == str(finished_run.id)
        and "mlflow.parentRunId" not in r.data.tags
    ]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.tags["prefect.deployment"] == "nightly"
    note = parent.data.tags["mlflow.note.content"]
    assert f"{stack.prefect_ui}/runs/flow-run/{finished_run.id}" in note and "deployment [nightly]" in note
    assert sorted(r.data.tags["variant"] for r in children) == ["autograd", "manual", "optimizer"]
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1))
        assert {"loss_curve.png", "fit.png"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
    png = client.download_artifacts(parent.info.run_id, "loss_curves.png", str(stack.tmp))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    monkeypatch.setenv(
        "MLFLOW_TRACKING_URI", stack.mlflow
    )  # not set_tracking_uri: it rewrites the env for good
    model = mlflow.pyfunc.load_model(children[0].data.tags["model_uri"])
    m = children[0].data.metrics
    predicted = model.predict(pd.DataFrame({"t_u": [35.7, 81.9]}))["t_c"].tolist()
    assert predicted == pytest.approx([m["coef_t_u"] * u + m["intercept"] for u in (35.7, 81.9)], abs=1e-4)


def chromium_dom(url: str) -> str:
    """The page as headless Chromium renders it, after its scripts have run (the screenshots' flags)."""
    from ops.screenshots import FLAGS, chromium

    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    return out.stdout


def test_both_uis_render_the_run_in_a_real_browser(stack, finished_run):
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow)
    experiment = client.get_experiment_by_name("thermometer")
    [parent] = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{finished_run.id}' "
        "and tags.`prefect.flow_run_name` != ''",
        max_results=1,
    )
    mlflow_page = chromium_dom(
        f"{stack.mlflow}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
    )
    assert "thermometer" in mlflow_page and finished_run.name in mlflow_page
    prefect_page = chromium_dom(f"{stack.prefect_ui}/runs/flow-run/{finished_run.id}")
    assert finished_run.name in prefect_page and "nightly" in prefect_page


def test_missed_runs_do_not_pile_up(stack, finished_run):
    """Two runs due while no worker ran: the worker starts one, the concurrency limit cancels the other."""
    import datetime

    from prefect.states import Scheduled

    async def create_late_runs(client):
        deployment = await client.read_deployment_by_name("train/nightly")
        now = datetime.datetime.now(datetime.UTC)
        return [
            (
                await client.create_flow_run_from_deployment(
                    deployment.id, state=Scheduled(scheduled_time=now - datetime.timedelta(hours=hours))
                )
            ).id
            for hours in (2, 1)
        ]

    runs = run_worker_until_final(stack, stack.api(create_late_runs))
    states = sorted(r.state_name for r in runs)
    assert states == ["Cancelled", "Completed"], [(r.state_name, r.state.message) for r in runs]
    [cancelled] = [r for r in runs if r.state_name == "Cancelled"]
    assert "concurrency limit" in cancelled.state.message


def _flow_run_process(flow_run_id) -> int | None:
    """The pid of the process running this flow run (the worker starts it with the id in its environment)."""
    needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    return int(proc.name)
            except OSError:
                continue
    return None


KILLED_NOTE = "Left RUNNING by Prefect flow run {}, which ended Crashed"


def _trigger(stack: Stack, epochs: int):
    """A run of the nightly deployment with ``epochs`` (the rest as deployed); returns the flow run."""
    from prefect.deployments import run_deployment

    async def trigger(client):
        return await run_deployment("train/nightly", timeout=0, client=client, parameters={"epochs": epochs})

    return stack.api(trigger)


def _mlflow_runs(stack: Stack, flow_run_id) -> tuple:
    """The MLflow parent run of a flow run (None before it exists) and its child runs, as the server has them.

    Children are found by their parent, not by the flow run's tag that the orphan sweep goes by, so a child
    without that tag would still show here.
    """
    from mlflow import MlflowClient

    mlflow = MlflowClient(stack.mlflow)
    experiment = mlflow.get_experiment_by_name("thermometer")
    if experiment is None:  # the first run of the stack has not created it yet
        return None, []
    tagged = mlflow.search_runs([experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    parents = [r for r in tagged if "mlflow.parentRunId" not in r.data.tags]
    if not parents:
        return None, []
    [parent] = parents
    children = mlflow.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    return parent, children


def _kill_worker_when(stack: Stack, flow_run_id, ready, log: str, within: float = 180):
    """Start a real worker; once ``ready()`` is truthy (within ``within`` s) and the flow-run process exists,
    SIGKILL the worker's process group and the flow-run process (no one reports anything), then wait until
    Prefect marks the flow run final (heartbeats stop, the zombie automation fires). Returns what ``ready()``
    saw and the flow run.
    """
    import signal

    worker = servers.spawn(WORKER, stack.client_env, stack.tmp / log)
    try:
        pid, seen = None, None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            pid = pid or _flow_run_process(flow_run_id)
            seen = ready() if pid else None
            if seen:
                break
            assert worker.poll() is None, (stack.tmp / log).read_text()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail((stack.tmp / log).read_text()[-3000:])
        # the worker's process group, and the flow run if it is elsewhere
        os.killpg(worker.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() < killed + 150:
            crashed = stack.api(lambda c: c.read_flow_run(flow_run_id))
            if crashed.state.is_final():
                break
            time.sleep(0.5)
        print(f"{crashed.state.name} {time.monotonic() - killed:.0f} s after the kill")
        return seen, crashed
    finally:
        servers.stop_group(worker.pid)


def _run_again(stack: Stack) -> None:
    """The deployment, as it was, runs normally on a new worker; its start-mlflow-run sweeps orphans."""
    [rerun] = run_worker_until_final(stack, [_trigger(stack, EPOCHS).id])
    assert rerun.state.is_completed(), rerun.state.message


def test_a_killed_run_is_marked_crashed_and_its_mlflow_runs_killed(stack, finished_run):
    """SIGKILL the worker and its flow-run process mid-training: no one reports, yet Prefect marks the
    run Crashed (heartbeats stop, the zombie automation fires); the next run closes its MLflow runs."""
    doomed = _trigger(stack, 400_000)  # minutes of training: killed long before the end

    def training():  # its MLflow parent run exists, so training is under way
        return _mlflow_runs(stack, doomed.id)[0]

    _, crashed = _kill_worker_when(stack, doomed.id, training, "worker-kill.log")
    assert crashed.state.name == "Crashed", crashed.state
    parent, children = _mlflow_runs(stack, doomed.id)
    assert parent.info.status == "RUNNING" and not children  # nothing could close it; nothing recorded yet

    _run_again(stack)
    parent, _ = _mlflow_runs(stack, doomed.id)
    assert parent.info.status == "KILLED"
    assert KILLED_NOTE.format(doomed.id) in parent.data.tags["mlflow.note.content"]


# Each child run logs its model, 2 curves of up to CURVE_POINTS points, a curve table and two plots: seconds
# of recording, polled every 0.2 s. A longer run would train longer and record no longer.
RECORDING_EPOCHS = CURVE_POINTS


def test_a_run_killed_while_recording_leaves_no_mlflow_run_running(stack, deployed):
    """SIGKILL the worker and its flow-run process while the variants' child runs are being recorded: Prefect
    marks the run Crashed; the next run closes the parent and each child left open KILLED; none stays open.
    Then `make upload` records the variants cut off, and the parent stays KILLED."""
    doomed = _trigger(stack, RECORDING_EPOCHS)

    def recording():  # the child runs being recorded at this moment
        return [r for r in _mlflow_runs(stack, doomed.id)[1] if r.info.status == "RUNNING"]

    # within: three variants train first (minutes on a loaded 2-core machine)
    seen, crashed = _kill_worker_when(stack, doomed.id, recording, "worker-kill-recording.log", within=400)
    assert crashed.state.name == "Crashed", crashed.state
    parent, children = _mlflow_runs(stack, doomed.id)
    open_children = [r for r in children if r.info.status == "RUNNING"]
    # killed inside the recording: a child run seen RUNNING just before the kill is still open after it
    assert {r.info.run_id for r in seen} & {r.info.run_id for r in open_children}, (seen, children)
    assert parent.info.status == "RUNNING"
    # a child FINISHED was recorded whole before the kill
    assert all(r.info.status in ("RUNNING", "FINISHED") for r in children)
    print(f"killed with {len(open_children)} of {len(children)} child runs RUNNING")

    _run_again(stack)
    parent, after = _mlflow_runs(stack, doomed.id)
    assert {r.info.run_id for r in after} == {r.info.run_id for r in children}  # the rerun added none to it
    status = {r.info.run_id: r.info.status for r in [parent, *after]}
    assert "RUNNING" not in status.values(), status
    for run in [parent, *(r for r in after if r.info.run_id in {o.info.run_id for o in open_children})]:
        assert run.info.status == "KILLED", status
        assert KILLED_NOTE.format(doomed.id) in run.data.tags["mlflow.note.content"]
    # the results of the variants cut off still wait in the worker's spool; `make upload` records them
    spooled = environment.state_dir(stack.client_env) / "spool" / parent.info.run_id
    waiting = {p.name for p in spool.variants(spooled)}
    assert {r.data.tags["variant"] for r in open_children} <= waiting
    try:
        upload = subprocess.run(
            [sys.executable, "-m", "ops.upload", parent.info.run_id],
            cwd=REPO, env=stack.client_env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert upload.returncode == 0, upload.stdout + upload.stderr
        parent, uploaded = _mlflow_runs(stack, doomed.id)
        # the killed run stays KILLED (its flow never finished), its note naming what was added
        assert parent.info.status == "KILLED"
        note = parent.data.tags["mlflow.note.content"]
        assert KILLED_NOTE.format(doomed.id) in note and all(v in note.split("Later")[1] for v in waiting)
        finished = [r.data.tags["variant"] for r in uploaded if r.info.status == "FINISHED"]
        # one FINISHED child per variant: those recorded before the kill and those uploaded now
        assert sorted(finished) == sorted({r.data.tags["variant"] for r in children} | waiting), finished
        assert "RUNNING" not in {r.info.status for r in uploaded}
        assert not spooled.exists()
    finally:
        shutil.rmtree(spooled, ignore_errors=True)  # shared state directory: nothing for another upload
