"""Two-stage scoring: cached catalogue features, the user-scoring graph, the retrieval mode."""

from __future__ import annotations

import copy
import dataclasses
import shutil

import lightgbm as lgb
import numpy as np
import onnx
import polars as pl
import pytest

from pamela_lite import cache as cache_cli
from pamela_lite import score
from pamela_lite.cached import CacheError, read_cache, stage_paths, write_cache
from pamela_lite.cli import run
from pamela_lite.edge import EdgeScorer
from pamela_lite.model import PersonalScorer
from pamela_lite.onnx_scorer import export
from pamela_lite.stages import build_stages

from .conftest import SMALL_MODEL


@pytest.fixture(scope="module")
def edge(exported):
    return EdgeScorer(exported)


@pytest.fixture(scope="module")
def cache_file(edge, dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "catalogue.features.npz"
    write_cache(path, edge.cache_features(dataset.embeddings.matrix, dataset.embeddings.ids.to_numpy()))
    return path


def test_export_writes_both_stage_graphs_beside_the_scorer(exported):
    image_path, user_path = stage_paths(exported)
    assert [i.name for i in onnx.load(image_path).graph.input] == ["embedding"]
    assert [i.name for i in onnx.load(user_path).graph.input] == ["features", "user_state"]


def test_cached_pairs_match_the_one_file_scorer_on_10k_random_pairs(edge, dataset):
    rng = np.random.default_rng(0)
    images = rng.integers(0, len(dataset.embeddings.ids), 10_000)
    states = edge.states[rng.integers(0, len(edge.states), 10_000)]
    one_file = edge.score(dataset.embeddings.matrix[images], states)
    features = edge.cache_features(dataset.embeddings.matrix).features
    np.testing.assert_allclose(edge.score_cached(features[images], states), one_file, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def rich_head(fitted, dataset):
    """The fitted model with a head that splits on every kind of column (trained here on its own head inputs)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, len(dataset.embeddings.ids), 4000)
    states = fitted.user_states_[rng.integers(0, len(fitted.users_), 4000)].astype(np.float32)
    feats = fitted.image_features(dataset.embeddings.matrix[images])
    head_x = fitted._columns(fitted.fitted_.solver.mean, feats, states.astype(np.float64))["head_x"]
    spread = head_x.std(axis=0) + 1e-12
    weights = rng.normal(size=head_x.shape[1])
    weights[:4] = 6.0 * np.sign(weights[:4])  # the four single columns stand out among dozens of taste coordinates
    target = ((head_x - head_x.mean(axis=0)) / spread) @ weights
    head = lgb.train({"num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1, "num_threads": 1},
                     lgb.Dataset(head_x, target), num_boost_round=60)
    used = head.feature_importance("split") > 0
    d, f = feats.pca.shape[1], feats.factors.shape[1]
    groups = np.split(used, np.cumsum([1, 1, 1, 1, d, f, f]))  # population, bias, taste, mf, pca, q, u, demographics
    assert all(group.any() for group in groups)
    model = copy.copy(fitted)
    model.fitted_ = dataclasses.replace(fitted.fitted_, head=head.model_to_string())
    model._head_cache = None
    return model, dataset.embeddings.matrix[images], states


@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("one_user", [False, True])
def test_every_head_column_reaches_the_trees_of_the_user_scoring_graph(rich_head, tmp_path, precision, one_user):
    """The user-scoring graph feeds the trees its columns in another order: with a head that
    splits on every kind of column it must score as the one-file graph, per pair or one user."""
    model, embeddings, states = rich_head
    export(model, tmp_path / "scorer.onnx", precision)
    edge = EdgeScorer(tmp_path / "scorer.onnx")
    states = states[:1] if one_user else states
    cached = edge.score_cached(edge.cache_features(embeddings).features, states, clip=False)
    one_file = edge.score(embeddings, np.broadcast_to(states, (len(embeddings), states.shape[1])), clip=False)
    # fast graphs sum in float32 in another order: a pair within rounding of a threshold may flip
    assert np.mean(np.abs(cached - one_file) > 1e-4) <= (0 if precision == "exact" else 1e-3)


def test_a_scorer_weighing_the_user_bias_is_refused(exported):
    scorer = onnx.load(exported)
    weights = next(t for t in scorer.graph.initializer if t.name == "base_weights")
    array = onnx.numpy_helper.to_array(weights).copy()
    array[1] = 2.0
    weights.CopyFrom(onnx.numpy_helper.from_array(array, "base_weights"))
    with pytest.raises(ValueError, match="weighs the user bias"):
        build_stages(scorer)


def test_one_state_scores_a_whole_cached_catalogue(edge, dataset, cache_file):
    cache = edge.load_cache(cache_file)
    user = edge.user_ids[3]
    np.testing.assert_allclose(edge.score_user(user, cache, clip=False),
                               edge.score_user(user, dataset.embeddings.matrix, clip=False), atol=1e-4, rtol=0)


def test_cached_top_k_equals_the_one_file_ranking(edge, dataset, cache_file):
    cache = edge.load_cache(cache_file)
    for user in edge.user_ids[:5]:
        best, scores = edge.top_k(user, cache, k=10)
        expected, expected_scores = edge.top_k(user, dataset.embeddings.matrix, k=10)
        assert best.tolist() == expected.tolist()
        np.testing.assert_allclose(scores, expected_scores, atol=1e-4)


def test_fast_precision_stages_match_the_fast_scorer(fitted, dataset, tmp_path):
    path = tmp_path / "fast.onnx"
    export(fitted, path, precision="fast")
    edge = EdgeScorer(path)
    cache = edge.cache_features(dataset.embeddings.matrix)
    assert cache.features.dtype == np.float32
    user = edge.user_ids[0]
    np.testing.assert_allclose(edge.score_user(user, cache), edge.score_user(user, dataset.embeddings.matrix),
                               atol=1e-4, rtol=0)


def test_cache_file_is_memory_mapped_and_keeps_ids(edge, dataset, cache_file):
    cache = read_cache(cache_file)
    assert isinstance(cache.features, np.memmap) and cache.features.flags.aligned
    assert cache.image_ids.tolist() == dataset.embeddings.ids.to_list()
    np.testing.assert_array_equal(cache.features, edge.cache_features(dataset.embeddings.matrix).features)


def test_text_ids_survive_the_cache_file(edge, dataset, tmp_path):
    ids = np.array([f"0{k}" for k in range(20)])
    write_cache(tmp_path / "c.npz", edge.cache_features(dataset.embeddings.matrix[:20], ids))
    assert read_cache(tmp_path / "c.npz").image_ids.tolist() == ids.tolist()


def test_retrieval_with_every_image_as_candidate_is_exact(edge, cache_file):
    cache = edge.load_cache(cache_file)
    user = edge.user_ids[1]
    exact, _ = edge.top_k(user, cache, k=10)
    retrieved, _ = edge.top_k(user, cache, k=10, candidates=len(cache))
    assert retrieved.tolist() == exact.tolist()


def test_retrieval_scores_only_its_candidates_exactly(edge, cache_file):
    cache = edge.load_cache(cache_file)
    user = edge.user_ids[2]
    best, scores = edge.top_k(user, cache, k=5, candidates=40)
    linear = edge.stages.linear_scores(edge.state(user), cache.features)
    assert set(best) <= set(np.argsort(-linear)[:40])
    np.testing.assert_allclose(scores, edge.score_user(user, cache)[best], atol=1e-6)


def test_linear_part_is_the_whole_score_without_trees(dataset, tmp_path):
    model = PersonalScorer(use_head=False, **SMALL_MODEL).fit(dataset.split("train"), dataset.embeddings)
    path, _ = export(model, tmp_path / "nohead.onnx")
    edge = EdgeScorer(path)
    cache = edge.cache_features(dataset.embeddings.matrix)
    state = edge.states[0]
    np.testing.assert_allclose(edge.stages.linear_scores(state, cache.features),
                               edge.score_user(state, cache, clip=False), atol=1e-4)


def test_a_cache_of_another_scorer_is_refused(fitted, dataset, cache_file, tmp_path, capsys):
    other = PersonalScorer(random_state=1, **SMALL_MODEL).fit(dataset.split("train"), dataset.embeddings)
    other_path, _ = export(other, tmp_path / "other.onnx")
    with pytest.raises(CacheError, match="another scorer"):
        EdgeScorer(other_path).load_cache(cache_file)
    code = run(score.main, ["--scorer", str(other_path), "--top", "3", "--user", str(other.users_[0]),
                            "--cache", str(cache_file), "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(cache_file) in err[0] and "another scorer" in err[0]
    assert not (tmp_path / "o.csv").exists()


def test_a_stage_graph_of_another_export_is_refused(fitted, dataset, exported, tmp_path, capsys):
    other = PersonalScorer(random_state=1, **SMALL_MODEL).fit(dataset.split("train"), dataset.embeddings)
    export(other, tmp_path / "other.onnx")
    for suffix in (".onnx", ".users.npz", ".image_features.onnx"):
        shutil.copy(exported.with_name("scorer" + suffix), tmp_path / f"mixed{suffix}")
    shutil.copytree(exported.with_name("scorer.fitted"), tmp_path / "mixed.fitted")
    shutil.copy(tmp_path / "other.user_score.onnx", tmp_path / "mixed.user_score.onnx")
    code = run(cache_cli.main, ["--scorer", str(tmp_path / "mixed.onnx"), "--embeddings",
                                str(dataset.embeddings.source), "--out", str(tmp_path / "c.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "mixed.user_score.onnx" in err[0] and "another scorer" in err[0]


def test_cache_cli_replaces_a_cache_but_no_other_npz(world, exported, tmp_path, capsys):
    # cache --out once overwrote any .npz, a model folder's users.npz included
    emb, out = world / "embeddings.parquet", tmp_path / "c.npz"
    for _ in range(2):  # the second run replaces the first run's cache
        assert run(cache_cli.main, ["--scorer", str(exported), "--embeddings", str(emb), "--out", str(out), "--quiet"]) == 0
    np.savez(tmp_path / "users.npz", user_ids=np.array(["a"]), user_states=np.zeros((1, 3)))
    before = (tmp_path / "users.npz").read_bytes()
    capsys.readouterr()
    code = run(cache_cli.main, ["--scorer", str(exported), "--embeddings", str(emb), "--out", str(tmp_path / "users.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "exists and is not a feature cache" in err[0]
    assert (tmp_path / "users.npz").read_bytes() == before


def test_cache_cli_then_score_top_ranks_like_the_embeddings(fitted, world, exported, tmp_path):
    emb = world / "embeddings.parquet"
    assert run(cache_cli.main, ["--scorer", str(exported), "--embeddings", str(emb),
                                "--out", str(tmp_path / "c.npz"), "--quiet"]) == 0
    common = ["--scorer", str(exported), "--top", "7", "--user", str(fitted.users_[0]), "--quiet"]
    assert run(score.main, [*common, "--cache", str(tmp_path / "c.npz"), "--out", str(tmp_path / "a.csv")]) == 0
    assert run(score.main, [*common, "--embeddings", str(emb), "--out", str(tmp_path / "b.csv")]) == 0
    a, b = pl.read_csv(tmp_path / "a.csv"), pl.read_csv(tmp_path / "b.csv")
    assert a["image_id"].to_list() == b["image_id"].to_list()
    np.testing.assert_allclose(a["utility"].to_numpy(), b["utility"].to_numpy(), atol=1e-4)


def test_cache_cli_wrong_dimension_exits_2(exported, tmp_path, capsys):
    from .conftest import write_embeddings
    path = write_embeddings(tmp_path / "e.parquet", [1, 2], np.ones((2, 5), np.float32))
    code = run(cache_cli.main, ["--scorer", str(exported), "--embeddings", str(path), "--out", str(tmp_path / "c.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "dimension 5" in err[0] and not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04broken"])
def test_a_damaged_cache_file_is_one_line_exit_2(fitted, exported, tmp_path, capsys, content):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    code = run(score.main, ["--scorer", str(exported), "--top", "3", "--user", str(fitted.users_[0]),
                            "--cache", str(bad), "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(bad) in err[0]


def test_a_missing_cache_file_is_one_line_exit_2(fitted, exported, tmp_path, capsys):
    code = run(score.main, ["--scorer", str(exported), "--top", "3", "--user", str(fitted.users_[0]),
                            "--cache", str(tmp_path / "none.npz"), "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "none.npz" in err[0] and "no such" in err[0]


def test_same_fit_other_precision_is_refused(fitted, dataset, exported, cache_file, tmp_path):
    """The tie is the fit digest plus the precision: a fast export of the same fit shares the digest."""
    fast, _ = export(fitted, tmp_path / "fast.onnx", precision="fast")
    edge = EdgeScorer(fast)
    assert edge.fit_sha256 == EdgeScorer(exported).fit_sha256 and edge.precision == "fast"
    with pytest.raises(CacheError, match="float64"):
        edge.load_cache(cache_file)
    shutil.copy(stage_paths(exported)[1], stage_paths(fast)[1])
    with pytest.raises(CacheError, match="another scorer"):
        EdgeScorer(fast).stages
