"""Taste directions learned from ratings (pamela_lite.taste) and their use in the scorer."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pamela_lite import worlds
from pamela_lite.metrics import evaluate_scores
from pamela_lite.model import PersonalScorer
from pamela_lite.taste import TasteMoment, fit_whitening, taste_moment


def _planted(n_users=150, n_images=2000, p=60, per_user=120, strength=1.0, seed=0):
    """Ratings whose taste lives on two planted directions of a whitened space."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n_images, p))
    planted = np.linalg.qr(rng.standard_normal((p, 2)))[0]
    tastes = strength * rng.standard_normal((n_users, 2)) @ planted.T
    user_index = np.repeat(np.arange(n_users), per_user)
    image_index = np.concatenate([rng.choice(n_images, per_user, replace=False) for _ in range(n_users)])
    resid = np.einsum("ij,ij->i", tastes[user_index], images[image_index]) + rng.standard_normal(len(user_index))
    return images, resid, user_index, image_index, n_users, planted


def test_the_moment_finds_planted_taste_directions_and_only_them():
    images, resid, users, rated, n_users, planted = _planted()
    moment = taste_moment(images, resid, users, rated, n_users)
    directions, _, _ = moment.band()
    assert directions.shape == (60, 2)
    # the two directions found span the planted plane
    cosines = np.linalg.svd(planted.T @ directions, compute_uv=False)
    assert cosines.min() > 0.9


def test_ratings_without_taste_give_no_direction():
    images, resid, users, rated, n_users, _ = _planted(strength=0.0)
    moment = taste_moment(images, resid, users, rated, n_users)
    assert moment.band()[0].shape == (60, 0)


@pytest.mark.parametrize("width", [20, 400])
def test_the_noise_edge_is_where_taste_free_eigenvalues_end_in_narrow_and_wide_blocks(width):
    (images, resid, users, rated, n_users), _ = _one_direction(strength=0.0)
    moment = taste_moment(images, resid, users, rated, n_users, seed=1)
    top = moment.directions(width)[1][0]
    assert 0.8 < top / moment.edge(width) < 1.25


def test_a_strong_taste_direction_does_not_hide_a_weaker_one():
    # the nulls keep the noise strong tastes bring, which lies along them: searched over the
    # whole block, that noise would set an edge above the weaker direction
    images, resid, users, rated, n_users, planted = _planted(strength=0.3)
    strong = 4.0 * np.random.default_rng(5).standard_normal(n_users)  # and much more along one of them
    resid = resid + strong[users] * (images[rated] @ planted[:, 0])
    moment = taste_moment(images, resid, users, rated, n_users)
    vectors, strengths = moment.directions()
    assert np.sum(strengths > 1.3 * moment.edge()) < 2  # one edge for the whole block: the weaker is lost
    assert moment.band()[0].shape == (60, 2)


def _one_direction(p=400, band=20, strength=0.15, known=0, known_strength=0.0, seed=0, n_directions=1):
    """Ratings of 200 people x 100 images whose taste differs along `n_directions` directions of
    the first `band` coordinates after `known` leading ones, where (optionally) they also differ
    strongly; returns the ratings and the planted directions ((p,) for one, else (p, n))."""
    rng = np.random.default_rng(seed)
    n_users, per_user = 200, 100
    images = rng.standard_normal((3000, p))
    planted = np.zeros((p, n_directions))
    planted[known:known + band] = np.linalg.qr(rng.standard_normal((band, n_directions)))[0]
    tastes = strength * rng.standard_normal((n_users, n_directions)) @ planted.T
    tastes[:, :known] += known_strength * rng.standard_normal((n_users, known))
    users = np.repeat(np.arange(n_users), per_user)
    rated = np.concatenate([rng.choice(len(images), per_user, replace=False) for _ in range(n_users)])
    resid = np.einsum("ij,ij->i", tastes[users], images[rated]) + rng.standard_normal(len(users))
    return (images, resid, users, rated, n_users), planted[:, 0] if n_directions == 1 else planted


def test_a_band_search_finds_taste_that_the_noise_of_the_whole_space_hides():
    ratings, planted = _one_direction()
    moment = taste_moment(*ratings)
    assert moment.band()[0].shape == (400, 0)  # below the edge of 400 coordinates
    directions = moment.strongest_band([20, 100, 400])
    assert directions.shape == (20, 1)  # found in its own band of 20
    assert abs(planted[:20] @ directions[:, 0]) > 0.9


