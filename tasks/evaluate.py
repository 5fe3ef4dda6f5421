"""The evaluation task: metrics, the gap to the exact optimum, and the gradient self-check."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.data import PreparedData
from tasks.train import TimedResult
from training.config import TrainSettings
from training.evaluation import Evaluation, evaluate, optimum_mse
from training.loops import initial_params

GRADIENT_TOLERANCE = 1e-10  # relative; a correct hand-written gradient agrees with autograd to ~1e-16


@task(name="evaluate", task_run_name="evaluate", cache_policy=NO_CACHE)
def evaluate_variants(
    results: list[TimedResult], prepared: PreparedData, settings: TrainSettings
) -> dict[str, Evaluation]:
    """Evaluate every converged variant; diverged ones have nothing to evaluate."""
    logger = get_run_logger()
    init = initial_params(len(settings.features), settings.init_weight, settings.init_bias)
    best = optimum_mse(prepared.x_train, prepared.y_train)
    evaluations = {}
    for timed in results:
        r = timed.result
        if not r.converged:
            continue
        x_val, y_val = (prepared.x_val, prepared.y_val) if prepared.has_val else (None, None)
        ev = evaluate(r.params, init, prepared.x_train, prepared.y_train, x_val, y_val, best_mse=best)
        worst = max(ev.grad_check_init, ev.grad_check_final)
        if worst > GRADIENT_TOLERANCE:
            logger.error(
                "%s: hand-written and autograd gradients differ by %.3g (relative)", r.variant, worst
            )
        logger.info(
            "%s: train MSE %.6f (optimum %.6f, gap %.3g)%s; gradient check %.1e",
            r.variant,
            ev.train["mse"],
            best,
            ev.optimum_gap,
            f", validation MSE {ev.val['mse']:.6f}" if ev.val else "",
            worst,
        )
        evaluations[r.variant] = ev
    return evaluations
