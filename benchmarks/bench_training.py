"""Benchmark: the pipeline against ../shared/baseline/seed_loops.py, the book's plain loops, as ratios.

Loops: the library's three variants (recording a loss per epoch) against the baseline's three loops, 5000
epochs, in this process, interleaved. Then the whole flow (``python -m flows.run train``, a process each, as a
user runs it) against the baseline script (a process each), alternating, median of ``--pairs``:
1. the default flow against a running Prefect server and MLflow server (target <= 2.0x);
2. the default flow with embedded defaults, warm (target <= 3.5x), with its phases from the flow's log;
3. 50,000 epochs of all three variants against the servers, against ``seed_loops.py 50000`` (target <= 1.5x);
4. data size: the same flow on 10,000 and 1,000,000 rows (10 features, 50 epochs), wall time and peak memory
   (target: at most 2x the time, at most 1.5 GiB); ``--rows 10000 1000000 10000000`` adds ten million;
5. with ``--profile`` (``make bench`` passes it): py-spy's CPU samples of one run against the servers and one
   embedded run, by category (imports by package, training, recording, Prefect).

Usage: ``make bench``, or ``.venv/bin/python benchmarks/bench_training.py --pairs 3 --profile``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import re
import socket
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
        "trained": "Task run 'evaluate-optimizer' - Finished",
        "logged": "Task run 'log-optimizer' - Finished",
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
    if "registered" not in marks and "recorded" in marks:  # model_name=null: nothing registered
        marks["registered"] = marks["recorded"]
    spans = [
        ("prefect temporary server start", "server_start", "flow_begin"),
        ("load + split + MLflow parent run", "flow_begin", "tracking_started"),
        ("training, evaluation (3 variants; two recorded meanwhile)", "tracking_started", "trained"),
        ("recording the last variant after its training", "trained", "logged"),
        ("report, closing the parent run", "logged", "recorded"),
        ("model registry (register, compare, alias)", "recorded", "registered"),
        ("flow teardown", "registered", "flow_end"),
    ]
    return {name: marks[b] - marks[a] for name, a, b in spans if a in marks and b in marks}


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> tuple[float, int, str]:
    """Wall seconds, peak memory (KiB, /usr/bin/time) and output of one command; it must succeed."""
    out = subprocess.run(
        ["/usr/bin/time", "-f", "@@ %e %M", *cmd], cwd=cwd, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    seconds, peak = out.stderr.rsplit("@@ ", 1)[1].split()
    return float(seconds), int(peak), out.stdout + out.stderr


def flow_cmd(*params: str) -> list[str]:
    return [sys.executable, "-m", "flows.run", "train", "model_name=null", *params]


def versus(label: str, flow: list[str], env: dict[str, str], baseline: list[str], pairs: int) -> str:
    """Alternate the baseline script and the flow ``pairs`` times; print the medians and the ratio."""
    base, mine, log = [], [], ""
    for _ in range(pairs):
        base.append(run(baseline)[0])
        seconds, _, log = run(flow, env)
        mine.append(seconds)
    b, m = statistics.median(base), statistics.median(mine)
    print(f"{label}: flow {m:.2f} s, baseline {b:.2f} s: {m / b:.2f}x (median of {pairs} alternating pairs)")
    return log


def env_for(state: str, **extra: str) -> dict[str, str]:
    """A pipeline subprocess's environment: its own state directory, no server found by accident."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "PIPELINE_"))}
    return env | {"PIPELINE_STATE_DIR": state, "PIPELINE_DETECT_SERVERS": "false", **extra}


@contextlib.contextmanager
def local_servers(tmp: Path):
    """A real Prefect server and a real MLflow server on free loopback ports, stopped afterwards."""
    from ops import servers

    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    api, mlflow = f"http://127.0.0.1:{ports[0]}/api", f"http://127.0.0.1:{ports[1]}"
    prefect = servers.prefect_command("127.0.0.1", ports[0])
    tracking = servers.mlflow_command("127.0.0.1", ports[1], f"sqlite:///{tmp}/mlflow.db", tmp / "artifacts")
    with (
        servers.running(
            prefect, servers.prefect_env(tmp / "prefect", api), tmp / "prefect.log", f"{api}/health"
        ),
        servers.running(tracking, servers.mlflow_env(), tmp / "mlflow.log", f"{mlflow}/health"),
    ):
        yield api, mlflow


def table_file(path: Path, rows: int, features: int = 10, seed: int = 0) -> list[str]:
    """A CSV of ``rows`` rows: ``features`` normal columns and ``y``, a noisy linear function of them."""
    import numpy as np
    import pandas as pd

    g = np.random.default_rng(seed)
    x = g.normal(size=(rows, features))
    names = [f"x{i}" for i in range(features)]
    frame = pd.DataFrame(x, columns=names)
    frame["y"] = x @ g.normal(size=features) + 0.1 * g.normal(size=rows)
    frame.to_csv(path, index=False)
    return names


