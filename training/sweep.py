"""Sweep engine: thousands of linear-model configurations trained at once, as one batched tensor program.

Every configuration gets what ``training.loops.train`` would give it on its own (same curves, same final
parameters, same stop), but B configurations of one variant share each tensor operation: the parameters
are one ``(B, k + 1)`` tensor (a row is ``[w_1..w_k, b]``, the layout of ``training.loops``), and every
per-configuration setting (learning rate, momentum, betas, ...) is a ``(B,)`` column.

Three levels, smallest first:

``train_batch(variant, x, y, lr=..., epochs=..., init=..., optimizer=..., options=...) -> BatchResult``
    B configurations of one variant and one optimizer on the same data, for the same number of epochs.
    ``lr`` and each float option are a number (shared) or a ``(B,)`` tensor; boolean options (nesterov,
    amsgrad, centered, maximize, decoupled_weight_decay) are one value for the batch.

``sweep(trials, x, y, x_val=None, y_val=None, chunk_size=None, keep_curves=False, device="cpu")``
    Any list of ``Trial`` values (frozen, hashable: variant, lr, epochs, optimizer, optimizer_options,
    init_weight, init_bias) on one data set, returning a ``SweepResult`` of (T,) tensors in the order of
    the trials: final_loss, final_val_loss, train_mse, val_mse, objective, diverged_at, epochs_run,
    params (T, k + 1), checkpoint losses (T, C) and, with keep_curves, each trial's curves. Trials are
    grouped into batches (same variant, optimizer, epochs and boolean options; missing float options take
    torch's defaults), each group trained in chunks of at most ``chunk_size`` configurations.

``run_sweep(trials_by_data, prepare, ...) -> dict[key, SweepResult]``
    Several data sets (normalisations, feature sets, splits): ``trials_by_data`` maps a key the caller
    chooses (any hashable) to its trials, and ``prepare(key)`` returns that data set's tensors
    ``(x, y, x_val, y_val)`` (``x_val``/``y_val`` may be None). Every trial is checked first
    (``check_trials``); then each data set is prepared once, swept, and released before the next.

Semantics, those of ``training.loops.train`` configuration by configuration:

- The loss of epoch N (train and validation) is computed before the Nth update, as in the book.
- A configuration whose training loss is non-finite at epoch N has diverged: epoch N's update is still
  applied (as in loops.train, whose step updates before the loop checks), then the configuration is frozen.
  ``diverged_at`` holds N (1-based); ``CONVERGED`` (0) means every epoch ran. Its curves end with the
  non-finite value; the padded curve tensors hold NaN after ``epochs_run``, and so do checkpoints.
- Diverged rows are masked at once (one host check per epoch) and removed from the batch (every tensor
  gathered down to the live rows) when they are at least a sixteenth of it, so they stop costing work;
  a batch whose rows have all diverged stops.
- ``keep_curves=False`` keeps O(B) memory: final parameters, final train and validation loss, the
  divergence epoch, and the loss at the checkpoint epochs (``default_checkpoints``: 1, 10, 100, 1000, ...
  below the last epoch, and the last epoch).
- ``final_loss`` is the last curve entry (before the last update), as loops.train reports it;
  ``train_mse``/``val_mse`` are the MSE of the final parameters in float64, as
  ``training.evaluation.evaluate`` computes them; ``objective`` is val_mse when there are validation rows,
  else train_mse, and ``inf`` for a diverged trial (so the smallest objective is never a diverged one).

Optimizers written here as batched tensor maths, in the operation order of ``torch.optim``'s
single-tensor code (the path loops.train takes on a CPU): ``BATCHED_OPTIMIZERS``. Any other ``torch.optim``
class, or an option those classes take that this module does not model (``foreach``, ``fused``,
``capturable``, ``differentiable``), runs configuration by configuration through ``training.loops.train``
itself: slower, still exact, and failing with its ``ConfigError`` where it fails.

How exact: with one feature, rows matched their sequential runs bit for bit on the CPU (float32 and
float64, every optimizer, converging and diverging). With several features, the batch's matrix product
and loops' matrix-vector product (both BLAS) can round differently in the last bit; Adam, RMSprop or
Adagrad in float32 can amplify that past 1e-5 relative within tens of epochs. On CUDA, loops.train's
optimizers take torch.optim's foreach path, whose kernels round slightly differently from the CPU's.

dtype follows the inputs (float32 as in the project, float64 supported); the device is where ``x`` lives,
or the ``device`` argument ("cpu", "cuda", "auto"). The module never sets the torch thread count: on a
shared 2-core machine ``torch.set_num_threads(1)`` made the batched ops several times faster; the caller
chooses.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from training.errors import ConfigError
from training.loops import HINT, VARIANTS, TrainResult, make_optimizer, optimizer_classes, train
from training.model import design_matrix

BATCHED_OPTIMIZERS: tuple[str, ...] = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad")
CONVERGED = 0  # diverged_at of a configuration that ran every epoch
# the boolean options of each batched optimizer: one value per batch (a grouping key)
_FLAGS: dict[str, tuple[str, ...]] = {
    "SGD": ("nesterov", "maximize"),
    "Adam": ("amsgrad", "maximize", "decoupled_weight_decay"),
    "AdamW": ("amsgrad", "maximize"),
    "RMSprop": ("centered", "maximize"),
    "Adagrad": ("maximize",),
}
# options torch accepts but that only choose an implementation; they send the batch to the sequential loop
_IMPLEMENTATION_OPTIONS = frozenset({"foreach", "fused", "capturable", "differentiable"})


# ----------------------------------------------------------------------------------------------------------
# options


def optimizer_option_defaults(name: str) -> dict[str, Any]:
    """The keyword options of ``torch.optim.<name>`` and their defaults (``lr`` and ``params`` left out).

    Raises:
        ConfigError: for a name that is not a ``torch.optim`` optimizer.
    """
    if name not in optimizer_classes():
        raise ConfigError(f"unknown optimizer {name!r}; torch.optim has: {', '.join(optimizer_classes())}")
    signature = inspect.signature(getattr(torch.optim, name).__init__)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name not in ("self", "params", "lr") and p.kind is not p.VAR_KEYWORD
    }


def is_batched(variant: str, optimizer: str, option_names: Sequence[str] = ()) -> bool:
    """True when this module trains the configuration as a batch; False when it loops over loops.train."""
    if variant != "optimizer":
        return True
    return optimizer in BATCHED_OPTIMIZERS and not (set(option_names) & _IMPLEMENTATION_OPTIONS)


def _check_names(optimizer: str, names: Sequence[str]) -> None:
    defaults = optimizer_option_defaults(optimizer)
    for name in names:
        if name == "lr":
            raise ConfigError("give the learning rate as lr, not inside optimizer_options")
        if name not in defaults:
            raise ConfigError(
                f"torch.optim.{optimizer} has no option {name!r}; it takes: {', '.join(sorted(defaults))}"
            )


# (option, lowest allowed value, first value above the allowed range or None) as torch.optim's constructors
# check them
_BOUNDS: dict[str, tuple[tuple[str, float, float | None], ...]] = {
    "SGD": (("momentum", 0.0, None), ("weight_decay", 0.0, None)),
    "Adam": (("eps", 0.0, None), ("beta1", 0.0, 1.0), ("beta2", 0.0, 1.0), ("weight_decay", 0.0, None)),
    "RMSprop": (
        ("eps", 0.0, None),
        ("momentum", 0.0, None),
        ("weight_decay", 0.0, None),
        ("alpha", 0.0, None),
    ),
    "Adagrad": (
        ("lr_decay", 0.0, None),
        ("weight_decay", 0.0, None),
        ("initial_accumulator_value", 0.0, None),
        ("eps", 0.0, None),
    ),
}
_BOUNDS["AdamW"] = _BOUNDS["Adam"]


def _rows(value: Any, batch: int, name: str, device: torch.device) -> torch.Tensor:
    """A number or (B,) sequence as a (B,) float64 tensor: the Python floats the sequential loop would use."""
    try:
        t = torch.as_tensor(value, dtype=torch.float64, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{name} must be a number or a ({batch},) tensor, got {value!r}") from exc
    if t.dim() == 0:
        return t.expand(batch).clone()
    if t.shape != (batch,):
        raise ConfigError(f"{name} has shape {tuple(t.shape)}; expected a number or ({batch},)")
    return t.clone()


def _batch_options(
    optimizer: str, options: Mapping[str, Any], batch: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    """Split ``options`` into per-row float columns (defaults filled in) and batch-wide flags, checked."""
    _check_names(optimizer, list(options))
    defaults = optimizer_option_defaults(optimizer)
    merged = {**defaults, **options}
    flags: dict[str, bool] = {}
    for name in _FLAGS[optimizer]:
        value = merged.pop(name, False)  # False: an older torch without this flag
        if isinstance(value, torch.Tensor):
            values = value.unique().tolist()
            if len(values) != 1:
                raise ConfigError(f"{optimizer} option {name!r} must be one value per batch, got {values}")
            value = values[0]
        flags[name] = bool(value)
    for name in _IMPLEMENTATION_OPTIONS:
        merged.pop(name, None)
    if "betas" in merged:
        betas = merged.pop("betas")
        if isinstance(betas, torch.Tensor) and betas.dim() == 2:
            betas = (betas[:, 0], betas[:, 1])
        if len(betas) != 2:
            raise ConfigError(f"{optimizer} option 'betas' needs two values, got {betas}")
        merged["beta1"], merged["beta2"] = betas
    rows = {
        name: _rows(value, batch, f"{optimizer} option {name!r}", device) for name, value in merged.items()
    }
    for name, low, high in _BOUNDS[optimizer]:
        values = rows[name]
        bad = ~(values >= low) if high is None else ~((values >= low) & (values < high))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            label = "betas" if name.startswith("beta") else name
            allowed = f">= {low}" if high is None else f"in [{low}, {high})"
            raise ConfigError(
                f"{optimizer} option {label!r} must be {allowed}, got {float(values[i])} (configuration {i})"
            )
    if optimizer == "SGD" and flags["nesterov"]:
        bad = ~((rows["momentum"] > 0) & (rows["dampening"] == 0))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ConfigError(
                f"SGD option 'nesterov' requires a momentum > 0 and dampening 0 (configuration {i}: "
                f"momentum {float(rows['momentum'][i])}, dampening {float(rows['dampening'][i])})"
            )
    return rows, flags


# ----------------------------------------------------------------------------------------------------------
# batched optimizers: torch.optim's _single_tensor_* step, one row per configuration
#
# Reproducing the rounding: a Python scalar s in ``t.add(u, alpha=s)`` is cast to the tensor's dtype and the
# kernel computes t + s * u with a fused multiply-add; ``torch.addcmul(t, s_col, u)`` (s_col a (B, 1) column)
# computes the same thing per row. ``t.addcmul(u, u, value=s)`` is t + (s * u) * u, so the batch passes
# s_col * u as the first factor. ``t.addcdiv(u, d, value=s)`` is t + (s * u) / d. Scalars that torch.optim
# computes in Python (bias corrections, 1 - beta, ...) are computed here in float64 and cast at use.


class _Rows:
    """Per-row tensors of a batch, all gathered together when the batch is compacted."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor | None] = {}

    def select(self, keep: torch.Tensor) -> None:
        for name, t in self.tensors.items():
            if t is not None:
                self.tensors[name] = t.index_select(0, keep)


