"""Per-user ranking metrics and error metrics, the way personalized-aesthetics papers report them.

Per-user SROCC, PLCC and Kendall tau-b are averaged over users with at least ``min_ratings``
ratings and some spread in their ratings; a user whose predictions are all equal (a global-mean
model) gets a correlation of 0 — no ranking information. Pairwise accuracy is the share of a
user's image pairs with different ratings that the prediction orders the same way; ties in the
prediction count half. Pairs are pooled over users (a user with more pairs weighs more), as
PAMELA reports.

Beyond those, for a protocol reviewers would accept:

* **personalization share** — per user, the SROCC between the personal part of the rating (the
  rating less the image's mean rating by the *other* raters, leave-one-out) and the personal part
  of the score (the score less the population head's score on the same row): does a model rank
  what is personal, not only the shared appeal? The population head scores 0 by construction.
* **best-of-N regret** — per user, the best rating among their rated images less the rating of
  the image the model puts on top (tied top scores: their mean rating), in rating units and in
  units of the user's rating SD. Lower is better.
* **paired bootstrap** — the mean per-user difference of two models on the same users, a 95%
  interval from resampling users and the share of resamples at or below 0 (one-sided p).
* **per-group errors** — MAE and per-user SROCC by a demographic group (see :func:`age_band`).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.stats import kendalltau

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

    Raises
    ------
    ValueError
        When a rating or score is missing, NaN or infinite: the metrics would disagree about
        such a row (the correlations skip it, the errors become NaN), so it is refused instead.
    """
    _check_finite(frame)
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


def _check_finite(frame: pl.DataFrame) -> None:
    for column in ("rating", "score"):
        values = frame[column].cast(pl.Float64).to_numpy()  # nulls become NaN
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise ValueError(f"{bad} of {len(values)} {column}s are missing, NaN or infinite; "
                             f"drop or fix those rows before scoring (the metrics would disagree about them)")


def kendall_tau_b(rating: np.ndarray, score: np.ndarray) -> float:
    """Kendall's tau-b between one user's ratings and scores.

    Parameters
    ----------
    rating, score : numpy.ndarray
        The user's ratings and the model's scores, row by row.

    Returns
    -------
    float
        scipy's tau-b (ties in either variable corrected); 0 when the scores (or the ratings)
        are all equal — no ranking information, as for SROCC.
    """
    rating, score = np.asarray(rating, float), np.asarray(score, float)
    if len(score) < 2 or np.ptp(score) == 0 or np.ptp(rating) == 0:
        return 0.0
    tau = kendalltau(rating, score).statistic
    return 0.0 if np.isnan(tau) else float(tau)


def _counted_users(frame: pl.DataFrame, min_ratings: int) -> pl.DataFrame:
    """Per user the ratings and scores as lists, for the users :func:`per_user` counts."""
    return (
        frame.group_by("participant_id", maintain_order=True)
        .agg(n=pl.len(), rating_spread=pl.col("rating").std(),
             rating_values=pl.col("rating"), score_values=pl.col("score"))
        .filter((pl.col("n") >= min_ratings) & (pl.col("rating_spread") > 0))
    )


def per_user_kendall(frame: pl.DataFrame, min_ratings: int = MIN_RATINGS) -> pl.DataFrame:
    """Per-user Kendall tau-b for the same users as :func:`per_user`.

    Parameters
    ----------
    frame : polars.DataFrame
        Columns ``participant_id``, ``rating`` and ``score``.
    min_ratings : int
        Users with fewer ratings, or all ratings equal, are left out.

    Returns
    -------
    polars.DataFrame
        ``participant_id``, ``kendall``.
    """
    users = _counted_users(frame, min_ratings)
    taus = [kendall_tau_b(r, s) for r, s in zip(users["rating_values"].to_list(), users["score_values"].to_list())]
    return users.select("participant_id").with_columns(kendall=pl.Series(taus, dtype=pl.Float64))