def test_taste_along_known_coordinates_is_removed_before_the_search():
    ratings, planted = _one_direction(band=390, strength=0.45, known=10, known_strength=1.0)
    with_known = taste_moment(*ratings, known=10)
    assert with_known.cross.shape == (390, 390)
    uncleaned = taste_moment(*ratings)
    without = TasteMoment(uncleaned.cross[10:, 10:], uncleaned.nulls[:, 10:, 10:])  # the same coordinates
    assert without.band()[0].shape == (390, 0)
    directions, _, _ = with_known.band()
    assert directions.shape == (390, 1)
    assert abs(planted[10:] @ directions[:, 0]) > 0.6  # a random direction of 390 gives ~0.05


def test_whitening_gives_unit_variance_and_drops_empty_directions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 6)) * [5.0, 2.0, 1.0, 0.5, 0.1, 0.0]
    white = fit_whitening(x, max_dim=10)
    assert white.matrix.shape[1] == 5  # the constant column carries nothing
    np.testing.assert_allclose(np.var((x - white.mean) @ white.matrix, axis=0, ddof=1), 1.0, rtol=1e-6)


@pytest.fixture(scope="module")
def lowvar():
    # taste lives outside the top principal components of the embedding
    return worlds.dataset(worlds.make("lowvar", n_users=120, n_images=1200, dim=128, seed=1))


def _test_seen_srocc(model, ds) -> float:
    query = ds.split("test_seen")
    scored = query.with_columns(score=pl.Series(model.predict(query, ds.embeddings)))
    return evaluate_scores(scored)["srocc"]


def test_learned_directions_find_taste_that_principal_components_miss(lowvar):
    settings = dict(n_components=8, n_prototypes=12, factors=4, head_trees=30, n_folds=3, random_state=0, n_threads=1)
    fits = {basis: PersonalScorer(taste_basis=basis, **settings).fit(lowvar.split("train"), lowvar.embeddings,
                                                                     lowvar.scale)
            for basis in ("pca", "learned")}
    assert fits["learned"].fitted_.image_side.pca_components.shape[1] > 8  # directions were added
    assert _test_seen_srocc(fits["learned"], lowvar) > _test_seen_srocc(fits["pca"], lowvar) + 0.1


def test_validation_ratings_change_nothing_but_what_is_chosen_on_them(lowvar):
    # Chosen on validation: the head's tree count and whether catalogue corrections are kept
    # (none here: this world's validation images are not rated in training).
    settings = dict(n_components=8, n_prototypes=12, factors=4, head_trees=30, n_folds=3, random_state=0, n_threads=1)
    train, val = lowvar.split("train"), lowvar.split("val_seen")
    shuffled = val.with_columns(rating=pl.Series(np.random.default_rng(0).permutation(val["rating"].to_numpy())))
    a = PersonalScorer(**settings).fit(train, lowvar.embeddings, lowvar.scale, validation=val)
    b = PersonalScorer(**settings).fit(train, lowvar.embeddings, lowvar.scale, validation=shuffled)
    np.testing.assert_array_equal(a.user_states_, b.user_states_)
    for name in ("image_side.pca_components", "solver.taste_precision", "image_side.pop_coef",
                 "image_side.item_factors", "blend"):
        part, _, field = name.rpartition(".")
        np.testing.assert_array_equal(*(getattr(getattr(m.fitted_, part) if part else m.fitted_, field)
                                        for m in (a, b)), err_msg=name)
    assert a.fitted_.catalogue is None and b.fitted_.catalogue is None


