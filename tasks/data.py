"""Tasks that read and validate the data file, then split and normalise it (``training.data`` works)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import environment
from training.data import Prepared, file_digest, load_table
from training.errors import DataError
from training.runs import prepare_config
from training.settings import TrainingConfig


@dataclass(frozen=True)
class LoadedData:
    """A validated table with where it came from."""

    frame: pd.DataFrame  # features + target, float64
    source: str  # absolute path of the file
    digest: str  # SHA-256 of the file's bytes


class DataUnavailable(DataError):
    """The data file is not there (yet): a copy or a sync still under way may bring it before a later attempt,
    whereas a file that is there and bad stays bad."""


def retry_unless(*permanent: type[BaseException], transient: tuple[type[BaseException], ...] = ()):
    """A retry condition for I/O tasks: retry any failure but the ``permanent`` ones (bad data stays bad),
    unless it is also one of the ``transient`` kinds."""

    def condition(task, task_run, state) -> bool:
        error = state.result(raise_on_failure=False)
        return isinstance(error, transient) or not isinstance(error, permanent)

    return condition


@task(
    name="load-dataset",
    task_run_name="load-dataset",
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=retry_unless(DataError, transient=(DataUnavailable,)),
    cache_policy=NO_CACHE,
)
def load_dataset(
    path: str, features: list[str], target: str | None, keep_other_columns: bool = False
) -> LoadedData:
    """Read and validate the data file and record its content hash."""
    source = path if "://" in path else str(Path(path).expanduser().resolve())
    if "://" not in source and not Path(source).exists():
        raise DataUnavailable(source, "file not found")  # retried, unlike the library's other DataErrors
    frame = load_table(source, features, target, keep_other_columns, allow_urls=environment.allow_urls())
    digest = file_digest(source) if "://" not in source else "url:" + source
    get_run_logger().info("Loaded %d rows from %s (sha256 %s)", len(frame), source, digest[:12])
    return LoadedData(frame=frame, source=source, digest=digest)


def _rows(index: torch.Tensor, shown: int = 20) -> str:
    head = ", ".join(map(str, index[:shown].tolist()))
    return f"[{head}]" if len(index) <= shown else f"[{head}, ...]"


@task(name="split-normalize", task_run_name="split-normalize", cache_policy=NO_CACHE)
def prepare_data(loaded: LoadedData, config: TrainingConfig) -> Prepared:
    """Split rows with the seed, fit normalisation on the training rows only, apply it to both splits."""
    prepared = prepare_config(loaded.frame, config, loaded.source)
    get_run_logger().info(
        "Split %d rows: %d train %s, %d validation %s; normalisation %s",
        len(loaded.frame),
        len(prepared.train_index),
        _rows(prepared.train_index),
        len(prepared.val_index),
        _rows(prepared.val_index),
        config.normalize,
    )
    return prepared
