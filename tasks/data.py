"""Tasks that read, validate, split and normalise the data."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from training.data import file_digest, load_table, split_indices, to_tensors
from training.errors import DataError
from training.normalize import Normalizer, fit_normalizer


@dataclass(frozen=True)
class LoadedData:
    """A validated table with where it came from."""

    frame: pd.DataFrame  # features + target, float64
    source: str  # absolute path of the file
    digest: str  # SHA-256 of the file's bytes


@dataclass(frozen=True)
class PreparedData:
    """Train/validation split, normalised inputs (float32) and the rows in original units."""

    x_train: torch.Tensor  # (n_train, k), normalised
    y_train: torch.Tensor  # (n_train,)
    x_val: torch.Tensor  # (n_val, k), normalised; n_val may be 0
    y_val: torch.Tensor  # (n_val,)
    train_frame: pd.DataFrame  # original units, for plots and examples
    val_frame: pd.DataFrame
    normalizer: Normalizer

    @property
    def has_val(self) -> bool:
        """True when there is a validation split."""
        return len(self.y_val) > 0


def retry_unless(*permanent: type[BaseException]):
    """A retry condition for I/O tasks: retry any failure but the ``permanent`` ones (bad data stays bad)."""

    def condition(task, task_run, state) -> bool:
        return not isinstance(state.result(raise_on_failure=False), permanent)

    return condition


@task(
    name="load-dataset",
    task_run_name="load-dataset",
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=retry_unless(DataError),
    cache_policy=NO_CACHE,
)
def load_dataset(
    path: str, features: list[str], target: str | None, keep_other_columns: bool = False
) -> LoadedData:
    """Read and validate the data file and record its content hash."""
    logger = get_run_logger()
    allow_urls = os.environ.get("PIPELINE_ALLOW_URLS", "false").lower() in ("true", "1", "yes")
    source = path if "://" in path else str(Path(path).expanduser().resolve())
    frame = load_table(source, features, target, keep_other_columns, allow_urls=allow_urls)
    digest = file_digest(source) if "://" not in source else "url:" + source
    logger.info("Loaded %d rows from %s (sha256 %s)", len(frame), source, digest[:12])
    return LoadedData(frame=frame, source=source, digest=digest)


@task(name="split-normalize", task_run_name="split-normalize", cache_policy=NO_CACHE)
def prepare_data(
    loaded: LoadedData,
    features: list[str],
    target: str,
    normalize: str,
    scale: float,
    val_fraction: float,
    seed: int,
) -> PreparedData:
    """Split rows with the seed, fit normalisation on the training rows only, apply it to both splits."""
    logger = get_run_logger()
    train_idx, val_idx = split_indices(len(loaded.frame), val_fraction, seed, source=loaded.source)
    train_frame = loaded.frame.iloc[train_idx.tolist()].reset_index(drop=True)
    val_frame = loaded.frame.iloc[val_idx.tolist()].reset_index(drop=True)
    x_train, y_train = to_tensors(train_frame, features, target)
    x_val, y_val = to_tensors(val_frame, features, target)
    normalizer = fit_normalizer(x_train, features, normalize, scale, source=loaded.source)
    logger.info(
        "Split %d rows: %d train %s, %d validation %s; normalisation %s",
        len(loaded.frame),
        len(train_idx),
        train_idx.tolist(),
        len(val_idx),
        val_idx.tolist(),
        normalize,
    )
    return PreparedData(
        x_train=normalizer.apply(x_train),
        y_train=y_train,
        x_val=normalizer.apply(x_val),
        y_val=y_val,
        train_frame=train_frame,
        val_frame=val_frame,
        normalizer=normalizer,
    )
