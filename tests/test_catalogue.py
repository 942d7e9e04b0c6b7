"""Per-image corrections for images rated at fit time (pamela_lite.catalogue)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pamela_lite import onnx_scorer, worlds
from pamela_lite.catalogue import fit_catalogue, leave_one_out
from pamela_lite.edge import EdgeScorer
from pamela_lite.metrics import evaluate_scores
from pamela_lite.model import PersonalScorer

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


@pytest.mark.parametrize("bias_shrinkage", [np.inf, 3.0], ids=["taste alone", "bias alone"])
def test_leave_one_out_residuals_equal_refits_without_the_rating(bias_shrinkage):
    # the correction is fitted on these: a residual of a rating the user solve was fitted to is shrunk
    rng = np.random.default_rng(1)
    n_users, n, d = 3, 12, 0 if np.isfinite(bias_shrinkage) else 4
    user_index = np.repeat(np.arange(n_users), n)
    Z, r = rng.standard_normal((n_users * n, d)), rng.standard_normal(n_users * n)
    precision = np.diag(rng.uniform(0.5, 2.0, d))

    def solve(rows):  # the user solve: a bias shrunk toward 0, or a ridge on the taste coordinates
        if d == 0:
            return lambda k: r[rows].sum() / (len(rows) + bias_shrinkage)
        w = np.linalg.solve(Z[rows].T @ Z[rows] + precision, Z[rows].T @ r[rows])
        return lambda k: Z[k] @ w

    resid = np.array([r[k] - solve(np.flatnonzero(user_index == user_index[k]))(k) for k in range(len(r))])
    refit = np.array([r[k] - solve(np.flatnonzero((user_index == user_index[k]) & (np.arange(len(r)) != k)))(k)
                      for k in range(len(r))])
    loo = leave_one_out(resid, Z, user_index, n_users, precision, bias_shrinkage, chunk=2)
    np.testing.assert_allclose(loo, refit, rtol=1e-10)
    assert np.all(np.abs(loo) > np.abs(resid))


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
