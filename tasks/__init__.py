"""Prefect tasks and the Prefect-free modules they call: I/O, logging and tracking around ``training``."""
