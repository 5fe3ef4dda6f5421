"""Serve every deployment in prefect.yaml from one long-lived process, on its schedule (``make serve``).

The alternative to a work pool and a worker for a single machine: the same deployments, parameters, cron
schedules and concurrency limits, read from prefect.yaml so there is one place that defines them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from tasks import environment

PREFECT_YAML = environment.REPO_ROOT / "prefect.yaml"


def deployments_from_yaml(path: Path = PREFECT_YAML) -> list:
    """Build ``RunnerDeployment`` objects from the deployments in ``prefect.yaml``."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    built = []
    for d in yaml.safe_load(path.read_text())["deployments"]:
        limit = d.get("concurrency_limit")
        if isinstance(limit, dict):
            limit = ConcurrencyLimitConfig(**limit)
        schedules = [
            Cron(
                s["cron"], timezone=s.get("timezone", "UTC"), active=s.get("active", True), slug=s.get("slug")
            )
            for s in d.get("schedules", [])
        ]
        flow = load_flow_from_entrypoint(str(environment.REPO_ROOT / d["entrypoint"]))
        built.append(
            flow.to_deployment(
                name=d["name"],
                description=d.get("description"),
                tags=d.get("tags"),
                parameters=d.get("parameters", {}),
                schedules=schedules,
                concurrency_limit=limit,
            )
        )
    return built


def main() -> None:
    """Apply the environment, then serve (runs send heartbeats, as deployed runs do)."""
    environment.apply()  # its defaults include the heartbeat
    from prefect import serve

    serve(*deployments_from_yaml())


if __name__ == "__main__":
    sys.exit(main())
