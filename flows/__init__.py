"""Prefect flows: composition only."""

import tasks  # noqa: F401  (applies the embedded defaults before prefect is imported)
