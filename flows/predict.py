"""Batch prediction: raw readings in, Celsius out, from a registered model version chosen by alias."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.parameters import takes
from tasks.data import load_dataset
from tasks.errors import fail_cleanly
from tasks.heartbeat import with_heartbeats
from tasks.predict import default_output, predict_rows, record_predictions, resolve_model, write_predictions
from tasks.record import check_tracking
from training.settings import PredictSettings


@flow(name="predict", description="Predict Celsius for a file of raw readings with a registered model.")
@fail_cleanly()
@with_heartbeats
@takes(PredictSettings)
def predict(settings: PredictSettings) -> dict[str, Any]:
    """Predict with ``model_name@alias`` for every row of ``data`` and write ``output``."""
    check_tracking()
    model = resolve_model(settings.model_name, settings.alias)
    loaded = load_dataset(settings.data, model.features, None, keep_other_columns=True)
    predictions = predict_rows(model, loaded)
    written = write_predictions(predictions, settings.output or default_output(settings.data))
    run_id = record_predictions(model, loaded, predictions, written, settings.experiment)
    return {
        "output": written,
        "rows": len(predictions),
        "model_version": model.version,
        "mlflow_run_id": run_id,
    }
