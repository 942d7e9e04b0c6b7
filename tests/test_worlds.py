"""The world zoo: deterministic, PAMELA-readable worlds whose truth and references make sense."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pamela_lite import demo, worlds
from pamela_lite.data import SPLITS, load_dataset
from pamela_lite.model import PersonalScorer
from pamela_lite.world_eval import CEILING, RIDGE, cross_validate_users, evaluate_world, pseudo_unseen_split, user_folds

TINY = dict(n_users=40, n_images=300, dim=64)


def _tiny(name, **kw):
    extra = {"n_ratings": None} if name == "demo" else {}
    return worlds.make(name, **{**TINY, **extra, **kw})


@pytest.mark.parametrize("name", list(worlds.FAMILIES))
def test_each_family_is_deterministic_per_seed(name):
    a, b, c = _tiny(name, seed=1), _tiny(name, seed=1), _tiny(name, seed=2)
    assert a.ratings.equals(b.ratings) and a.truth.equals(b.truth)
    assert np.array_equal(a.embeddings, b.embeddings)
    assert np.array_equal(a.taste_features, b.taste_features) and np.array_equal(a.taste_basis, b.taste_basis)
    assert not a.ratings.equals(c.ratings)
    # the truth is consistent: one row per rating, features per image, weights per user
    assert a.truth.height == a.ratings.height
    assert a.taste_features.shape == (a.images.height, len(a.feature_names))
    assert a.user_weights.shape == (a.users.height, len(a.feature_names))
    assert a.taste_basis.shape[0] == a.embeddings.shape[1]


@pytest.mark.parametrize("name", [n for n in worlds.FAMILIES if n != "demo"])
def test_utility_is_linear_in_the_true_features_per_user(name):
    w = _tiny(name)
    truth = worlds.WorldTruth.from_world(w)
    ri = truth.rows(w.truth["image_id"])
    index = {u: k for k, u in enumerate(truth.user_ids.tolist())}
    ru = np.array([index[p] for p in w.truth["participant_id"].to_list()])
    pred = w.info["appeal_coef"] * truth.appeal[ri] + np.einsum("ij,ij->i", truth.user_weights[ru], truth.taste_features[ri])
    resid = pl.DataFrame({"u": ru, "r": w.truth["utility"].to_numpy() - pred})
    assert resid.group_by("u").agg(pl.col("r").std())["r"].max() < 1e-9


def test_written_world_is_a_readable_pamela_root(tmp_path):
    w = _tiny("mixture", string_ids=True, low=0, high=10, dim=96)
    root = worlds.write(w, tmp_path / "zoo")
    assert sorted(p.name for p in (root / "annotations").iterdir()) == sorted(f"pamela_{s}.json" for s in SPLITS)
    ds = load_dataset(root)
    assert ds.ratings.height == w.ratings.height and ds.truth is not None
    assert ds.embeddings.dim == 96
    assert ds.ratings["participant_id"].dtype == pl.String and ds.ratings["image_id"].dtype == pl.String
    assert ds.scale.low == 0 and ds.scale.high == 10 and ds.ratings["rating"].min() == 0
    assert set(ds.ratings["split"].unique()) == set(SPLITS)
    truth = worlds.WorldTruth.load(root)
    assert truth.image_ids.dtype.kind == "U" and truth.taste_features.shape[0] == w.images.height
    assert truth.info["scale"] == [0, 10] and truth.info["family"] == "mixture"
    assert np.allclose(truth.taste_basis, w.taste_basis)


@pytest.mark.parametrize("name,string_ids,low,high,dim", [
    ("lowvar", False, 1, 7, 48), ("categorical", True, 0, 10, 40), ("demo", True, 0, 6, 32), ("demo", False, 1, 5, 32),
    ("sparse", True, 1, 5, 72),
])
def test_scale_dimension_and_id_options_are_honoured(name, string_ids, low, high, dim):
    w = _tiny(name, string_ids=string_ids, low=low, high=high, dim=dim)
    ds = worlds.dataset(w)
    kind = pl.String if string_ids else pl.Int64
    assert ds.ratings["participant_id"].dtype == kind and ds.ratings["image_id"].dtype == kind
    assert w.embeddings.shape[1] == dim
    r = ds.ratings["rating"]
    assert r.min() == low and r.max() == high
    assert ds.scale.low == low and ds.scale.high == high


def test_users_and_ratings_per_user_options():
    w = worlds.make("hetero", n_users=120, n_images=300, dim=32, ratings_per_user=50)
    assert w.users.height == 120 and w.ratings.height == 120 * 50
    unseen = w.ratings.filter(pl.col("split").str.ends_with("unseen"))["participant_id"].n_unique()
    assert 3 <= unseen <= 10


def test_shared_world_shares_val_and_test_images_with_train():
    w = _tiny("shared")
    r = w.ratings
    train_images = set(r.filter(pl.col("split") == "train")["image_id"].to_list())
    test_images = set(r.filter(pl.col("split") == "test_seen")["image_id"].to_list())
    assert len(test_images & train_images) > 0.8 * len(test_images)
    # the PAMELA protocol elsewhere: a test image is rated by nobody in train
    r2 = _tiny("lowvar").ratings
    assert not set(r2.filter(pl.col("split") == "test_seen")["image_id"].to_list()) & set(
        r2.filter(pl.col("split") == "train")["image_id"].to_list())


def test_lowvar_taste_lives_outside_the_top_components():
    w = worlds.make("lowvar", n_users=60, n_images=800, dim=256)
    d = w.info["diagnostics"]
    assert d["personal_r2_top32_pcs"] < 0.05 and d["personal_r2_linear_embedding"] > 0.99


def test_demo_world_in_the_registry_is_the_demo():
    cfg = demo.DemoConfig(n_users=40, n_images=300, n_ratings=4000, dim=32, seed=3)
    w = worlds.make("demo", n_users=40, n_images=300, n_ratings=4000, dim=32, seed=3)
    images, users, ratings, truth, emb = demo.make_world(cfg)
    assert ratings.equals(w.ratings) and truth.equals(w.truth) and np.array_equal(emb, w.embeddings)


def test_true_taste_ridge_beats_the_population_head_and_the_ceiling_beats_both():
    w = worlds.make("lowvar", n_users=60, n_images=800, dim=128, seed=0)
    head = {"head": lambda seed: PersonalScorer(random_state=seed, use_bias=False, use_taste=False, use_mf=False,
                                                use_head=False)}
    rows = evaluate_world(head, worlds.dataset(w), worlds.WorldTruth.from_world(w), kshots=(10,), draws=2,
                          protocols=("test_seen", "pseudo_unseen"))
    by = {(r["protocol"], r["model"]): r["srocc"] for r in rows}
    assert by[("test_seen", RIDGE)] > by[("test_seen", "head")] + 0.15
    assert by[("test_seen", CEILING)] > by[("test_seen", "head")] + 0.15
    assert by[("test_seen", CEILING)] >= by[("test_seen", RIDGE)] - 0.02
    assert by[("pseudo_unseen", RIDGE)] > by[("pseudo_unseen", "head")]
    assert min(r["n_users"] for r in rows if r["protocol"] == "pseudo_unseen") >= 10  # 20% of 57 seen users


def test_pseudo_unseen_users_leave_training_entirely():
    ds = worlds.dataset(_tiny("sparse", n_users=50))
    train, validation, pool, query = pseudo_unseen_split(ds, 0.2, seed=0)
    held = set(query["participant_id"].to_list())
    assert held and held.isdisjoint(train["participant_id"].to_list())
    assert held.isdisjoint(validation["participant_id"].to_list())
    assert set(pool["participant_id"].to_list()) <= held
    assert set(query["split"].unique().to_list()) <= {"val_seen", "test_seen"}


def test_leave_users_out_folds_hold_out_every_seen_user_exactly_once():
    ds = worlds.dataset(_tiny("sparse", n_users=50))
    seen = set(ds.split("train")["participant_id"].to_list())
    held = []
    for train, validation, pool, query in user_folds(ds, n_folds=4, seed=1):
        fold = set(query["participant_id"].to_list())
        assert fold.isdisjoint(train["participant_id"].to_list())
        assert fold.isdisjoint(validation["participant_id"].to_list())
        assert set(pool["participant_id"].to_list()) <= fold
        held.append(fold)
    assert set().union(*held) == {u for u in seen if u in set(ds.ratings.filter(
        pl.col("split").is_in(["val_seen", "test_seen"]))["participant_id"].to_list())}
    assert sum(len(f) for f in held) == len(set().union(*held))  # no user in two folds
    with pytest.raises(ValueError, match="n_folds"):
        user_folds(ds, n_folds=1)


def test_users_cv_scores_every_seen_user_once_and_sees_taste_with_context():
    w = worlds.make("lowvar", n_users=60, n_images=800, dim=128, seed=0)
    ds, truth = worlds.dataset(w), worlds.WorldTruth.from_world(w)
    head = {"head": lambda seed: PersonalScorer(random_state=seed, use_bias=False, use_taste=False, use_mf=False,
                                                use_head=False)}
    scored, context, _ = cross_validate_users(head, ds, truth, kshots=(0, 20), draws=2, n_folds=3)
    assert set(scored) == {(0, 0), (20, 0), (20, 1)}
    users = scored[(20, 0)]["head"]["participant_id"]
    assert users.n_unique() == ds.split("train")["participant_id"].n_unique()
    assert context[(0, 0)] == 0 and 19 <= context[(20, 0)] <= 20
    rows = evaluate_world(head, ds, truth, kshots=(0, 20), draws=2, protocols=("users_cv",), n_folds=3)
    by = {(r["k"], r["model"]): r for r in rows}
    assert by[(20, RIDGE)]["srocc"] > by[(0, RIDGE)]["srocc"] + 0.1  # the ridge learns each person from context
    assert by[(20, "head")]["n_users"] > 40  # all seen users, not a 20% draw


def test_context_per_person_counts_only_the_people_scored():
    # a seen person without val/test ratings is held out with the others but has nothing to score:
    # their context must not inflate the context per scored person (it once did: 324 at k = 100)
    import dataclasses
    ds = worlds.dataset(_tiny("sparse", n_users=50))
    silent = ds.split("train")["participant_id"][0]
    kept = ds.ratings.filter(~((pl.col("participant_id") == silent) & pl.col("split").is_in(["val_seen", "test_seen"])))
    ds = dataclasses.replace(ds, ratings=kept)
    head = {"head": lambda seed: PersonalScorer(random_state=seed, use_bias=False, use_taste=False, use_mf=False,
                                                use_head=False)}
    rows = evaluate_world(head, ds, None, kshots=(5,), draws=1, protocols=("users_cv",), n_folds=2)
    assert {r["context_mean"] for r in rows} == {5.0}


def test_a_bad_fold_count_is_refused_before_any_fit():
    ds = worlds.dataset(_tiny("sparse", n_users=50))
    def never(seed):
        raise AssertionError("fitted before the fold count was checked")
    with pytest.raises(ValueError, match="n_folds"):
        evaluate_world({"m": never}, ds, None, protocols=("test_seen", "users_cv"), n_folds=1)
    with pytest.raises(ValueError, match="n_folds"):
        user_folds(ds, n_folds=10_000)


def test_cli_writes_a_named_world_and_lists_the_families(tmp_path, capsys):
    assert demo.main(["--world", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in worlds.FAMILIES)
    out = tmp_path / "w"
    assert demo.main(["--world", "categorical", "--out", str(out), "--users", "40", "--images", "300",
                      "--dim", "48", "--scale", "0-10", "--int-ids", "--seed", "2"]) == 0
    ds = load_dataset(out)
    assert ds.scale.low == 0 and ds.scale.high == 10 and ds.embeddings.dim == 48
    assert ds.ratings["participant_id"].dtype == pl.Int64
    assert (out / worlds.TRUTH_NPZ).exists() and (out / worlds.TRUTH_JSON).exists()
