"""Recording variants beside the training: in a helper process when this process could fork one, else here.

Recording a variant (child run, curves, plots, model: ``tasks.recorder.record_variant``, the code ``make
upload`` uses) is about half waiting for the tracking server and half Python work. In the flow's own process
it would wait after the training or slow it down (one interpreter runs one thread at a time); in a helper
process it runs on another core while the next variant trains.

``start()`` forks the helper from a process that has imported everything and runs no other thread yet, so it
costs no second import and no fork-with-threads hazard: ``python -m flows.run train`` calls it just before the
flow starts. Where no helper was started (a flow called from Python, a deployed run started by a worker)
``record`` records in the calling thread, as before. Each job carries the caller's environment (tracking URI,
credentials, state directory) and the few data rows the fit plot draws (``plots.FitRows``), not the table.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from tasks import spool
from tasks.plots import FitRows
from tasks.recorder import VariantRecord, record_variant

_HELPER: ProcessPoolExecutor | None = None
_PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent ends


class HelperFailed(RuntimeError):
    """The helper could not record a variant (the message is the error it met)."""


def start() -> None:
    """Fork the helper unless one runs or this process runs other threads (then ``record`` works in the
    calling thread). It pays MLflow's and matplotlib's one-off costs first."""
    global _HELPER
    if _HELPER is None and threading.active_count() == 1:
        _HELPER = ProcessPoolExecutor(1, multiprocessing.get_context("fork"), initializer=_helper_init)
        _HELPER.submit(os.getpid)  # forks now, before the flow starts Prefect's threads


def _helper_init() -> None:
    """In the helper: end with the flow's process, leave Ctrl-C to it, and pay the first-use costs."""
    import io

    from tasks import plots, tracking

    with contextlib.suppress(OSError, AttributeError):  # Linux; elsewhere the helper ends at its next job
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tracking.warm_up()
    plots.loss_curve("warm-up", [1.0, 0.5], [], 2).savefig(io.BytesIO(), format="png")


def record(
    folder: Path | str,
    experiment_id: str,
    parent_run_id: str,
    rows: FitRows,
    on_fallback: Callable[[str], None] = print,
) -> VariantRecord:
    """Record the variant spooled in ``folder`` as a child run of ``parent_run_id``, in the helper if one
    runs, else here; ``rows`` are the data rows its fit plot draws.

    If the helper dies, this variant and the next are recorded here (``on_fallback`` is told why); a child run
    the helper had begun is closed as KILLED, as ``make upload`` closes one that a failed attempt left.

    Raises:
        HelperFailed: with the error the helper met; here, the error itself.
    """
    global _HELPER
    helper = _HELPER
    if helper is not None:
        try:
            job = helper.submit(_record, str(folder), experiment_id, parent_run_id, rows, dict(os.environ))
            ok, value = job.result()
        except BrokenProcessPool as exc:
            _HELPER = None
            on_fallback(f"the recording process died ({exc}); recording {Path(folder).name} in this process")
        else:
            if not ok:
                raise HelperFailed(value)
            return value
    return record_variant(spool.read(folder), experiment_id, parent_run_id, str(folder), rows=rows)


def _record(
    folder: str, experiment_id: str, parent_run_id: str, rows: FitRows, env: dict[str, str]
) -> tuple[bool, Any]:
    """In the helper, in the caller's environment: ``(True, record)`` or ``(False, the error)``."""
    os.environ.clear()
    os.environ.update(env)
    try:
        return True, record_variant(spool.read(folder), experiment_id, parent_run_id, folder, rows=rows)
    except Exception as exc:
        return False, str(exc)
