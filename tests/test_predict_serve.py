"""Batch prediction, model serving and the safe model format, against a real MLflow server."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
import torch

from flows.predict import predict
from flows.train import train
from ops import servers

from . import sockets

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]
READINGS = "sensor,t_u\nkitchen,35.7\ncellar,21.8\nattic,81.9\ngarage,48.4\nporch,60.4\n"


@pytest.fixture(scope="module")
def champion(mlflow_server):
    """A registered model with a champion, and the champion's coefficients in original units."""
    name = f"thermo-{uuid.uuid4().hex[:8]}"
    result = train(model_name=name, experiment=f"exp-{name}", epochs=2000)
    assert result["promotion"]["decision"] == "first"
    version = mlflow_server.get_model_version(name, result["promotion"]["version"])
    metrics = mlflow_server.get_run(version.run_id).data.metrics
    return name, version.version, metrics["coef_t_u"], metrics["intercept"]


def test_batch_prediction_writes_celsius_next_to_the_input_and_records_the_run(
    mlflow_server, champion, write
):
    name, version, w, b = champion
    data = write("readings.csv", READINGS)
    result = predict(data=data, model_name=name)
    out = Path(data).with_name("readings.predictions.csv")
    assert result["output"] == str(out) and result["rows"] == 5 and result["model_version"] == version
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["sensor", "t_u", "t_c_predicted", "model_version"]
    assert frame["sensor"].tolist() == ["kitchen", "cellar", "attic", "garage", "porch"]
    assert frame["t_c_predicted"].tolist() == pytest.approx((w * frame["t_u"] + b).tolist(), abs=1e-4)
    assert set(frame["model_version"]) == {f"{name}/{version}"}

    run = mlflow_server.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["rows"] == 5
    assert run.data.tags["model.version"] == version and run.data.tags["model.name"] == name
    [dataset] = run.inputs.dataset_inputs
    assert dataset.tags[0].value == "prediction"


def test_parquet_in_parquet_out(champion, tmp_path):
    name, _, w, b = champion
    source = tmp_path / "r.parquet"
    pd.DataFrame({"t_u": [20.0, 70.0]}).to_parquet(source)
    out = tmp_path / "out.parquet"
    predict(data=str(source), model_name=name, output=str(out))
    assert pd.read_parquet(out)["t_c_predicted"].tolist() == pytest.approx([w * 20 + b, w * 70 + b], abs=1e-4)


@pytest.mark.parametrize(
    ("content", "alias", "pattern"),
    [
        (
            "sensor,temp\nkitchen,35.7\n",
            "champion",
            "column 't_u': column not found; the file has columns: 'sensor', 'temp'",
        ),
        ("t_u\n35.7\nwarm\n", "champion", "column 't_u': non-numeric value 'warm' in data row 2"),
        ("t_u\n", "champion", "header but no data rows"),
        (READINGS, "staging", "has no alias 'staging' (its aliases: champion -> v1)"),
    ],
)
def test_bad_inputs_fail_clearly_and_write_nothing(champion, write, tmp_path, content, alias, pattern):
    name = champion[0]
    data = write("bad.csv", content)
    state = predict(data=data, model_name=name, alias=alias, return_state=True)
    assert state.is_failed() and pattern in state.message, state.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_unknown_model_is_a_clear_error(write):
    state = predict(data=write("r.csv", READINGS), model_name="no-such-model", return_state=True)
    assert state.is_failed() and "no registered model named 'no-such-model'" in state.message


def served(name: str, tmp_path: Path, t_u: list[float]) -> list[float]:
    """``make serve-model``'s command for ``name@champion``, asked for ``t_u``; the answer in Celsius."""
    port = sockets.free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    serve = ["mlflow", "models", "serve", "-m", f"models:/{name}@champion", "--env-manager", "local"]
    cmd = [
        sys.executable,
        "-m",
        "ops.env",
        "--no-prefect",
        *serve,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with servers.running(
        cmd, env, tmp_path / "serve.log", f"http://127.0.0.1:{port}/ping", timeout=120
    ) as proc:
        assert "127.0.0.1" in proc.args and sockets.listening_addresses(port) == {"127.0.0.1"}
        answer = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"dataframe_records": [{"t_u": u} for u in t_u]},
            timeout=30,
        )
    assert answer.status_code == 200
    return [row["t_c"] for row in answer.json()["predictions"]]