def _hierarchical_ratings(n_users=150, per_user=40, d=6, seed=0):
    """Ratings r = z·w_u + noise with tastes w_u spread along 2 of d directions only."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, 2)))[0]
    tastes = rng.normal(size=(n_users, 2)) * [1.0, 0.5] @ basis.T
    user_index = np.repeat(np.arange(n_users), per_user)
    z = rng.normal(size=(len(user_index), d))
    y = np.einsum("ij,ij->i", z, tastes[user_index]) + rng.normal(size=len(user_index))
    return y, user_index, z, basis


def _prior_covariance(taste_prior_iterations, y, user_index, z):
    from types import SimpleNamespace

    from pamela_lite.model import _taste_prior_em

    n_users, d = user_index.max() + 1, z.shape[1]
    grams = np.zeros((n_users, d, d))
    np.add.at(grams, user_index, z[:, :, None] * z[:, None, :])
    moments = np.zeros((n_users, d))
    np.add.at(moments, user_index, z * y[:, None])
    ridge = np.linalg.solve(grams + 30.0 * np.eye(d), moments[..., None])[..., 0]  # the solver's first pass
    states = np.column_stack([np.zeros(n_users), ridge])
    feats = SimpleNamespace(pca=z, population=np.zeros(len(y)))
    solver = SimpleNamespace(mean=0.0, use_population=False)
    precision = _taste_prior_em(states, y, user_index, n_users, feats, solver, taste_prior_iterations).precision()
    return np.linalg.inv(precision)  # S / s2, in units of the noise


def test_em_prior_finds_that_tastes_spread_along_few_directions():
    y, user_index, z, basis = _hierarchical_ratings()
    complement = np.eye(z.shape[1]) - basis @ basis.T
    em, moment = _prior_covariance(30, y, user_index, z), _prior_covariance(0, y, user_index, z)
    off_taste = {name: np.trace(complement @ cov @ complement) / np.trace(cov)
                 for name, cov in (("em", em), ("moment", moment))}
    # The true covariance is zero off the two taste directions: EM's estimate nearly is, while
    # the moment of shrunk point estimates keeps their noise there and shrinks the real spread.
    assert off_taste["em"] < 0.25 * off_taste["moment"]
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(basis.T @ em @ basis))[::-1], [1.0, 0.25], rtol=0.3)


def test_em_prior_recovers_the_taste_spread_from_few_ratings_per_person():
    # 10 ratings each: the point estimates are mostly noise, so only a correct EM (posterior
    # covariance in the spread, expected residual in the noise) lands on the true spread
    y, user_index, z, basis = _hierarchical_ratings(n_users=400, per_user=10)
    em = _prior_covariance(30, y, user_index, z)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(basis.T @ em @ basis))[::-1], [1.0, 0.25], rtol=0.15)


def test_whitening_keeps_every_direction_unless_capped():
    x = np.random.default_rng(1).standard_normal((400, 30))
    assert fit_whitening(x).matrix.shape[1] == 30
    assert fit_whitening(x, max_dim=12).matrix.shape[1] == 12


def test_blocks_too_narrow_for_a_steady_noise_edge_are_not_searched():
    images, resid, users, rated, n_users, _ = _planted()
    moment = taste_moment(images, resid, users, rated, n_users)
    assert moment.strongest_band([8]).shape == (0, 0)  # even though taste is there
    assert moment.strongest_band([8, 60]).shape == (60, 2)


def test_a_moment_without_nulls_has_no_noise_edge():
    images, resid, users, rated, n_users, _ = _planted()
    with pytest.raises(ValueError, match="without sign-flip nulls"):
        taste_moment(images, resid, users, rated, n_users, n_nulls=0).edge()


def test_a_block_without_any_signal_or_noise_has_a_zero_edge_and_no_direction():
    # ratings a person never varies leave a zero moment; wide blocks use Lanczos, which
    # cannot start from a zero vector (ARPACK error -9): the dense fallback answers instead
    p = 300
    moment = TasteMoment(np.zeros((p, p)), np.zeros((3, p, p)))
    assert moment.edge() == 0.0
    assert moment.band()[0].shape == (p, 0)


def _banded(strength=0.3, seed=0):
    """Taste along two directions of coordinates 64..128 of 400."""
    return _one_direction(band=64, known=64, strength=strength, seed=seed, n_directions=2)


def test_gains_are_high_where_taste_lives_and_low_elsewhere():
    ratings, _ = _banded()
    gains = taste_moment(*ratings).gains(32)
    assert gains[64:128].min() > 0.7
    assert np.median(gains[np.r_[0:64, 128:400]]) < 0.3


def test_weighting_keeps_taste_confined_to_a_band():
    ratings, planted = _banded()
    weighted = taste_moment(*ratings).weighted(32)
    directions = weighted.strongest_band([32, 64, 128, 256, 400])
    assert directions.shape[1] == 2
    full = np.zeros((400, 2))
    full[:len(directions)] = directions
    assert np.linalg.svd(planted.T @ full, compute_uv=False).min() > 0.9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighting_finds_no_direction_in_ratings_without_taste(seed):
    # the nulls are weighted like the moment, so noise that the gains favour raises the edge too
    ratings, _ = _banded(strength=0.0, seed=seed)
    weighted = taste_moment(*ratings, seed=seed).weighted(32)
    assert weighted.strongest_band([32, 64, 128, 256, 400]).shape[1] == 0


def test_gains_need_the_nulls():
    ratings, _ = _banded()
    with pytest.raises(ValueError, match="nulls"):
        taste_moment(*ratings, n_nulls=0).gains()


def test_a_short_last_bin_joins_the_one_before():
    # 40 coordinates in bins of 32: the last 8 would be a bin of too few entries to trust
    diagonal = np.r_[np.zeros(32), np.ones(8)]
    nulls = np.random.default_rng(0).normal(0, 0.1, (3, 40, 40))
    gains = TasteMoment(np.diag(diagonal), nulls).gains(32)
    assert np.allclose(gains, gains[0])  # one bin, one gain
