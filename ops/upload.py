"""Upload results that MLflow could not take during a run (``make upload``): each becomes a complete run.

A training run whose tracking server went away for good fails with a message naming the folder where its
weights and curves wait (``<state dir>/spool/<parent run id>/``). Once a server is back (the same one, or
another: set ``MLFLOW_TRACKING_URI``), this records every waiting variant as a child run with its curves,
metrics, plots and model, closes the parent run (created again if the server never had it) with every
variant's curve in its overlay, and deletes the local copy. Child runs left half-written by the failed
attempt are marked KILLED. The variants of a run whose process was killed (its parent closed KILLED by a later
run) are recorded the same way, and that parent stays KILLED, its note saying what was added. Results whose
flow-run process still runs are left alone: that run may be recording them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tasks import environment, spool, tracking
from tasks.recorder import close_parent, record_variant


def upload(parent_folder: Path) -> str:
    """Record one spooled parent run and its waiting variants, close it; return the parent run id."""
    parent = json.loads((parent_folder / "parent.json").read_text())
    experiment_id = tracking.ensure_experiment(parent["experiment"])
    parent_run_id = parent["run_id"]
    state = tracking.run_state(parent_run_id)
    if state is None:
        tags = parent["tags"]
        parent_run_id = tracking.start_run(
            experiment_id, tags.get("prefect.flow_run_name") or "upload", tags, parent["params"]
        )
    waiting = spool.variants(parent_folder)
    for folder in waiting:
        record_variant(spool.read(folder), experiment_id, parent_run_id, str(folder))
        spool.remove(folder)
    recorded = f"recorded from the local spool ({parent_folder}): {', '.join(f.name for f in waiting)}"
    if state and state[0] == tracking.KILLED:
        # the run's process was killed and a later run closed its parent KILLED: its flow never finished (no
        # model registered), so the parent stays KILLED and its note says what was added since
        tracking.set_tags(parent_run_id, {"mlflow.note.content": f"{state[1]}\n\nLater {recorded}."})
    else:
        # the overlay and headline cover every variant, those recorded before MLflow went away included
        note = f"The tracking server was unreachable in the run; {recorded}."
        close_parent(parent_run_id, parent["curves"], parent["metrics"], parent["epochs"], note)
    spool.cleanup(parent["run_id"])
    return parent_run_id


def main(argv: list[str] | None = None) -> int:
    """Command line: upload every waiting run, or the ones named."""
    parser = argparse.ArgumentParser(prog="python -m ops.upload", description=__doc__.splitlines()[0])
    parser.add_argument("parent_run_ids", nargs="*", help="spool folders to upload (default: all)")
    args = parser.parse_args(argv)
    environment.apply()  # the same stores and servers as make run
    folders = [f for run_id in args.parent_run_ids or [None] for f in spool.pending(run_id)]
    if not folders:
        print(f"nothing waits in {spool.spool_root()}")
        return 0
    tracking.check_reachable()
    for folder in folders:
        if pid := spool.writer_running(folder):
            print(f"skipped {folder}: process {pid}, whose flow run spooled it, runs and may be recording it")
            continue
        run_id = upload(folder)
        print(f"uploaded {folder} as MLflow run {run_id} ({tracking.tracking_uri()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
