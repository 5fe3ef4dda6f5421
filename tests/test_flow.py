"""The real training flow on a real Prefect server, then MLflow read back: the recording contract."""

from __future__ import annotations

import uuid

import mlflow
import pandas as pd
import pytest
import torch
from prefect.exceptions import ParameterTypeError

from flows.train import train
from tasks.tracking import history_epochs
from training.data import file_digest

from .conftest import DATA

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def run_flow(**params):
    """Run the flow in a fresh experiment; return (state, experiment name)."""
    experiment = params.pop("experiment", f"test-{uuid.uuid4().hex[:8]}")
    state = train(experiment=experiment, return_state=True, **params)
    return state, experiment


def runs_of(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=100)


def children_by_variant(client, experiment):
    return {
        r.data.tags["variant"]: r for r in runs_of(client, experiment) if "mlflow.parentRunId" in r.data.tags
    }


def artifact_paths(client, run_id):
    return {a.path for a in client.list_artifacts(run_id)}


def test_default_configuration_records_the_full_contract(mlflow_client):
    epochs = 300
    state, experiment = run_flow(epochs=epochs)
    assert state.is_completed(), state.message
    summary = state.result()
    runs = runs_of(mlflow_client, experiment)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)

    parent = mlflow_client.get_run(summary["parent_run_id"])
    flow_run_id = str(state.state_details.flow_run_id)
    assert parent.data.tags["prefect.flow_run_id"] == flow_run_id
    assert parent.data.tags["mlflow.runName"] == parent.data.tags["prefect.flow_run_name"] != ""
    assert parent.data.tags["data_hash"] == file_digest(DATA)
    assert parent.data.params["epochs"] == str(epochs) and parent.data.params["normalize"] == "scale"
    assert set(parent.data.params) >= {
        "data",
        "features",
        "target",
        "scale",
        "val_fraction",
        "seed",
        "variants",
        "optimizer",
        "optimizer_options",
        "lr",
        "init_weight",
        "init_bias",
        "experiment",
    }
    [dataset] = parent.inputs.dataset_inputs
    assert dataset.dataset.digest == file_digest(DATA)[:20]
    assert "loss_curves.png" in artifact_paths(mlflow_client, parent.info.run_id)
    assert "3 of 3 variants converged" in parent.data.tags["mlflow.note.content"]

    children = children_by_variant(mlflow_client, experiment)
    assert set(children) == {"manual", "autograd", "optimizer"}
    for variant, child in children.items():
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params["variant"] == variant
        for curve in ("train_loss", "val_loss"):
            history = mlflow_client.get_metric_history(child.info.run_id, curve)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1)), (variant, curve)
        metrics = child.data.metrics
        for name in ("train_mse", "val_mse", "val_rmse", "val_mae", "val_r2", "optimum_gap"):
            assert name in metrics, (variant, name)
        assert metrics["optimum_gap"] >= -1e-6
        assert max(metrics["grad_check_init"], metrics["grad_check_final"]) < 1e-12
        assert {"loss_curve.png", "fit.png", "coefficients.json"} <= artifact_paths(
            mlflow_client, child.info.run_id
        )

        model = mlflow.pyfunc.load_model(child.data.tags["model_uri"])
        t_u = [20.0, 50.0, 80.0]
        predicted = model.predict(pd.DataFrame({"t_u": t_u}))["t_c"].tolist()
        w, b = metrics["coef_t_u"], metrics["intercept"]
        assert predicted == pytest.approx([w * u + b for u in t_u], abs=1e-4)
        assert w == pytest.approx(metrics["w_t_u"] * 0.1, rel=1e-6)  # trained on 0.1 * t_u


