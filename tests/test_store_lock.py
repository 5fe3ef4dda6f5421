"""The embedded stores' creation lock (issue 10): flows started at once on a fresh state directory all record.

Without it, processes that open a fresh SQLite store together all run MLflow's schema migrations and some fail
(``sqlite3.OperationalError: duplicate column name: step``).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tasks import stores

from . import store_race

REPO = Path(__file__).resolve().parents[1]
WORKERS, ROUNDS = 8, 10


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:////abs/state/mlflow.db", "/abs/state/mlflow.db"),
        ("sqlite+pysqlite:////abs/mlflow.db?timeout=20", "/abs/mlflow.db"),
        ("sqlite:///relative/mlflow.db", "{cwd}/relative/mlflow.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("http://127.0.0.1:5000", None),
        ("postgresql://user@127.0.0.1:5432/mlflow", None),
        ("databricks", None),
    ],
)
def test_only_sqlite_files_have_a_database_path(uri, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = stores.sqlite_file(uri)
    assert found == (Path(expected.format(cwd=tmp_path.resolve())) if expected else None)


def test_servers_postgresql_and_memory_take_no_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for uri in ("http://127.0.0.1:5000", "postgresql://127.0.0.1/mlflow", "sqlite://"):
        with stores.creating(uri) as lock:
            assert lock is None
    assert list(tmp_path.iterdir()) == []


def _hold_lock(uri: str, seconds: float) -> subprocess.Popen:
    """Another process that takes the store's lock, says so, and keeps it for ``seconds``."""
    code = (
        "import sys, time\nfrom tasks import stores\n"
        f"with stores.creating({uri!r}):\n    print('held', flush=True)\n    time.sleep({seconds})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_the_lock_lives_next_to_the_database_and_shuts_out_other_processes(tmp_path):
    uri = f"sqlite:///{tmp_path}/fresh/state/mlflow.db"
    holder = _hold_lock(uri, 60)
    try:
        assert (tmp_path / "fresh" / "state" / "mlflow.db.lock").exists()  # its folder created first
        with (
            pytest.raises(stores.StoreLockTimeout, match=f"process {holder.pid} has held"),
            stores.creating(uri, timeout=0.3),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_holder_killed_with_sigkill_leaves_no_stale_lock(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    holder = _hold_lock(uri, 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with stores.creating(uri, timeout=5) as lock:  # at once, not after the holder's 60 s
        assert lock == tmp_path / "mlflow.db.lock"


@pytest.mark.integration
def test_a_store_at_the_current_schema_opens_while_another_process_holds_the_lock(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from tasks import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri)  # MLflow creates it, with nobody else about
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    holder = _hold_lock(uri, 300)
    try:
        opened: list[str] = []
        thread = threading.Thread(
            target=lambda: opened.append(tracking.client().get_experiment("0").name), daemon=True
        )
        thread.start()
        thread.join(60)  # waiting for the lock would take the holder's 300 s
        assert opened == ["Default"]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.integration
def test_eight_processes_opening_a_fresh_store_at_once_all_record(tmp_path):
    from mlflow import MlflowClient

    records = store_race.race(tmp_path, WORKERS, ROUNDS, store_race.clean_env())
    failed = [f"round {r['round']} worker {r['worker']}: {r['error']}" for r in records if r["error"]]
    assert failed == [], f"{len(failed)} of {len(records)} failed:\n" + "\n".join(failed)
    assert len(records) == WORKERS * ROUNDS
    for round_ in range(ROUNDS):  # each round's store holds every worker's run, closed
        state = store_race.state_dir(tmp_path, round_)
        client = MlflowClient(f"sqlite:///{state}/mlflow.db")
        experiment = client.get_experiment_by_name(store_race.EXPERIMENT)
        runs = client.search_runs([experiment.experiment_id])
        assert sorted(r.info.run_id for r in runs) == sorted(
            r["run_id"] for r in records if r["round"] == round_
        )
        assert {r.info.status for r in runs} == {"FINISHED"}
