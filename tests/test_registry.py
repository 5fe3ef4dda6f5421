"""Registry and champion/challenger promotion, against a real MLflow server started for this module."""

from __future__ import annotations

import contextvars
import threading
import uuid

import pytest
from mlflow import MlflowClient

from flows.train import train

from .faultproxy import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def run(name: str, **params):
    params.setdefault("model_name", name)
    return train(experiment=f"exp-{name}", return_state=True, **params)


def champion(client: MlflowClient, name: str) -> str:
    return client.get_model_version_by_alias(name, "champion").version


def versions(client: MlflowClient, name: str) -> list[str]:
    return sorted(v.version for v in client.search_model_versions(f"name = '{name}'"))


@pytest.fixture
def name():
    return f"thermo-{uuid.uuid4().hex[:8]}"


def test_first_worse_better_and_tied_runs(mlflow_server, name):
    client = mlflow_server
    first = run(name, epochs=1000).result()["promotion"]
    assert first["decision"] == "first" and champion(client, name) == first["version"] == "1"
    tags = client.get_model_version(name, "1").tags
    assert tags["variant"] in ("manual", "autograd", "optimizer")
    assert {
        "val_mse",
        "val_rmse",
        "train_mse",
        "data_hash",
        "prefect.flow_run_id",
        "promotion.decision",
    } <= set(tags)
    assert tags["promotion.decision"] == "first" and tags["promotion.champion_mse"] == ""

    worse = run(name, epochs=50).result()["promotion"]
    assert worse["decision"] == "kept" and worse["version"] == "2"
    assert worse["challenger_mse"] > worse["champion_mse"]
    assert champion(client, name) == "1"
    tags = client.get_model_version(name, "2").tags
    assert float(tags["promotion.challenger_mse"]) == pytest.approx(worse["challenger_mse"])
    assert float(tags["promotion.champion_mse"]) == pytest.approx(worse["champion_mse"])
    assert tags["promotion.champion_version"] == "1"

    better = run(name, epochs=5000).result()["promotion"]
    assert better["decision"] == "promoted" and champion(client, name) == better["version"] == "3"
    assert better["challenger_mse"] < better["champion_mse"]

    tie = run(name, epochs=5000).result()["promotion"]  # the same configuration again: identical predictions
    assert tie["challenger_mse"] == tie["champion_mse"]
    assert tie["decision"] == "kept" and champion(client, name) == "3"


def test_diverged_run_and_quality_gate_register_nothing(mlflow_server, name):
    client = mlflow_server
    assert run(name, epochs=300).is_completed()
    assert versions(client, name) == ["1"]

    diverged = run(name, normalize="none", epochs=100)
    assert diverged.is_failed()
    assert versions(client, name) == ["1"] and champion(client, name) == "1"

    gated = run(name, epochs=300, max_val_rmse=0.01).result()["promotion"]
    assert gated["decision"] == "blocked" and gated["version"] is None
    assert "max_val_rmse=0.01" in gated["message"]
    assert versions(client, name) == ["1"] and champion(client, name) == "1"


def test_registration_can_be_skipped(mlflow_server, name):
    assert run(name, epochs=100, model_name=None).result()["promotion"] is None
    assert mlflow_server.search_registered_models(f"name = '{name}'") == []


def test_two_runs_finishing_together_leave_the_better_one_champion(mlflow_server, name, monkeypatch):
    # The tracking server takes 15 s to move an alias (a fault proxy in front of it delays the request), so
    # the second run reads the champion while the first run's move is on its way: without the registry lock
    # both would see "no champion", both would call themselves first, and the last to write would win.
    with FaultProxy(mlflow_server.tracking_uri) as proxy:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
        proxy.delay(15, path="/registered-models/alias", method="POST")
        results = {}

        def go(label, lr):
            results[label] = run(name, epochs=2000, lr=lr, variants=["manual"]).result()["promotion"]

        # each thread in a copy of this one's context: Prefect's settings (the session's server) live there
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(go, label, lr))
            for label, lr in (("good", 1e-2), ("poor", 1e-3))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert proxy.count("/registered-models/alias", "POST", forwarded=True) >= 1  # a delayed move happened
    good, poor = results["good"], results["poor"]
    assert good["challenger_mse"] < poor["challenger_mse"]
    assert sorted([good["decision"], poor["decision"]]) in (["first", "kept"], ["first", "promoted"])
    assert champion(mlflow_server, name) == good["version"]


def test_a_model_of_other_inputs_is_not_registered_under_the_same_name(mlflow_server, name, tmp_path):
    assert run(name, epochs=100).result()["promotion"]["decision"] == "first"
    data = tmp_path / "two.csv"
    data.write_text("a,b,y\n" + "".join(f"{i},{i % 3},{2 * i + 1}\n" for i in range(12)))
    other = run(name, data=str(data), features=["a", "b"], target="y", epochs=100).result()["promotion"]
    assert other["decision"] == "blocked" and "takes ['t_u'], this model takes ['a', 'b']" in other["message"]
    assert versions(mlflow_server, name) == ["1"] and champion(mlflow_server, name) == "1"


def test_a_network_challenges_a_line_champion_on_the_same_rows(mlflow_server, name):
    rows = {"val_indices": [7, 10], "variants": ["manual"]}
    line = run(name, epochs=1000, **rows).result()["promotion"]
    assert line["decision"] == "first"
    net = run(name, model="mlp", lr=1e-3, epochs=5000, **rows).result()["promotion"]
    # the line's champion is scored again, through the same pyfunc interface, on the same two rows
    assert net["champion_mse"] == pytest.approx(line["challenger_mse"], rel=1e-12)
    assert net["challenger_mse"] < net["champion_mse"]  # the book's network beats a 1000-epoch line there
    assert net["decision"] == "promoted" and champion(mlflow_server, name) == net["version"] == "2"
    tags = mlflow_server.get_model_version(name, "2").tags
    assert tags["promotion.champion_version"] == "1" and tags["promotion.rows"] == "2 validation"
    back = run(name, epochs=5000, **rows).result()["promotion"]  # and a line challenges the network
    assert back["champion_mse"] == pytest.approx(net["challenger_mse"], rel=1e-12)
    assert back["decision"] == ("promoted" if back["challenger_mse"] < back["champion_mse"] else "kept")
