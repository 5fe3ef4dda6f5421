"""Processes that open one fresh MLflow store at the same moment (issue 10), for real.

Each worker is one process that plays every round: in round r the workers meet at a file barrier, then
each does what a training flow's ``start-mlflow-run`` does against the store of a fresh state directory
shared by that round (the embedded defaults of ``tasks/environment.py``: find or create the experiment,
create the parent run with its params, log the data set, close the run). The workers are forked from one
process that has imported MLflow but opened no store and runs no thread: each opens its own lock file and
database connections after the fork, as separate flow processes do, and MLflow's import (seconds of CPU) is
paid once, not once per worker.

    .venv/bin/python -m tests.store_race [WORKERS] [ROUNDS]    # by hand: prints each failure and the count
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "thermometer.csv"
EXPERIMENT = "race"
BARRIER_POLL = 0.005  # seconds: the workers leave the barrier within about this of each other


def state_dir(base: Path, round_: int) -> Path:
    """The fresh state directory of one round (it does not exist before the round starts)."""
    return base / f"state-{round_}"


def _barrier(folder: Path, name: str, index: int, parties: int, timeout: float = 300) -> None:
    """Wait until ``parties`` processes have reached the barrier ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}-{index}").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.glob(f"{name}-*"))) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {name}: not every worker arrived in {timeout} s")
        time.sleep(BARRIER_POLL)


def worker(base: Path, index: int, workers: int, rounds: int) -> None:
    """Play every round; append one JSON line per round to ``worker-<index>.jsonl``."""
    import pandas as pd

    from tasks import environment, tracking  # imported before the fork

    frame = pd.read_csv(DATA)
    digest = hashlib.sha256(DATA.read_bytes()).hexdigest()
    results = base / f"worker-{index}.jsonl"
    for round_ in range(rounds):
        os.environ.update(environment.embedded({"PIPELINE_STATE_DIR": str(state_dir(base, round_))}))
        _barrier(base / "barrier", f"round{round_}", index, workers)
        record: dict[str, object] = {"round": round_, "worker": index, "run_id": None, "error": None}
        started = time.monotonic()
        try:
            experiment_id = tracking.ensure_experiment(EXPERIMENT)
            run_id = tracking.start_run(
                experiment_id, f"worker-{index}", {"worker": str(index)}, {"round": round_}
            )
            tracking.log_dataset(run_id, frame, str(DATA), digest, "training")
            tracking.end_run(run_id, tracking.FINISHED)
            record["run_id"] = run_id
        except Exception as exc:
            record["error"] = "".join(traceback.format_exception_only(exc)).strip().splitlines()[0]
        record["seconds"] = round(time.monotonic() - started, 3)
        with results.open("a") as f:
            f.write(json.dumps(record) + "\n")


def fork_workers(base: Path, workers: int, rounds: int) -> int:
    """Import what the workers use, fork ``workers`` of them, wait; return how many exited with an error."""
    import pandas  # noqa: F401

    from tasks import tracking  # noqa: F401

    if threading.active_count() != 1:  # a forked child would hold a copy of a thread's state, not the thread
        raise RuntimeError(f"cannot fork safely: threads {threading.enumerate()}")
    pids = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # the child: play, then leave without running the parent's clean-up
            code = 0
            try:
                worker(base, index, workers, rounds)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    return sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in pids)


def race(base: Path, workers: int, rounds: int, env: Mapping[str, str], timeout: float = 600) -> list[dict]:
    """Run ``workers`` processes that race ``rounds`` times under ``base``; return one record per worker per
    round (``round``, ``worker``, ``run_id``, ``error``: None or the exception's first line, ``seconds``)."""
    base.mkdir(parents=True, exist_ok=True)
    log = base / "race.log"
    cmd = [sys.executable, "-m", "tests.store_race", "--fork", str(base), str(workers), str(rounds)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the workers too: they share its session
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"the race exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    records = []
    for i in range(workers):
        records += [json.loads(line) for line in (base / f"worker-{i}.jsonl").read_text().splitlines()]
    return records


def clean_env(**overrides: str) -> dict[str, str]:
    """This environment without Prefect, MLflow or pipeline settings: the workers derive their store alone."""
    dropped = ("PREFECT_", "MLFLOW_", "PIPELINE_")
    return {k: v for k, v in os.environ.items() if not k.startswith(dropped)} | {
        "PIPELINE_DETECT_SERVERS": "false",
        **overrides,
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["--fork"]:
        return 1 if fork_workers(Path(argv[1]), int(argv[2]), int(argv[3])) else 0
    workers = int(argv[0]) if argv else 8
    rounds = int(argv[1]) if len(argv) > 1 else 10
    base = Path(tempfile.mkdtemp(prefix="store-race-"))
    started = time.monotonic()
    records = race(base, workers, rounds, clean_env())
    failed = [r for r in records if r["error"]]
    for r in failed:
        print(f"round {r['round']} worker {r['worker']}: {r['error']}")
    rounds_failed = len({r["round"] for r in failed})
    slowest = max(r["seconds"] for r in records)
    print(
        f"{len(failed)} of {len(records)} first uses failed ({rounds_failed} of {rounds} rounds), "
        f"{workers} processes, {time.monotonic() - started:.0f} s wall, slowest first use {slowest:.1f} s; "
        f"files in {base}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
