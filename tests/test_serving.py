"""The saved model, the line's and the network's: a round trip in original units, and no code is ever
unpickled."""

from __future__ import annotations

import json
import os
import pickle

import pandas as pd
import pytest
import torch

from training import network
from training.architecture import Architecture
from training.normalize import Normalizer
from training.serving import Predictor, load_model, save_model


def predictor():
    return Predictor(
        torch.tensor([5.3671, -17.3012]), Normalizer("scale", ("t_u",), (0.0,), (0.1,)), "t_c", "manual"
    )


def test_round_trip_predicts_celsius_from_raw_readings(tmp_path):
    loaded = load_model(save_model(tmp_path / "m", predictor()))
    out = loaded.predict(pd.DataFrame({"t_u": [35.7, 81.9], "other": [0, 0]}))
    assert list(out.columns) == ["t_c"]
    assert out["t_c"].tolist() == pytest.approx(
        [0.53671 * 35.7 - 17.3012, 0.53671 * 81.9 - 17.3012], abs=1e-4
    )
    assert loaded.features == ["t_u"] and loaded.variant == "manual"


def test_missing_input_column_is_named(tmp_path):
    loaded = load_model(save_model(tmp_path / "m", predictor()))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['t_u'\]"):
        loaded.predict(pd.DataFrame({"temp": [1.0]}))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_tampered_weights_file_with_a_malicious_pickle_is_refused(tmp_path):
    path = save_model(tmp_path / "m", predictor())
    marker = tmp_path / "pwned"
    torch.save(
        {"weight": torch.zeros(1), "bias": _Exploit()},
        path / "weights.pt",
        _use_new_zipfile_serialization=True,
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            load_model(path)
    finally:
        os.chdir(cwd)
    assert not marker.exists()


def network_predictor(activation="tanh"):
    arch = Architecture.network(1, 8, activation)
    normalizer = Normalizer("scale", ("t_u",), (0.0,), (0.1,))
    return Predictor(network.seeded_init(1, 8, 0), normalizer, "t_c", "optimizer", arch)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_a_network_round_trips_as_json_and_a_state_dict(tmp_path, activation):
    saved = network_predictor(activation)
    path = save_model(tmp_path / "m", saved)
    meta = json.loads((path / "model.json").read_text())
    assert meta["format_version"] == 2
    assert meta["architecture"] == {"model": "mlp", "features": 1, "hidden": 8, "activation": activation}
    state = torch.load(path / "weights.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == network.shapes(1, 8)
    loaded = load_model(path)
    assert loaded.architecture == saved.architecture and loaded.variant == "optimizer"
    t_u = [20.0, 35.7, 81.9, 90.0]
    out = loaded.predict(pd.DataFrame({"t_u": t_u}))
    # the book's way: the nn.Sequential on 0.1 * t_u
    book = network.module(1, 8, activation, saved.params.double())
    expected = book(0.1 * torch.tensor(t_u, dtype=torch.float64).unsqueeze(1)).squeeze(1)
    assert out["t_c"].tolist() == pytest.approx(expected.tolist(), abs=1e-12)


def test_the_line_keeps_its_format(tmp_path):
    path = save_model(tmp_path / "m", predictor())
    meta = json.loads((path / "model.json").read_text())
    assert meta["format_version"] == 1 and "architecture" not in meta
    assert set(torch.load(path / "weights.pt", weights_only=True)) == {"weight", "bias"}
    assert load_model(path).architecture == Architecture.line(1)


def test_a_tampered_network_weights_file_with_a_malicious_pickle_is_refused(tmp_path):
    path = save_model(tmp_path / "m", network_predictor())
    marker = tmp_path / "pwned"
    state = dict(torch.load(path / "weights.pt", weights_only=True))
    state["2.bias"] = _Exploit()
    torch.save(state, path / "weights.pt")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            load_model(path)
    finally:
        os.chdir(cwd)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda s: s.pop("2.bias"), r"the weights hold \['0.bias', '0.weight', '2.weight'\]"),
        (
            lambda s: s.update({"0.weight": torch.zeros(8, 2)}),
            r"'0.weight' is \(8, 2\); expected .* \(8, 1\)",
        ),
        (lambda s: s.update({"0.bias": [0.0] * 8}), r"'0.bias' is list; expected a tensor"),
    ],
)
def test_network_weights_that_do_not_fit_the_architecture_are_refused(tmp_path, change, pattern):
    path = save_model(tmp_path / "m", network_predictor())
    state = dict(torch.load(path / "weights.pt", weights_only=True))
    change(state)
    torch.save(state, path / "weights.pt")
    with pytest.raises(ValueError, match=pattern):
        load_model(path)
