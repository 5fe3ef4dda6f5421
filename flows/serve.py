"""Serve every deployment in prefect.yaml from one long-lived process, on its schedule (``make serve``).

The alternative to a work pool and a worker for a single machine: the same deployments, parameters, cron
schedules and concurrency limits, read from prefect.yaml so there is one place that defines them.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

import tasks  # noqa: F401  (embedded defaults before prefect loads)
from flows.predict import predict
from flows.train import train

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
FLOWS = {"flows/train.py:train": train, "flows/predict.py:predict": predict}


def deployments_from_yaml(path: Path = PREFECT_YAML) -> list:
    """Build ``RunnerDeployment`` objects from the deployments in ``prefect.yaml``."""
    spec = yaml.safe_load(path.read_text())
    built = []
    for d in spec["deployments"]:
        limit = d.get("concurrency_limit")
        if isinstance(limit, dict):
            limit = ConcurrencyLimitConfig(
                limit=limit["limit"], collision_strategy=ConcurrencyLimitStrategy(limit["collision_strategy"])
            )
        schedules = [
            Cron(
                s["cron"], timezone=s.get("timezone", "UTC"), active=s.get("active", True), slug=s.get("slug")
            )
            for s in d.get("schedules", [])
        ]
        built.append(
            FLOWS[d["entrypoint"]].to_deployment(
                name=d["name"],
                description=d.get("description"),
                tags=d.get("tags"),
                parameters=d.get("parameters", {}),
                schedules=schedules,
                concurrency_limit=limit,
            )
        )
    return built


if __name__ == "__main__":
    serve(*deployments_from_yaml())