def leave_one_out_image_mean(frame: pl.DataFrame, reference: pl.DataFrame | None = None) -> pl.Series:
    """Per row, the image's mean rating by the other raters of that image.

    Parameters
    ----------
    frame : polars.DataFrame
        Rows with ``participant_id`` and ``image_id``.
    reference : polars.DataFrame, optional
        The ratings (``participant_id``, ``image_id``, ``rating``) to average, e.g. the whole
        split; default: `frame` itself. The row's own participant is never counted.

    Returns
    -------
    polars.Series
        ``others_mean``, one value per row of `frame`, in order; null where no one else rated the
        image.
    """
    ref = (frame if reference is None else reference).select(
        "participant_id", "image_id", pl.col("rating").cast(pl.Float64))
    totals = ref.group_by("image_id").agg(_sum=pl.col("rating").sum(), _n=pl.len())
    own = ref.rename({"rating": "_own"})
    rows = (frame.select("participant_id", "image_id").with_row_index("_row")
            .join(totals, on="image_id", how="left")
            .join(own, on=["participant_id", "image_id"], how="left")
            .sort("_row"))
    others_n = pl.col("_n").fill_null(0) - pl.col("_own").is_not_null().cast(pl.Int64)
    others_sum = pl.col("_sum").fill_null(0.0) - pl.col("_own").fill_null(0.0)
    return rows.select(pl.when(others_n > 0).then(others_sum / others_n).alias("others_mean")).to_series()


def per_user_personalization(frame: pl.DataFrame, population: str = "population_score",
                             reference: pl.DataFrame | None = None, min_rows: int = MIN_RATINGS) -> pl.DataFrame:
    """Per user, the SROCC of the personal part of the rating and of the score.

    The personal part of a rating is the rating less the image's mean rating by the other
    raters (:func:`leave_one_out_image_mean`); of a score, the score less the population head's
    score for the same row. Rows whose image no one else rated are dropped.

    Parameters
    ----------
    frame : polars.DataFrame
        ``participant_id``, ``image_id``, ``rating``, ``score`` and the `population` column.
    population : str
        Column with the population head's score for each row.
    reference : polars.DataFrame, optional
        Ratings the leave-one-out image means come from (default: `frame`).
    min_rows : int
        Users with fewer remaining rows, or no spread in the personal part of their ratings,
        are left out.

    Returns
    -------
    polars.DataFrame
        ``participant_id``, ``n`` (rows used), ``personalization`` (0 when the personal part of
        the score is constant, as for the population head itself).
    """
    rows = (frame.with_columns(leave_one_out_image_mean(frame, reference))
            .filter(pl.col("others_mean").is_not_null() & pl.col(population).is_not_null())
            .with_columns(_personal_rating=pl.col("rating") - pl.col("others_mean"),
                          _personal_score=pl.col("score") - pl.col(population)))
    return (
        rows.group_by("participant_id", maintain_order=True)
        .agg(n=pl.len(), _rating_spread=pl.col("_personal_rating").std(),
             _score_spread=pl.col("_personal_score").std(),
             personalization=pl.corr("_personal_rating", "_personal_score", method="spearman"))
        .filter((pl.col("n") >= min_rows) & (pl.col("_rating_spread") > 0))
        .with_columns(pl.when(pl.col("_score_spread") > 0).then(pl.col("personalization"))
                      .otherwise(0.0).fill_nan(0.0).alias("personalization"))
        .select("participant_id", "n", "personalization")
    )


def per_user_regret(frame: pl.DataFrame, min_ratings: int = MIN_RATINGS) -> pl.DataFrame:
    """Per user, the best-of-N regret of picking the image the model scores highest.

    Parameters
    ----------
    frame : polars.DataFrame
        Columns ``participant_id``, ``rating`` and ``score``.
    min_ratings : int
        The users :func:`per_user` counts (enough ratings, some spread).

    Returns
    -------
    polars.DataFrame
        ``participant_id``, ``regret`` (the user's best rating less the rating of the top-scored
        image; with tied top scores, less their mean rating) and ``regret_sd`` (regret divided by
        the user's rating SD).
    """
    top = pl.col("score") == pl.col("score").max()
    rating = pl.col("rating").cast(pl.Float64)
    return (
        frame.group_by("participant_id", maintain_order=True)
        .agg(n=pl.len(), _sd=rating.std(), regret=rating.max() - rating.filter(top).mean())
        .filter((pl.col("n") >= min_ratings) & (pl.col("_sd") > 0))
        .with_columns(regret_sd=pl.col("regret") / pl.col("_sd"))
        .select("participant_id", "regret", "regret_sd")
    )


def _mean(values: pl.Series) -> float:
    return float(values.mean()) if len(values) else float("nan")


