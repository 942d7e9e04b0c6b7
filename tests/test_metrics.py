"""Per-user ranking metrics on hand-checked examples."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pamela_lite.metrics import evaluate_scores, pairwise_counts


def test_pairwise_counts_ties_in_prediction_count_half():
    # pairs with different ratings: (0,1), (0,2), (1,2) → ordered right, tied, wrong
    correct, pairs = pairwise_counts(np.array([1, 2, 3]), np.array([0.0, 1.0, 0.0]))
    assert pairs == 3
    assert correct == pytest.approx(1 + 0.5 + 0)


def test_pairs_with_equal_ratings_do_not_count():
    correct, pairs = pairwise_counts(np.array([2, 2, 3]), np.array([5.0, 1.0, 9.0]))
    assert pairs == 2 and correct == 2


def _frame(users, ratings, scores):
    return pl.DataFrame({"participant_id": users, "rating": ratings, "score": scores})


def test_perfect_ranking_scores_one():
    r = [1, 2, 3, 4, 5] * 2
    m = evaluate_scores(_frame(["a"] * 5 + ["b"] * 5, r, [x * 0.1 for x in r]))
    assert m["srocc"] == pytest.approx(1.0) and m["pairwise_acc"] == 1.0 and m["n_users"] == 2


def test_constant_prediction_has_no_ranking_information():
    m = evaluate_scores(_frame(["a"] * 5, [1, 2, 3, 4, 5], [3.0] * 5))
    assert m["srocc"] == 0.0 and m["pairwise_acc"] == 0.5
    assert m["mae"] == pytest.approx(1.2)


def test_users_with_few_or_flat_ratings_are_left_out_of_per_user_metrics():
    frame = _frame(["few"] * 3 + ["flat"] * 6 + ["ok"] * 5,
                   [1, 2, 3] + [4] * 6 + [1, 2, 3, 4, 5], list(range(14)))
    assert evaluate_scores(frame)["n_users"] == 1
