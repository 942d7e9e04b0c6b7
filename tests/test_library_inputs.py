"""The library's own entry points hold a script's tables to the rules a ratings file meets."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pamela_lite.data import Embeddings
from pamela_lite.errors import InputError
from pamela_lite.model import PersonalScorer

from .conftest import SMALL_MODEL

TINY = dict(SMALL_MODEL, head_trees=5, n_folds=2)


def _train(dataset):
    return dataset.split("train").select("participant_id", "image_id", "rating", "age", "gender", "nationality")


@pytest.mark.parametrize("change, scale, problem", [
    (None, (5, 1), "runs from low to high"),  # every prediction was the low end
    (None, (1, 3), "outside the scale 1-3"),  # predictions were clipped to a scale the data exceeds
    ("half", None, "not integers"),
    ("null", None, "have no rating"),
    ("duplicate", None, r"duplicated \(participant_id, image_id\)"),
    ("empty", None, "no ratings"),
])
def test_fit_refuses_what_a_ratings_file_would_be_refused_for(dataset, change, scale, problem):
    train = _train(dataset)
    if change == "half":
        train = train.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(2.5).otherwise(pl.col("rating"))
                                   .alias("rating"))
    elif change == "null":
        train = train.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(None).otherwise(pl.col("rating"))
                                   .alias("rating"))
    elif change == "duplicate":
        train = pl.concat([train, train.head(1)])
    elif change == "empty":
        train = train.head(0)
    with pytest.raises(InputError, match=problem):
        PersonalScorer(random_state=0, **TINY).fit(train, dataset.embeddings, scale)


def test_text_ratings_get_the_scale_of_their_numbers(dataset):
    # "5" < "9" as text: the scale came out wrong when read off text ratings
    train = _train(dataset).with_columns((pl.col("rating") * 2).cast(pl.String))  # "2" .. "10"
    model = PersonalScorer(random_state=0, **TINY, use_head=False).fit(train, dataset.embeddings)
    assert model.fitted_.scale == (2 * dataset.scale.low, 2 * dataset.scale.high)


def test_fit_reads_an_age_range_as_its_midpoint(dataset):
    train = _train(dataset).with_columns(age=pl.lit("25-35"))
    model = PersonalScorer(random_state=0, **TINY, use_head=False).fit(train, dataset.embeddings, dataset.scale)
    assert model.fitted_.prior.age_mean == 30.0


@pytest.mark.parametrize("bad, problem", [
    ("duplicate", "appear more than once"),  # once: every later image silently took another's vector
    ("length", "image ids for"),
    ("nan", "contain NaN or inf"),
])
def test_embeddings_built_in_memory_are_checked_as_a_file_is(dataset, bad, problem):
    ids, matrix = dataset.embeddings.ids, dataset.embeddings.matrix
    with pytest.raises(InputError, match=problem):
        if bad == "duplicate":
            Embeddings(pl.concat([ids, ids.head(1)]), np.vstack([matrix, matrix[:1]]))
        elif bad == "length":
            Embeddings(ids, matrix[:-1])
        else:
            broken = matrix.copy()
            broken[2, 0] = np.nan
            Embeddings(ids, broken)


def test_embeddings_take_lists_and_numpy_ids(dataset):
    ids = dataset.embeddings.ids.to_list()
    made = Embeddings(np.asarray(ids), dataset.embeddings.matrix)
    assert made.ids.to_list() == ids and Embeddings(ids, dataset.embeddings.matrix).ids.to_list() == ids


@pytest.mark.parametrize("rating, problem", [(None, "have no rating"), (2.5, "not integers"), (99, "outside the scale")])
def test_fold_in_refuses_a_context_rating_a_ratings_file_could_not_hold(fitted, dataset, rating, problem):
    # a null rating gave a NaN state, and the saved folder then refused to load
    image_ids = dataset.embeddings.ids.head(3).to_list()
    context = pl.DataFrame({"participant_id": ["new"] * 3, "image_id": image_ids, "rating": [3, rating, 4]},
                           schema_overrides={"rating": pl.Float64}, strict=False)
    with pytest.raises(InputError, match=problem):
        fitted.fold_in(context, dataset.embeddings)


def test_fold_in_reads_age_ranges_and_refuses_impossible_ages(fitted, dataset):
    empty = pl.DataFrame(schema={"participant_id": pl.String, "image_id": dataset.embeddings.ids.dtype,
                                 "rating": pl.Int64})
    ranged = fitted.fold_in(empty, dataset.embeddings, users=pl.DataFrame({"participant_id": ["a"], "age": ["25-35"]}))
    years = fitted.fold_in(empty, dataset.embeddings, users=pl.DataFrame({"participant_id": ["a"], "age": [30.0]}))
    np.testing.assert_array_equal(ranged[1], years[1])
    with pytest.raises(InputError, match="between 0 and 120"):
        fitted.fold_in(empty, dataset.embeddings, users=pl.DataFrame({"participant_id": ["a"], "age": [200.0]}))
