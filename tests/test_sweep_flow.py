"""The sweep flow end to end: the contract checks rely on, exactness against the sequential loop, bad spaces,
all-diverged sweeps, random and Optuna strategies; then a real Dask cluster against the local executor."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from flows.sweep import sweep
from training.data import load_table, prepare
from training.loops import train
from training.model import mse, predict
from training.settings import TrainingConfig

from .conftest import DATA, REPO, subprocess_env

pytestmark = pytest.mark.integration

SMALL = {"lr": {"low": 1e-4, "high": 1e-2, "log": True, "num": 3}, "normalize": ["none", "scale"]}


def run_sweep(**params):
    params.setdefault("experiment", f"sweep-{uuid.uuid4().hex[:8]}")
    params.setdefault("model_name", None)
    return sweep(return_state=True, **params), params["experiment"]


def trials_table(client, run_id) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_parquet(client.download_artifacts(run_id, "trials.parquet", tmp))


@pytest.mark.usefixtures("prefect_api")
def test_a_grid_sweep_records_the_contract_and_equals_the_sequential_loop(mlflow_client):
    state, experiment = run_sweep(space=SMALL, val_fraction=0.0, epochs=200, top_k=2, optimizer="SGD")
    assert state.is_completed(), state.message
    out = state.result()
    assert set(out) >= {"parent_run_id", "best", "trials", "diverged"}
    assert out["trials"] == 6 and out["diverged"] == 2  # lr 1e-3 and 1e-2 on raw inputs
    parent = mlflow_client.get_run(out["parent_run_id"])
    assert parent.data.tags["sweep"] == "true" and parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["space"]) == SMALL and parent.data.params["strategy"] == "grid"
    assert parent.data.metrics["trials"] == 6 and parent.data.metrics["diverged"] == 2
    assert {"trials.parquet", "lr_map.png"} <= {
        a.path for a in mlflow_client.list_artifacts(parent.info.run_id)
    }

    table = trials_table(mlflow_client, parent.info.run_id)
    assert list(table.columns[:3]) == ["lr", "normalize", "variant"]
    assert {"final_loss", "train_mse", "val_mse", "objective", "diverged_at", "worker"} <= set(table.columns)
    raw_fast = table[(table["normalize"] == "none") & (table["lr"] == 1e-2)]
    assert raw_fast["diverged_at"].tolist() == [11]  # float32, as the book's run
    assert table["diverged_at"].isna().sum() == 4  # empty for every trial that converged
    assert parent.data.metrics["best_objective"] == pytest.approx(table["objective"].min())

    # every trial equals its own sequential loops.train run (the flow's numbers, not only the engine's)
    frame = load_table(DATA, ["t_u"], "t_c")
    for row in table.itertuples():
        config = TrainingConfig(val_fraction=0.0, epochs=200, lr=row.lr, normalize=row.normalize)
        p = prepare(frame, ["t_u"], "t_c", config.normalize, config.scale, 0.0, config.seed)
        ref = train("optimizer", p.x_train, p.y_train, lr=row.lr, epochs=200, init=config.initial_params())
        if ref.converged:
            assert row.final_loss == ref.train_loss[-1], row  # bit for bit: float32 values, kept as float64
            final = mse(predict(p.x_train.double(), ref.params.double()), p.y_train.double()).item()
            assert row.train_mse == pytest.approx(final, rel=1e-12) and row.objective == row.train_mse
        else:
            assert row.diverged_at == ref.epochs_run and row.objective == float("inf"), row

    best = table["objective"].idxmin()
    assert out["best"]["lr"] == table["lr"][best] and out["best"]["objective"] == table["objective"][best]
    exp = mlflow_client.get_experiment_by_name(experiment)
    children = mlflow_client.search_runs(
        [exp.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["tags.`sweep.rank`"],
    )
    assert len(children) == 2
    for child in children:  # the train flow's child-run contract
        assert child.info.status == "FINISHED" and "model_uri" in child.data.tags
        steps = [m.step for m in mlflow_client.get_metric_history(child.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, 201))
        assert {"train_mse", "optimum_gap", "grad_check_final", "coef_t_u", "intercept"} <= set(
            child.data.metrics
        )
        assert {"loss_curve.png", "fit.png", "coefficients.json"} <= {
            a.path for a in mlflow_client.list_artifacts(child.info.run_id)
        }
        trial = int(child.data.tags["sweep.trial"])
        assert child.data.metrics["train_mse"] == pytest.approx(table["train_mse"][trial], rel=1e-12)
        assert child.data.metrics["train_loss"] == table["final_loss"][trial]  # the curve's last epoch
    model = mlflow.pyfunc.load_model(children[0].data.tags["model_uri"])
    assert model.predict(pd.DataFrame({"t_u": [50.0]}))["t_c"].notna().all()


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    ("space", "key"),
    [
        ({"learning_rate": [0.1]}, "space['learning_rate']"),
        ({"lr": []}, "space['lr']: the list of values is empty"),
        ({"lr": {"low": 1.0, "high": 0.1, "num": 3}}, "space['lr']: low 1.0 > high 0.1"),
        ({"lr": [0.01, 0.0]}, "space['lr']: 0.0 is not a valid lr"),
        ({"optimizer_options.momentun": [0.9]}, "space['optimizer_options.momentun']"),
    ],
)
def test_a_bad_space_is_refused_before_any_work(mlflow_client, space, key):
    state, experiment = run_sweep(space=space, epochs=10)
    assert state.is_failed() and key in state.message, state.message
    assert mlflow_client.get_experiment_by_name(experiment) is None  # nothing recorded


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    "params",
    [{"model": "mlp", "space": {"lr": [1e-3]}}, {"space": {"lr": [1e-3], "model": ["linear", "mlp"]}}],
)
def test_a_network_sweep_is_refused_before_any_work_the_engine_trains_the_line(mlflow_client, params):
    state, experiment = run_sweep(epochs=10, **params)
    assert state.is_failed() and "model: the sweep engine trains the line" in state.message, state.message
    assert mlflow_client.get_experiment_by_name(experiment) is None


@pytest.mark.usefixtures("prefect_api")
def test_a_sweep_where_every_trial_diverges_fails_and_says_so(mlflow_client):
    state, experiment = run_sweep(
        space={"lr": [1e-2, 1e-1]}, normalize="none", val_fraction=0.0, epochs=100, optimizer="SGD"
    )
    assert state.is_failed() and "every one of the 2 trials diverged" in state.message
    exp = mlflow_client.get_experiment_by_name(experiment)
    [parent] = mlflow_client.search_runs([exp.experiment_id])
    assert parent.info.status == "FAILED" and parent.data.metrics["diverged"] == 2
    x, t = (torch.tensor(c, dtype=torch.float32) for c in load_table(DATA, ["t_u"], "t_c").to_numpy().T)
    expected = [
        train("optimizer", x[:, None], t, lr=lr, epochs=100, init=torch.tensor([1.0, 0.0])).epochs_run
        for lr in (1e-2, 1e-1)
    ]
    assert expected[0] == 11  # the book's epoch
    assert trials_table(mlflow_client, parent.info.run_id)["diverged_at"].tolist() == expected


@pytest.mark.usefixtures("prefect_api")
def test_random_points_are_seeded_and_optuna_resumes_its_study(mlflow_client, tmp_path):
    space = {"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "optimizer": ["SGD", "Adam"]}
    tables = []
    for _ in range(2):
        state, _ = run_sweep(space=space, strategy="random", trials=6, epochs=50, top_k=0)
        tables.append(trials_table(mlflow_client, state.result()["parent_run_id"]))
    pd.testing.assert_frame_equal(tables[0].drop(columns="worker"), tables[1].drop(columns="worker"))

    storage = f"sqlite:///{tmp_path}/optuna.db"
    for round_ in (1, 2):
        state, _ = run_sweep(
            space=space,
            strategy="optuna",
            trials=8,
            epochs=50,
            top_k=1,
            study_name="resume",
            study_storage=storage,
        )
        assert state.is_completed(), state.message
        assert state.result()["trials"] == 8
        import optuna

        assert len(optuna.load_study(study_name="resume", storage=storage).trials) == 8 * round_


def flow_env(tmp: Path, prefect_api: str) -> dict[str, str]:
    return subprocess_env(tmp, PREFECT_API_URL=prefect_api, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A real Dask cluster on loopback: `dask scheduler` and two `dask worker` processes, one thread each."""
    from ops import servers

    tmp = tmp_path_factory.mktemp("dask")
    with servers.dask_cluster(subprocess_env(tmp), tmp) as address:
        yield address


