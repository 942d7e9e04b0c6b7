"""The evaluation protocol: seen splits scored directly, unseen splits k-shot.

For a split of users not seen in training, each user's ratings are divided by a seeded draw into
k context ratings (folded in, no refit) and the rest (scored). k = 0 uses demographics only.
Every figure can be set beside the demo's noise ceiling: the same metrics computed from the
true expected rating, the best any model could score on those rows.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from .data import SPLITS, Dataset, person_demographics
from .errors import InputError, preview
from .metrics import MIN_RATINGS, evaluate_scores
from .model import PersonalScorer

log = logging.getLogger("pamela_lite")

SEEN_SPLITS = ("val_seen", "test_seen")
UNSEEN_SPLITS = ("val_unseen", "test_unseen")


def kshot_split(frame: pl.DataFrame, k: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per user, a seeded choice of `k` ratings as context; the rest are the query.

    Users with k or fewer ratings have nothing left to score and drop out of the query.
    """
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 0:
        raise InputError(None, f"k (context ratings per person) must be a whole number >= 0, not {k!r}")
    rng = np.random.default_rng(seed)
    keyed = frame.with_columns(_draw=pl.Series(rng.random(frame.height)))
    keyed = keyed.with_columns(_rank=pl.col("_draw").rank("ordinal").over("participant_id"))
    context = keyed.filter(pl.col("_rank") <= k).drop("_draw", "_rank")
    query = keyed.filter(pl.col("_rank") > k).drop("_draw", "_rank")
    return context, query


def score_rows(model: PersonalScorer, dataset: Dataset, split: str, k: int | None = None,
               seed: int = 0) -> pl.DataFrame:
    """Rows of one split with the model's ``score``; for unseen splits, after k-shot fold-in."""
    frame = dataset.split(split)
    if k is None:
        query = frame.filter(pl.col("participant_id").is_in(model.users_))
        states = None
    else:
        context, query = kshot_split(frame, k, seed)
        query = query.filter(pl.len().over("participant_id") >= 2)  # one rating left ranks nothing
        users = person_demographics(frame)
        states = model.fold_in(context, dataset.embeddings, users=users)
    if query.height == 0:
        return query.with_columns(score=pl.lit(None, dtype=pl.Float64))
    return query.with_columns(score=pl.Series(model.predict(query, dataset.embeddings, states)))


def ceiling_rows(dataset: Dataset, rows: pl.DataFrame) -> pl.DataFrame | None:
    """The same rows scored by the demo's true expected rating (None without ground truth)."""
    if dataset.truth is None:
        return None
    truth = dataset.truth.select("participant_id", "image_id", score=pl.col("expected_rating"))
    joined = rows.drop("score", strict=False).join(truth, on=["participant_id", "image_id"], how="inner")
    return joined if joined.height == rows.height else None


def evaluation_cases(dataset: Dataset, kshots: tuple[int, ...], splits=("test_seen", "test_unseen")):
    """(split, k) pairs to evaluate: seen splits once, unseen splits at each k.

    A user with k + 1 or fewer ratings has fewer than two left to rank at that k and is skipped
    (:func:`score_rows`), with one line saying how many were; a k no user has enough ratings for
    is left out.
    """
    for split in splits:
        if not dataset.has_split(split):
            continue
        if split not in UNSEEN_SPLITS:
            yield split, None
            continue
        counts = dataset.split(split).group_by("participant_id").len()["len"]
        for k in kshots:
            short = int((counts <= k + 1).sum())
            if short:
                log.warning(f"warning: {split} k={k}: {short} of {len(counts)} user(s) have {k + 1} or fewer ratings, "
                            f"fewer than two left to rank: " + ("skipped" if short < len(counts) else
                                                               "this k is left out"))
            if short < len(counts):
                yield split, k