def data_size(tmp: Path, sizes: list[int]) -> None:
    """The same flow on tables of growing size: wall time and peak memory."""
    results = {}
    for rows in sizes:
        path = tmp / f"rows{rows}.csv"
        names = table_file(path, rows)
        state = tmp / f"state{rows}"
        params = [f"data={path}", f"features={','.join(names)}", "target=y", "normalize=zscore", "epochs=50"]
        run(flow_cmd("epochs=1"), env_for(str(state)))  # warm: the stores exist
        seconds, peak, _ = run(flow_cmd(*params), env_for(str(state)))
        results[rows] = (seconds, peak)
        size = path.stat().st_size / 1e6
        print(f"  {rows:>10,} rows ({size:6.1f} MB): {seconds:6.1f} s, peak {peak / 2**20:.2f} GiB")
    small, large = min(results), max(results)
    ratio = results[large][0] / results[small][0]
    print(f"  {large:,} rows take {ratio:.2f}x the time of {small:,} (target <= 2x)")


def _category(stack: str) -> str:
    """What one sampled stack (py-spy's raw format, outermost frame first) was doing."""
    if "uvicorn" in stack or "prefect/server/" in stack:
        return "Prefect's temporary server (its own process, embedded runs only)"
    if "_helper_init" in stack:
        return "recording helper: warm-up (MLflow's first model, matplotlib's first figure)"
    if "_find_and_load" in stack:
        if "make_optimizer" in stack:
            return "import torch._dynamo (the first torch.optim optimizer; the baseline pays it too)"
        for frame in stack.split(";"):
            if frame.startswith("<module> ("):
                top = frame[len("<module> (") :].split("/")[0].split(".")[0]
                if top not in ("flows", "tasks", "training", "ops", "<frozen importlib"):
                    return f"import {top}"
        return "import (other)"
    if "(training/loops.py" in stack:
        return "training loops"
    if "(tasks/recorder.py" in stack or "(tasks/record.py" in stack:
        kinds = (("savefig", "figures"), ("log_model (", "models"), ("_log_metric_batches", "curves"))
        for marker, kind in kinds:
            if marker in stack:
                return f"recording: {kind}"
        return "recording: other MLflow requests"
    if "prefect/" in stack:
        return "Prefect: engine, API client, logs, events"
    return "other"


def profile_top(env: dict[str, str], limit: int = 12) -> None:
    """Where one run spends its CPU: py-spy's samples of every thread of the run's processes (idle ones left
    out; the recording helper included), by category."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        print("  (py-spy is not installed: pip install py-spy)")
        return
    with tempfile.NamedTemporaryFile(suffix=".txt") as raw:
        subprocess.run(
            [str(spy), "record", "-s", "-r", "100", "-f", "raw", "-o", raw.name, "--", *flow_cmd()],
            cwd=REPO, env=env, capture_output=True, check=True,
        )  # fmt: skip
        counts: dict[str, int] = {}
        for line in Path(raw.name).read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            counts[_category(stack)] = counts.get(_category(stack), 0) + int(n)
    total = sum(counts.values())
    print(f"  {total / 100:5.2f} s of samples in all (100 a second; profiling slows the run)")
    for category, n in sorted(counts.items(), key=lambda kv: -kv[1])[:limit]:
        print(f"  {n / 100:5.2f} s {n / total * 100:5.1f}%  {category}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--skip-flow", action="store_true")
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000], help="data-size rows")
    parser.add_argument("--profile", action="store_true", help="py-spy's CPU profile of a run, by category")
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
    script = [sys.executable, str(BASELINE)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print("\n1. the default flow against a running Prefect server and MLflow server (target <= 2.0x)")
        with local_servers(tmp / "servers") as (api, mlflow):
            env = env_for(str(tmp / "s1"), PREFECT_API_URL=api, MLFLOW_TRACKING_URI=mlflow)
            run(flow_cmd(), env)  # warm: experiment and model exist
            versus("   default", flow_cmd(), env, script, args.pairs)
            if args.profile:
                print("   profile of one run against the servers (py-spy, CPU by category)")
                profile_top(env)
            print("\n3. 50,000 epochs of all three variants against the same servers (target <= 1.5x)")
            versus("   50,000 epochs", flow_cmd("epochs=50000"), env, [*script, "50000"], args.pairs)
        print("\n2. the default flow with embedded defaults, warm (target <= 3.5x)")
        env = env_for(str(tmp / "s2"))
        seconds, _, log = run(flow_cmd(), env)  # cold: creates the Prefect and MLflow databases
        print(f"   cold run first: {seconds:.1f} s")
        log = versus("   embedded, warm", flow_cmd(), env, script, args.pairs)
        for phase, span in flow_phases(log).items():
            print(f"     {phase:<72} {span:6.2f} s")
        if args.profile:
            print("   profile of one embedded run (py-spy, CPU by category)")
            profile_top(env)
        print(
            "\n4. data size: 10 features, z-scored, 50 epochs, embedded defaults (target <= 2x, <= 1.5 GiB)"
        )
        data_size(tmp, args.rows)


if __name__ == "__main__":
    main()
