"""The report task: Prefect artifacts that compare the variants and point to their MLflow runs."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.recorder import Tracking, VariantRecord
from training.evaluation import Evaluation
from training.runs import Trained


def _fmt(value: float | None, spec: str = ".6f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def summary_rows(trained: list[Trained], records: list[VariantRecord]) -> list[dict[str, str]]:
    """One row per variant: how it stopped, its losses, its gap to the optimum, its MLflow run."""
    run_ids = {rec.variant: rec.run_id for rec in records}
    rows = []
    for t in trained:
        r, ev = t.result, t.evaluation
        val = ev.val if ev else {}
        rows.append(
            {
                "variant": r.variant,
                "stop reason": r.stop_reason if r.converged else f"diverged at epoch {r.epochs_run}",
                "epochs": str(r.epochs_run),
                "final loss": _fmt(r.train_loss[-1] if r.train_loss else None),
                "val MSE": _fmt(val.get("mse")),
                "val RMSE": _fmt(val.get("rmse")),
                "val R2": _fmt(val.get("r2"), ".4f"),
                "gap to optimum": _gap(ev),
                "params": _params(r.params.tolist()),
                "seconds": f"{t.seconds:.2f}",
                "MLflow run": run_ids.get(r.variant, "-"),
            }
        )
    return rows


def summary_markdown(rows: list[dict[str, str]], trained: list[Trained], run: Tracking) -> str:
    """The same comparison in words, flush-left markdown."""
    converged = [t.variant for t in trained if t.converged]
    evaluations = [t.evaluation for t in trained if t.evaluation]
    header = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    table = header + "".join("| " + " | ".join(r.values()) + " |\n" for r in rows)
    lines = [
        "# Thermometer training run",
        "",
        f"{len(converged)} of {len(trained)} variants converged: {', '.join(converged) or 'none'}.",
    ]
    if evaluations and evaluations[0].has_optimum:
        optimum = evaluations[0].optimum_mse
        lines.append(f"The exact least-squares fit on the training rows has MSE {optimum:.6f}.")
    elif evaluations:
        lines.append("Exact optimum: none (a network has no closed-form fit; the line has).")
    lines += [f"- **{t.variant}**: {outcome_line(t)}" for t in trained]
    link = f"[{run.parent_run_id}]({run.url})" if run.url else f"`{run.parent_run_id}`"
    lines += ["", table, f"MLflow parent run: {link}"]
    return "\n".join(lines) + "\n"


@task(name="report", task_run_name="report", cache_policy=NO_CACHE)
def report(run: Tracking, trained: list[Trained], records: list[VariantRecord]) -> str:
    """Publish the comparison table, the summary in words and a link to MLflow; return the summary."""
    rows = summary_rows(trained, records)
    markdown = summary_markdown(rows, trained, run)
    create_table_artifact(table=rows, key="training-comparison", description="The variants side by side")
    create_markdown_artifact(markdown=markdown, key="training-summary", description="The run in words")
    if run.url:
        create_link_artifact(link=run.url, link_text="MLflow parent run", key="mlflow-run")
    return markdown


def outcome_line(t: Trained) -> str:
    """How one variant ended, in one line (the summary's bullet and the flow's closing log line)."""
    ev = t.evaluation
    if ev is None:
        return t.result.message
    val = f", validation RMSE {ev.val['rmse']:.4f}" if ev.val else ""
    return (
        f"final loss {t.result.train_loss[-1]:.6f}, train MSE {ev.train['mse']:.6f}, gap to optimum "
        f"{_gap(ev, '.2g')}{val}; hand-written vs autograd gradient gap {ev.grad_check:.1e}"
    )


def _gap(ev: Evaluation | None, spec: str = ".3g") -> str:
    """The gap to the exact optimum; "none" for a network, which has no exact optimum."""
    if ev is None:
        return "-"
    return format(ev.optimum_gap, spec) if ev.has_optimum else "none"


def _params(params: list[float], shown: int = 6) -> str:
    """The trained parameters, or how many there are when a network has too many to read in a table."""
    if len(params) <= shown:
        return ", ".join(f"{p:.4f}" for p in params)
    return f"{len(params)} values (see the MLflow run)"


def outcome(
    run: Tracking, trained: list[Trained], records: list[VariantRecord], promotion: Any | None
) -> dict[str, Any]:
    """The flow's return value: run ids, each variant's final loss, parameters and metrics, the promotion."""
    by_variant = {t.variant: t for t in trained}
    return {
        "parent_run_id": run.parent_run_id,
        "experiment_id": run.experiment_id,
        "promotion": None if promotion is None else asdict(promotion),
        "variants": {
            rec.variant: {
                "run_id": rec.run_id,
                "status": rec.status,
                "model_uri": rec.model_uri,
                "final_loss": by_variant[rec.variant].result.train_loss[-1],
                "params": by_variant[rec.variant].result.params.tolist(),
                **(ev.metrics() if (ev := by_variant[rec.variant].evaluation) else {}),
            }
            for rec in records
        },
    }
