"""The personal scorer: fit/predict, fold-in, save/load, determinism, and that it learns."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from pamela_lite import demo
from pamela_lite.data import load_dataset
from pamela_lite.errors import InputError
from pamela_lite.protocol import evaluate_models, kshot_split
from pamela_lite.user_solver import als_fold_in, als_row_values
from pamela_lite.model import PersonalScorer

from .conftest import SMALL_MODEL


def test_predict_returns_one_score_per_pair_within_the_scale(fitted, dataset):
    pairs = dataset.split("test_seen")
    scores = fitted.predict(pairs, dataset.embeddings)
    assert scores.shape == (pairs.height,)
    assert scores.min() >= dataset.scale.low and scores.max() <= dataset.scale.high


def test_full_model_beats_population_head_on_unseen_images(fitted, dataset):
    pop = PersonalScorer(use_bias=False, use_taste=False, use_mf=False, use_head=False, **SMALL_MODEL)
    pop.fit(dataset.split("train"), dataset.embeddings, dataset.scale)
    rows = evaluate_models({"pop": pop, "full": fitted}, dataset, splits=("test_seen",))
    by_model = {r["model"]: r for r in rows}
    assert by_model["full"]["srocc"] > by_model["pop"]["srocc"] + 0.05
    assert by_model["full"]["srocc"] < by_model["noise ceiling"]["srocc"] + 0.05


def test_unknown_user_without_context_is_an_error(fitted, dataset):
    pairs = dataset.split("test_unseen").head(3)
    with pytest.raises(InputError, match="unknown to the model"):
        fitted.predict(pairs, dataset.embeddings)


def test_new_user_folds_in_from_k_ratings(fitted, dataset):
    frame = dataset.split("test_unseen")
    context, query = kshot_split(frame, 10, seed=0)
    assert context.group_by("participant_id").len()["len"].max() == 10
    states = fitted.fold_in(context, dataset.embeddings)
    scores = fitted.predict(query, dataset.embeddings, states)
    assert np.isfinite(scores).all() and scores.std() > 0


def test_zero_shot_user_gets_the_demographic_prior(fitted, dataset):
    users = dataset.split("test_unseen").unique("participant_id")
    ids, states = fitted.fold_in(users.head(0), dataset.embeddings, users=users)
    assert len(ids) == users.height
    head, prior = fitted.demographic_features(users)
    expected = fitted.fitted_.prior.states(prior)
    order = [ids.index(u) for u in users["participant_id"]]
    np.testing.assert_allclose(states[order, : expected.shape[1]], expected)


def test_refolding_a_known_user_reproduces_the_stored_state(fitted, dataset):
    # Known users' states are the fold-in of their training ratings against the final factors
    # (shrunk toward zero, not toward the prior), so the same solve must give them back.
    user = fitted.users_[0]
    own = dataset.split("train").filter(pl.col("participant_id") == user)
    prior = fitted.fitted_.prior
    model = copy.copy(fitted)
    model.fitted_ = replace(fitted.fitted_, prior=replace(prior, coef=prior.coef * 0, intercept=prior.intercept * 0))
    _, states = model.fold_in(own, dataset.embeddings)
    stored = fitted.user_states_[0]
    np.testing.assert_allclose(states[0], stored, rtol=1e-6, atol=1e-8)


def test_numpy_fold_in_matches_implicit_recalculate_user():
    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(0)
    alpha, reg = 2.0, 0.5
    rows = rng.normal(0, 1, (30, 12)) * (rng.random((30, 12)) > 0.3)
    model = AlternatingLeastSquares(factors=5, regularization=reg, alpha=alpha, iterations=3, random_state=0)
    model.fit(sp.csr_matrix(als_row_values(rows, alpha).astype(np.float32)), show_progress=False)
    signed = rows[4]
    ours = als_fold_in(np.asarray(model.item_factors, dtype=np.float64), signed, alpha, reg)
    theirs = model.recalculate_user(0, sp.csr_matrix(als_row_values(signed, alpha)[None, :].astype(np.float32)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)


def test_save_load_round_trip_gives_identical_scores(fitted, dataset, tmp_path):
    fitted.save(tmp_path / "m")
    loaded = PersonalScorer.load(tmp_path / "m")
    pairs = dataset.split("test_seen")
    np.testing.assert_array_equal(loaded.predict(pairs, dataset.embeddings), fitted.predict(pairs, dataset.embeddings))
    assert loaded.get_params() == fitted.get_params()


def test_a_catalogue_smaller_than_twice_the_prototypes_still_fits(tmp_path):
    # each out-of-fold fit once held fewer images than the 64 prototypes: k-means fitted every image
    # exactly, the assignment width was 0 and NaNs reached the factor model (exit 1 from fit)
    world = demo.write_world(tmp_path / "w", demo.DemoConfig(n_users=30, n_images=90, n_ratings=1200, dim=16, seed=1))
    data = load_dataset(world)
    model = PersonalScorer(random_state=0, n_threads=1).fit(data.split("train"), data.embeddings, data.scale)
    assert np.isfinite(model.predict(data.split("test_seen"), data.embeddings)).all()


@pytest.mark.parametrize("odd_ones", [0, 1])
def test_ratings_without_spread_fit_a_model_that_learns_no_taste(dataset, odd_ones):
    # every rating alike (or all but one, so some out-of-fold parts had none different) ended in
    # "unexpected LinAlgError: Singular matrix" (exit 1) from the taste prior's EM
    train = dataset.split("train").head(2000).with_columns(rating=pl.lit(3, dtype=pl.Int64))
    train = train.with_columns(rating=pl.when(pl.int_range(pl.len()) < odd_ones).then(4).otherwise(pl.col("rating")))
    model = PersonalScorer(random_state=0, **SMALL_MODEL).fit(train, dataset.embeddings, dataset.scale)
    scores = model.predict(train.tail(50), dataset.embeddings)
    assert np.isfinite(scores).all() and np.ptp(scores) < 0.05


def test_numpy_integer_hyperparameters_fit_save_and_load_as_the_same_model(dataset, fitted, tmp_path):
    # a grid search over np.arange hands numpy integers; they were refused as "not a number"
    numpy_params = {name: np.int64(value) if type(value) is int else value for name, value in SMALL_MODEL.items()}
    model = PersonalScorer(random_state=np.int64(0), **numpy_params).fit(
        dataset.split("train"), dataset.embeddings, dataset.scale, validation=dataset.split("val_seen"))
    model.save(tmp_path / "m")
    recorded = json.loads((tmp_path / "m" / "model.json").read_text())["params"]
    assert recorded["n_folds"] == 3 and recorded["random_state"] == 0
    pairs = dataset.split("test_seen")
    np.testing.assert_array_equal(PersonalScorer.load(tmp_path / "m").predict(pairs, dataset.embeddings),
                                  fitted.predict(pairs, dataset.embeddings))


@pytest.mark.parametrize("params, message", [
    ({"n_components": float("inf")}, "n_components must be a finite number, not Infinity"),
    ({"taste_rank": float("nan")}, "taste_rank must be a finite number, not NaN"),
    ({"use_mf": None}, "use_mf must be true or false, not null"),
    ({"n_folds": True}, "n_folds must be a number, not true"),
])
def test_bad_hyperparameters_are_named_in_the_spelling_of_params_json(params, message):
    with pytest.raises(InputError, match=message):
        PersonalScorer(**params)._check_params()


def test_saved_model_has_no_pickle(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    with np.load(tmp_path / "m" / "arrays.npz", allow_pickle=False) as arrays:
        assert all(arrays[name].dtype != object for name in arrays.files)


def test_corrupted_model_is_rejected(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    with open(tmp_path / "m" / "arrays.npz", "r+b") as fh:
        fh.seek(100)
        fh.write(b"garbage")
    with pytest.raises(InputError, match="corrupted"):
        PersonalScorer.load(tmp_path / "m")


def test_model_from_another_format_version_is_rejected(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 999
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="format version 999"):
        PersonalScorer.load(tmp_path / "m")


def test_a_model_saved_before_gain_bin_existed_loads_as_fitted_unweighted(fitted, tmp_path):
    old = copy.deepcopy(fitted)
    del old.fitted_.params["gain_bin"]  # what model.json held before the parameter existed
    assert PersonalScorer.load(old.save(tmp_path / "m")).gain_bin == 0
    assert PersonalScorer.load(fitted.save(tmp_path / "n")).gain_bin == fitted.gain_bin == 32


def test_folder_without_model_is_rejected(tmp_path):
    with pytest.raises(InputError, match="not a pamela_lite model"):
        PersonalScorer.load(tmp_path)


def test_failed_save_keeps_the_existing_model(fitted, tmp_path, monkeypatch):
    fitted.save(tmp_path / "m")
    before = (tmp_path / "m" / "model.json").read_text()
    monkeypatch.setattr(np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        fitted.save(tmp_path / "m")
    assert (tmp_path / "m" / "model.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folder left behind


def test_same_seed_same_model(dataset, fitted):
    again = PersonalScorer(random_state=0, **SMALL_MODEL).fit(
        dataset.split("train"), dataset.embeddings, dataset.scale, validation=dataset.split("val_seen"))
    pairs = dataset.split("test_seen")
    np.testing.assert_allclose(again.predict(pairs, dataset.embeddings), fitted.predict(pairs, dataset.embeddings))


def test_wrong_embedding_dimension_is_an_error(fitted):
    with pytest.raises(InputError, match="dimension 7"):
        fitted.image_features(np.ones((2, 7), dtype=np.float32))


def test_weighted_ridge_matches_scikit_learns_ridgecv():
    from sklearn.linear_model import RidgeCV

    from pamela_lite.model import weighted_ridge_loo

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 20))
    y = X @ rng.normal(size=20) + 3 * rng.normal(size=300)
    w = rng.integers(1, 20, 300).astype(float)
    reference = RidgeCV(alphas=np.logspace(-2, 3, 11)).fit(X, y, sample_weight=w)
    coef, intercept = weighted_ridge_loo(X, y, w)
    np.testing.assert_allclose(coef, reference.coef_, atol=1e-8)
    assert intercept == pytest.approx(reference.intercept_)


def test_any_integer_scale_is_learned_from_the_data():
    from pamela_lite import demo

    world = demo.world_dataset(demo.DemoConfig(n_users=30, n_images=200, n_ratings=3000, dim=16, scale=10, seed=5))
    assert (world.scale.low, world.scale.high) == (1, 10)
    model = PersonalScorer(**SMALL_MODEL).fit(world.split("train"), world.embeddings, world.scale)
    scores = model.predict(world.split("test_seen"), world.embeddings)
    assert scores.min() >= 1 and scores.max() <= 10 and scores.max() > 5  # uses the whole range, not 1-5


def test_model_json_missing_a_field_is_rejected(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["blend"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="corrupted"):
        PersonalScorer.load(tmp_path / "m")


@pytest.mark.parametrize("k", [0, 1, 10])
def test_a_users_state_does_not_depend_on_who_else_is_folded_in(fitted, dataset, k):
    frame = dataset.ratings.filter(pl.col("split").is_in(["val_unseen", "test_unseen"]))
    users = frame.unique("participant_id", keep="first", maintain_order=True)
    me, other = users["participant_id"][0], users["participant_id"][1]
    context, _ = kshot_split(frame, 10, seed=0)
    mine = kshot_split(context.filter(pl.col("participant_id") == me), k, seed=1)[0]
    others = context.filter(pl.col("participant_id") == other)
    alone = fitted.fold_in(mine, dataset.embeddings, users=users.filter(pl.col("participant_id") == me))
    mixed = fitted.fold_in(pl.concat([mine, others]), dataset.embeddings, users=users)
    np.testing.assert_allclose(mixed[1][mixed[0].index(me)], alone[1][alone[0].index(me)], rtol=0, atol=1e-6)


def test_k_ratings_move_a_new_user_toward_their_own_taste(fitted, dataset):
    # Folding in a user's own ratings must rank their held-out images better than the prior
    # does; a fold-in that ignored the ratings would tie.
    from pamela_lite.metrics import evaluate_scores
    frame = dataset.ratings.filter(pl.col("split").is_in(["val_unseen", "test_unseen"]))
    users = frame.unique("participant_id", keep="first")
    context, query = kshot_split(frame, 40, seed=0)
    prior = fitted.fold_in(context.head(0), dataset.embeddings, users=users)
    folded = fitted.fold_in(context, dataset.embeddings, users=users)
    srocc = {name: evaluate_scores(query.with_columns(score=pl.Series(fitted.predict(query, dataset.embeddings, s))))["srocc"]
             for name, s in (("prior", prior), ("folded", folded))}
    assert srocc["folded"] > srocc["prior"] + 0.05


def test_the_demographic_prior_shrinks_to_the_average_person_when_demographics_say_nothing():
    rng = np.random.default_rng(0)
    demographics = rng.standard_normal((150, 12))
    unrelated = rng.standard_normal((150, 5))
    coef, intercept = PersonalScorer()._fit_prior(demographics, unrelated)
    np.testing.assert_allclose(intercept, unrelated.mean(axis=0), atol=0.02)
    assert np.abs(coef).max() < 0.05  # a fixed ridge of 10 gives 0.21 here


def test_the_demographic_prior_keeps_what_demographics_do_say():
    rng = np.random.default_rng(0)
    demographics = rng.standard_normal((150, 12))
    effect = rng.standard_normal((12, 5))
    coef, _ = PersonalScorer()._fit_prior(demographics, demographics @ effect + 0.1 * rng.standard_normal((150, 5)))
    np.testing.assert_allclose(coef, effect, atol=0.1)


def test_the_estimator_says_what_it_takes_when_handed_arrays(dataset):
    # numpy arrays once failed deep inside with an IndexError
    with pytest.raises(TypeError, match="ratings must be a polars DataFrame"):
        PersonalScorer(**SMALL_MODEL).fit(np.zeros((10, 3)), dataset.embeddings)
    with pytest.raises(TypeError, match="embeddings must be a pamela_lite.data.Embeddings"):
        PersonalScorer(**SMALL_MODEL).fit(dataset.split("train"), dataset.embeddings.matrix)


def test_predict_names_a_missing_column(fitted, dataset):
    with pytest.raises(InputError, match="pairs has no column"):
        fitted.predict(dataset.split("test_seen").select("image_id"), dataset.embeddings)


def test_a_scale_given_as_low_high_is_the_same_fit(dataset, fitted):
    # (1, 5) once failed with "'tuple' object has no attribute 'low'"
    model = PersonalScorer(random_state=0, **SMALL_MODEL).fit(dataset.split("train"), dataset.embeddings,
                                                              (dataset.scale.low, dataset.scale.high),
                                                              validation=dataset.split("val_seen"))
    pairs = dataset.split("test_seen")
    np.testing.assert_array_equal(model.predict(pairs, dataset.embeddings), fitted.predict(pairs, dataset.embeddings))
