"""Image metadata as taste directions (pamela_lite.metadata) and their use in the scorer."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pamela_lite import worlds
from pamela_lite.metadata import metadata_indicators, metadata_map, orthogonal_blocks
from pamela_lite.metrics import evaluate_scores
from pamela_lite.model import PersonalScorer, _blocked, block_price


def test_indicators_have_a_column_per_level_but_the_reference():
    ratings = pl.DataFrame({"image_id": [1, 2, 3, 1, 4], "group": ["food", "sports", "food", "food", "street"],
                            "style": [None, "oil", None, None, "ink"], "type": ["Art"] * 5})
    out = metadata_indicators(ratings, pl.Series([4, 3, 2, 1]))
    assert set(out) == {"group", "style"}  # one type only: it tells nothing
    # no missing group: the last level (street) is the reference; style's reference is "missing"
    np.testing.assert_array_equal(out["group"], [[0, 0], [1, 0], [0, 1], [1, 0]])
    np.testing.assert_array_equal(out["style"], [[1, 0], [0, 0], [0, 1], [0, 0]])


def test_ratings_without_metadata_give_no_indicators():
    ratings = pl.DataFrame({"image_id": [1, 2], "participant_id": [1, 1], "rating": [3, 4]})
    assert metadata_indicators(ratings, pl.Series([1, 2])) == {}


def test_the_map_leans_on_the_high_variance_directions_a_field_lives_in():
    rng = np.random.default_rng(0)
    n, p = 3000, 256
    white = rng.standard_normal((n, p))
    level = rng.integers(0, 4, n)
    white[:, :3] += 2.0 * np.eye(4)[level][:, :3]  # the field is carried by the first 3 coordinates
    white /= white.std(axis=0)
    variances = 1.0 / (1.0 + np.arange(p))  # image variance falls along the whitening's order
    indicators = np.eye(4)[level][:, :3]
    found = metadata_map(white, variances, indicators)
    plain = np.linalg.lstsq(white, indicators - indicators.mean(axis=0), rcond=None)[0]
    assert np.abs(np.diag(found[:3])).min() > 0.8 * np.abs(np.diag(plain[:3])).min()  # kept, nearly whole
    assert np.abs(found[128:]).mean() < 0.5 * np.abs(plain[128:]).mean()  # the low-variance noise shrunk


def test_blocks_are_orthonormal_outside_what_is_known_and_keep_given_sizes():
    rng = np.random.default_rng(1)
    known = np.linalg.qr(rng.standard_normal((40, 6)))[0]
    maps = {"group": rng.standard_normal((40, 5)), "type": rng.standard_normal((40, 1))}
    blocks = orthogonal_blocks(maps, known)
    basis = np.column_stack([known, *blocks.values()])
    np.testing.assert_allclose(basis.T @ basis, np.eye(12), atol=1e-10)
    assert {name: b.shape[1] for name, b in blocks.items()} == {"group": 5, "type": 1}
    inside = {"type": known[:, :1] * 2.0}  # a field the known coordinates carry already adds nothing
    assert orthogonal_blocks(inside, known) == {}
    assert orthogonal_blocks(maps, known, {"group": 2})["group"].shape == (40, 2)


def test_a_metadata_block_gets_one_variance_and_no_covariance():
    second = np.arange(36, dtype=float).reshape(6, 6) + 10 * np.eye(6)
    out = _blocked(second, (3, 1))
    np.testing.assert_array_equal(out[:2, :2], second[:2, :2])  # the other coordinates as they were
    np.testing.assert_array_equal(out[:2, 2:], 0)
    np.testing.assert_allclose(np.diag(out)[2:5], np.mean(np.diag(second)[2:5]))
    assert out[2, 3] == 0 and out[5, 5] == second[5, 5]


@pytest.fixture(scope="module")
def categorical():
    world = worlds.make("categorical", n_users=120, n_images=1500, dim=96)
    return worlds.dataset(world)


def _fit(dataset, train=None, n_components=16, **params):
    model = PersonalScorer(n_components=n_components, n_prototypes=16, factors=4, head_trees=40, n_folds=3, n_threads=1,
                           random_state=0, **params)
    return model.fit(dataset.split("train") if train is None else train, dataset.embeddings, dataset.scale,
                     validation=dataset.split("val_seen"))


@pytest.fixture(scope="module")
def with_and_without(categorical):
    """The same model fitted with and without the metadata blocks."""
    return {use: _fit(categorical, use_metadata=use) for use in (True, False)}


def test_metadata_blocks_learn_taste_that_follows_groups_and_styles(categorical, with_and_without):
    test = categorical.split("test_seen")
    scores = {use: evaluate_scores(test.with_columns(score=model.predict(test, categorical.embeddings)))["srocc"]
              for use, model in with_and_without.items()}
    blocks = with_and_without[True].taste_dimensions()[2]
    assert {"group", "style"} <= set(blocks) and blocks["group"] > 0
    assert scores[True] > scores[False] + 0.003  # 0.623 vs 0.614 when written


def test_the_head_never_reads_the_metadata_coordinates(with_and_without):
    model = with_and_without[True]
    n_metadata = sum(model.metadata_blocks_.values())
    end = 4 + model.fitted_.image_side.pca_components.shape[1]
    splits = model._booster().feature_importance("split")
    assert n_metadata and splits[:end - n_metadata].sum() > 0
    assert splits[end - n_metadata:end].sum() == 0


def test_without_metadata_columns_the_model_is_the_one_without_metadata(categorical, with_and_without):
    without_columns = _fit(categorical, train=categorical.split("train").drop("group", "style", "type"))
    test = categorical.split("test_seen")
    assert without_columns.metadata_blocks_ == {}
    np.testing.assert_array_equal(without_columns.predict(test, categorical.embeddings),
                                  with_and_without[False].predict(test, categorical.embeddings))


def test_a_column_with_hundreds_of_values_is_not_taken_for_a_metadata_field(caplog):
    ratings = pl.DataFrame({"image_id": list(range(300)), "group": [str(i) for i in range(300)],
                            "type": ["Art", "Photo"] * 150})
    out = metadata_indicators(ratings, pl.Series(range(300)))
    assert set(out) == {"type"}
    assert "'group' has 300 values" in caplog.text


def test_an_out_of_fold_block_keeps_the_final_size_without_reusing_known_directions():
    rng = np.random.default_rng(2)
    known = np.linalg.qr(rng.standard_normal((40, 6)))[0]
    low_rank = {"group": rng.standard_normal((40, 2)) @ rng.standard_normal((2, 5))}  # rank 2 of 5 columns
    block = orthogonal_blocks(low_rank, known, {"group": 4})["group"]
    assert block.shape == (40, 4)
    np.testing.assert_allclose(known.T @ block, 0, atol=1e-10)
    assert np.linalg.matrix_rank(block) == 2  # the two missing columns read nothing


def test_with_about_as_many_coefficients_as_images_the_map_does_not_fit_noise():
    rng = np.random.default_rng(3)
    white = rng.standard_normal((60, 59))
    noise_labels = np.eye(3)[rng.integers(0, 3, 60)][:, :2]
    found = metadata_map(white, np.ones(59), noise_labels)
    fitted = white @ found
    centred = noise_labels - noise_labels.mean(axis=0)
    assert np.sum(fitted**2) < 0.6 * np.sum(centred**2)  # far from matching the labels exactly


def test_a_column_that_differs_within_an_image_is_not_image_metadata(caplog):
    ratings = pl.DataFrame({"image_id": [1, 1, 2, 2], "group": ["cohort_a", "cohort_b", "cohort_a", "cohort_a"],
                            "type": [None, "Art", "Photo", None]})
    out = metadata_indicators(ratings, pl.Series([1, 2]))
    assert set(out) == {"type"}  # the first value that is there: Art, then Photo
    np.testing.assert_array_equal(out["type"], [[1], [0]])
    assert "'group' has different values for one image" in caplog.text


def test_the_taste_prior_keeps_metadata_blocks_isotropic_and_apart():
    from types import SimpleNamespace

    from pamela_lite.model import _taste_prior_em

    rng = np.random.default_rng(4)
    n_users, per_user, d = 80, 40, 6
    user_index = np.repeat(np.arange(n_users), per_user)
    z = rng.standard_normal((len(user_index), d))
    y = np.einsum("ij,ij->i", z, rng.standard_normal((n_users, d))[user_index]) + rng.standard_normal(len(user_index))
    states = np.column_stack([np.zeros(n_users), rng.standard_normal((n_users, d))])
    feats = SimpleNamespace(pca=z, population=np.zeros(len(y)))
    solver = SimpleNamespace(mean=0.0, use_population=False)
    covariance = np.linalg.inv(_taste_prior_em(states, y, user_index, n_users, feats, solver, 5, (3, 1)).precision())
    np.testing.assert_allclose(covariance[:2, 2:], 0, atol=1e-12)
    np.testing.assert_allclose(covariance[2:5, 5], 0, atol=1e-12)
    block = covariance[2:5, 2:5]
    np.testing.assert_allclose(block, block[0, 0] * np.eye(3), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("chunk", [2048, 1])  # the 3 users in one batch, or one by one
def test_block_evidence_is_the_gain_in_the_exact_marginal_likelihood(chunk, monkeypatch):
    from scipy.stats import multivariate_normal

    monkeypatch.setattr("pamela_lite.model.EM_CHUNK", chunk)
    from pamela_lite.model import _TastePrior

    rng = np.random.default_rng(5)
    d, noise, blocks = 5, 0.7, (2, 1)
    second = _blocked(np.cov(rng.standard_normal((d, 20))) + np.eye(d), blocks)
    users = [(rng.standard_normal((n, d)), rng.standard_normal(n)) for n in (6, 9, 4)]
    prior = _TastePrior(second, noise, np.array([z.T @ z for z, _ in users]), np.array([z.T @ r for z, r in users]))

    def log_likelihood(keep):
        s = second[np.ix_(keep, keep)]
        return sum(multivariate_normal(np.zeros(len(r)), z[:, keep] @ s @ z[:, keep].T + noise * np.eye(len(r))).logpdf(r)
                   for z, r in users)

    full = log_likelihood(np.arange(d))
    expected = [full - log_likelihood(np.r_[0:2, 4]), full - log_likelihood(np.arange(4))]
    np.testing.assert_allclose(prior.block_evidence(blocks), expected, rtol=1e-9)


def _shuffled(ratings: pl.DataFrame, fields: tuple[str, ...], seed: int = 0) -> pl.DataFrame:
    """`ratings` with each image's `fields` taken from another image: metadata that says nothing of taste."""
    images = ratings.unique("image_id", keep="first", maintain_order=True).select("image_id", *fields)
    order = np.random.default_rng(seed).permutation(images.height)
    swapped = images.select("image_id").with_columns(images.select(fields)[order])
    return ratings.drop(fields).join(swapped, on="image_id", how="left")