def evaluate_models(models: dict[str, PersonalScorer], dataset: Dataset, kshots=(0, 10, 50),
                    splits=("test_seen", "test_unseen"), seed: int = 0) -> list[dict]:
    """One row of metrics per (model, split, k), plus a ``noise ceiling`` row when known.

    `splits` is a sequence of split names (or one name, or "a,b" text); `kshots` a sequence of
    context sizes (or one).
    """
    splits = tuple(s.strip() for s in splits.split(",")) if isinstance(splits, str) else tuple(splits)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise InputError(None, f"unknown split(s) {preview(unknown)}; choose from {', '.join(SPLITS)}")
    kshots = (kshots,) if isinstance(kshots, (int, np.integer)) else tuple(kshots)
    for model in models.values():
        getattr(model, "_check_fitted", lambda: None)()  # a PersonalScorer says so when it is not fitted
    rows = []
    for split, k in evaluation_cases(dataset, kshots, splits):
        scored = None
        for name, model in models.items():
            mine = score_rows(model, dataset, split, k, seed)
            if mine.height == 0:  # only a seen split can be empty: people the model was not fitted on
                log.warning(f"warning: {split}: none of its {dataset.split(split)['participant_id'].n_unique()} "
                            f"people is known to {name}, which was fitted on others: left out")
                continue
            scored = mine
            rows.append({"model": name, "split": split, "k": k, **evaluate_scores(scored)})
        ceiling = ceiling_rows(dataset, scored) if scored is not None else None
        if ceiling is not None:
            rows.append({"model": "noise ceiling", "split": split, "k": k, **evaluate_scores(ceiling)})
    return rows


FEW_PEOPLE = 10  # below it a split's per-user mean is a rough figure, and the table says so


def few_people_note(rows: list[dict]) -> str | None:
    """Note lines naming the splits scored on fewer than FEW_PEOPLE people, and apart those where
    nobody could be ranked (None if none); PAMELA's unseen splits have 7 and 3-4."""
    small: dict[str, list[int]] = {}
    for r in rows:
        if r["n_users"] < FEW_PEOPLE:
            small.setdefault(r["split"], []).append(r["n_users"])
    if not small:
        return None
    # "has 0 people" read as an empty split when it held ratings: say what the count counts
    nobody = [split for split, counts in small.items() if max(counts) == 0]
    small = {split: counts for split, counts in small.items() if split not in nobody}

    def people(counts):  # the range over k: users with too few ratings drop out at larger k
        low, high = min(counts), max(counts)
        return f"{low if low == high else f'{low}-{high}'} {'person' if high == 1 else 'people'}"

    notes = []
    if small:
        counts = " and ".join(f"{split} has {people(n)}" for split, n in small.items())
        notes.append(f"note: {counts}: rough figures (benchmarks/accuracy.py gives intervals and leave-users-out CV)")
    if nobody:
        notes.append(f"note: in {' and '.join(nobody)} nobody has the {MIN_RATINGS} or more ratings, not all equal, "
                     f"that per-person SROCC, PLCC and pair accuracy need (nan); MAE and RMSE cover every rating")
    return "\n".join(notes)


def format_table(rows: list[dict]) -> str:
    """A plain-text table, one line per row, for the terminal and the README; last lines say when
    a split was scored on few people (:func:`few_people_note`). Without rows, one line says so."""
    if not rows:
        return "nothing scored: the data has no ratings in these splits (or no one with two left to rank)"
    header = f"{'split':<12} {'k':>3}  {'model':<20} {'SROCC':>6} {'PLCC':>6} {'pair acc':>8} {'MAE':>6} {'RMSE':>6} {'users':>5}"
    lines = [header, "-" * len(header)]
    for r in rows:
        k = "" if r["k"] is None else str(r["k"])
        lines.append(f"{r['split']:<12} {k:>3}  {r['model']:<20} {r['srocc']:6.3f} {r['plcc']:6.3f} "
                     f"{r['pairwise_acc']:8.3f} {r['mae']:6.3f} {r['rmse']:6.3f} {r['n_users']:5d}")
    note = few_people_note(rows)
    return "\n".join(lines + ([note] if note else []))