def _col(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B,) float64 -> (B, 1) in the parameters' dtype: what a Python float becomes inside a kernel."""
    return values.to(dtype).unsqueeze(1)


class _LibmPow:
    """``base ** step`` per row, as Python computes it for a float (the C library's pow).

    torch's contiguous pow is vectorised and may differ from the C library in the last bit of a double;
    a strided view makes torch call the C library's pow element by element. Distinct bases are computed
    once (sweeps usually share a few beta values). On CUDA the device's pow is used (torch.optim's own
    CUDA path differs from the CPU there anyway).
    """

    def __init__(self, base: torch.Tensor) -> None:
        self.cuda = base.device.type != "cpu"
        self.unique, self.inverse = torch.unique(base, return_inverse=True)
        self.strided = torch.stack([self.unique, self.unique], dim=1)[:, 0]
        self.exponent = torch.empty_like(self.strided)

    def __call__(self, exponent: float) -> torch.Tensor:
        if self.cuda:
            return (self.unique**exponent)[self.inverse]
        # a tensor exponent: torch's pow with a number exponent computes 2 and 3 by multiplying
        return torch.pow(self.strided, self.exponent.fill_(exponent))[self.inverse]

    def select(self, keep: torch.Tensor) -> None:
        self.inverse = self.inverse.index_select(0, keep)


def _libm_sqrt(values: torch.Tensor) -> torch.Tensor:
    """``x ** 0.5`` as Python computes it (pow, not sqrt: they differ in the last bit of some doubles)."""
    if values.device.type != "cpu":
        return values.sqrt()
    strided = torch.stack([values, values], dim=1)[:, 0]
    return torch.pow(strided, torch.full_like(strided, 0.5))


def _masked(mask: torch.Tensor | None, where_true: torch.Tensor, otherwise: torch.Tensor) -> torch.Tensor:
    return where_true if mask is None else torch.where(mask, where_true, otherwise)


