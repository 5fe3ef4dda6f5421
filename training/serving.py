"""The saved model: weights as a tensor state dict and metadata as JSON; nothing is unpickled on load.

Layout of a model directory::

    weights.pt   the line: {"weight": (k,), "bias": ()}; the network: its nn.Sequential's state dict
                 {"0.weight": (h, k), "0.bias": (h,), "2.weight": (1, h), "2.bias": (1,)};
                 written by torch.save, read with weights_only=True
    model.json   format_version, target, variant, normalisation statistics; for the network (format 2)
                 also its architecture {"model": "mlp", "features": k, "hidden": h, "activation": ...}

The line keeps format 1, so models registered before the network existed load unchanged. ``_load_pyfunc``
makes this module an MLflow ``loader_module``: MLflow calls it with the model's data directory, and the
returned object's ``predict`` takes a DataFrame of raw inputs and returns the target in original units. This
module itself never imports MLflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from training import network
from training.architecture import Architecture
from training.normalize import Normalizer

WEIGHTS_FILE = "weights.pt"
META_FILE = "model.json"
LINE_FORMAT = 1  # {"weight", "bias"}, no architecture in model.json
NETWORK_FORMAT = 2  # the module's state dict, the architecture in model.json


@dataclass(frozen=True)
class Predictor:
    """A trained model with its normalisation: raw inputs in, target in original units out."""

    params: torch.Tensor  # (p,) flat, in the normalised space: the line's [w..., b], or the network's weights
    normalizer: Normalizer
    target: str
    variant: str = ""
    architecture: Architecture | None = None  # None: the line over the normalizer's features

    def __post_init__(self) -> None:
        if self.architecture is None:
            object.__setattr__(self, "architecture", Architecture.line(len(self.normalizer.features)))

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
        with torch.no_grad():
            t_p = self.architecture.predict(self.normalizer.apply(x), self.params.to(torch.float64))
        return pd.DataFrame({self.target: t_p.numpy()}, index=frame.index)


def save_model(path: str | Path, predictor: Predictor) -> Path:
    """Write ``predictor`` to the directory ``path`` (created if missing) and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arch = predictor.architecture
    params = predictor.params.detach().to(torch.float32).contiguous()
    meta = {
        "format_version": LINE_FORMAT if arch.is_linear else NETWORK_FORMAT,
        "target": predictor.target,
        "variant": predictor.variant,
        "normalizer": predictor.normalizer.to_dict(),
    }
    if arch.is_linear:
        weights = {"weight": params[:-1].clone(), "bias": params[-1].clone()}
    else:
        weights = network.state_dict(params, arch.features, arch.hidden)
        meta["architecture"] = arch.to_dict()
    torch.save(weights, path / WEIGHTS_FILE)
    (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_model(path: str | Path) -> Predictor:
    """Read a model directory written by ``save_model``; the weights are loaded with ``weights_only=True``.

    Raises:
        ValueError: for an unknown format, or weights that do not fit the architecture.
    """
    path = Path(path)
    meta = json.loads((path / META_FILE).read_text())
    version = meta.get("format_version")
    if version not in (LINE_FORMAT, NETWORK_FORMAT):
        raise ValueError(f"{path / META_FILE}: unsupported format_version {version!r}")
    normalizer = Normalizer.from_dict(meta["normalizer"])
    state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    if version == LINE_FORMAT:
        arch = Architecture.line(len(normalizer.features))
        params = torch.cat([state["weight"].reshape(-1), state["bias"].reshape(1)])
    else:
        arch = Architecture.from_dict(meta["architecture"])
        if arch.features != len(normalizer.features):
            raise ValueError(
                f"{path / META_FILE}: the architecture takes {arch.features} inputs, the normalisation "
                f"{len(normalizer.features)}"
            )
        try:
            params = network.from_state_dict(state, arch.features, arch.hidden)
        except ValueError as exc:
            raise ValueError(f"{path / WEIGHTS_FILE}: {exc}") from None
    return Predictor(
        params=params,
        normalizer=normalizer,
        target=meta["target"],
        variant=meta.get("variant", ""),
        architecture=arch,
    )


def _load_pyfunc(data_path: str) -> Predictor:
    """MLflow's ``loader_module`` entry point."""
    return load_model(data_path)
