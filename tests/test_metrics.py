"""Per-user ranking metrics on hand-checked examples."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.stats import kendalltau

from pamela_lite.metrics import (age_band, evaluate_scores, group_errors, kendall_tau_b, leave_one_out_image_mean,
                                 paired_bootstrap, paired_differences, pairwise_counts, per_user,
                                 per_user_kendall, per_user_personalization, per_user_regret, ranking_metrics)


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


def test_kendall_tau_b_is_scipys_on_a_hand_example_with_ties():
    rating, score = np.array([1, 2, 2, 3, 5, 4]), np.array([0.1, 0.3, 0.2, 0.2, 0.9, 0.9])
    assert kendall_tau_b(rating, score) == pytest.approx(kendalltau(rating, score).statistic)
    assert kendall_tau_b(rating, score) != pytest.approx(kendalltau(rating, score, variant="c").statistic)


def test_kendall_tau_b_is_zero_for_constant_predictions():
    frame = _frame(["a"] * 5, [1, 2, 3, 4, 5], [3.0] * 5)
    assert per_user_kendall(frame)["kendall"].to_list() == [0.0]


def test_kendall_counts_the_same_users_as_srocc():
    frame = _frame(["few"] * 3 + ["flat"] * 6 + ["ok"] * 5,
                   [1, 2, 3] + [4] * 6 + [1, 2, 3, 4, 5], list(range(14)))
    assert per_user_kendall(frame)["participant_id"].to_list() == per_user(frame)["participant_id"].to_list()


def test_leave_one_out_excludes_the_users_own_rating():
    frame = pl.DataFrame({"participant_id": ["a", "b", "c", "a"], "image_id": [1, 1, 1, 2], "rating": [5, 1, 3, 4]})
    others = leave_one_out_image_mean(frame).to_list()
    assert others == [pytest.approx(2.0), pytest.approx(4.0), pytest.approx(3.0), None]


def test_leave_one_out_takes_other_raters_from_the_reference():
    rows = pl.DataFrame({"participant_id": ["a"], "image_id": [1], "rating": [5]})
    reference = pl.DataFrame({"participant_id": ["a", "b", "c"], "image_id": [1, 1, 1], "rating": [5, 1, 2]})
    assert leave_one_out_image_mean(rows, reference).to_list() == [pytest.approx(1.5)]


def _shared_world(n_users=12, n_images=30, seed=0):
    """Every user rates every image: rating = image appeal + personal taste + noise, on 1-5."""
    rng = np.random.default_rng(seed)
    appeal, taste = rng.normal(0, 1, n_images), rng.normal(0, 1, (n_users, n_images))
    rating = np.clip(np.round(3 + appeal + taste), 1, 5)
    return pl.DataFrame({"participant_id": np.repeat([f"u{u}" for u in range(n_users)], n_images),
                         "image_id": np.tile(np.arange(n_images), n_users), "rating": rating.ravel(),
                         "population_score": np.tile(3 + appeal, n_users)})


def test_personalization_share_is_one_for_scores_that_rank_the_personal_part():
    world = _shared_world()
    personal = world["rating"] - leave_one_out_image_mean(world)
    share = per_user_personalization(world.with_columns(score=personal + world["population_score"]))
    # (personal + population) - population is personal up to float rounding, which can split ties
    assert share.height == 12 and share["personalization"].to_numpy() == pytest.approx(1.0, abs=2e-3)


def test_personalization_share_is_zero_for_the_population_head():
    world = _shared_world()
    share = per_user_personalization(world.with_columns(score=pl.col("population_score")))
    assert share.height == 12 and (share["personalization"] == 0.0).all()


def test_personalization_share_drops_images_no_one_else_rated():
    world = _shared_world(n_users=2, n_images=8)
    alone = world.filter(pl.col("participant_id") == "u0").with_columns(image_id=pl.col("image_id") + 100)
    frame = pl.concat([world, alone]).with_columns(score=pl.col("rating") * 1.0)
    assert per_user_personalization(frame)["n"].to_list() == [8, 8]


def test_regret_is_zero_when_the_best_image_is_scored_highest():
    frame = _frame(["a"] * 5, [2, 5, 3, 1, 4], [0.0, 9.0, 0.5, 0.1, 8.9])
    assert per_user_regret(frame)["regret"].to_list() == [0.0]


def test_regret_with_tied_top_scores_uses_their_mean_rating():
    # top score 0.9 tied on ratings 4 and 2 -> chosen 3.0; best rating 5 -> regret 2
    rating = [5, 4, 2, 3, 1]
    out = per_user_regret(_frame(["a"] * 5, rating, [0.5, 0.9, 0.9, 0.1, 0.0]))
    assert out["regret"].to_list() == [pytest.approx(2.0)]
    assert out["regret_sd"].to_list() == [pytest.approx(2.0 / np.std(rating, ddof=1))]


def test_ranking_metrics_without_population_scores_leave_personalization_out():
    m = ranking_metrics(_frame(["a"] * 5, [1, 2, 3, 4, 5], [0.1, 0.2, 0.3, 0.4, 0.5]))
    assert m["kendall"] == pytest.approx(1.0) and m["regret"] == 0.0
    assert np.isnan(m["personalization"]) and m["personalization_users"] == 0


def test_paired_differences_pair_the_same_users():
    a = pl.DataFrame({"participant_id": ["x", "y", "z"], "srocc": [0.5, 0.7, 0.9]})
    b = pl.DataFrame({"participant_id": ["z", "x"], "srocc": [0.4, 0.1]})
    assert sorted(paired_differences(a, b)) == pytest.approx([0.4, 0.5])


def test_paired_bootstrap_interval_holds_the_observed_difference():
    d = np.random.default_rng(1).normal(0.05, 0.3, 60)
    out = paired_bootstrap(d, seed=0)
    assert out["diff"] == pytest.approx(d.mean()) and out["ci95"][0] < out["diff"] < out["ci95"][1]
    assert out["n_users"] == 60 and paired_bootstrap(d, seed=0) == out  # seeded


def test_paired_bootstrap_p_is_small_for_a_clearly_better_model_and_large_for_a_worse_one():
    d = np.random.default_rng(2).normal(0.2, 0.1, 40)
    assert paired_bootstrap(d)["p"] < 0.01
    assert paired_bootstrap(-d)["p"] > 0.99


def test_paired_bootstrap_of_one_user_gives_no_interval():
    out = paired_bootstrap(np.array([0.3]))
    assert out["diff"] == pytest.approx(0.3) and np.isnan(out["p"]) and np.isnan(out["ci95"]).all()


def test_age_bands_and_missing_demographics():
    ages = pl.DataFrame({"age": [19.0, 30.0, 49.0, 50.0, None]})
    assert ages.select(age_band()).to_series().to_list() == ["<30", "30-49", "30-49", "50+", "missing"]


def test_group_errors_per_gender_with_a_missing_group():
    r = [1, 2, 3, 4, 5]
    frame = _frame(["a"] * 5 + ["b"] * 5 + ["c"] * 5, r * 3, [float(x) for x in r + [5 - x for x in r] + [3] * 5]).with_columns(
        gender=pl.Series(["f"] * 5 + ["m"] * 5 + [None] * 5))
    out = group_errors(frame, pl.col("gender"))
    assert out["group"].to_list() == ["f", "m", "missing"]
    assert out["srocc"].to_list() == pytest.approx([1.0, -1.0, 0.0])
    assert out["mae"].to_list() == pytest.approx([0.0, 2.6, 1.2]) and out["users"].to_list() == [1, 1, 1]


@pytest.mark.parametrize("column", ["score", "rating"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_a_missing_or_non_finite_value_is_refused_not_averaged_around(column, bad):
    frame = _frame(["a"] * 5, [1, 2, 3, 4, 5], [0.1, 0.2, 0.3, 0.4, 0.5])
    values = frame[column].cast(pl.Float64).to_list()
    values[2] = bad
    with pytest.raises(ValueError, match=f"1 of 5 {column}s are missing, NaN or infinite"):
        evaluate_scores(frame.with_columns(pl.Series(column, values, dtype=pl.Float64)))