def test_a_field_that_carries_no_taste_is_dropped_and_one_that_does_is_kept(categorical):
    model = _fit(categorical, train=_shuffled(categorical.split("train"), ("style",)))
    assert "group" in model.metadata_blocks_ and "style" not in model.metadata_blocks_
    assert model.metadata_evidence_["style"] < block_price(len(model.users_)) < model.metadata_evidence_["group"]


def test_a_dropped_field_leaves_the_model_a_fit_without_it_gives(categorical, monkeypatch):
    # Group is dropped, style (the block after it, 26 directions) kept: style's block must be
    # built as if group had never been there, as the out-of-fold fits build it.
    def style_only(self, blocks):
        return np.array([100.0 if size == 26 else -1.0 for size in blocks])

    monkeypatch.setattr("pamela_lite.model._TastePrior.block_evidence", style_only)
    dropped = _fit(categorical)
    without = _fit(categorical, train=categorical.split("train").drop("group"))
    test = categorical.split("test_seen")
    assert set(dropped.metadata_evidence_) == {"group", "style", "type"}
    assert dropped.metadata_blocks_ == without.metadata_blocks_ == {"style": 26}
    np.testing.assert_array_equal(dropped.predict(test, categorical.embeddings),
                                  without.predict(test, categorical.embeddings))


def test_when_no_block_carries_taste_the_model_is_the_one_without_metadata():
    # Taste in the top 32 principal directions (and a few low-variance ones the learned
    # directions find): no metadata block adds to the likelihood, so none is kept.
    world = worlds.dataset(worlds.make("lowvar", n_users=120, n_images=1500, dim=96))
    test = world.split("test_seen")
    fitted = {use: _fit(world, n_components=32, use_metadata=use) for use in (True, False)}
    assert fitted[True].metadata_blocks_ == {} and set(fitted[True].metadata_evidence_) == {"group", "style", "type"}
    np.testing.assert_array_equal(fitted[True].predict(test, world.embeddings),
                                  fitted[False].predict(test, world.embeddings))