def test_model_server_answers_in_celsius(mlflow_server, champion, tmp_path):
    name, _, w, b = champion
    assert served(name, tmp_path, [35.7, 81.9]) == pytest.approx([w * 35.7 + b, w * 81.9 + b], abs=1e-4)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['THERMO_PWNED']}",))


def test_the_model_holds_no_pickle_and_a_tampered_one_is_refused(champion, tmp_path, monkeypatch):
    name, version, _, _ = champion
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(tmp_path / "m"))
    )
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert "data/linear/weights.pt" in files and "data/linear/model.json" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert "loader_module: training.serving" in (local / "MLmodel").read_text()
    assert mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame({"t_u": [50.0]})).shape == (1, 1)

    marker = tmp_path / "pwned"
    monkeypatch.setenv("THERMO_PWNED", str(marker))
    torch.save({"weight": torch.zeros(1), "bias": _Exploit()}, local / "data" / "linear" / "weights.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        mlflow.pyfunc.load_model(str(local))
    assert not marker.exists()
    # the same file through plain pickle would have run the command: the refusal is what saved us
    unsafe = f"import torch; torch.load({str(local / 'data/linear/weights.pt')!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", unsafe], capture_output=True)
    assert marker.exists()


@pytest.fixture(scope="module")
def network_champion(mlflow_server):
    """A registered network (chapter 6's, on the book's rows) as champion, and the book's nn.Sequential with
    the weights its run logged: the independent reference for its predictions."""
    name = f"thermo-net-{uuid.uuid4().hex[:8]}"
    params = {"model": "mlp", "lr": 1e-3, "epochs": 2000, "val_indices": [7, 10], "variants": ["manual"]}
    result = train(model_name=name, experiment=f"exp-{name}", **params)
    assert result["promotion"]["decision"] == "first"
    version = mlflow_server.get_model_version(name, result["promotion"]["version"])
    weights = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/network.json")["weights"]
    book = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    book.load_state_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in weights.items()})

    def celsius(t_u: list[float]) -> list[float]:
        with torch.no_grad():
            return book(0.1 * torch.tensor(t_u, dtype=torch.float64).unsqueeze(1)).squeeze(1).tolist()

    return name, version.version, celsius


def test_a_network_champion_predicts_in_batch_and_serves_in_celsius(network_champion, write, tmp_path):
    name, version, celsius = network_champion
    data = write("readings.csv", READINGS)
    result = predict(data=data, model_name=name)
    frame = pd.read_csv(result["output"])
    assert result["model_version"] == version and set(frame["model_version"]) == {f"{name}/{version}"}
    assert frame["t_c_predicted"].tolist() == pytest.approx(celsius(frame["t_u"].tolist()), abs=1e-9)
    assert served(name, tmp_path, [35.7, 81.9]) == pytest.approx(celsius([35.7, 81.9]), abs=1e-9)


def test_a_network_holds_no_pickle_and_a_tampered_one_is_refused(network_champion, tmp_path, monkeypatch):
    name, version, celsius = network_champion
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(tmp_path / "m"))
    )
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert "data/mlp/weights.pt" in files and "data/mlp/model.json" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    meta = json.loads((local / "data" / "mlp" / "model.json").read_text())
    assert meta["architecture"] == {"model": "mlp", "features": 1, "hidden": 8, "activation": "tanh"}
    model = mlflow.pyfunc.load_model(str(local))
    assert model.predict(pd.DataFrame({"t_u": [50.0]}))["t_c"].tolist() == pytest.approx(celsius([50.0]))

    marker = tmp_path / "pwned"
    monkeypatch.setenv("THERMO_PWNED", str(marker))
    weights = local / "data" / "mlp" / "weights.pt"
    state = dict(torch.load(weights, weights_only=True))
    state["0.weight"] = _Exploit()
    torch.save(state, weights)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        mlflow.pyfunc.load_model(str(local))
    assert not marker.exists()
    unsafe = f"import torch; torch.load({str(weights)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", unsafe], capture_output=True)
    assert marker.exists()  # plain unpickling would have run the command
