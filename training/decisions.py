"""Decisions on plain values: the best variant, the quality gate, and whether a challenger becomes champion.

Pure functions, unit-tested on their own; the registry task fetches the numbers, calls these and records
what they decided.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

Decision = Literal["first", "promoted", "kept", "blocked"]


def best(scores: Mapping[str, float]) -> str:
    """The name with the lowest score; a tie goes to the first in order; non-finite scores never win."""
    finite = {name: s for name, s in scores.items() if math.isfinite(s)}
    if not finite:
        raise ValueError("no finite score to choose from")
    return min(finite, key=finite.__getitem__)


def gate(rmse: float, max_rmse: float | None) -> bool:
    """True when a model passes the quality gate: no gate, or an RMSE at or below it."""
    return max_rmse is None or rmse <= max_rmse


def champion(challenger_mse: float, champion_mse: float | None) -> Decision:
    """``first`` without a champion; ``promoted`` only when strictly better; a tie keeps the incumbent."""
    if champion_mse is None:
        return "first"
    return "promoted" if challenger_mse < champion_mse else "kept"
