"""The library's own exceptions: every bad input and every bad setting ends in one of these."""

from __future__ import annotations


class DataError(ValueError):
    """A data file that cannot be trained on; the message names the file, the column and the problem."""

    def __init__(self, source: str, problem: str, column: str | None = None) -> None:
        self.source = source
        self.column = column
        self.problem = problem
        where = f"{source}: column '{column}'" if column is not None else source
        super().__init__(f"{where}: {problem}")


class ConfigError(ValueError):
    """A training setting that cannot work (unknown optimizer, bad option, wrong init length)."""