def _mixed(values: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
    """(any row nonzero, a (B, 1) mask of the nonzero rows when only some are, else None)."""
    nonzero = values != 0
    n = int(nonzero.sum())
    if n == 0:
        return False, None
    return True, None if n == len(values) else nonzero.unsqueeze(1)


class _BatchedOptimizer:
    """Base: holds per-row hyperparameters and state in ``self.rows``; ``step`` updates params in place."""

    def __init__(
        self, lr: torch.Tensor, opts: dict[str, torch.Tensor], flags: dict[str, bool], like: torch.Tensor
    ):
        self.rows = _Rows()
        self.flags = flags
        self.dtype = like.dtype
        self.steps = 0
        self.setup(lr, opts, like)

    def setup(self, lr: torch.Tensor, opts: dict[str, torch.Tensor], like: torch.Tensor) -> None:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        rows = self.__dict__.get("rows")
        if rows is not None and name in rows.tensors:
            return rows.tensors[name]
        raise AttributeError(name)

    def keep(self, **tensors: torch.Tensor | None) -> None:
        self.rows.tensors.update(tensors)

    def select(self, keep: torch.Tensor) -> None:
        self.rows.select(keep)

    def _weight_decay(self, grad: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """``grad.add(param, alpha=weight_decay)`` on the rows whose weight_decay != 0."""
        if not self.has_wd:
            return grad
        return _masked(self.wd_mask, torch.addcmul(grad, self.wd, params), grad)


class _SGD(_BatchedOptimizer):
    def setup(self, lr, opts, like):
        d = self.dtype
        self.has_wd, wd_mask = _mixed(opts["weight_decay"])
        self.has_momentum, m_mask = _mixed(opts["momentum"])
        self.keep(
            neg_lr=_col(-lr, d),
            wd=_col(opts["weight_decay"], d),
            wd_mask=wd_mask,
            momentum=_col(opts["momentum"], d),
            momentum_mask=m_mask,
            one_minus_dampening=_col(1 - opts["dampening"], d),
            buf=None,
        )

    def step(self, params: torch.Tensor, grad: torch.Tensor) -> None:
        self.steps += 1
        if self.flags["maximize"]:
            grad = -grad
        grad = self._weight_decay(grad, params)
        if self.has_momentum:
            if self.buf is None:
                buf = grad.detach().clone()
            else:
                buf = self.buf.mul_(self.momentum).addcmul_(self.one_minus_dampening, grad)
            self.keep(buf=buf)
            update = torch.addcmul(grad, self.momentum, buf) if self.flags["nesterov"] else buf
            grad = _masked(self.momentum_mask, update, grad)
        params.addcmul_(self.neg_lr, grad)


class _Adam(_BatchedOptimizer):
    decoupled = False

    def setup(self, lr, opts, like):
        d = self.dtype
        self.decoupled = self.decoupled or self.flags.get("decoupled_weight_decay", False)
        self.has_wd, wd_mask = _mixed(opts["weight_decay"])
        self.pow1, self.pow2 = _LibmPow(opts["beta1"]), _LibmPow(opts["beta2"])
        self.keep(
            lr64=lr,
            wd=_col(opts["weight_decay"], d),
            wd_mask=wd_mask,
            decay=_col(1 - lr * opts["weight_decay"], d),  # AdamW: param.mul_(1 - lr * weight_decay)
            one_minus_beta1=_col(1 - opts["beta1"], d),
            beta2=_col(opts["beta2"], d),
            one_minus_beta2=_col(1 - opts["beta2"], d),
            eps=_col(opts["eps"], d),
            exp_avg=torch.zeros_like(like),
            exp_avg_sq=torch.zeros_like(like),
            max_exp_avg_sq=torch.zeros_like(like) if self.flags["amsgrad"] else None,
        )

    def select(self, keep):
        super().select(keep)
        self.pow1.select(keep)
        self.pow2.select(keep)

    def step(self, params: torch.Tensor, grad: torch.Tensor) -> None:
        self.steps += 1
        step = float(self.steps)  # torch.optim keeps a float step and calls .item()
        if self.flags["maximize"]:
            grad = -grad
        if self.has_wd:
            if self.decoupled:
                params.mul_(self.decay)  # exactly params * 1 on rows without weight decay
            else:
                grad = self._weight_decay(grad, params)
        self.exp_avg.lerp_(grad, self.one_minus_beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(self.one_minus_beta2 * grad, grad)
        bias_correction1 = 1 - self.pow1(step)
        bias_correction2 = 1 - self.pow2(step)
        step_size = self.lr64 / bias_correction1
        bias_correction2_sqrt = _libm_sqrt(bias_correction2)
        if self.flags["amsgrad"]:
            torch.maximum(self.max_exp_avg_sq, self.exp_avg_sq, out=self.max_exp_avg_sq)
            second = self.max_exp_avg_sq
        else:
            second = self.exp_avg_sq
        denom = (second.sqrt() / _col(bias_correction2_sqrt, self.dtype)).add_(self.eps)
        params.add_(_col(-step_size, self.dtype) * self.exp_avg / denom)


class _AdamW(_Adam):
    decoupled = True


class _RMSprop(_BatchedOptimizer):
    def setup(self, lr, opts, like):
        d = self.dtype
        self.has_wd, wd_mask = _mixed(opts["weight_decay"])
        self.has_momentum, m_mask = _mixed(opts["momentum"])  # momentum >= 0 is checked
        self.keep(
            neg_lr=_col(-lr, d),
            wd=_col(opts["weight_decay"], d),
            wd_mask=wd_mask,
            alpha=_col(opts["alpha"], d),
            one_minus_alpha=_col(1 - opts["alpha"], d),
            eps=_col(opts["eps"], d),
            momentum=_col(opts["momentum"], d),
            momentum_mask=m_mask,
            square_avg=torch.zeros_like(like),
            grad_avg=torch.zeros_like(like) if self.flags["centered"] else None,
            buf=torch.zeros_like(like) if self.has_momentum else None,
        )

    def step(self, params: torch.Tensor, grad: torch.Tensor) -> None:
        self.steps += 1
        if self.flags["maximize"]:
            grad = -grad
        grad = self._weight_decay(grad, params)
        self.square_avg.mul_(self.alpha).addcmul_(self.one_minus_alpha * grad, grad)
        if self.flags["centered"]:
            self.grad_avg.lerp_(grad, self.one_minus_alpha)
            avg = self.square_avg.addcmul(self.grad_avg, self.grad_avg, value=-1).sqrt_()
        else:
            avg = self.square_avg.sqrt()
        avg = avg.add_(self.eps)
        plain = None
        if self.momentum_mask is not None or not self.has_momentum:
            plain = params + self.neg_lr * grad / avg  # param.addcdiv_(grad, avg, value=-lr)
        if self.has_momentum:
            self.buf.mul_(self.momentum).addcdiv_(grad, avg)
            with_momentum = torch.addcmul(params, self.neg_lr, self.buf)  # param.add_(buf, alpha=-lr)
            params.copy_(_masked(self.momentum_mask, with_momentum, plain))
        else:
            params.copy_(plain)


class _Adagrad(_BatchedOptimizer):
    def setup(self, lr, opts, like):
        d = self.dtype
        self.has_wd, wd_mask = _mixed(opts["weight_decay"])
        self.keep(
            lr64=lr,
            lr_decay=opts["lr_decay"],
            wd=_col(opts["weight_decay"], d),
            wd_mask=wd_mask,
            eps=_col(opts["eps"], d),
            state_sum=_col(opts["initial_accumulator_value"], d).expand_as(like).clone(),
        )

    def step(self, params: torch.Tensor, grad: torch.Tensor) -> None:
        self.steps += 1
        step = float(self.steps)
        if self.flags["maximize"]:
            grad = -grad
        grad = self._weight_decay(grad, params)
        clr = self.lr64 / (1 + (step - 1) * self.lr_decay)
        self.state_sum.addcmul_(grad, grad)
        std = self.state_sum.sqrt().add_(self.eps)
        params.add_(_col(-clr, self.dtype) * grad / std)


_OPTIMIZERS: dict[str, type[_BatchedOptimizer]] = {
    "SGD": _SGD,
    "Adam": _Adam,
    "AdamW": _AdamW,
    "RMSprop": _RMSprop,
    "Adagrad": _Adagrad,
}


# ----------------------------------------------------------------------------------------------------------
# one batch


def default_checkpoints(epochs: int) -> tuple[int, ...]:
    """Epochs whose loss is always kept: 1, 10, 100, ... up to ``epochs``, and ``epochs`` itself."""
    marks = []
    e = 1
    while e < epochs:
        marks.append(e)
        e *= 10
    return (*marks, epochs)


@dataclass
class BatchResult:
    """What ``train_batch`` returns for B configurations; row i is configuration i.

    Losses are in the training dtype, as loops.train's (a float32 loss converted to float is exact).
    """

    variant: str
    optimizer: str | None  # None for manual and autograd
    epochs: int
    params: torch.Tensor  # (B, k + 1): after the last update applied (the divergence epoch's, if diverged)
    final_loss: torch.Tensor  # (B,): the last entry of the training curve
    final_val_loss: torch.Tensor  # (B,): the last entry of the validation curve; NaN without validation
    diverged_at: torch.Tensor  # (B,) int64: epoch of the first non-finite training loss; 0 = completed
    checkpoint_epochs: tuple[int, ...]
    checkpoint_loss: torch.Tensor  # (B, C): training loss at each checkpoint epoch; NaN after a stop
    checkpoint_val_loss: torch.Tensor  # (B, C): the same for the validation loss (NaN without validation)
    train_curve: torch.Tensor | None = None  # (B, epochs) with keep_curves; NaN after epochs_run
    val_curve: torch.Tensor | None = None  # (B, epochs) with keep_curves and validation data
    batched: bool = True  # False when the rows ran one by one through loops.train

    @property
    def epochs_run(self) -> torch.Tensor:
        """(B,) epochs that computed a loss, as ``TrainResult.epochs_run``."""
        stopped = self.diverged_at != CONVERGED
        return torch.where(stopped, self.diverged_at, torch.full_like(self.diverged_at, self.epochs))

    def train_result(self, i: int, lr: float | None = None) -> TrainResult:
        """Row ``i`` as the ``TrainResult`` loops.train returns (needs ``keep_curves=True``)."""
        if self.train_curve is None:
            raise ValueError("train_result needs curves: train with keep_curves=True")
        run = int(self.epochs_run[i])
        val = None if self.val_curve is None else self.val_curve[i, :run]
        return _train_result(self.variant, self.params[i], self.train_curve[i, :run], val, self.epochs, lr)


def _train_result(
    variant: str,
    params: torch.Tensor,
    train_curve: torch.Tensor,
    val_curve: torch.Tensor | None,
    epochs: int,
    lr: float | None,
) -> TrainResult:
    """A ``TrainResult`` from one configuration's curves, with loops.train's stop reason and message."""
    result = TrainResult(
        variant=variant,
        params=params.clone(),
        train_loss=train_curve.tolist(),
        val_loss=[] if val_curve is None else val_curve.tolist(),
    )
    last = result.train_loss[-1]
    if not math.isfinite(last):
        result.stop_reason = "diverged"
        result.message = (
            f"{variant}: the training loss became {last} at epoch {result.epochs_run} of {epochs} "
            f"(lr={lr}); {HINT}"
        )
    return result


def _resolve_device(device: str | torch.device | None, like: torch.Tensor) -> torch.device:
    if device is None:
        return like.device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_data(
    x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor | None, y_val: torch.Tensor | None
) -> None:
    if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"x must be (n, k) and y (n,); got {tuple(x.shape)} and {tuple(y.shape)}")
    if not x.is_floating_point() or y.dtype != x.dtype:
        raise ConfigError(f"x and y must share one floating dtype; got {x.dtype} and {y.dtype}")
    if (x_val is None) != (y_val is None):
        raise ConfigError("give both x_val and y_val, or neither")
    if (
        x_val is not None
        and len(y_val) > 0
        and (x_val.dim() != 2 or x_val.shape != (len(y_val), x.shape[1]) or x_val.dtype != x.dtype)
    ):
        raise ConfigError(
            f"x_val must be (m, {x.shape[1]}) in {x.dtype} with y_val (m,); "
            f"got {tuple(x_val.shape)} {x_val.dtype} and {tuple(y_val.shape)}"
        )


def _batch_size(lr: Any, init: torch.Tensor) -> int:
    lr_t = torch.as_tensor(lr)
    if lr_t.dim() == 1:
        return len(lr_t)
    if init.dim() == 2:
        return init.shape[0]
    return 1


def _row_mse(params: torch.Tensor, design_t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared error of each row's predictions: loops' ``mse(design @ params, y)`` per row."""
    return ((params @ design_t - y) ** 2).mean(dim=1)


def train_batch(
    variant: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: torch.Tensor | Sequence[float] | float,
    epochs: int,
    init: torch.Tensor,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    optimizer: str = "SGD",
    options: Mapping[str, Any] | None = None,
    keep_curves: bool = True,
    checkpoints: Sequence[int] | None = None,
    device: str | torch.device | None = None,
) -> BatchResult:
    """Train B configurations of one variant at once; row i equals ``loops.train`` with row i's settings.

    Args:
        variant: ``manual``, ``autograd`` or ``optimizer``, as in ``loops.train``.
        x: training inputs (n, k), already normalised; y: targets (n,), same dtype.
        lr: learning rates, (B,) (or one number when ``init`` is (B, k + 1)); each must be > 0. A list or a
            float64 tensor keeps Python's floats exactly (a float32 tensor has already rounded them).
        epochs: number of updates, the same for the batch.
        init: starting ``[w..., b]``, (k + 1,) shared or (B, k + 1); cast to x's dtype, never modified.
        x_val: optional validation inputs (m, k); y_val: their targets (m,).
        optimizer: the ``torch.optim`` class name for the ``optimizer`` variant.
        options: that class's options; a float option is a number or a (B,) tensor/sequence, ``betas`` a
            pair of those or a (B, 2) tensor, a boolean option one value for the batch.
        keep_curves: keep every epoch's losses (B x epochs); False keeps O(B) memory.
        checkpoints: epochs whose losses are always kept; default ``default_checkpoints(epochs)``.
        device: "cpu", "cuda", "auto" or None (where x lives).

    Raises:
        ConfigError: for a bad variant, lr, epochs, optimizer name, option name or option value.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    _check_data(x, y, x_val, y_val)
    dev = _resolve_device(device, x)
    dtype = x.dtype
    batch = _batch_size(lr, init)
    lr64 = _rows(lr, batch, "lr", dev)
    if not bool((lr64 > 0).all()):
        bad = int((~(lr64 > 0)).nonzero()[0])
        raise ConfigError(f"lr must be > 0, got {float(lr64[bad])} (configuration {bad})")
    k = x.shape[1]
    if tuple(init.shape) not in ((k + 1,), (batch, k + 1)):
        raise ConfigError(f"init has shape {tuple(init.shape)}; expected ({k + 1},) or ({batch}, {k + 1})")
    init_rows = init.detach().to(device=dev, dtype=dtype).expand(batch, k + 1)
    marks = tuple(sorted(set(checkpoints))) if checkpoints is not None else default_checkpoints(epochs)
    if any(not 1 <= e <= epochs for e in marks):
        raise ConfigError(f"checkpoints must lie in 1..{epochs}, got {list(marks)}")
    options = dict(options or {})
    x, y = x.to(dev), y.to(dev)
    has_val = x_val is not None and y_val is not None and len(y_val) > 0
    x_val = x_val.to(dev) if has_val else None
    y_val = y_val.to(dev) if has_val else None
    opt_name = optimizer if variant == "optimizer" else None
    if variant == "optimizer":
        _check_names(optimizer, list(options))
    if not is_batched(variant, optimizer, list(options)):
        return _train_each(
            variant, x, y, x_val, y_val, lr64, epochs, init_rows, optimizer, options, keep_curves, marks
        )
    opt_rows: dict[str, torch.Tensor] = {}
    flags: dict[str, bool] = {}
    if variant == "optimizer":
        opt_rows, flags = _batch_options(optimizer, options, batch, dev)
    return _Batch(variant, opt_name, x, y, x_val, y_val, lr64, epochs, init_rows, opt_rows, flags, marks).run(
        keep_curves
    )


class _Batch:
    """The batched training loop of ``train_batch``; rows that diverge are recorded and then dropped."""

    def __init__(
        self, variant, optimizer, x, y, x_val, y_val, lr64, epochs, init_rows, opt_rows, flags, marks
    ):
        self.variant, self.optimizer, self.epochs, self.marks = variant, optimizer, epochs, marks
        self.y, self.y_val = y, y_val
        self.design = design_matrix(x)  # (n, k + 1)
        self.design_t = self.design.T.contiguous()  # (k + 1, n); contiguous: the product is 2x faster
        self.design_val_t = design_matrix(x_val).T.contiguous() if x_val is not None else None
        self.n = y.shape[0]
        # the factor autograd gives d(mean of r^2)/dr: (1/n, rounded in the dtype) * 2r; 2 * (1/n) is exact
        self.autograd_scale = 2 * float(torch.ones((), dtype=x.dtype) / self.n)
        batch, width = init_rows.shape
        self.batch = batch
        dev, dtype = x.device, x.dtype
        self.params = init_rows.clone()  # (B_live, k + 1)
        self.rows = _Rows()  # per-row tensors besides the optimizer's
        self.rows.tensors["lr_col"] = _col(lr64, dtype)
        self.opt = (
            _OPTIMIZERS[optimizer](lr64, opt_rows, flags, self.params) if variant == "optimizer" else None
        )
        self.live = torch.arange(batch, device=dev)  # original row of each live row
        self.alive: torch.Tensor | None = None  # (B_live,) bool once some live row has diverged
        nan = float("nan")
        self.final_params = torch.full((batch, width), nan, dtype=dtype, device=dev)
        self.final_loss = torch.full((batch,), nan, dtype=dtype, device=dev)
        self.final_val = torch.full((batch,), nan, dtype=dtype, device=dev)
        self.diverged_at = torch.zeros(batch, dtype=torch.int64, device=dev)
        self.ck_loss = torch.full((len(marks), batch), nan, dtype=dtype, device=dev)
        self.ck_val = torch.full((len(marks), batch), nan, dtype=dtype, device=dev)
        self.mark_index = {e: i for i, e in enumerate(marks)}
        self.dtype, self.device = dtype, dev

    def _forward_backward(self) -> torch.Tensor:
        """The epoch's training loss per row (computed before the update), and the update."""
        lr_col = self.rows.tensors["lr_col"]
        if self.variant == "autograd":
            params = self.params.requires_grad_(True)
            # the transposed view, not design_t: backward then multiplies by the contiguous design, as loops'
            loss = _row_mse(params, self.design.T, self.y)
            loss.sum().backward()  # a sum: each row's gradient is its own loss's (a mean would divide by B)
            grad = params.grad
            params.grad = None
            with torch.no_grad():
                params -= lr_col * grad  # in place, as loops' autograd step
            self.params = params.detach()
            return loss.detach()
        residual = self.params @ self.design_t - self.y  # (B, n): t_p - t per configuration
        loss = (residual**2).mean(dim=1)
        if self.variant == "manual":
            # loops' hand gradient 2/n * [x, 1]^T (t_p - t), per row; r / (n/2) rounds as 2 * r / n
            grad = (residual / (self.n / 2)) @ self.design
            self.params = self.params - lr_col * grad
        else:
            # the gradient loss.backward() computes in loops' optimizer step, rounded the same way
            # (mean backward 1/n, pow backward * 2r, mv backward [x, 1]^T g); tests check it against autograd
            grad = (residual * self.autograd_scale) @ self.design
            self.opt.step(self.params, grad)
        return loss

    def _store(self, target: torch.Tensor, values: torch.Tensor) -> None:
        """Write live rows' values into a (B,) slot of original rows, NaN for rows already stopped."""
        if self.alive is not None:
            values = torch.where(self.alive, values, torch.full_like(values, float("nan")))
        if len(self.live) == self.batch:
            target.copy_(values)
        else:
            target.index_copy_(0, self.live, values)

    def run(self, keep_curves: bool) -> BatchResult:
        epochs = self.epochs
        curves = keep_curves
        train_curve = val_curve = None
        if curves:
            # (epochs, B): one contiguous row per epoch; returned transposed
            train_curve = torch.full((epochs, self.batch), float("nan"), dtype=self.dtype, device=self.device)
            if self.y_val is not None:
                val_curve = torch.full_like(train_curve, float("nan"))
        val_loss = None
        for epoch in range(1, epochs + 1):
            if self.y_val is not None:
                with torch.no_grad():
                    val_loss = _row_mse(self.params, self.design_val_t, self.y_val)
            loss = self._forward_backward()
            if curves:
                self._store(train_curve[epoch - 1], loss)
                if val_loss is not None:
                    self._store(val_curve[epoch - 1], val_loss)
            mark = self.mark_index.get(epoch)
            if mark is not None:
                self._store(self.ck_loss[mark], loss)
                if val_loss is not None:
                    self._store(self.ck_val[mark], val_loss)
            self.last_loss, self.last_val = loss, val_loss  # compacted with the rows
            if not self._check_divergence(epoch, loss, val_loss):
                break
        self._finish()
        return BatchResult(
            variant=self.variant,
            optimizer=self.optimizer,
            epochs=epochs,
            params=self.final_params,
            final_loss=self.final_loss,
            final_val_loss=self.final_val,
            diverged_at=self.diverged_at,
            checkpoint_epochs=self.marks,
            checkpoint_loss=self.ck_loss.T,
            checkpoint_val_loss=self.ck_val.T,
            train_curve=None if train_curve is None else train_curve.T,
            val_curve=None if val_curve is None else val_curve.T,
        )

    def _check_divergence(self, epoch: int, loss: torch.Tensor, val_loss: torch.Tensor | None) -> bool:
        """Record rows whose loss just turned non-finite; False when no row is left to train."""
        if math.isfinite(loss.sum().item()):  # one host sync per epoch; a sum that overflows is checked below
            return True
        bad = ~torch.isfinite(loss)
        if self.alive is not None:
            bad &= self.alive
        if not bool(bad.any()):
            return True
        rows = bad.nonzero().squeeze(1)
        original = self.live[rows]
        self.diverged_at[original] = epoch
        self.final_loss[original] = loss[rows]
        if val_loss is not None:
            self.final_val[original] = val_loss[rows]
        self.final_params[original] = self.params[rows]  # after this epoch's update, as loops.train
        self.alive = ~bad if self.alive is None else self.alive & ~bad
        n_alive = int(self.alive.sum())
        if n_alive == 0:
            return False
        if len(self.live) - n_alive >= max(1, len(self.live) // 16):
            self._compact()
        return True

    def _compact(self) -> None:
        keep = self.alive.nonzero().squeeze(1)
        self.live = self.live[keep]
        self.params = self.params.index_select(0, keep)
        self.rows.select(keep)
        if self.opt is not None:
            self.opt.select(keep)
        self.last_loss = self.last_loss.index_select(0, keep)
        if self.last_val is not None:
            self.last_val = self.last_val.index_select(0, keep)
        self.alive = None

    def _finish(self) -> None:
        """Final values of the rows still live (the stopped ones were recorded when they stopped)."""
        keep = self.live if self.alive is None else self.live[self.alive]
        pick = slice(None) if self.alive is None else self.alive
        self.final_params[keep] = self.params[pick]
        self.final_loss[keep] = self.last_loss[pick]
        if self.last_val is not None:
            self.final_val[keep] = self.last_val[pick]


def _train_each(
    variant: str,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
    lr64: torch.Tensor,
    epochs: int,
    init_rows: torch.Tensor,
    optimizer: str,
    options: dict[str, Any],
    keep_curves: bool,
    marks: tuple[int, ...],
) -> BatchResult:
    """The fallback: each row through ``loops.train`` (optimizers or options not written as a batch)."""
    batch = len(lr64)
    rows = [{name: _row_value(value, i) for name, value in options.items()} for i in range(batch)]
    if variant == "optimizer":
        for i, row in enumerate(rows):  # refuse a bad row before any row trains
            try:
                make_optimizer(optimizer, [torch.zeros(1, requires_grad=True)], float(lr64[i]), row)
            except ConfigError as exc:
                raise ConfigError(f"{exc} (configuration {i})") from exc
    runs = [
        train(
            variant,
            x,
            y,
            lr=float(lr64[i]),
            epochs=epochs,
            init=init_rows[i],
            x_val=x_val,
            y_val=y_val,
            optimizer=optimizer,
            optimizer_options=row,
        )
        for i, row in enumerate(rows)
    ]
    return _from_runs(variant, optimizer, epochs, runs, keep_curves, marks, x.dtype, x.device)


def _row_value(value: Any, i: int) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return value.item()
        if value.dim() == 2:  # (B, 2) betas
            return tuple(value[i].tolist())
        return value[i].item()
    if isinstance(value, tuple | list) and any(isinstance(v, torch.Tensor) for v in value):
        return tuple(_row_value(v, i) for v in value)  # betas as a pair of columns
    return value


def _from_runs(
    variant: str,
    optimizer: str,
    epochs: int,
    runs: Sequence[TrainResult],
    keep_curves: bool,
    marks: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
) -> BatchResult:
    batch = len(runs)
    nan = float("nan")
    has_val = any(r.val_loss for r in runs)
    train_curve = torch.full((batch, epochs), nan, dtype=dtype)
    val_curve = torch.full((batch, epochs), nan, dtype=dtype)
    for i, r in enumerate(runs):
        train_curve[i, : r.epochs_run] = torch.tensor(r.train_loss, dtype=dtype)
        if r.val_loss:
            val_curve[i, : r.epochs_run] = torch.tensor(r.val_loss, dtype=dtype)
    run = torch.tensor([r.epochs_run for r in runs], dtype=torch.int64)
    last = (run - 1).unsqueeze(1)
    index = torch.tensor([e - 1 for e in marks], dtype=torch.int64)
    out = BatchResult(
        variant=variant,
        optimizer=optimizer if variant == "optimizer" else None,
        epochs=epochs,
        params=torch.stack([r.params for r in runs]).to(dtype),
        final_loss=train_curve.gather(1, last).squeeze(1),
        final_val_loss=val_curve.gather(1, last).squeeze(1),
        diverged_at=torch.where(torch.tensor([not r.converged for r in runs]), run, torch.zeros_like(run)),
        checkpoint_epochs=marks,
        checkpoint_loss=train_curve[:, index],
        checkpoint_val_loss=val_curve[:, index],
        train_curve=train_curve if keep_curves else None,
        val_curve=val_curve if keep_curves and has_val else None,
        batched=False,
    )
    for name in (
        "params",
        "final_loss",
        "final_val_loss",
        "diverged_at",
        "checkpoint_loss",
        "checkpoint_val_loss",
    ):
        setattr(out, name, getattr(out, name).to(device))
    return out


# ----------------------------------------------------------------------------------------------------------
# trials: any mix of configurations on one data set, grouped into batches


def _freeze(value: Any) -> Any:
    """Lists (and tensors) as tuples, so that a Trial is hashable."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class Trial:
    """One configuration of a sweep, hashable; the arguments of ``loops.train`` besides the data.

    ``optimizer_options`` may be given as a dict; it is kept as a sorted tuple of ``(name, value)`` pairs
    (lists become tuples), and ``options`` gives it back as a dict. ``optimizer`` and ``optimizer_options``
    only matter for the ``optimizer`` variant, as in ``loops.train``.
    """

    variant: str
    lr: float
    epochs: int
    optimizer: str = "SGD"
    optimizer_options: tuple[tuple[str, Any], ...] | Mapping[str, Any] = ()
    init_weight: float | tuple[float, ...] = 1.0
    init_bias: float = 0.0

    def __post_init__(self) -> None:
        pairs = self.optimizer_options
        pairs = pairs.items() if isinstance(pairs, Mapping) else pairs
        object.__setattr__(self, "optimizer_options", tuple(sorted((str(k), _freeze(v)) for k, v in pairs)))
        object.__setattr__(self, "init_weight", _freeze(self.init_weight))

    @property
    def options(self) -> dict[str, Any]:
        """The optimizer options as the dict ``loops.train`` takes."""
        return dict(self.optimizer_options)


@dataclass
class SweepResult:
    """Per-trial results of ``sweep``, in the order of its ``trials``; tensors on the CPU.

    Losses are float64 copies of the training dtype's values (exact). ``train_mse``/``val_mse`` are the MSE of
    the final parameters (after the last update), in float64 as ``training.evaluation.evaluate`` computes
    them; ``final_loss`` is the curve's last entry (before the last update), as ``loops.train`` reports.
    """

    trials: tuple[Trial, ...]
    params: torch.Tensor  # (T, k + 1) in the training dtype
    final_loss: torch.Tensor  # (T,)
    final_val_loss: torch.Tensor  # (T,) NaN without validation rows
    train_mse: torch.Tensor  # (T,)
    val_mse: torch.Tensor  # (T,) NaN without validation rows
    objective: torch.Tensor  # (T,) val_mse if there is a validation split, else train_mse; inf if diverged
    diverged_at: torch.Tensor  # (T,) int64; 0 = completed (CONVERGED)
    epochs_run: torch.Tensor  # (T,) int64
    checkpoint_epochs: tuple[int, ...]  # union over trials of default_checkpoints(epochs)
    checkpoint_loss: torch.Tensor  # (T, C); NaN past a trial's epochs_run
    checkpoint_val_loss: torch.Tensor  # (T, C)
    train_curves: list[torch.Tensor] | None = None  # with keep_curves: (epochs_run,) per trial
    val_curves: list[torch.Tensor] | None = None  # with keep_curves and validation data

    def __len__(self) -> int:
        return len(self.trials)

    def best(self, n: int = 1) -> list[int]:
        """Indices of the ``n`` trials with the lowest objective (ties: the earlier trial first)."""
        order = sorted(range(len(self.trials)), key=lambda i: (float(self.objective[i]), i))
        return order[:n]

    def train_result(self, i: int) -> TrainResult:
        """Trial ``i`` as the ``TrainResult`` loops.train returns (needs ``keep_curves=True``)."""
        if self.train_curves is None:
            raise ValueError("train_result needs curves: run the sweep with keep_curves=True")
        t = self.trials[i]
        val = None if self.val_curves is None else self.val_curves[i]
        return _train_result(t.variant, self.params[i], self.train_curves[i], val, t.epochs, t.lr)


def _group_key(trial: Trial) -> tuple:
    """Trials with equal keys train as one batch: variant, optimizer, epochs and boolean options."""
    if trial.variant != "optimizer":
        return (trial.variant, None, trial.epochs, ())
    options = trial.options
    if not is_batched("optimizer", trial.optimizer, list(options)):
        return ("optimizer", trial.optimizer, trial.epochs, "one by one")
    defaults = optimizer_option_defaults(trial.optimizer)
    flags = tuple((f, bool(options.get(f, defaults.get(f, False)))) for f in _FLAGS[trial.optimizer])
    return ("optimizer", trial.optimizer, trial.epochs, flags)


def check_trials(trials: Sequence[Trial]) -> None:
    """Refuse trials that cannot train, before any data is read: variant, lr, epochs, optimizer and options.

    Raises:
        ConfigError: naming the trial (its index) and the setting.
    """
    for i, t in enumerate(trials):
        try:
            if not isinstance(t, Trial):
                raise ConfigError(f"expected a Trial, got {type(t).__name__}")
            if t.variant not in VARIANTS:
                raise ConfigError(f"unknown variant {t.variant!r}; expected one of {', '.join(VARIANTS)}")
            if not t.lr > 0:
                raise ConfigError(f"lr must be > 0, got {t.lr}")
            if not isinstance(t.epochs, int) or t.epochs < 1:
                raise ConfigError(f"epochs must be an integer >= 1, got {t.epochs}")
            if t.variant == "optimizer":
                _check_names(t.optimizer, list(t.options))
                if not is_batched("optimizer", t.optimizer, list(t.options)):
                    make_optimizer(t.optimizer, [torch.zeros(1, requires_grad=True)], t.lr, t.options)
        except ConfigError as exc:
            raise ConfigError(f"trial {i}: {exc}") from exc
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(trials):
        groups.setdefault(_group_key(t), []).append(i)
    for key, index in groups.items():
        if key[0] == "optimizer" and key[3] != "one by one":
            _group_options([trials[i] for i in index], index)  # value checks (bounds, nesterov)


def _group_options(trials: Sequence[Trial], index: Sequence[int]) -> dict[str, Any]:
    """One batch's options: a (G,) float64 column per float option (defaults filled in), flags as bools."""
    optimizer = trials[0].optimizer
    defaults = optimizer_option_defaults(optimizer)
    names = sorted({name for t in trials for name in t.options} - set(_FLAGS[optimizer]))
    columns: dict[str, Any] = {}
    for name in names:
        values = [t.options.get(name, defaults[name]) for t in trials]
        if name == "betas":
            if any(not isinstance(v, tuple) or len(v) != 2 for v in values):
                bad = next(j for j, v in enumerate(values) if not isinstance(v, tuple) or len(v) != 2)
                raise ConfigError(f"trial {index[bad]}: {optimizer} option 'betas' needs two values")
            columns[name] = torch.tensor(values, dtype=torch.float64)  # (G, 2)
        else:
            try:
                columns[name] = torch.tensor([float(v) for v in values], dtype=torch.float64)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{optimizer} option {name!r} must be a number: {exc}") from exc
    for flag in _FLAGS[optimizer]:
        columns[flag] = bool(trials[0].options.get(flag, defaults.get(flag, False)))
    try:
        _batch_options(optimizer, columns, len(trials), torch.device("cpu"))
    except ConfigError as exc:
        match = re.search(r"\(configuration (\d+)", str(exc))
        if match:
            raise ConfigError(f"trial {index[int(match.group(1))]}: {exc}") from exc
        raise
    return columns


def _init_rows(trials: Sequence[Trial], n_features: int) -> torch.Tensor:
    """(T, k + 1) starting points, built as ``loops.initial_params`` builds them (default dtype)."""
    rows = []
    for i, t in enumerate(trials):
        weights = (
            [float(t.init_weight)] * n_features if isinstance(t.init_weight, int | float) else t.init_weight
        )
        if len(weights) != n_features:
            raise ConfigError(f"trial {i}: init has {len(weights)} weights for {n_features} features")
        rows.append([*weights, float(t.init_bias)])
    return torch.tensor(rows)


def _slice_options(columns: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {k: v[start:stop] if isinstance(v, torch.Tensor) else v for k, v in columns.items()}


def default_chunk_size(device: str | torch.device) -> int:
    """Configurations per batch when the caller gives none: 16,384 on a CPU, 1,048,576 on a GPU.

    On a 2-core CPU, 8k-16k rows per batch ran fastest per configuration (larger batches fall out of the
    cache); a GPU needs about a million rows to be busy.
    """
    return 16_384 if torch.device(device).type == "cpu" else 1 << 20


def _final_mse(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) float64 MSE of each row's final parameters, as ``regression_metrics(y, predict(x64, p64))``."""
    design = design_matrix(x.to(torch.float64))
    err = params.to(torch.float64) @ design.T - y.to(torch.float64)
    return (err**2).mean(dim=1)


def sweep(
    trials: Sequence[Trial],
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
    keep_curves: bool = False,
    device: str | torch.device = "cpu",
) -> SweepResult:
    """Train every trial on one prepared data set; results in the order of ``trials``.

    Trials are grouped (``_group_key``: variant, optimizer, epochs, boolean options) and each group runs
    through ``train_batch`` in chunks of at most ``chunk_size`` configurations, which bounds memory: about
    ``chunk_size * n * 8`` tensor elements while training, plus ``T * epochs`` losses with ``keep_curves``.

    Args:
        trials: the configurations.
        x, y: training inputs (n, k) and targets (n,), normalised; their dtype is the training dtype.
        x_val, y_val: optional validation split (None or empty: objective = training MSE).
        chunk_size: most configurations trained at once; None: ``default_chunk_size(device)``.
        keep_curves: keep every epoch's losses per trial (``train_curves``/``val_curves``).
        device: "cpu", "cuda" or "auto".

    Raises:
        ConfigError: for any trial that cannot train (checked before training starts).
    """
    trials = tuple(trials)
    check_trials(trials)
    _check_data(x, y, x_val, y_val)
    dev = _resolve_device(device, x)
    chunk_size = default_chunk_size(dev) if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    x, y = x.to(dev), y.to(dev)
    has_val = x_val is not None and y_val is not None and len(y_val) > 0
    x_val, y_val = (x_val.to(dev), y_val.to(dev)) if has_val else (None, None)
    dtype, total = x.dtype, len(trials)
    init = _init_rows(trials, x.shape[1])
    marks = sorted({e for t in trials for e in default_checkpoints(t.epochs)})
    column = {e: j for j, e in enumerate(marks)}
    nan = float("nan")
    params = torch.full((total, x.shape[1] + 1), nan, dtype=dtype)
    final_loss, final_val, train_mse, val_mse = (
        torch.full((total,), nan, dtype=torch.float64) for _ in range(4)
    )
    diverged_at = torch.zeros(total, dtype=torch.int64)
    ck_loss, ck_val = (torch.full((total, len(marks)), nan, dtype=torch.float64) for _ in range(2))
    train_curves: list[torch.Tensor | None] | None = [None] * total if keep_curves else None
    val_curves: list[torch.Tensor | None] | None = [None] * total if keep_curves and has_val else None

    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(trials):
        groups.setdefault(_group_key(t), []).append(i)
    for (variant, optimizer, epochs, flags), index in groups.items():
        group = [trials[i] for i in index]
        one_by_one = flags == "one by one"
        columns = _group_options(group, index) if variant == "optimizer" and not one_by_one else {}
        lr = torch.tensor([t.lr for t in group], dtype=torch.float64)
        for start in range(0, len(index), chunk_size):
            stop = min(start + chunk_size, len(index))
            rows = torch.tensor(index[start:stop])
            if one_by_one:
                runs = [
                    train(
                        variant,
                        x,
                        y,
                        lr=t.lr,
                        epochs=epochs,
                        init=init[i],
                        x_val=x_val,
                        y_val=y_val,
                        optimizer=optimizer,
                        optimizer_options=t.options,
                    )
                    for i, t in zip(index[start:stop], group[start:stop], strict=True)
                ]
                r = _from_runs(
                    variant, optimizer, epochs, runs, keep_curves, default_checkpoints(epochs), dtype, dev
                )
            else:
                r = train_batch(
                    variant,
                    x,
                    y,
                    lr=lr[start:stop],
                    epochs=epochs,
                    init=init[rows],
                    x_val=x_val,
                    y_val=y_val,
                    optimizer=optimizer or "SGD",
                    options=_slice_options(columns, start, stop),
                    keep_curves=keep_curves,
                    device=dev,
                )
            params[rows] = r.params.cpu()
            final_loss[rows] = r.final_loss.cpu().double()
            final_val[rows] = r.final_val_loss.cpu().double()
            diverged_at[rows] = r.diverged_at.cpu()
            train_mse[rows] = _final_mse(r.params, x, y).cpu()
            if has_val:
                val_mse[rows] = _final_mse(r.params, x_val, y_val).cpu()
            cols = torch.tensor([column[e] for e in r.checkpoint_epochs])
            ck_loss[rows.unsqueeze(1), cols] = r.checkpoint_loss.cpu().double()
            ck_val[rows.unsqueeze(1), cols] = r.checkpoint_val_loss.cpu().double()
            if keep_curves:
                run = r.epochs_run.tolist()
                train_rows = r.train_curve.cpu()
                val_rows = r.val_curve.cpu() if r.val_curve is not None else None
                for j, i in enumerate(index[start:stop]):
                    train_curves[i] = train_rows[j, : run[j]].clone()
                    if val_curves is not None:
                        val_curves[i] = val_rows[j, : run[j]].clone()
            del r
    epochs_all = torch.tensor([t.epochs for t in trials], dtype=torch.int64)
    metric = val_mse if has_val else train_mse
    objective = torch.where(
        (diverged_at > 0) | ~torch.isfinite(metric), torch.full_like(metric, math.inf), metric
    )
    return SweepResult(
        trials=trials,
        params=params,
        final_loss=final_loss,
        final_val_loss=final_val,
        train_mse=train_mse,
        val_mse=val_mse,
        objective=objective,
        diverged_at=diverged_at,
        epochs_run=torch.where(diverged_at > 0, diverged_at, epochs_all),
        checkpoint_epochs=tuple(marks),
        checkpoint_loss=ck_loss,
        checkpoint_val_loss=ck_val,
        train_curves=train_curves,
        val_curves=val_curves,
    )


# (x, y, x_val, y_val) of one data set; x_val and y_val may be None
Prepared = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def run_sweep(
    trials_by_data: Mapping[Hashable, Sequence[Trial]],
    prepare: Callable[[Hashable], Prepared],
    *,
    chunk_size: int | None = None,
    keep_curves: bool = False,
    device: str | torch.device = "cpu",
) -> dict[Hashable, SweepResult]:
    """Sweep several data sets: ``prepare(key)`` gives ``(x, y, x_val, y_val)`` for ``trials_by_data[key]``.

    The key is the caller's (e.g. ``(normalize, features, split_seed)``); every trial of every key is
    checked first, then each data set is prepared, swept and released in turn.

    Raises:
        ConfigError: for any trial that cannot train, before any data set is prepared.
    """
    for key, trials in trials_by_data.items():
        try:
            check_trials(trials)
        except ConfigError as exc:
            raise ConfigError(f"data {key!r}: {exc}") from exc
    results = {}
    for key, trials in trials_by_data.items():
        x, y, x_val, y_val = prepare(key)
        results[key] = sweep(
            trials, x, y, x_val, y_val, chunk_size=chunk_size, keep_curves=keep_curves, device=device
        )
    return results
