"""Runs that record at the same moment: the tracking store's insert races must not fail a run."""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager

import pandas as pd
import pytest

from tasks import tracking

from .conftest import DATA, postgres_database

pytestmark = pytest.mark.integration

THREADS = 8
ROUNDS = 6  # without the retry about half the rounds lose a race on this machine (SQLite and PostgreSQL)


@contextmanager
def store(kind: str, tmp_path):
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/mlflow.db"
    else:
        with postgres_database() as uri:
            yield uri


def log_at_once(runs: list[str], frame: pd.DataFrame, digest: str) -> list[BaseException]:
    """Log one data set to every run, each from its own thread, all released together; return the errors."""
    barrier = threading.Barrier(len(runs))
    errors: list[BaseException] = []

    def log(run_id: str) -> None:
        barrier.wait()
        try:
            tracking.log_dataset(run_id, frame, str(DATA), digest, "training")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_runs_logging_the_same_data_set_at_once_all_record_it(kind, tmp_path, monkeypatch):
    frame = pd.read_csv(DATA)
    with store(kind, tmp_path) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("PIPELINE_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
        experiment = tracking.ensure_experiment("concurrent")
        c = tracking.client()
        for _ in range(ROUNDS):
            digest = uuid.uuid4().hex  # a data set this experiment has not seen: every thread misses it
            runs = [c.create_run(experiment).info.run_id for _ in range(THREADS)]
            errors = log_at_once(runs, frame, digest)
            assert not errors, errors[0]
            digests = {i.dataset.digest for run_id in runs for i in c.get_run(run_id).inputs.dataset_inputs}
            assert digests == {digest[:20]}
            # each run records it exactly once
            for run_id in runs:
                assert len(c.get_run(run_id).inputs.dataset_inputs) == 1
            for run_id in runs:
                c.set_terminated(run_id)
