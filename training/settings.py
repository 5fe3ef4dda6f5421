"""The settings of a training run: each one's name, type, default, bounds and description, in one place.

``TrainingConfig`` is what one training depends on; ``TrainSettings`` adds what a ``train`` flow run does
with it (which variants, where it is recorded, the registry). The flow's parameters (so the Prefect UI's form
and its validation), the command line's ``--help``, the check of prefect.yaml's deployments and the README's
table all come from these models (``flows/parameters.py``); a sweep's search space names the same settings.
The lists of choices are the library's own (``VARIANTS``, ``METHODS``, ``optimizer_classes()``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from training.architecture import MODELS, Architecture
from training.errors import ConfigError
from training.loops import VARIANTS, initial_params, make_optimizer, optimizer_classes
from training.network import ACTIVATIONS, seeded_init
from training.normalize import METHODS

VariantName = Literal[VARIANTS]
OptimizerName = Literal[tuple(optimizer_classes())]  # every torch.optim class: a drop-down in the UI


class Init(BaseModel):
    """Starting parameters: one weight for every feature (or a list, one per feature) and the bias."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float | list[float] = 1.0
    bias: float = 0.0


class Settings(BaseModel):
    """Base of the settings models: immutable, unknown names refused, errors as ``ConfigError``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def parse(cls, values: dict[str, Any]) -> Settings:
        """Build the settings from plain values.

        Raises:
            ConfigError: one line per problem, each naming the setting.
        """
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"]) or "settings"
                problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
            raise ConfigError("; ".join(problems)) from None


class TrainingConfig(Settings):
    """One training: the data, its split and normalisation, the model, the optimiser, epochs and start."""

    data: str = Field(
        "data/thermometer.csv",
        description="CSV (.csv, .txt, .tsv) or Parquet (.parquet, .pq) file; relative paths resolve "
        "against the working directory",
    )
    features: Annotated[list[str], Field(min_length=1)] = Field(
        ["t_u"], description="input columns, any number: the model's inputs (the line: y = x @ w + b)"
    )
    target: Annotated[str, Field(min_length=1)] = Field(
        "t_c", description="the column to predict (must not be among features)"
    )
    model: Literal[MODELS] = Field(
        "linear",
        description="linear: the line y = x @ w + b; mlp: chapter 6's network, "
        "Linear(features, hidden) -> activation -> Linear(hidden, 1)",
    )
    hidden: Annotated[int, Field(ge=1)] = Field(8, description="hidden units of the network (model=mlp)")
    activation: Literal[ACTIVATIONS] = Field(
        "tanh", description="the network's activation: tanh, relu or sigmoid (model=mlp)"
    )
    normalize: Literal[METHODS] = Field(
        "scale",
        description="none, scale (multiply by scale), zscore or minmax; fitted on the training split, "
        "saved with the model",
    )
    scale: Annotated[float, Field(gt=0)] = Field(
        0.1, description="the factor for normalize=scale (the book's t_un = 0.1 * t_u)"
    )
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.2, description="share of rows held out, in [0, 1); 0 trains on every row like the book's runs"
    )
    val_indices: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = Field(
        None,
        description="the validation rows by position (0 = first data row), overriding val_fraction; "
        "e.g. the book's chapter 6 split [7, 10]",
    )
    seed: int = Field(
        42, description="seeds the split and the network's initial weights (explicit torch.Generators)"
    )
    optimizer: OptimizerName = Field("SGD", description="the torch.optim class of the optimizer variant")
    optimizer_options: dict[str, Any] = Field(
        {}, description='extra arguments for it, e.g. {"momentum": 0.9}'
    )
    lr: Annotated[float, Field(gt=0)] = Field(
        1e-2, description="learning rate (the book trains its network with 1e-3)"
    )
    epochs: Annotated[int, Field(ge=1)] = Field(5000, description="updates per variant")
    init: Init = Field(
        Init(),
        description='the line\'s starting parameters {"weight": 1.0, "bias": 0.0}; weight may be a list '
        "(the network starts from nn.Linear's default init, seeded by seed)",
    )

    @field_validator("features", "val_indices")
    @classmethod
    def _distinct(cls, values: list | None) -> list | None:
        if values is not None and len(set(values)) != len(values):
            raise ValueError(f"lists a {'column' if isinstance(values[0], str) else 'row'} twice: {values}")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if self.target in self.features:
            raise ValueError(f"the target {self.target!r} is also listed in features {self.features}")
        if isinstance(self.init.weight, list) and len(self.init.weight) != len(self.features):
            raise ValueError(f"init has {len(self.init.weight)} weights for {len(self.features)} features")
        if self.model == "mlp" and self.init != Init():
            raise ValueError(
                "init sets the line's starting parameters; the network (model=mlp) starts from nn.Linear's "
                "default init seeded by seed: change seed instead"
            )
        # a ConfigError is a ValueError: pydantic reports it as this model's error, naming the problem
        make_optimizer(self.optimizer, [torch.zeros(1, requires_grad=True)], self.lr, self.optimizer_options)
        return self

    def architecture(self) -> Architecture:
        """The model these settings train."""
        if self.model == "linear":
            return Architecture.line(len(self.features))
        return Architecture.network(len(self.features), self.hidden, self.activation)

    def initial_params(self) -> torch.Tensor:
        """The flat starting parameters: the line's ``[w..., b]`` (k + 1,) from ``init``; the network's
        from ``nn.Linear``'s default init drawn from a generator seeded by ``seed``."""
        if self.model == "linear":
            return initial_params(len(self.features), self.init.weight, self.init.bias)
        return seeded_init(len(self.features), self.hidden, self.seed)

    def as_params(self) -> dict[str, Any]:
        """The settings that shape this training as a flat dict of simple values (for tracking and reports):
        the network's ``hidden`` and ``activation`` only for the network, ``init`` only for the line."""
        params = self.model_dump()
        init = params.pop("init")
        if self.model == "linear":
            del params["hidden"], params["activation"]
            return {**params, "init_weight": init["weight"], "init_bias": init["bias"]}
        return params