@pytest.mark.parametrize("variants", [["manual", "autograd", "optimizer"]])
def test_books_5000_epoch_runs_through_the_flow(mlflow_client, variants):
    state, experiment = run_flow(val_fraction=0.0, epochs=5000, variants=variants)
    assert state.is_completed(), state.message
    for variant, out in state.result()["variants"].items():
        assert out["final_loss"] == pytest.approx(2.927648, abs=1e-5), variant
        assert out["params"] == pytest.approx([5.3671, -17.3012], abs=1e-3), variant
    child = children_by_variant(mlflow_client, experiment)["manual"]
    assert "val_loss" not in child.data.metrics and "val_mse" not in child.data.metrics
    steps = [m.step for m in mlflow_client.get_metric_history(child.info.run_id, "train_loss")]
    assert sorted(steps) == history_epochs(5000)  # CURVE_POINTS of them, evenly spaced, each once


def test_books_adam_run_through_the_flow():
    state, _ = run_flow(
        optimizer="Adam", lr=1e-1, normalize="none", val_fraction=0.0, epochs=2000, variants=["optimizer"]
    )
    out = state.result()["variants"]["optimizer"]
    assert out["final_loss"] == pytest.approx(2.927646, abs=1e-5)
    assert out["params"] == pytest.approx([0.5367, -17.3021], abs=1e-3)


def test_small_lr_on_raw_inputs_through_the_flow():
    state, _ = run_flow(
        normalize="none", lr=1e-4, epochs=100, val_fraction=0.0, variants=["manual", "autograd"]
    )
    for out in state.result()["variants"].values():
        assert out["final_loss"] == pytest.approx(29.022669, abs=1e-5)


def test_every_variant_diverging_fails_the_flow_and_records_why(mlflow_client):
    state, experiment = run_flow(normalize="none", lr=1e-2, epochs=100, val_fraction=0.0)
    assert state.is_failed()
    assert "no variant converged" in state.message and "epoch 11" in state.message
    runs = runs_of(mlflow_client, experiment)
    assert len(runs) == 4 and all(r.info.status == "FAILED" for r in runs)
    for variant, child in children_by_variant(mlflow_client, experiment).items():
        assert "model_uri" not in child.data.tags, variant
        assert "epoch 11" in child.data.tags["mlflow.note.content"]
        assert (
            len(mlflow_client.get_metric_history(child.info.run_id, "train_loss")) == 10
        )  # epoch 11 was inf


def test_one_diverging_variant_leaves_the_others_and_the_flow_completes(mlflow_client):
    # plain SGD on raw inputs diverges; Adam with the same lr does not
    state, experiment = run_flow(
        normalize="none",
        lr=1e-2,
        epochs=200,
        val_fraction=0.0,
        variants=["manual", "optimizer"],
        optimizer="Adam",
    )
    assert state.is_completed(), state.message
    children = children_by_variant(mlflow_client, experiment)
    assert children["manual"].info.status == "FAILED" and children["optimizer"].info.status == "FINISHED"
    assert "model_uri" in children["optimizer"].data.tags


def test_several_features_and_zscore(tmp_path):
    g = pd.Series(range(40), dtype=float)
    frame = pd.DataFrame({"a": g, "b": (g * 7) % 11, "c": (g * 3) % 5})
    frame["y"] = 2 * frame["a"] - 3 * frame["b"] + 0.5 * frame["c"] + 4
    path = tmp_path / "three.parquet"
    frame.to_parquet(path)
    state, _ = run_flow(
        data=str(path), features=["a", "b", "c"], target="y", normalize="zscore", lr=0.1, epochs=500
    )
    assert state.is_completed(), state.message
    out = state.result()["variants"]["autograd"]
    assert out["val_rmse"] < 1e-3 and out["optimum_gap"] < 1e-6
    model = mlflow.pyfunc.load_model(out["model_uri"])
    assert model.predict(frame[["a", "b", "c"]])["y"].to_numpy() == pytest.approx(
        frame["y"].to_numpy(), abs=1e-3
    )


