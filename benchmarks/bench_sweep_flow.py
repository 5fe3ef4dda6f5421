"""Benchmark: the whole sweep flow against one train run, and a real Dask cluster against the local executor.

1. In one process, on the same Prefect API and MLflow store (embedded, in a temporary state directory): one
   single-variant ``train`` run (5000 epochs) and one ``sweep`` of 1024 configurations x 5000 epochs (lr on a
   256-point log grid x normalize none/scale x SGD/Adam, top 3 recorded as child runs). The ratio is the train
   run's seconds per configuration over the sweep's (target: at least 300x).
2. The same sweep through a real two-worker Dask cluster (``dask scheduler`` and two ``dask worker`` processes
   started here on loopback) against ``executor=local``, with the check that both give the same trials.

Usage: ``.venv/bin/python benchmarks/bench_sweep_flow.py [--configs 1024] [--epochs 5000] [--skip-dask]``.
Numbers are wall-clock seconds on whatever machine runs it; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ops import servers  # noqa: E402
from tasks import environment  # noqa: E402


def space(configs: int) -> dict:
    """``configs`` trials: a log grid of learning rates x two normalisations x two optimizers."""
    return {
        "lr": {"low": 1e-5, "high": 1.0, "log": True, "num": max(1, configs // 4)},
        "normalize": ["none", "scale"],
        "optimizer": ["SGD", "Adam"],
    }


def timed(fn, **params):
    start = time.perf_counter()
    state = fn(return_state=True, **params)
    seconds = time.perf_counter() - start
    if not state.is_completed():
        raise SystemExit(f"{fn.name} ended {state.name}: {state.message}")
    return state.result(), seconds


def main() -> int:
    """Run both comparisons and print their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=5000)
    parser.add_argument("--skip-dask", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(PIPELINE_STATE_DIR=tmp, PIPELINE_DETECT_SERVERS="false")
        for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_HOME", "PIPELINE_ARTIFACT_ROOT"):
            os.environ.pop(key, None)
        environment.apply()
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        from flows.sweep import sweep
        from flows.train import train

        common = {"epochs": args.epochs, "model_name": None}
        sweep_params = {**common, "space": space(args.configs), "top_k": 3}
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            timed(
                train, variants=["optimizer"], epochs=10, model_name=None
            )  # warm: the temporary API, imports
            _, train_s = timed(train, variants=["optimizer"], **common)
            local, sweep_s = timed(sweep, **sweep_params)
            n = local["trials"]
            print(f"train, one variant, {args.epochs} epochs: {train_s:.1f} s")
            print(f"sweep, {n} configurations x {args.epochs} epochs (top 3 recorded): {sweep_s:.1f} s")
            print(f"time per configuration: train {train_s:.2f} s, sweep {sweep_s / n * 1000:.1f} ms: "
                  f"{train_s / (sweep_s / n):.0f}x less (target >= 300x)")  # fmt: skip
            if not args.skip_dask:
                with servers.dask_cluster(os.environ, Path(tmp)) as address:
                    remote, dask_s = timed(sweep, **sweep_params, executor="dask", dask_address=address)
                same = remote["best"] == local["best"] and remote["diverged"] == local["diverged"]
                print(f"sweep on a two-worker Dask cluster: {dask_s:.1f} s ({sweep_s / dask_s:.2f}x the "
                      f"local executor's speed); same best trial and divergence count: {same}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
