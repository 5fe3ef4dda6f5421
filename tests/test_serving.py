"""The saved model: a round trip in original units, and no code is ever unpickled."""

from __future__ import annotations

import os
import pickle

import pandas as pd
import pytest
import torch

from training.normalize import Normalizer
from training.serving import LinearPredictor, load_model, save_model


def predictor():
    return LinearPredictor(
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