def ranking_metrics(frame: pl.DataFrame, population: str | None = None, reference: pl.DataFrame | None = None,
                    min_ratings: int = MIN_RATINGS) -> dict[str, float]:
    """Kendall tau-b, personalization share and best-of-N regret of one model on one split.

    Parameters
    ----------
    frame : polars.DataFrame
        ``participant_id``, ``image_id``, ``rating``, ``score`` (and `population`, if given).
    population : str, optional
        Column with the population head's score per row; without it the personalization share
        is NaN.
    reference : polars.DataFrame, optional
        Ratings for the leave-one-out image means (default: `frame`).

    Returns
    -------
    dict
        kendall, personalization, personalization_users, regret, regret_sd (means over users).
    """
    regret = per_user_regret(frame, min_ratings)
    out = {"kendall": _mean(per_user_kendall(frame, min_ratings)["kendall"]),
           "personalization": float("nan"), "personalization_users": 0,
           "regret": _mean(regret["regret"]), "regret_sd": _mean(regret["regret_sd"])}
    if population is not None:
        share = per_user_personalization(frame, population, reference, min_ratings)
        out.update(personalization=_mean(share["personalization"]), personalization_users=share.height)
    return out


def paired_differences(a: pl.DataFrame, b: pl.DataFrame, value: str = "srocc") -> np.ndarray:
    """Per-user ``a - b`` of a per-user metric, on the users both tables have."""
    joined = a.select("participant_id", value).join(b.select("participant_id", value), on="participant_id",
                                                     suffix="_b")
    return (joined[value] - joined[f"{value}_b"]).to_numpy().astype(float)


def paired_bootstrap(differences: np.ndarray, seed: int = 0, n_resamples: int = 2000) -> dict[str, object]:
    """Bootstrap over users of the mean of paired per-user differences.

    Parameters
    ----------
    differences : numpy.ndarray
        One difference per user (model A less model B, same user).
    seed : int
        Seed of the resampling.
    n_resamples : int
        Bootstrap resamples of the users.

    Returns
    -------
    dict
        diff (observed mean), ci95 ([2.5, 97.5] percentiles of the resampled means), p (share of
        resampled means <= 0: a one-sided p for "A beats B"), n_users. With fewer than 2 users
        there is nothing to resample: the interval and p are NaN.
    """
    d = np.asarray(differences, float)
    if d.size < 2:
        return {"diff": float(d.mean()) if d.size else float("nan"), "ci95": [float("nan"), float("nan")],
                "p": float("nan"), "n_users": int(d.size)}
    means = d[np.random.default_rng(seed).integers(0, d.size, (n_resamples, d.size))].mean(axis=1)
    return {"diff": float(d.mean()), "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "p": float((means <= 0).mean()), "n_users": int(d.size)}


def age_band(column: str = "age") -> pl.Expr:
    """Age in bands: ``<30``, ``30-49``, ``50+``; ``missing`` where unknown."""
    age = pl.col(column)
    return (pl.when(age.is_null()).then(pl.lit("missing")).when(age < 30).then(pl.lit("<30"))
            .when(age < 50).then(pl.lit("30-49")).otherwise(pl.lit("50+")))


def group_errors(frame: pl.DataFrame, group: pl.Expr, min_ratings: int = MIN_RATINGS) -> pl.DataFrame:
    """MAE and mean per-user SROCC per group of users.

    Parameters
    ----------
    frame : polars.DataFrame
        ``participant_id``, ``rating``, ``score`` and whatever `group` reads.
    group : polars.Expr
        The group of each row (e.g. ``pl.col("gender")`` or :func:`age_band`); null is
        ``missing``. A user is put in the group of their first row.

    Returns
    -------
    polars.DataFrame
        ``group``, ``users`` (distinct users), ``ratings``, ``mae`` (over the group's ratings),
        ``srocc`` (mean over the group's users :func:`per_user` counts; null if none),
        ``srocc_users``; sorted by group.
    """
    labelled = frame.with_columns(group.cast(pl.String).fill_null("missing").alias("group"))
    errors = labelled.group_by("group").agg(users=pl.col("participant_id").n_unique(), ratings=pl.len(),
                                            mae=(pl.col("score") - pl.col("rating")).abs().mean())
    membership = labelled.unique("participant_id", keep="first").select("participant_id", "group")
    srocc = (per_user(labelled, min_ratings).join(membership, on="participant_id")
             .group_by("group").agg(srocc=pl.col("srocc").mean(), srocc_users=pl.len()))
    return errors.join(srocc, on="group", how="left").sort("group")
