"""Prefect flows: composition only. Entry points apply the environment (``tasks.environment``) first."""
