"""Server-side automations the deployments rely on (``make deploy`` creates them).

"Crash zombie flow runs": a flow run whose process died with no chance to report (its worker killed with
SIGKILL, the machine lost) stops sending heartbeats; when none arrives within three heartbeat periods
(``tasks.environment.zombie_seconds``: 90 s, as deployments send one every 30 s), the Prefect server marks it
Crashed. That is what lets the next run close the MLflow runs the dead one left RUNNING
(``tasks.orphans.close_orphans``). Prefect's own recipe: https://docs.prefect.io/v3/advanced/detect-zombie-flows
Run it through ``python -m ops.env`` (as ``make deploy`` does), which applies the project's environment.
"""

from __future__ import annotations

import contextlib
import sys
from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from tasks import environment

ZOMBIE_AUTOMATION = "Crash zombie flow runs"


def ensure_zombie_automation() -> str:
    """Create the automation unless one of that name exists; return its id."""
    within = environment.zombie_seconds()
    with contextlib.suppress(ValueError):  # Automation.read's answer to a name it does not know
        return str(Automation.read(name=ZOMBIE_AUTOMATION).id)
    automation = Automation(
        name=ZOMBIE_AUTOMATION,
        description="Mark flow runs Crashed when their heartbeats stop (the process died without reporting).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within),
        ),
        actions=[
            ChangeFlowRunState(state=StateType.CRASHED, message="No heartbeat: the flow run's process died")
        ],
    )
    return str(automation.create().id)


if __name__ == "__main__":
    print(f"automation {ZOMBIE_AUTOMATION!r}: {ensure_zombie_automation()}")
    sys.exit(0)