Experiment = Annotated[str, Field(min_length=1, description="MLflow experiment")]
RegisteredModel = Annotated[
    Annotated[str, Field(min_length=1)] | None,
    Field(description="registered model that the best model is registered under; null skips registration"),
]
MaxValRmse = Annotated[
    Annotated[float, Field(gt=0)] | None,
    Field(
        description="quality gate: a best model with a larger validation RMSE (training RMSE without a "
        "split) is not registered"
    ),
]


class TrainSettings(TrainingConfig):
    """A ``train`` flow run: one training configuration, the variants to train, where to record them."""

    variants: Annotated[list[VariantName], Field(min_length=1)] = Field(
        list(VARIANTS), description="any of manual, autograd, optimizer"
    )
    experiment: Experiment = "thermometer"
    model_name: RegisteredModel = "thermometer"
    max_val_rmse: MaxValRmse = None

    @field_validator("variants")
    @classmethod
    def _once_each(cls, variants: list[str]) -> list[str]:
        return list(dict.fromkeys(variants))


# the chapter's study: where does the learning rate diverge, with and without normalisation, SGD against Adam
LR_MAP = {
    "lr": {"low": 1e-5, "high": 1.0, "log": True, "num": 21},
    "normalize": ["none", "scale"],
    "optimizer": ["SGD", "Adam"],
}


class SweepSettings(TrainingConfig):
    """A ``sweep`` flow run: a base configuration, a search space over its settings, how to search and run."""

    variant: VariantName = Field(
        "optimizer", description="the variant every trial trains (or sweep it in space)"
    )
    space: dict[str, Any] = Field(
        LR_MAP,
        description='setting -> list of values, or {"low": x, "high": y, "log": true, "num": n} (num: a grid '
        'over the range); optimizer options as "optimizer_options.<name>"',
    )
    strategy: Literal["grid", "random", "optuna"] = Field(
        "grid", description="grid: every combination; random: trials points at random; optuna: TPE in batches"
    )
    trials: Annotated[int, Field(ge=1)] = Field(64, description="how many points random and optuna try")
    top_k: Annotated[int, Field(ge=0)] = Field(
        5, description="the best trials recorded as full MLflow child runs"
    )
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="where the batched training runs")
    threads: Annotated[int, Field(ge=1)] = Field(
        1,
        description="torch threads for training on a CPU; 1 is fastest for these small batches on a busy "
        "machine (benchmarks/bench_sweep.py), more can pay on an idle many-core one",
    )
    executor: Literal["local", "dask"] = Field(
        "local", description="local: in the flow's process; dask: chunks as Prefect tasks on a Dask cluster"
    )
    dask_address: str | None = Field(
        None,
        description="an existing Dask scheduler (tcp://host:8786); null starts a local cluster of processes",
    )
    chunk_size: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="most configurations trained at once (memory bound); null: 16384 on a CPU, 1M on a GPU",
    )
    study_name: str | None = Field(
        None, description="optuna: the study to create or resume (null: a new study named after the flow run)"
    )
    study_storage: str | None = Field(
        None, description="optuna: a database URL for studies (null: SQLite optuna.db in the state directory)"
    )
    experiment: Experiment = "thermometer-sweep"
    model_name: RegisteredModel = "thermometer"
    max_val_rmse: MaxValRmse = None

    def base(self) -> TrainingConfig:
        """The base configuration every trial starts from."""
        return TrainingConfig.parse(self.model_dump(include=set(TrainingConfig.model_fields)))


class PredictSettings(Settings):
    """A ``predict`` flow run: which file, which registered model version, where the predictions go."""

    data: str = Field(
        "data/readings.csv", description="CSV or Parquet of raw inputs (other columns are kept)"
    )
    model_name: Annotated[str, Field(min_length=1)] = Field("thermometer", description="registered model")
    alias: Annotated[str, Field(min_length=1)] = Field("champion", description="which version")
    output: str | None = Field(
        None,
        description="where to write (CSV or Parquet by suffix); default: next to data, .predictions suffix",
    )
    experiment: Annotated[str, Field(min_length=1)] = Field(
        "thermometer-predictions", description="MLflow experiment for the batch's record"
    )