@pytest.mark.parametrize(
    "params",
    [
        {"normalize": "bogus"},
        {"epochs": 0},
        {"lr": -1.0},
        {"val_fraction": 1.0},
        {"variants": ["newton"]},
        {"optimizer": "Adamm"},
    ],
)
def test_invalid_parameters_are_refused_before_anything_runs(mlflow_client, params):
    experiment = f"test-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ParameterTypeError):
        train(experiment=experiment, **params)
    assert runs_of(mlflow_client, experiment) == []


@pytest.mark.parametrize(
    ("params", "pattern"),
    [({"optimizer_options": {"momentun": 0.9}}, "momentun"), ({"features": ["t_u", "t_c"]}, "also listed")],
)
def test_settings_the_schema_cannot_see_fail_before_any_run(mlflow_client, params, pattern):
    state, experiment = run_flow(**params)
    assert state.is_failed() and pattern in state.message
    assert runs_of(mlflow_client, experiment) == []


def test_bad_data_fails_before_training_with_the_file_and_column(mlflow_client, write):
    path = write("bad.csv", "t_u,t_c\n1,2\nabc,3\n")
    state, experiment = run_flow(data=path)
    assert state.is_failed()
    assert path in state.message and "column 't_u'" in state.message and "'abc'" in state.message
    assert runs_of(mlflow_client, experiment) == []


def test_mlflow_server_down_fails_fast_naming_it_before_any_work(monkeypatch):
    from .sockets import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    state, _ = run_flow(epochs=100)
    assert state.is_failed()
    assert f"cannot reach the MLflow tracking server at {url}" in state.message and "make ui" in state.message
    assert "TrackingUnavailable" in state.message


def test_a_long_curve_is_thinned_in_the_history_and_kept_whole_as_an_artifact(mlflow_client, tmp_path):
    from tasks.tracking import CURVE_POINTS

    epochs = CURVE_POINTS + 2000
    state, experiment = run_flow(epochs=epochs, variants=["manual"], val_fraction=0.0, model_name=None)
    assert state.is_completed(), state.message
    child = children_by_variant(mlflow_client, experiment)["manual"]
    steps = sorted(m.step for m in mlflow_client.get_metric_history(child.info.run_id, "train_loss"))
    assert (
        len(steps) == CURVE_POINTS and steps[0] == 1 and steps[-1] == epochs and len(set(steps)) == len(steps)
    )
    table = pd.read_parquet(
        mlflow_client.download_artifacts(child.info.run_id, "curves.parquet", str(tmp_path))
    )
    assert table["epoch"].tolist() == list(range(1, epochs + 1))
    final = state.result()["variants"]["manual"]["final_loss"]
    assert table["train_loss"].iloc[-1] == final and table["val_loss"].isna().all()


