"""Operations: starting and stopping the local Prefect and MLflow servers (used by make and by the tests)."""
