"""Benchmark: the pipeline against ../shared/baseline/seed_loops.py, the book's plain loops.

1. Loops: the library's three variants (recording a loss per epoch) against the baseline's three loops,
   5000 epochs on 0.1 * t_u, lr 1e-2, repeated; the ratio is library / baseline (below 1 is faster).
2. Whole flow: ``python -m flows.run train`` (default configuration, embedded Prefect and MLflow, fresh
   and then warm state) against one run of the baseline script; the overhead is split into phases read
   off the flow's own log timestamps.

Usage: ``make bench`` or ``.venv/bin/python benchmarks/bench_training.py [--repeats 5] [--skip-flow]``.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO.parent / "shared" / "baseline" / "seed_loops.py"
sys.path.insert(0, str(REPO))

from training.data import load_table, to_tensors  # noqa: E402
from training.loops import initial_params, train  # noqa: E402

EPOCHS = 5000


def baseline_functions() -> dict:
    """The baseline script's data and loop functions, loaded into this process without its top-level run."""
    tree = ast.parse(BASELINE.read_text())
    tree.body = [node for node in tree.body if not isinstance(node, ast.For)]  # drop the timing loop
    namespace: dict = {"__name__": "seed_loops"}
    # its optim loop calls float() on a tensor that requires grad; torch warns, harmlessly
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    argv, sys.argv = sys.argv, [str(BASELINE), str(EPOCHS)]
    try:
        exec(compile(tree, str(BASELINE), "exec"), namespace)
    finally:
        sys.argv = argv
    return namespace


def loop_seconds(repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per loop, baseline and library, in this process.

    Each repeat runs the baseline's loop and then the library's variant, one after the other, so that a
    change in the machine's speed during the benchmark (other load, frequency) affects both alike. The
    library's loops record the per-epoch curve; the baseline's record nothing.
    """
    ns = baseline_functions()
    baseline = {"manual": ns["manual"], "autograd": ns["autograd"], "optimizer": ns["optim"]}
    frame = load_table(REPO / "data" / "thermometer.csv", ["t_u"], "t_c")
    x, y = to_tensors(frame, ["t_u"], "t_c")
    x = 0.1 * x
    train(
        "optimizer", x, y, lr=1e-2, epochs=2, init=initial_params(1)
    )  # first SGD step imports torch._dynamo
    base: dict[str, list[float]] = {}
    lib: dict[str, list[float]] = {}
    for _ in range(repeats):
        for variant, loop in baseline.items():
            t0 = time.perf_counter()
            loop(torch.tensor([1.0, 0.0]))
            base.setdefault(variant, []).append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r = train(variant, x, y, lr=1e-2, epochs=EPOCHS, init=initial_params(1))
            lib.setdefault(variant, []).append(time.perf_counter() - t0)
            assert len(r.train_loss) == EPOCHS
    median = statistics.median
    return {k: median(v) for k, v in base.items()}, {k: median(v) for k, v in lib.items()}


def _stamp(line: str) -> float | None:
    match = re.match(r"^(\d\d:\d\d:\d\d\.\d{3}) \|", line)
    if not match:
        return None
    t = datetime.strptime(match.group(1), "%H:%M:%S.%f")
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


def flow_phases(log: str) -> dict[str, float]:
    """Seconds spent in each phase of one flow run, from its log timestamps."""
    marks: dict[str, float] = {}
    patterns = {
        "server_start": "Starting temporary server",
        "flow_begin": "Beginning flow run",
        "tracking_started": "Task run 'start-mlflow-run' - Finished",
        "trained": "Task run 'train-optimizer' - Finished",
        "evaluated": "Task run 'evaluate' - Finished",
        "recorded": "Task run 'finish-mlflow-run' - Finished",
        "registered": "Task run 'report-promotion' - Finished",
        "flow_end": "Flow run '.*' - Finished in state",
        "server_stop": "Stopping temporary server",
    }
    for line in log.splitlines():
        stamp = _stamp(line)
        if stamp is None:
            continue
        for key, pattern in patterns.items():
            if re.search(pattern, line):
                marks[key] = stamp
    spans = [
        ("prefect temporary server start", "server_start", "flow_begin"),
        ("load + split + MLflow parent run", "flow_begin", "tracking_started"),
        ("training (3 variants)", "tracking_started", "trained"),
        ("evaluation", "trained", "evaluated"),
        ("spool, MLflow child runs, plots, models, report", "evaluated", "recorded"),
        ("model registry (register, compare, alias)", "recorded", "registered"),
        ("flow teardown", "registered", "flow_end"),
    ]
    return {name: marks[b] - marks[a] for name, a, b in spans if a in marks and b in marks}


def run_flow(env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "flows.run", "train"], cwd=REPO, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"flow failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return seconds, out.stdout + out.stderr


def import_seconds(module: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-flow", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {EPOCHS} epochs, median of {args.repeats}\n")

    base, lib = loop_seconds(args.repeats)
    print(f"{'loop':<10} {'baseline s':>11} {'library s':>10} {'ratio':>6}  (library records each epoch)")
    for variant in ("manual", "autograd", "optimizer"):
        print(
            f"{variant:<10} {base[variant]:>11.3f} {lib[variant]:>10.3f} {lib[variant] / base[variant]:>6.2f}"
        )

    if args.skip_flow:
        return
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(BASELINE)], capture_output=True, check=True)
    script = time.perf_counter() - t0
    print(f"\nbaseline script, whole process: {script:.2f} s")
    print(
        f"import torch: {import_seconds('torch'):.2f} s; import flows.train (torch + prefect + mlflow): "
        f"{import_seconds('flows.train'):.2f} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        # the embedded defaults in a temporary state directory, whatever servers run on this machine
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env.update(PIPELINE_STATE_DIR=tmp, PIPELINE_DETECT_SERVERS="false")
        for label in ("cold (fresh Prefect and MLflow databases)", "warm (databases exist)"):
            seconds, log = run_flow(env)
            print(f"\nflow, {label}: {seconds:.2f} s = {seconds / script:.1f}x the baseline script")
            for phase, span in flow_phases(log).items():
                print(f"  {phase:<42} {span:6.2f} s")


if __name__ == "__main__":
    main()
