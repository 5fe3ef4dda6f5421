"""Benchmark: the sweep engine against the baseline's plain ``torch.optim.SGD`` loop, in config-epochs/s.

1. 4096 configurations x 5000 epochs of the ``optimizer`` variant with SGD, every curve kept, against
   ``optim`` of ``../shared/baseline/seed_loops.py`` (copied below: one configuration, 5000 epochs), timed
   in this process, alternating baseline and engine runs; at torch 1 and 2 threads. Manual and Adam for
   information.
2. 100,000 configurations x 5000 epochs through ``training.sweep.sweep`` without curves, in a child
   process: time and peak resident memory (``ru_maxrss`` of the child).

The ratio is (engine configuration-epochs/s) / (baseline configuration-epochs/s); the target is >= 1000x on
a shared 2-core machine. Timings on a shared machine vary by tens of percent between runs.

Usage: ``.venv/bin/python benchmarks/bench_sweep.py [--quick] [--device cpu|cuda|auto] [--threads 1 2]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.loops import initial_params  # noqa: E402
from training.sweep import Trial, sweep, train_batch  # noqa: E402

# the book's thermometer data, as in seed_loops.py
T_C = [0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0]
T_U = [35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4]


# ---- a faithful copy of the baseline's SGD loop (../shared/baseline/seed_loops.py, `optim`): the peer we
# ---- compare with; copied because ../shared is not part of the repository on CI
def _model(t_u, w, b):
    return w * t_u + b


def _loss_fn(t_p, t_c):
    return ((t_p - t_c) ** 2).mean()


def baseline_optim(params: torch.Tensor, epochs: int, lr: float = 1e-2) -> tuple[torch.Tensor, float]:
    t_c = torch.tensor(T_C)
    t_un = 0.1 * torch.tensor(T_U)
    params = params.clone().requires_grad_(True)
    opt = torch.optim.SGD([params], lr=lr)
    for _ in range(epochs):
        loss = _loss_fn(_model(t_un, *params), t_c)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return params.detach(), float(loss)


# ---- end of the copy


def baseline_rate(epochs: int) -> float:
    """Configuration-epochs per second of the baseline loop (one configuration)."""
    start = time.perf_counter()
    _, loss = baseline_optim(torch.tensor([1.0, 0.0]), epochs)
    elapsed = time.perf_counter() - start
    if epochs == 5000:
        assert abs(loss - 2.927648) < 1e-5, loss
    return epochs / elapsed


def data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (0.1 * torch.tensor(T_U)).unsqueeze(1).to(device), torch.tensor(T_C).to(device)


def learning_rates(n: int) -> torch.Tensor:
    """n rates from 1e-4 to 2e-2, log-spaced, the first one the book's 1e-2: every one converges on
    0.1 * t_u (no row drops out, which would make the batch cheaper)."""
    lrs = torch.logspace(-4, float(torch.log10(torch.tensor(2e-2))), n, dtype=torch.float64)
    lrs[0] = 1e-2
    return lrs


def engine_rate(variant: str, optimizer: str, configs: int, epochs: int, device: torch.device, curves: bool):
    x, y = data(device)
    lr = learning_rates(configs)
    if optimizer == "Adam":
        lr = lr * 10  # Adam's steps are about lr: 1e-3 to 0.2 on this data
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = train_batch(
        variant,
        x,
        y,
        lr=lr,
        epochs=epochs,
        init=initial_params(1),
        optimizer=optimizer,
        keep_curves=curves,
        device=device,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert int((result.diverged_at > 0).sum()) == 0
    return configs * epochs / elapsed, result


def compare(args: argparse.Namespace, device: torch.device) -> None:
    configs, epochs = (512, 500) if args.quick else (args.configs, args.epochs)
    print(
        f"== {configs} configurations x {epochs} epochs, curves kept, on {device}; baseline SGD loop on cpu"
    )
    for threads in args.threads:
        torch.set_num_threads(threads)
        baseline_optim(torch.tensor([1.0, 0.0]), 10)  # first step imports torch._dynamo
        for variant, optimizer in [("optimizer", "SGD"), ("manual", "SGD"), ("optimizer", "Adam")]:
            base, mine = [], []
            for _ in range(args.repeats):  # alternate, so that a change in machine load hits both
                base.append(baseline_rate(epochs))
                rate, result = engine_rate(variant, optimizer, configs, epochs, device, curves=True)
                mine.append(rate)
            b, m = statistics.median(base), statistics.median(mine)
            label = f"{variant}/{optimizer}" if variant == "optimizer" else variant
            print(
                f"threads {threads}  {label:14s} engine {m:12.4g} config-epochs/s   baseline SGD loop "
                f"{b:8.4g}/s   ratio {m / b:8.0f}x   (runs: {', '.join(f'{r / b:.0f}x' for r in mine)})"
            )
            if variant != "optimizer" or optimizer == "SGD":
                print(f"    the book's configuration (lr 1e-2): loss {float(result.final_loss[0]):.6f}")


def big_child(configs: int, epochs: int, device: str, threads: int) -> None:
    """Run in a child process: a sweep of ``configs`` trials without curves; prints JSON."""
    torch.set_num_threads(threads)
    x, y = data(torch.device("cpu"))
    lrs = learning_rates(configs).tolist()
    start = time.perf_counter()
    trials = [Trial("optimizer", lr, epochs, "SGD") for lr in lrs]
    result = sweep(trials, x, y, keep_curves=False, device=device)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        peak_gpu = torch.cuda.max_memory_allocated()
    else:
        peak_gpu = 0
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "peak_rss_bytes": peak,
                "peak_gpu_bytes": peak_gpu,
                "diverged": int((result.diverged_at > 0).sum()),
                "best_objective": float(result.objective.min()),
            }
        )
    )


def big(args: argparse.Namespace) -> None:
    configs, epochs = (10_000, 500) if args.quick else (args.big_configs, args.epochs)
    threads = min(args.threads)
    command = [
        sys.executable,
        __file__,
        "--child",
        f"{configs},{epochs},{args.device},{threads}",
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    rate = configs * epochs / report["seconds"]
    print(
        f"== {configs} configurations x {epochs} epochs, no curves, sweep() on {args.device}, "
        f"{threads} thread(s), default chunks: {report['seconds']:.1f} s, {rate:.4g} config-epochs/s, "
        f"peak RSS {report['peak_rss_bytes'] / 2**20:.0f} MiB"
        + (
            f", peak GPU memory {report['peak_gpu_bytes'] / 2**20:.0f} MiB"
            if report["peak_gpu_bytes"]
            else ""
        )
        + f"; diverged {report['diverged']}, best objective {report['best_objective']:.6f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--configs", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=5000)
    parser.add_argument("--big-configs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    if args.child:
        configs, epochs, device, threads = args.child.split(",")
        big_child(int(configs), int(epochs), device, int(threads))
        return
    device = torch.device(args.device)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    compare(args, device)
    if not args.skip_big:
        big(args)


if __name__ == "__main__":
    main()
