"""The evaluation task: metrics, the gap to the exact optimum, and the gradient self-check."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run
from prefect.utilities.annotations import quote

from training.data import Prepared
from training.evaluation import GRADIENT_TOLERANCE, optimum_mse
from training.runs import Trained, evaluate_trained
from training.settings import TrainingConfig


def _run_name() -> str:
    """``evaluate-manual`` for one variant (the flow evaluates each as soon as it is trained)."""
    trained = task_run.parameters["trained"]
    trained = trained.unquote() if isinstance(trained, quote) else trained
    return "-".join(["evaluate", *(t.variant for t in trained)])


@task(name="evaluate", task_run_name=_run_name, cache_policy=NO_CACHE)
def evaluate_variants(trained: list[Trained], prepared: Prepared, config: TrainingConfig) -> list[Trained]:
    """Evaluate every converged variant (the line against its exact optimum); diverged ones have nothing to
    evaluate."""
    logger = get_run_logger()
    # a closed-form optimum exists for the line only
    optimum = optimum_mse(prepared.x_train, prepared.y_train) if config.model == "linear" else float("nan")
    evaluated = [evaluate_trained(t, prepared, config, optimum) for t in trained]
    for t in evaluated:
        if (ev := t.evaluation) is None:
            continue
        if ev.grad_check > GRADIENT_TOLERANCE:
            logger.error(
                "%s: hand-written and autograd gradients differ by %.3g (relative)", t.variant, ev.grad_check
            )
        val = f", validation MSE {ev.val['mse']:.6f}" if ev.val else ""
        best = f"optimum {optimum:.6f}, gap {ev.optimum_gap:.3g}" if ev.has_optimum else "optimum: none"
        logger.info(
            "%s: train MSE %.6f (%s)%s; gradient check %.1e",
            t.variant, ev.train["mse"], best, val, ev.grad_check,
        )  # fmt: skip
    return evaluated
