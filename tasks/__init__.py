"""Prefect tasks: I/O, logging and tracking around the pure ``training`` library."""

from tasks.environment import apply_defaults

apply_defaults()
