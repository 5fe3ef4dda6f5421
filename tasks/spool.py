"""A local copy of each variant's results, kept until MLflow has them; ``ops.upload`` sends what is left.

Layout under ``<state dir>/spool/<parent run id>/``: ``parent.json`` (experiment, epochs, tags, params, and
every variant's curve and metrics for closing the parent run), ``writer.json`` (the process that wrote it) and
one folder per variant with ``payload.json`` (curves, parameters, metrics, and where its data rows come from),
``model/`` (the weights and normalisation, as ``training.serving`` saves them) and, once a recording attempt
has created its child run, ``partial_run_id``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tasks import environment
from training.architecture import Architecture
from training.data import file_digest, load_table, split_frame
from training.errors import DataError
from training.normalize import Normalizer
from training.serving import Predictor, save_model

# beside parent.json: the process that spooled the results (while it runs, its flow run may be recording them)
WRITER = "writer.json"


def spool_root() -> Path:
    """Where unrecorded results wait: ``<state dir>/spool``."""
    return environment.state_dir() / "spool"


def folder(parent_run_id: str) -> Path:
    """The folder of one parent run's waiting results."""
    return spool_root() / parent_run_id


@dataclass
class VariantPayload:
    """Everything needed to record one variant's child run, as plain data."""

    variant: str
    started_ms: int
    seconds: float
    params: list[float]  # flat, normalised inputs: the line's [w..., b] or the network's weights
    train_loss: list[float]
    val_loss: list[float]
    stop_reason: str
    message: str
    metrics: dict[str, float] | None  # Evaluation.metrics(); None for a diverged variant
    tags: dict[str, str]
    run_params: dict[str, Any]
    features: list[str]
    target: str
    epochs: int
    normalizer: dict
    # where the rows come from, to draw the fit and give an input example: the file (checked against its
    # SHA-256 before use) and the split; the rows themselves are not copied into the spool
    data: str = ""
    digest: str = ""
    split: dict[str, Any] = field(default_factory=dict)  # training.data.split_frame's arguments
    architecture: dict | None = None  # Architecture.to_dict(); None (spooled before networks): the line
    partial_run_id: str | None = None  # a child run that a failed attempt left behind

    @property
    def converged(self) -> bool:
        """True when the variant trained without a non-finite loss."""
        return self.stop_reason == "completed"

    def predictor(self) -> Predictor:
        """The trained model, in original units."""
        arch = Architecture.from_dict(self.architecture) if self.architecture else None
        return Predictor(
            torch.tensor(self.params), Normalizer.from_dict(self.normalizer), self.target, self.variant, arch
        )

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Training and validation rows in original units, read again from the data file.

        Raises:
            DataError: when the file is gone or no longer what the run trained on (its SHA-256 differs).
        """
        if file_digest(self.data) != self.digest:
            raise DataError(
                self.data, f"changed since the run (SHA-256 is not {self.digest[:12]}...); restore it"
            )
        frame = load_table(self.data, self.features, self.target)
        return split_frame(frame, source=self.data, **self.split)[:2]


_WRITING = threading.Lock()


def write(parent_run_id: str, parent: dict[str, Any], payload: VariantPayload) -> str:
    """Save one variant's payload before recording it, and the parent's description (``parent.json``) with
    this variant's curve and metrics added to those of the variants saved before; return its folder."""
    root = folder(parent_run_id)
    with _WRITING:
        root.mkdir(parents=True, exist_ok=True)
        (root / WRITER).write_text(json.dumps({"pid": os.getpid(), "started": _started(os.getpid())}))
        described = root / "parent.json"
        saved = json.loads(described.read_text()) if described.exists() else {"curves": {}, "metrics": {}}
        merged = {key: saved[key] | parent[key] for key in ("curves", "metrics")}
        described.write_text(json.dumps({**saved, **parent, **merged, "run_id": parent_run_id}, indent=1))
    where = root / payload.variant
    where.mkdir(exist_ok=True)
    (where / "payload.json").write_text(json.dumps(asdict(payload)))
    save_model(where / "model", payload.predictor())
    return str(where)


def pending(parent_run_id: str | None = None) -> list[Path]:
    """Parent folders that still hold unrecorded variants (all, or one parent run's)."""
    folders = [folder(parent_run_id)] if parent_run_id else sorted(spool_root().glob("*"))
    return [f for f in folders if (f / "parent.json").exists()]


def variants(parent_folder: Path) -> list[Path]:
    """The variant folders under a parent folder."""
    return sorted(p for p in parent_folder.iterdir() if (p / "payload.json").exists())


PARTIAL_RUN = "partial_run_id"  # beside payload.json: the curves are not rewritten to note one id


def note_partial_run(variant_folder: Path, run_id: str) -> None:
    """Remember the child run a recording attempt created (if the attempt fails, the upload closes it)."""
    (Path(variant_folder) / PARTIAL_RUN).write_text(run_id)


def read(variant_folder: Path | str) -> VariantPayload:
    """Load a payload written by ``write``, with the child run an earlier attempt left, if any."""
    where = Path(variant_folder)
    payload = VariantPayload(**json.loads((where / "payload.json").read_text()))
    if (where / PARTIAL_RUN).exists():
        payload.partial_run_id = (where / PARTIAL_RUN).read_text().strip()
    return payload


def writer_running(parent_folder: Path) -> int | None:
    """The pid of the process that spooled these results if it still runs (and is not this one), else None.

    That process may be recording them this moment, so ``make upload`` leaves them alone: recording them too
    would give a variant two child runs. A pid is matched with the process's start time (from ``/proc``), so a
    later process that reuses the pid is not taken for it.
    """
    try:
        writer = json.loads((parent_folder / WRITER).read_text())
    except (OSError, ValueError):
        return None
    pid = writer["pid"]
    alive = pid != os.getpid() and writer["started"] is not None and _started(pid) == writer["started"]
    return pid if alive else None


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot); None when no such process (or no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]  # a zombie has ended


def remove(variant_folder: Path | str) -> None:
    """Delete a recorded variant's payload."""
    shutil.rmtree(variant_folder, ignore_errors=True)


def cleanup(parent_run_id: str) -> None:
    """Delete a parent folder once no variant waits in it."""
    root = folder(parent_run_id)
    if root.exists() and not variants(root):
        shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(OSError):  # and the spool itself once empty
        spool_root().rmdir()
