"""Per-image corrections for images rated at fit time (pamela_lite.catalogue)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pamela_lite import onnx_scorer, worlds
from pamela_lite.catalogue import fit_catalogue, leave_one_out
from pamela_lite.edge import EdgeScorer
from pamela_lite.features import ImageFeatures
from pamela_lite.metrics import evaluate_scores
from pamela_lite.model import PersonalScorer
from pamela_lite.user_solver import UserSolver

SETTINGS = dict(n_components=8, n_prototypes=12, factors=4, head_trees=30, n_folds=3, random_state=0, n_threads=1)


@pytest.fixture(scope="module", params=[True, False], ids=["string ids", "int ids"])
def shared(request):
    # seen users' val/test images are also rated by others in train
    return worlds.dataset(worlds.make("shared", n_users=150, n_images=600, dim=64, seed=2,
                                      string_ids=request.param))


def test_als_recovers_planted_image_factors():
    rng = np.random.default_rng(0)
    n_users, n_images, rank = 200, 300, 3
    users, images = rng.standard_normal((n_users, rank)), rng.standard_normal((n_images, rank))
    user_index = rng.integers(0, n_users, 20_000)
    image_index = rng.integers(0, n_images, 20_000)
    resid = np.einsum("ij,ij->i", users[user_index], images[image_index]) + 0.3 * rng.standard_normal(20_000)
    bias, V, A = fit_catalogue(resid, user_index, image_index, n_users, n_images, rank, penalty=1.0)
    fitted = np.einsum("ij,ij->i", A[user_index], V[image_index]) + bias[image_index]
    assert np.corrcoef(fitted, np.einsum("ij,ij->i", users[user_index], images[image_index]))[0, 1] > 0.9
    assert np.abs(V).max() > 0.1 and np.abs(A).max() > 0.1


@pytest.mark.parametrize("use_bias, use_taste", [(True, True), (False, True), (True, False)],
                         ids=["bias then taste", "taste alone", "bias alone"])
def test_leave_one_out_residuals_equal_the_user_solver_refitted_without_the_rating(use_bias, use_taste):
    # the correction is fitted on these: a residual of a rating the user solve was fitted to is shrunk
    rng = np.random.default_rng(1)
    n_users, n, d, weight = 3, 12, 4, 0.8
    user_index = np.repeat(np.arange(n_users), n)
    Z = rng.standard_normal((n_users * n, d)) + 0.7  # not centred per user: bias and taste interact
    targets = rng.standard_normal(n_users * n) + 0.5
    precision = np.diag(rng.uniform(0.5, 2.0, d))
    solver = UserSolver(0.0, np.zeros((2, 0)), 1.0, 1.0, 1.0, 3.0, precision, use_bias=use_bias,
                        use_population=False, use_taste=use_taste, use_mf=False)

    def score(rows, k):  # bias + weight * taste score of row k, from a state solved on `rows` only
        index = np.unique(user_index[rows], return_inverse=True)[1]
        feats = ImageFeatures(np.zeros(len(rows)), Z[rows], np.zeros((len(rows), 2)), np.zeros((len(rows), 0)))
        state = solver.states(index, 1, targets[rows], feats, np.zeros((1, 1 + d)))[0][0]
        return state[0] + weight * Z[k] @ state[1:]

    everyone = np.arange(len(targets))
    own = [np.flatnonzero(user_index == user_index[k]) for k in everyone]
    resid = np.array([targets[k] - score(own[k], k) for k in everyone])
    refit = np.array([targets[k] - score(own[k][own[k] != k], k) for k in everyone])
    loo = leave_one_out(resid, targets, Z[:, :d if use_taste else 0], user_index, n_users,
                        precision[:d if use_taste else 0, :d if use_taste else 0],
                        3.0 if use_bias else np.inf, weight, chunk=2)
    np.testing.assert_allclose(loo, refit, rtol=1e-9, atol=1e-12)
    assert np.mean(np.abs(loo) > np.abs(resid)) > 0.9


@pytest.fixture(scope="module")
def fitted_shared(shared):
    return PersonalScorer(**SETTINGS).fit(shared.split("train"), shared.embeddings, shared.scale,
                                          validation=shared.split("val_seen"))


def _srocc(model, ds, **kw) -> float:
    query = ds.split("test_seen")
    return evaluate_scores(query.with_columns(score=pl.Series(model.predict(query, ds.embeddings, **kw))))["srocc"]


def test_images_rated_in_training_get_a_correction_that_helps(fitted_shared, shared):
    assert fitted_shared.fitted_.catalogue is not None
    assert _srocc(fitted_shared, shared) > _srocc(fitted_shared, shared, catalogue=False) + 0.02


def test_no_correction_without_validation_on_catalogue_images(fitted, dataset):
    # the small demo world splits by image: nothing in validation was rated in training
    assert fitted.fitted_.catalogue is None
    assert fitted.catalogue_report_ == {"kept": False, "reason": "0 validation rating(s) of known people on images "
                                                                 "rated in training; 100 needed"}


def test_the_fit_reports_what_validation_said_of_the_correction(fitted_shared):
    # fit said nothing when it kept none, and never by how much a kept one helped
    found = fitted_shared.catalogue_report_
    assert found["kept"] and found["validation_rows"] >= 100
    assert found["validation_mse"]["with"] < found["validation_mse"]["without"]
    assert found["scale"] == fitted_shared.fitted_.catalogue.scale


def test_the_correction_survives_save_and_load(fitted_shared, shared, tmp_path):
    loaded = PersonalScorer.load(fitted_shared.save(tmp_path / "m"))
    query = shared.split("test_seen")
    np.testing.assert_array_equal(loaded.predict(query, shared.embeddings), fitted_shared.predict(query, shared.embeddings))


def test_the_exported_scorer_equals_predict_without_the_catalogue(fitted_shared, shared, tmp_path):
    path, _ = onnx_scorer.export(fitted_shared, tmp_path / "s.onnx")
    query = shared.split("test_seen").head(500)
    edge = EdgeScorer(path)
    states = edge.states_of(query["participant_id"].cast(pl.String).to_list())
    scores = edge.score(shared.embeddings.take(query["image_id"]), states)
    np.testing.assert_allclose(scores, fitted_shared.predict(query, shared.embeddings, catalogue=False), atol=1e-4, rtol=0)


def test_a_new_person_gets_catalogue_factors_from_ratings_on_catalogue_images(fitted_shared, shared):
    from pamela_lite.protocol import kshot_split
    frame = shared.ratings.filter(pl.col("split").is_in(["val_unseen", "test_unseen"]))
    context, query = kshot_split(frame, 30, seed=0)
    folded = fitted_shared.fold_in(context, shared.embeddings)
    ids, states = folded  # still a plain (ids, states) pair to unpack
    assert folded.catalogue_factors.shape == (len(ids), fitted_shared.fitted_.catalogue.factors.shape[1])
    assert np.abs(folded.catalogue_factors).max() > 0
    with_factors = fitted_shared.predict(query, shared.embeddings, folded)
    bias_only = fitted_shared.predict(query, shared.embeddings, (ids, states))
    assert not np.allclose(with_factors, bias_only)


def test_the_chosen_size_scales_a_new_persons_correction_as_a_known_persons(fitted_shared, shared):
    # once stored as 2c and 2V, a new person's factors were solved on 2V after taking 2c away
    from dataclasses import replace

    from pamela_lite.protocol import kshot_split
    frame = shared.ratings.filter(pl.col("split").is_in(["val_unseen", "test_unseen"]))
    context, query = kshot_split(frame, 30, seed=0)
    query = query.filter(pl.col("image_id").is_in(pl.Series(fitted_shared.fitted_.catalogue.image_ids).implode()))
    fitted = fitted_shared.fitted_
    kept = fitted.catalogue
    corrections = {}
    try:
        for scale in (1.0, 2.0):
            fitted.catalogue = replace(kept, scale=scale)
            folded = fitted_shared.fold_in(context, shared.embeddings)
            base = fitted_shared.utility(query, shared.embeddings, folded)
            rows = fitted_shared._catalogue_rows(query["image_id"])
            users = fitted_shared.components(query, shared.embeddings, folded)["user_row"]
            factors = np.zeros((len(fitted_shared.users_) + len(folded[0]), kept.factors.shape[1]))
            factors[len(fitted_shared.users_):] = folded.catalogue_factors
            corrections[scale] = fitted.catalogue.correction(rows, users, factors)
            assert np.isfinite(base).all()
    finally:
        fitted.catalogue = kept
    assert query.height > 20 and np.abs(corrections[1.0]).max() > 0
    np.testing.assert_allclose(corrections[2.0], 2 * corrections[1.0], rtol=1e-9, atol=1e-12)


def test_a_chosen_size_survives_save_and_load(fitted_shared, shared, tmp_path):
    from dataclasses import replace

    kept = fitted_shared.fitted_.catalogue
    fitted_shared.fitted_.catalogue = replace(kept, scale=2.0)
    try:
        loaded = PersonalScorer.load(fitted_shared.save(tmp_path / "m"))
        query = shared.split("test_seen")
        np.testing.assert_array_equal(loaded.predict(query, shared.embeddings),
                                      fitted_shared.predict(query, shared.embeddings))
        assert loaded.fitted_.catalogue.scale == 2.0
    finally:
        fitted_shared.fitted_.catalogue = kept


def test_people_kept_with_add_users_keep_their_catalogue_factors(fitted_shared, shared, tmp_path):
    # they kept only the per-image bias: later predictions on training images moved by up to 0.36
    import copy

    from pamela_lite.protocol import kshot_split
    model = copy.deepcopy(fitted_shared)
    frame = shared.ratings.filter(pl.col("split").is_in(["val_unseen", "test_unseen"]))
    context, query = kshot_split(frame, 30, seed=0)
    first = model.predict(query, shared.embeddings, model.fold_in(context, shared.embeddings))
    model.add_users(context, shared.embeddings)
    kept = model.predict(query, shared.embeddings)
    np.testing.assert_allclose(kept, first, rtol=0, atol=1e-6)
    loaded = PersonalScorer.load(model.save(tmp_path / "m"))
    np.testing.assert_allclose(loaded.predict(query, shared.embeddings), first, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case, problem", [("other people", "does not belong to this model folder"),
                                           ("one person twice", "does not belong to this model folder"),
                                           ("NaN", "has NaN or infinite factors")])
def test_a_damaged_catalogue_users_file_is_refused_in_one_line(fitted_shared, tmp_path, case, problem):
    from pamela_lite.errors import InputError
    from pamela_lite.fitted import CATALOGUE_USERS_FILE, write_arrays
    folder = fitted_shared.save(tmp_path / "m")
    width = fitted_shared.fitted_.catalogue.factors.shape[1]
    known = str(fitted_shared.users_[0])
    ids = {"other people": ["nobody"], "one person twice": [known, known], "NaN": [known]}[case]
    factors = np.full((len(ids), width), np.nan if case == "NaN" else 0.0)
    write_arrays(folder / CATALOGUE_USERS_FILE, user_ids=np.array(ids), factors=factors)
    with pytest.raises(InputError, match=f"catalogue_users.npz: {problem}"):
        PersonalScorer.load(folder)


@pytest.mark.parametrize("case", ["no ratings", "bias-only catalogue"])
def test_people_added_without_catalogue_factors_get_zeros_and_the_model_stays_whole(fitted_shared, shared, case):
    # add_users crashed (None is not iterable) after changing users_ and user_states_ but not ratings_
    import copy
    from dataclasses import replace

    from pamela_lite.protocol import kshot_split
    model = copy.deepcopy(fitted_shared)
    kept = model.fitted_.catalogue
    if case == "bias-only catalogue":
        model.fitted_.catalogue = replace(kept, factors=np.zeros((len(kept.image_ids), 0)),
                                          user_factors=np.zeros((len(kept.user_factors), 0)))
        frame = shared.ratings.filter(pl.col("split").is_in(["val_unseen", "test_unseen"]))
        context, query = kshot_split(frame, 30, seed=0)
        model.add_users(context, shared.embeddings)
        new = context["participant_id"].unique().to_list()
    else:
        context = shared.split("train").head(0)
        new = ["somebody"]
        model.add_users(context, shared.embeddings, users=pl.DataFrame({"participant_id": new}))
    width = model.fitted_.catalogue.factors.shape[1]
    assert all(str(u) in model.added_catalogue_factors_ for u in new)
    assert all(model.added_catalogue_factors_[str(u)].shape == (width,) for u in new)
    assert len(model.users_) == len(model.user_states_)
    assert set(map(str, new)) <= set(model.ratings_["participant_id"].to_list())
