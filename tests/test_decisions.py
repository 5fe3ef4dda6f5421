"""The registry's decisions as pure functions: the best variant, the quality gate, the champion rule."""

from __future__ import annotations

import math

import pytest

from training.decisions import best, champion, gate


def test_the_best_is_the_lowest_score_and_a_tie_goes_to_the_first():
    assert best({"manual": 3.0, "autograd": 2.0, "optimizer": 2.5}) == "autograd"
    assert best({"manual": 2.0, "autograd": 2.0}) == "manual"


def test_a_non_finite_score_never_wins_and_none_at_all_is_an_error():
    assert best({"manual": math.nan, "autograd": math.inf, "optimizer": 1e9}) == "optimizer"
    with pytest.raises(ValueError, match="no finite score"):
        best({"manual": math.inf})


@pytest.mark.parametrize(
    ("rmse", "limit", "passes"),
    [(1.0, None, True), (1.0, 1.0, True), (1.0001, 1.0, False), (math.nan, 1.0, False)],
)
def test_the_gate_passes_at_or_below_the_limit(rmse, limit, passes):
    assert gate(rmse, limit) is passes


@pytest.mark.parametrize(
    ("challenger", "incumbent", "decision"),
    [
        (3.0, None, "first"),
        (2.9, 3.0, "promoted"),
        (3.0, 3.0, "kept"),
        (3.1, 3.0, "kept"),
        (math.nan, 3.0, "kept"),
    ],
)
def test_only_a_strictly_better_challenger_takes_the_champion_alias(challenger, incumbent, decision):
    assert champion(challenger, incumbent) == decision
