"""Batch prediction: raw readings in, Celsius out, from a registered model version chosen by alias."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from tasks.data import load_dataset
from tasks.errors import fail_cleanly
from tasks.predict import default_output, predict_rows, record_predictions, resolve_model, write_predictions
from tasks.record import check_tracking


@flow(name="predict", description="Predict Celsius for a file of raw readings with a registered model.")
@fail_cleanly()
def predict(
    data: str = "data/readings.csv",
    model_name: Annotated[str, Field(min_length=1)] = "thermometer",
    alias: Annotated[str, Field(min_length=1)] = "champion",
    output: str | None = None,
    experiment: Annotated[str, Field(min_length=1)] = "thermometer-predictions",
) -> dict[str, Any]:
    """Predict with ``model_name@alias`` for every row of ``data`` and write ``output``."""
    check_tracking()
    model = resolve_model(model_name, alias)
    loaded = load_dataset(data, model.features, None, keep_other_columns=True)
    predictions = predict_rows(model, loaded)
    written = write_predictions(predictions, output or default_output(data))
    run_id = record_predictions(model, loaded, predictions, written, experiment)
    return {
        "output": written,
        "rows": len(predictions),
        "model_version": model.version,
        "mlflow_run_id": run_id,
    }
