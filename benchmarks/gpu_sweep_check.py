"""One-shot check of the sweep engine on a CUDA device: exactness, throughput, curves at scale.

Needs torch (and the repository's ``training`` package) only: no pytest, prefect or mlflow. Plain prints;
the exit status is 1 when an exactness check fails (or a section crashes), 0 otherwise.

(a) Exactness on the device: random configurations (seeded) of every batched optimizer and of manual and
    autograd, in float64 and float32, 1 and 3 features, with and without validation rows, each against
    its own ``training.loops.train`` run on the same device (rtol 1e-9 in float64, 1e-5 in float32; the
    divergence epoch must be equal). Also prints the largest difference between the engine on the device
    and the engine on the CPU. On CUDA, loops.train's optimizers take torch.optim's foreach path; the
    engine follows the single-tensor operation order, so differences of a few ulps are expected there.
(b) Throughput: 1,048,576 configurations x 5000 epochs without curves (SGD optimizer variant, manual, and
    Adam), in configuration-epochs per second, against the baseline's plain torch.optim.SGD loop
    (../shared/baseline/seed_loops.py's ``optim``, copied in benchmarks/bench_sweep.py) timed on this
    machine's CPU in the same run.
(c) 65536 configurations x 5000 epochs with every curve kept.
(d) ``sweep()`` with 100,000 Trial values on the device (the high-level path, chunked), 300 epochs.

Usage: ``python benchmarks/gpu_sweep_check.py`` on a GPU machine (about 2-4 minutes on an H100);
``python benchmarks/gpu_sweep_check.py --quick --device cpu`` checks the script anywhere in seconds.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_sweep import T_C, T_U, baseline_optim  # noqa: E402

from training.loops import initial_params, train  # noqa: E402
from training.sweep import Trial, sweep, train_batch  # noqa: E402

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}


def uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g, dtype=torch.float64).item()


def sometimes(g: torch.Generator, value: float) -> float:
    return value if torch.rand((), generator=g).item() < 0.5 else 0.0


def betas(g):
    return (uniform(g, 0.0, 0.99), uniform(g, 0.5, 0.9999))


# name: (variant, optimizer, adaptive, options of one row)
CASES = {
    "manual": ("manual", "SGD", False, lambda g: {}),
    "autograd": ("autograd", "SGD", False, lambda g: {}),
    "SGD": (
        "optimizer",
        "SGD",
        False,
        lambda g: {
            "momentum": sometimes(g, uniform(g, 0, 0.95)),
            "dampening": sometimes(g, uniform(g, 0, 0.5)),
            "weight_decay": sometimes(g, uniform(g, 0, 0.2)),
        },
    ),
    "SGD nesterov": (
        "optimizer",
        "SGD",
        False,
        lambda g: {"momentum": uniform(g, 0.05, 0.95), "nesterov": True, "weight_decay": uniform(g, 0, 0.1)},
    ),
    "Adam": ("optimizer", "Adam", True, lambda g: {"betas": betas(g), "weight_decay": sometimes(g, 0.1)}),
    "Adam amsgrad": ("optimizer", "Adam", True, lambda g: {"betas": betas(g), "amsgrad": True}),
    "AdamW": ("optimizer", "AdamW", True, lambda g: {"betas": betas(g), "weight_decay": uniform(g, 0, 0.2)}),
    "RMSprop": (
        "optimizer",
        "RMSprop",
        True,
        lambda g: {"alpha": uniform(g, 0.5, 0.999), "momentum": sometimes(g, uniform(g, 0, 0.9))},
    ),
    "RMSprop centered": (
        "optimizer",
        "RMSprop",
        True,
        lambda g: {"alpha": uniform(g, 0.5, 0.999), "centered": True, "weight_decay": sometimes(g, 0.1)},
    ),
    "Adagrad": (
        "optimizer",
        "Adagrad",
        True,
        lambda g: {"lr_decay": sometimes(g, 0.05), "initial_accumulator_value": sometimes(g, 0.5)},
    ),
}
BOOLEAN = ("nesterov", "amsgrad", "centered", "maximize", "decoupled_weight_decay")


def learning_rate(g: torch.Generator, adaptive: bool, dtype: torch.dtype) -> float:
    """Converging and diverging rates; adaptive ones either moderate or large enough to overflow."""
    if adaptive:
        if torch.rand((), generator=g).item() < 0.25:
            return 10 ** uniform(g, 20, 24) if dtype == torch.float32 else 10 ** uniform(g, 156, 160)
        return 10 ** uniform(g, -3, -0.5)
    return 10 ** uniform(g, -3.5, 0.5)


def dataset(name: str, dtype: torch.dtype, device: torch.device):
    if name == "book":  # 0.1 * t_u, the last two rows as validation
        x = 0.1 * torch.tensor(T_U, dtype=dtype).unsqueeze(1)
        t = torch.tensor(T_C, dtype=dtype)
        parts = x[:9], t[:9], x[9:], t[9:]
    else:  # 3 features, no validation
        g = torch.Generator().manual_seed(11)
        x = torch.randn(24, 3, generator=g, dtype=torch.float64) * torch.tensor(
            [1.0, 2.0, 0.5], dtype=torch.float64
        )
        t = x @ torch.tensor([1.5, -0.7, 3.0], dtype=torch.float64) + 2.0 + 0.5 * torch.randn(24, generator=g)
        parts = x.to(dtype), t.to(dtype), None, None
    return tuple(p.to(device) if p is not None else None for p in parts)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| / |b| over entries finite in both; inf if the non-finite entries differ."""
    a, b = a.double().cpu(), b.double().cpu()
    if not torch.equal(torch.isnan(a), torch.isnan(b)) or not torch.equal(torch.isinf(a), torch.isinf(b)):
        return math.inf
    if not torch.equal(a[torch.isinf(a)], b[torch.isinf(b)]):
        return math.inf
    finite = torch.isfinite(a) & torch.isfinite(b)
    if not finite.any():
        return 0.0
    diff = (a[finite] - b[finite]).abs()
    scale = b[finite].abs()
    return float(torch.where(diff == 0, torch.zeros_like(diff), diff / scale).max())


