"""Per-user ranking metrics and error metrics, the way personalized-aesthetics papers report them.

Per-user SROCC and PLCC are averaged over users with at least ``min_ratings`` ratings and some
spread in their ratings; a user whose predictions are all equal (a global-mean model) gets a
correlation of 0 — no ranking information. Pairwise accuracy is the share of a user's image
pairs with different ratings that the prediction orders the same way; ties in the prediction
count half. Pairs are pooled over users (a user with more pairs weighs more), as PAMELA reports.
"""

from __future__ import annotations

import numpy as np
import polars as pl

MIN_RATINGS = 5


def pairwise_counts(rating: np.ndarray, score: np.ndarray) -> tuple[float, int]:
    """(correctly ordered pairs with ties counted half, pairs with different ratings) for one user."""
    dr = np.sign(rating[:, None] - rating[None, :])
    ds = np.sign(score[:, None] - score[None, :])
    upper = np.triu(dr != 0, k=1)
    agree = (dr == ds) & (ds != 0)
    tie = ds == 0
    return float((agree[upper]).sum() + 0.5 * tie[upper].sum()), int(upper.sum())


def per_user(frame: pl.DataFrame, min_ratings: int = MIN_RATINGS) -> pl.DataFrame:
    """Per-user SROCC, PLCC and pair counts from a frame of participant_id, rating, score."""
    stats = (
        frame.group_by("participant_id", maintain_order=True)
        .agg(
            n=pl.len(),
            rating_spread=pl.col("rating").std(),
            score_spread=pl.col("score").std(),
            srocc=pl.corr("rating", "score", method="spearman"),
            plcc=pl.corr("rating", "score", method="pearson"),
            rating_values=pl.col("rating"),
            score_values=pl.col("score"),
        )
        .filter((pl.col("n") >= min_ratings) & (pl.col("rating_spread") > 0))
        .with_columns(
            # constant predictions carry no ranking: correlation 0, not NaN
            pl.when(pl.col("score_spread") > 0).then(pl.col(c)).otherwise(0.0).fill_nan(0.0).alias(c)
            for c in ("srocc", "plcc")
        )
    )
    pairs = [pairwise_counts(np.asarray(r, float), np.asarray(s, float))
             for r, s in zip(stats["rating_values"].to_list(), stats["score_values"].to_list())]
    return stats.select("participant_id", "n", "srocc", "plcc").with_columns(
        pairs_correct=pl.Series([p[0] for p in pairs], dtype=pl.Float64),
        pairs=pl.Series([p[1] for p in pairs], dtype=pl.Int64),
    )


def evaluate_scores(frame: pl.DataFrame, min_ratings: int = MIN_RATINGS) -> dict[str, float]:
    """All metrics of one model on one split.

    Parameters
    ----------
    frame : polars.DataFrame
        Columns ``participant_id``, ``rating`` and ``score`` (the prediction).

    Returns
    -------
    dict
        srocc, plcc, pairwise_acc, mae, rmse, n_ratings, n_users (users that count for the
        per-user metrics).
    """
    users = per_user(frame, min_ratings)
    err = (frame["score"] - frame["rating"]).to_numpy().astype(float)
    n_pairs = int(users["pairs"].sum()) if users.height else 0
    return {
        "srocc": float(users["srocc"].mean()) if users.height else float("nan"),
        "plcc": float(users["plcc"].mean()) if users.height else float("nan"),
        "pairwise_acc": float(users["pairs_correct"].sum() / n_pairs) if n_pairs else float("nan"),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "n_ratings": int(frame.height),
        "n_users": int(users.height),
    }