def test_the_network_records_the_lines_contract_side_by_side_with_it(mlflow_client):
    epochs, experiment = 300, f"test-{uuid.uuid4().hex[:8]}"
    book_rows = {"val_indices": [7, 10], "epochs": epochs, "model_name": None, "experiment": experiment}
    line, _ = run_flow(**book_rows)
    net, _ = run_flow(model="mlp", lr=1e-3, **book_rows)
    assert line.is_completed() and net.is_completed(), (line.message, net.message)
    children = {
        (r.data.params["model"], r.data.tags["variant"]): r
        for r in runs_of(mlflow_client, experiment)
        if "mlflow.parentRunId" in r.data.tags
    }
    assert set(children) == {(m, v) for m in ("linear", "mlp") for v in ("manual", "autograd", "optimizer")}
    shared = {
        "train_mse",
        "train_rmse",
        "val_mse",
        "val_rmse",
        "val_r2",
        "grad_check_init",
        "grad_check_final",
    }
    line_only = {"optimum_mse", "optimum_gap", "w_t_u", "b", "coef_t_u", "intercept"}
    for (kind, variant), child in children.items():
        metrics, artifacts = child.data.metrics, artifact_paths(mlflow_client, child.info.run_id)
        assert shared <= set(metrics), (kind, variant)
        assert max(metrics["grad_check_init"], metrics["grad_check_final"]) < 1e-12, (kind, variant)
        for curve in ("train_loss", "val_loss"):
            history = mlflow_client.get_metric_history(child.info.run_id, curve)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1)), (kind, variant, curve)
        assert {"loss_curve.png", "fit.png"} <= artifacts
        if kind == "linear":
            assert line_only <= set(metrics) and "coefficients.json" in artifacts
            assert "hidden" not in child.data.params and child.data.params["init_weight"] == "1.0"
        else:
            assert not line_only & set(metrics) and "network.json" in artifacts
            assert child.data.params["hidden"] == "8" and child.data.params["activation"] == "tanh"
            assert "init_weight" not in child.data.params
    assert (
        "Exact optimum: none"
        in mlflow_client.get_run(net.result()["parent_run_id"]).data.tags["mlflow.note.content"]
    )

    # the logged network predicts in Celsius what the book's nn.Sequential with its logged weights predicts
    child = children[("mlp", "autograd")]
    weights = mlflow.artifacts.load_dict(f"runs:/{child.info.run_id}/network.json")["weights"]
    book = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    book.load_state_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in weights.items()})
    t_u = [20.0, 50.0, 90.0]
    expected = book(0.1 * torch.tensor(t_u, dtype=torch.float64).unsqueeze(1)).squeeze(1).tolist()
    predicted = mlflow.pyfunc.load_model(child.data.tags["model_uri"]).predict(pd.DataFrame({"t_u": t_u}))
    assert predicted["t_c"].tolist() == pytest.approx(expected, abs=1e-9)
    out = net.result()["variants"]["autograd"]
    assert out["final_loss"] < out["train_mse"] * 1.5 and len(out["params"]) == 25


def test_a_diverging_network_fails_the_flow_and_records_why_as_the_line(mlflow_client):
    state, experiment = run_flow(model="mlp", lr=10.0, epochs=100, val_indices=[7, 10])
    assert state.is_failed()
    assert "no variant converged" in state.message and "epoch 10" in state.message
    runs = runs_of(mlflow_client, experiment)
    assert len(runs) == 4 and all(r.info.status == "FAILED" for r in runs)
    for variant, child in children_by_variant(mlflow_client, experiment).items():
        assert "model_uri" not in child.data.tags, variant
        assert "at epoch 10 of 100" in child.data.tags["mlflow.note.content"], variant
        assert len(mlflow_client.get_metric_history(child.info.run_id, "train_loss")) == 9, variant


def test_a_flow_run_sends_heartbeats_while_it_runs_and_stops_with_it(prefect_server, monkeypatch):
    """``tasks/heartbeat.py``: the event the zombie automation watches, for this flow run, every period while
    the flow function runs, and none once it has returned."""
    import json
    import time
    import urllib.request

    from prefect import flow
    from prefect.runtime import flow_run

    from tasks.heartbeat import with_heartbeats

    monkeypatch.setenv("PIPELINE_HEARTBEAT_SECONDS", "0.25")

    @flow(name="beating")
    @with_heartbeats
    def beating() -> str:
        time.sleep(2)
        return flow_run.get_id()

    run_id = beating()
    query = {
        "filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{run_id}"]},
        },
        "limit": 50,
    }

    def heartbeats() -> list[dict]:
        body, headers = json.dumps(query).encode(), {"Content-Type": "application/json"}
        request = urllib.request.Request(f"{prefect_server}/events/filter", body, headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)["events"]

    deadline = time.monotonic() + 60
    while len(events := heartbeats()) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)  # events reach the server in the background
    assert len(events) >= 4, events  # one at the start, then one every 0.25 s for 2 s
    assert {e["related"][0]["prefect.resource.role"] for e in events} == {"flow"}
    time.sleep(1.5)  # a thread left running would have sent about six more by now
    assert len(heartbeats()) <= 10