def exactness(device: torch.device, quick: bool) -> bool:
    configs, epochs = (2, 20) if quick else (4, 60)
    settings = [
        ("book", torch.float64),
        ("book", torch.float32),
        ("three", torch.float64),
        ("three", torch.float32),
    ]
    ok = True
    print(f"== (a) exactness on {device}: {configs} random configurations x {epochs} epochs per case")
    print(
        f"   {'case':18s} {'data':6s} {'dtype':8s} {'vs loops.train':>15s} {'bit-equal':>9s} "
        f"{'diverged':>8s} {'vs cpu':>10s} {'foreach':>10s}"
    )
    for data_name, dtype in settings:
        x, t, x_val, t_val = dataset(data_name, dtype, device)
        k = x.shape[1]
        for case, (variant, optimizer, adaptive, draw) in CASES.items():
            if adaptive and data_name == "three" and dtype == torch.float32:
                continue  # see tests/test_sweep_engine.py: last-bit differences amplified past 1e-5
            g = torch.Generator().manual_seed(len(case) * 1000 + k * 10 + (dtype == torch.float32))
            lrs = [learning_rate(g, adaptive, dtype) for _ in range(configs)]
            rows = [draw(g) for _ in range(configs)]
            options = {}
            for name in rows[0]:
                values = [r[name] for r in rows]
                if name in BOOLEAN:
                    options[name] = values[0]
                elif name == "betas":
                    options[name] = tuple(
                        torch.tensor([v[i] for v in values], dtype=torch.float64) for i in (0, 1)
                    )
                else:
                    options[name] = torch.tensor(values, dtype=torch.float64)
            init = torch.stack([initial_params(k, 1.0 + 0.1 * i, -0.5 * i) for i in range(configs)])
            kwargs = dict(lr=lrs, epochs=epochs, init=init, optimizer=optimizer, options=options)
            mine = train_batch(variant, x, t, x_val=x_val, y_val=t_val, **kwargs)
            on_cpu = train_batch(
                variant,
                x.cpu(),
                t.cpu(),
                x_val=None if x_val is None else x_val.cpu(),
                y_val=None if t_val is None else t_val.cpu(),
                **kwargs,
            )
            worst, equal, diverged, cpu_gap, foreach_gap = 0.0, 0, 0, 0.0, 0.0
            for i in range(configs):
                sequential = functools.partial(
                    train, variant, x, t, lr=lrs[i], epochs=epochs, init=init[i].to(device),
                    x_val=x_val, y_val=t_val, optimizer=optimizer,
                )  # fmt: skip
                # torch.optim's single-tensor code, the order the engine follows (on a CPU, torch's default);
                # on CUDA torch defaults to its multi-tensor (foreach) code: reported beside, for information
                single = variant == "optimizer" and device.type == "cuda"
                ref = sequential(optimizer_options={**rows[i], "foreach": False} if single else rows[i])
                if single:
                    default = sequential(optimizer_options=rows[i])
                    same_stop = default.epochs_run == ref.epochs_run
                    foreach_gap = max(
                        foreach_gap,
                        rel_error(torch.tensor(default.train_loss), torch.tensor(ref.train_loss))
                        if same_stop
                        else math.inf,
                    )
                run = ref.epochs_run
                diverged += not ref.converged
                if int(mine.epochs_run[i]) != run:
                    print(
                        f"   FAIL {case} row {i}: stopped after {int(mine.epochs_run[i])} epochs, "
                        f"loops.train after {run}"
                    )
                    ok = False
                    continue
                pairs = [
                    (mine.train_curve[i, :run], torch.tensor(ref.train_loss, dtype=dtype)),
                    (mine.params[i], ref.params),
                ]
                if ref.val_loss:
                    pairs.append((mine.val_curve[i, :run], torch.tensor(ref.val_loss, dtype=dtype)))
                errors = [rel_error(a, b) for a, b in pairs]
                worst = max(worst, *errors)
                equal += all(e == 0.0 for e in errors)
                cpu_gap = max(
                    cpu_gap,
                    rel_error(mine.train_curve[i, :run], on_cpu.train_curve[i, :run]),
                    rel_error(mine.params[i], on_cpu.params[i]),
                )
            passed = worst <= TOLERANCE[dtype]
            ok &= passed
            print(
                f"   {case:18s} {data_name:6s} {str(dtype)[6:]:8s} {worst:15.2e} {equal:>5d}/{configs:<3d} "
                f"{diverged:8d} {cpu_gap:10.2e} {foreach_gap:10.2e}{'' if passed else '   FAIL'}"
            )
    print(f"   exactness: {'PASS' if ok else 'FAIL'}")
    return ok