def test_a_dask_cluster_gives_the_local_results_and_says_which_worker_trained_each(
    dask_cluster, prefect_server, tmp_path
):
    from mlflow import MlflowClient

    space = {"lr": {"low": 1e-5, "high": 1.0, "log": True, "num": 16}, "normalize": ["none", "scale"]}
    args = [f"space={json.dumps(space)}", "epochs=500", "top_k=1", "model_name=null", "experiment=dask"]
    tables = {}
    for executor in ("local", "dask"):
        extra = ["executor=dask", f"dask_address={dask_cluster}"] if executor == "dask" else []
        out = subprocess.run(
            [sys.executable, "-m", "flows.run", "sweep", *args, *extra],
            cwd=REPO, env=flow_env(tmp_path, prefect_server), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        [exp] = [e for e in client.search_experiments() if e.name == "dask"]
        latest = client.search_runs([exp.experiment_id], "tags.sweep = 'true'", order_by=["start_time DESC"])[
            0
        ]
        tables[executor] = trials_table(client, latest.info.run_id)
    local, dask = tables["local"], tables["dask"]
    pd.testing.assert_frame_equal(local.drop(columns="worker"), dask.drop(columns="worker"))
    assert set(dask["worker"]) <= {w for w in dask["worker"] if w.startswith("tcp://127.0.0.1:")}
    assert dask["worker"].nunique() == 2  # both workers trained some
