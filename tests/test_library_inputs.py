"""The library's own entry points hold a script's tables to the rules a ratings file meets."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pamela_lite.data import Embeddings
from pamela_lite.errors import InputError
from pamela_lite.model import PersonalScorer
from pamela_lite.protocol import evaluate_models, kshot_split

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


@pytest.mark.parametrize("states, problem", [
    ((["x", "y"], "one row"), "row\\(s\\) of"),  # an IndexError before
    (("wrong", None), "row\\(s\\) of"),
    ((["x"], "nan"), "NaN or infinite"),  # NaN scores, clipped to nothing
])
def test_predict_checks_the_states_it_is_handed(fitted, dataset, states, problem):
    pairs = pl.DataFrame({"participant_id": ["x"], "image_id": dataset.embeddings.ids.head(1).to_list()})
    width = fitted.state_dim
    given = {"one row": np.zeros((1, width)), "nan": np.full((1, width), np.nan), None: np.zeros((2, 3))}[states[1]]
    with pytest.raises(InputError, match=problem):
        fitted.predict(pairs, dataset.embeddings, states=(states[0] if states[0] != "wrong" else ["x", "y"], given))


def test_an_unknown_person_in_predict_is_pointed_to_fold_in(fitted, dataset):
    pairs = pl.DataFrame({"participant_id": ["stranger"], "image_id": dataset.embeddings.ids.head(1).to_list()})
    with pytest.raises(InputError, match="in Python fold_in or add_users"):
        fitted.predict(pairs, dataset.embeddings)


@pytest.mark.parametrize("name", ["model.json", "users.npz", "../outside.txt", "sub/x.txt"])
def test_save_refuses_extra_files_that_would_replace_or_escape_the_model(fitted, tmp_path, name):
    # "model.json" replaced the model's own file; "../outside.txt" was written beside the folder
    with pytest.raises(InputError, match="is a model file or not a plain file name"):
        fitted.save(tmp_path / "m", extra_files={name: "x"})
    assert not (tmp_path / "m").exists() and not (tmp_path / "outside.txt").exists()


@pytest.mark.parametrize("threads", ["2", 2.7, 0, -1, True])
def test_n_threads_is_checked_like_every_other_hyperparameter(dataset, threads):
    with pytest.raises(InputError, match="n_threads must be a whole number >= 1"):
        PersonalScorer(n_threads=threads).fit(_train(dataset), dataset.embeddings)


def test_evaluate_models_reads_one_split_name_and_refuses_unknown_ones(fitted, dataset):
    # "test_seen" as a string iterated over its letters and returned nothing
    one = evaluate_models({"m": fitted}, dataset, kshots=5, splits="test_unseen")
    assert {(r["split"], r["k"]) for r in one} == {("test_unseen", 5)}
    with pytest.raises(InputError, match="unknown split"):
        evaluate_models({"m": fitted}, dataset, splits=("tset_seen",))


@pytest.mark.parametrize("k", [-1, 2.5, "5"])
def test_kshot_split_refuses_a_k_that_is_not_a_count(dataset, k):
    with pytest.raises(InputError, match="must be a whole number >= 0"):
        kshot_split(dataset.split("test_unseen"), k)


def test_add_users_keeps_an_age_range_as_years(fitted, dataset):
    # fold_in read "25-35" but add_users then failed storing it (a strict Float64 cast)
    model = PersonalScorer(**fitted.get_params())
    model.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
    context = pl.DataFrame({"participant_id": ["new"], "image_id": dataset.embeddings.ids.head(1).to_list(),
                            "rating": [3], "age": ["25-35"]})
    model.add_users(context, dataset.embeddings)
    assert model.ratings_.filter(pl.col("participant_id") == "new")["age"].to_list() == [30.0]


def test_a_scale_read_off_the_data_covers_the_validation_ratings_too(dataset):
    # the training ratings' range alone refused a validation rating at the top of the scale
    train, validation = _train(dataset), dataset.split("val_seen")
    top = dataset.scale.high
    train = train.with_columns(pl.when(pl.col("rating") == top).then(top - 1).otherwise(pl.col("rating")).alias("rating"))
    model = PersonalScorer(random_state=0, **TINY, use_head=False).fit(train, dataset.embeddings,
                                                                        validation=validation)
    assert model.fitted_.scale == (dataset.scale.low, top)


def test_embeddings_refuse_ids_of_mixed_types():
    with pytest.raises(InputError, match="mixed types"):
        Embeddings([1, "a"], np.zeros((2, 3), dtype=np.float32))


def test_valid_forms_the_checks_must_not_refuse(fitted, dataset, exported):
    # a regression trial: each of these worked before the library checks, and must still
    from pamela_lite.edge import EdgeScorer

    context = dataset.split("test_unseen").head(5)
    ids, states = fitted.fold_in(context, dataset.embeddings)
    query = context.select("participant_id", "image_id")
    scored = fitted.predict(query, dataset.embeddings, states=(ids, states))
    assert np.array_equal(fitted.predict(query, dataset.embeddings, states=[ids, states]), scored)  # a list pair
    one = fitted.predict(query.head(1), dataset.embeddings, states=(ids[:1], states[0]))  # one state as a vector
    assert one[0] == scored[0]
    with_split = context.with_columns(split=pl.lit(None, pl.String))  # fold-in does not read the split
    assert np.array_equal(fitted.fold_in(with_split, dataset.embeddings)[1], states)
    edge = EdgeScorer(exported)
    rows = dataset.embeddings.matrix[:3]
    assert np.array_equal(edge.fold_in(rows, [3, 4, 5], age=np.array(34.0)), edge.fold_in(rows, [3, 4, 5], age=34.0))


def test_embeddings_take_python_and_numpy_integers_together_as_one_kind():
    made = Embeddings([1, np.int64(2)], np.zeros((2, 3), dtype=np.float32))
    assert made.ids.to_list() == [1, 2]