def baseline_rate(epochs: int) -> float:
    """The baseline loop's configuration-epochs/s on this CPU: the median of three runs."""
    baseline_optim(torch.tensor([1.0, 0.0]), 10)  # the first step imports torch._dynamo
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        baseline_optim(torch.tensor([1.0, 0.0]), epochs)
        rates.append(epochs / (time.perf_counter() - start))
    return sorted(rates)[1]


def timed(device: torch.device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def throughput(device: torch.device, quick: bool, base: float) -> bool:
    configs, epochs = (4096, 200) if quick else (1 << 20, 5000)
    x = (0.1 * torch.tensor(T_U)).unsqueeze(1).to(device)
    t = torch.tensor(T_C).to(device)
    lrs = torch.logspace(-4, math.log10(2e-2), configs, dtype=torch.float64)
    lrs[0] = 1e-2  # the book's configuration
    ok = True
    print(f"== (b) {configs} configurations x {epochs} epochs, no curves, on {device}")
    for variant, optimizer, scale in [
        ("optimizer", "SGD", 1.0),
        ("manual", "SGD", 1.0),
        ("optimizer", "Adam", 10.0),
    ]:
        result, seconds = timed(
            device,
            lambda v=variant, o=optimizer, s=scale: train_batch(
                v, x, t, lr=lrs * s, epochs=epochs, init=initial_params(1), optimizer=o, keep_curves=False
            ),
        )
        rate = configs * epochs / seconds
        memory = (
            f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
            if device.type == "cuda"
            else ""
        )
        label = f"{variant}/{optimizer}" if variant == "optimizer" else variant
        print(
            f"   {label:14s} {seconds:7.2f} s  {rate:10.4g} config-epochs/s  ratio {rate / base:10.0f}x "
            f"the baseline SGD loop on this CPU{memory}; diverged {int((result.diverged_at > 0).sum())}"
        )
        if optimizer == "SGD" and epochs == 5000:
            loss = float(result.final_loss[0])
            print(f"      book configuration (lr 1e-2): final loss {loss:.6f} (book 2.927648)")
            if abs(loss - 2.927648) > 1e-5:
                print("      FAIL: not the book's loss")
                ok = False
        del result
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return ok


def curves(device: torch.device, quick: bool, base: float) -> None:
    configs, epochs = (4096, 200) if quick else (65536, 5000)
    x = (0.1 * torch.tensor(T_U)).unsqueeze(1).to(device)
    t = torch.tensor(T_C).to(device)
    lrs = torch.logspace(-4, math.log10(2e-2), configs, dtype=torch.float64)
    need = configs * epochs * 4
    if device.type == "cuda" and need * 2 > torch.cuda.mem_get_info()[0]:
        print(f"== (c) skipped: {need / 2**30:.1f} GiB of curves does not fit")
        return
    result, seconds = timed(
        device,
        lambda: train_batch(
            "optimizer", x, t, lr=lrs, epochs=epochs, init=initial_params(1), keep_curves=True
        ),
    )
    rate = configs * epochs / seconds
    print(
        f"== (c) {configs} x {epochs} with curves kept ({need / 2**30:.2f} GiB) on {device}: "
        f"{seconds:.2f} s, "
        f"{rate:.4g} config-epochs/s, ratio {rate / base:.0f}x; curve shape {tuple(result.train_curve.shape)}"
    )


def high_level(device: torch.device, quick: bool) -> None:
    configs, epochs = (3000, 50) if quick else (100_000, 300)
    x = (0.1 * torch.tensor(T_U)).unsqueeze(1)
    t = torch.tensor(T_C)
    lrs = torch.logspace(-4, 0, configs, dtype=torch.float64).tolist()
    trials = [Trial("optimizer", lr, epochs, "SGD", {"momentum": 0.5}) for lr in lrs]
    result, seconds = timed(device, lambda: sweep(trials, x[:9], t[:9], x[9:], t[9:], device=device))
    best = result.best(1)[0]
    print(
        f"== (d) sweep() of {configs} Trials x {epochs} epochs on {device}, default chunks: "
        f"{seconds:.2f} s; "
        f"{int((result.diverged_at > 0).sum())} diverged; best lr {trials[best].lr:.4g} "
        f"val MSE {float(result.objective[best]):.4f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu", "auto"])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"cpu threads: {torch.get_num_threads()}")
    start = time.perf_counter()
    ok = True
    base = baseline_rate(500 if args.quick else 2000)
    print(f"baseline SGD loop on this CPU: {base:.4g} config-epochs/s ({1e3 / base:.3f} ms per epoch)")
    for name, section in [
        ("exactness", lambda: exactness(device, args.quick)),
        ("throughput", lambda: throughput(device, args.quick, base)),
        ("curves", lambda: curves(device, args.quick, base)),
        ("sweep", lambda: high_level(device, args.quick)),
    ]:
        try:
            if section() is False:
                ok = False
        except Exception:
            traceback.print_exc()
            print(f"   {name}: CRASHED")
            ok = False
        sys.stdout.flush()
    print(f"total {time.perf_counter() - start:.1f} s; {'ALL CHECKS PASSED' if ok else 'SOME CHECKS FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
