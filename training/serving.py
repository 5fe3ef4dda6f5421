"""The saved model: weights as a tensor state dict and metadata as JSON; nothing is unpickled on load.

Layout of a model directory::

    weights.pt   {"weight": (k,), "bias": ()} written by torch.save, read with weights_only=True
    model.json   features, target, normalisation statistics, variant

``_load_pyfunc`` makes this module an MLflow ``loader_module``: MLflow calls it with the model's data
directory, and the returned object's ``predict`` takes a DataFrame of raw inputs and returns the target
in original units. This module itself never imports MLflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from training.model import predict
from training.normalize import Normalizer

WEIGHTS_FILE = "weights.pt"
META_FILE = "model.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LinearPredictor:
    """A trained linear model with its normalisation: raw inputs in, target in original units out."""

    params: torch.Tensor  # (k + 1,) = [w..., b] in the normalised space
    normalizer: Normalizer
    target: str
    variant: str = ""

    @property
    def features(self) -> list[str]:
        """Input column names, in the order the model uses them."""
        return list(self.normalizer.features)

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Predict the target for each row of ``model_input`` (extra columns are ignored).

        Raises:
            ValueError: naming the missing columns.
        """
        frame = pd.DataFrame(model_input)
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise ValueError(
                f"input lacks column(s) {missing}; the model needs {self.features}, got {list(frame.columns)}"
            )
        x = torch.tensor(frame[self.features].to_numpy(dtype="float64"), dtype=torch.float64)  # (n, k)
        t_p = predict(self.normalizer.apply(x), self.params.to(torch.float64))
        return pd.DataFrame({self.target: t_p.numpy()}, index=frame.index)


def save_model(path: str | Path, predictor: LinearPredictor) -> Path:
    """Write ``predictor`` to the directory ``path`` (created if missing) and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    params = predictor.params.detach().to(torch.float32).contiguous()
    torch.save({"weight": params[:-1].clone(), "bias": params[-1].clone()}, path / WEIGHTS_FILE)
    meta = {
        "format_version": FORMAT_VERSION,
        "target": predictor.target,
        "variant": predictor.variant,
        "normalizer": predictor.normalizer.to_dict(),
    }
    (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_model(path: str | Path) -> LinearPredictor:
    """Read a model directory written by ``save_model``; the weights are loaded with ``weights_only=True``."""
    path = Path(path)
    meta = json.loads((path / META_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path / META_FILE}: unsupported format_version {meta.get('format_version')!r}")
    state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    params = torch.cat([state["weight"].reshape(-1), state["bias"].reshape(1)])
    return LinearPredictor(
        params=params,
        normalizer=Normalizer.from_dict(meta["normalizer"]),
        target=meta["target"],
        variant=meta.get("variant", ""),
    )


def _load_pyfunc(data_path: str) -> LinearPredictor:
    """MLflow's ``loader_module`` entry point."""
    return load_model(data_path)
