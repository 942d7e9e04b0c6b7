"""The ONNX scorer and the edge runtime: parity with predict, fold-in on the device, CLIs."""

from __future__ import annotations

import json
import subprocess
import sys

import lightgbm as lgb
import numpy as np
import onnx
import polars as pl
import pytest

from pamela_lite import export, onnx_scorer, score
from pamela_lite import model as model_module
from pamela_lite.cli import run
from pamela_lite.edge import EdgeScorer
from pamela_lite.protocol import kshot_split
from pamela_lite.model import PersonalScorer

from .conftest import SMALL_MODEL


def _random_pairs(model, dataset, n, seed=0):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, len(model.users_), n)
    images = rng.integers(0, len(dataset.embeddings.ids), n)
    pairs = pl.DataFrame({"participant_id": [model.users_[k] for k in users],
                          "image_id": dataset.embeddings.ids.gather(images)})
    return pairs, users, images


def test_onnx_scores_match_predict_on_10k_random_pairs(fitted, dataset, exported):
    pairs, users, images = _random_pairs(fitted, dataset, 10_000)
    edge = EdgeScorer(exported)
    onnx_scores = edge.score(dataset.embeddings.matrix[images], fitted.user_states_[users])
    np.testing.assert_allclose(onnx_scores, fitted.predict(pairs, dataset.embeddings), atol=1e-4, rtol=0)


def test_the_larger_head_the_tuner_may_keep_exports_with_parity(dataset, tmp_path):
    # all 400 trees of 31 leaves (no validation, so no early stopping)
    model = PersonalScorer(**{**SMALL_MODEL, **model_module.LARGE_HEAD, "tune": False}).fit(
        dataset.split("train"), dataset.embeddings, dataset.scale)
    assert model._booster().num_trees() == model_module.LARGE_HEAD["head_trees"]
    path, _ = onnx_scorer.export(model, tmp_path / "large.onnx")
    pairs, users, images = _random_pairs(model, dataset, 5000)
    scores = EdgeScorer(path).score(dataset.embeddings.matrix[images], model.user_states_[users])
    np.testing.assert_allclose(scores, model.predict(pairs, dataset.embeddings), atol=1e-4, rtol=0)


def test_model_without_head_exports_too(dataset, tmp_path):
    model = PersonalScorer(use_head=False, **SMALL_MODEL).fit(dataset.split("train"), dataset.embeddings)
    path, _ = onnx_scorer.export(model, tmp_path / "nohead.onnx")
    assert "TreeEnsembleRegressor" not in {node.op_type for node in onnx.load(path).graph.node}
    pairs, users, images = _random_pairs(model, dataset, 500)
    scores = EdgeScorer(path).score(dataset.embeddings.matrix[images], model.user_states_[users])
    np.testing.assert_allclose(scores, model.predict(pairs, dataset.embeddings), atol=1e-4, rtol=0)


def test_scorer_documents_its_inputs(exported, fitted):
    model = onnx.load(exported)
    meta = {p.key: p.value for p in model.metadata_props}
    layout = json.loads(meta["pamela_lite.state_layout"])
    assert layout["bias"] == [0, 1] and int(meta["pamela_lite.state_dim"]) == fitted.state_dim
    assert [i.name for i in model.graph.input] == ["embedding", "user_state"]
    assert exported.stat().st_size < 5e6


def test_fold_in_on_the_device_equals_the_models(fitted, dataset, exported):
    frame = dataset.split("test_unseen")
    context, query = kshot_split(frame, 10, seed=1)
    ids, states = fitted.fold_in(context, dataset.embeddings)
    edge = EdgeScorer(exported)
    for user, state in zip(ids, states):
        mine = context.filter(pl.col("participant_id") == user)
        first = mine.row(0, named=True)
        on_device = edge.fold_in(dataset.embeddings.take(mine["image_id"]), mine["rating"].to_numpy(),
                                 age=first["age"], gender=first["gender"], nationality=first["nationality"])
        np.testing.assert_allclose(on_device, state, rtol=1e-5, atol=1e-6)


def test_zero_shot_fold_in_on_the_device_is_the_prior(fitted, dataset, exported):
    users = dataset.split("test_unseen").unique("participant_id", maintain_order=True).head(1)
    _, expected = fitted.fold_in(users.head(0), dataset.embeddings, users=users)
    row = users.row(0, named=True)
    state = EdgeScorer(exported).fold_in(np.zeros((0, dataset.embeddings.dim)), [], age=row["age"],
                                         gender=row["gender"], nationality=row["nationality"])
    np.testing.assert_allclose(state, expected[0], rtol=1e-5, atol=1e-6)


def test_top_k_ranks_a_gallery_best_first(fitted, dataset, exported):
    edge = EdgeScorer(exported)
    gallery = dataset.embeddings.matrix[:200]
    best, scores = edge.top_k(str(fitted.users_[0]), gallery, k=7)
    utility = edge.score_user(str(fitted.users_[0]), gallery, clip=False)
    np.testing.assert_array_equal(best, np.argsort(-utility, kind="stable")[:7])  # ranked before clipping
    np.testing.assert_array_equal(scores, edge.score_user(str(fitted.users_[0]), gallery)[best])
    assert list(scores) == sorted(scores, reverse=True)


def test_top_k_can_return_the_utility_it_ranks_by(fitted, dataset, exported):
    # a person whose best images all score the top rating saw [5. 5. 5. 5. 5.]
    edge = EdgeScorer(exported)
    gallery, user = dataset.embeddings.matrix[:200], str(fitted.users_[0])
    best, utility = edge.top_k(user, gallery, k=7, clip=False)
    np.testing.assert_array_equal(best, edge.top_k(user, gallery, k=7)[0])
    np.testing.assert_array_equal(utility, edge.score_user(user, gallery, clip=False)[best])
    cache = edge.cache_features(gallery, np.arange(200))
    cached_best, cached_utility = edge.top_k(user, cache, k=7, clip=False)
    np.testing.assert_array_equal(cached_best, best)
    np.testing.assert_allclose(cached_utility, utility, rtol=1e-5, atol=1e-5)


def test_edge_rejects_wrong_shapes(exported):
    edge = EdgeScorer(exported)
    with pytest.raises(ValueError, match="shape"):
        edge.score(np.ones((2, 3), np.float32), edge.states[:2])
    with pytest.raises(KeyError, match="not known"):
        edge.state("nobody")


def test_edge_imports_only_numpy_and_onnxruntime():
    code = ("import sys, pamela_lite.edge; heavy = {'lightgbm', 'implicit', 'sklearn', 'polars', 'scipy', "
            "'onnx', 'onnxmltools', 'pamela_lite.model', 'pamela_lite.data'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_fast_precision_trades_exactness_for_speed_but_stays_close(fitted, dataset, tmp_path):
    path = tmp_path / "fast.onnx"
    onnx_scorer.export(fitted, path, precision="fast")
    pairs, users, images = _random_pairs(fitted, dataset, 10_000, seed=2)
    fast = EdgeScorer(path).score(dataset.embeddings.matrix[images], fitted.user_states_[users])
    diff = np.abs(fast - fitted.predict(pairs, dataset.embeddings))
    assert np.mean(diff < 1e-4) > 0.995  # rare pairs differ ...
    # ... and by at most one branch of one tree: the widest spread of leaf values in any tree.
    assert diff.max() <= max(np.ptp(_leaf_values(tree["tree_structure"]))
                             for tree in lgb.Booster(model_str=fitted.fitted_.head).dump_model()["tree_info"]) + 1e-4


def _leaf_values(node) -> list[float]:
    if "leaf_value" in node:
        return [node["leaf_value"]]
    return _leaf_values(node["left_child"]) + _leaf_values(node["right_child"])


# --------------------------------------------------------------------------- CLIs


def test_score_cli_matches_predict_row_by_row(fitted, dataset, world, exported, tmp_path):
    test = dataset.split("test_unseen")
    context, query = kshot_split(test, 5, seed=0)
    pairs = pl.concat([dataset.split("test_seen").select("participant_id", "image_id").head(20),
                       query.select("participant_id", "image_id").head(20)])
    pairs.write_csv(tmp_path / "pairs.csv")
    context.write_parquet(tmp_path / "context.parquet")
    fitted.save(tmp_path / "model")
    common = ["--pairs", str(tmp_path / "pairs.csv"), "--embeddings", str(world / "embeddings.parquet"),
              "--context", str(tmp_path / "context.parquet"), "--quiet"]
    assert run(score.main, ["--scorer", str(exported), "--out", str(tmp_path / "a.csv"), *common]) == 0
    from pamela_lite import predict
    assert run(predict.main, ["--model", str(tmp_path / "model"), "--out", str(tmp_path / "b.csv"), *common]) == 0
    a, b = pl.read_csv(tmp_path / "a.csv"), pl.read_csv(tmp_path / "b.csv")
    assert a.columns == b.columns == ["participant_id", "image_id", "score"]
    assert a.select("participant_id", "image_id").equals(b.select("participant_id", "image_id"))
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-4)


def test_score_cli_scores_people_with_nothing_rated_as_predict_does(fitted, dataset, world, exported, tmp_path):
    # --people: one person with nothing rated, one with context ratings whose demographics the file
    # gives (over the context's own); the device path must score both as predict does
    test = dataset.split("test_unseen")
    context, query = kshot_split(test, 5, seed=0)
    rated = context["participant_id"][0]
    context = context.filter(pl.col("participant_id") == rated).with_columns(gender=pl.lit("male"))
    people = pl.DataFrame({"participant_id": [str(rated), "newcomer"], "age": ["55-64", "18-24"],
                           "gender": ["female", "female"]})
    images = query["image_id"].head(6).to_list()
    pairs = pl.DataFrame({"participant_id": [str(rated)] * 6 + ["newcomer"] * 6, "image_id": images * 2})
    pairs.write_csv(tmp_path / "pairs.csv")
    context.write_parquet(tmp_path / "context.parquet")
    people.write_csv(tmp_path / "people.csv")
    fitted.save(tmp_path / "model")
    common = ["--pairs", str(tmp_path / "pairs.csv"), "--embeddings", str(world / "embeddings.parquet"),
              "--context", str(tmp_path / "context.parquet"), "--people", str(tmp_path / "people.csv"), "--quiet"]
    assert run(score.main, ["--scorer", str(exported), "--out", str(tmp_path / "a.csv"), *common]) == 0
    from pamela_lite import predict
    assert run(predict.main, ["--model", str(tmp_path / "model"), "--out", str(tmp_path / "b.csv"), *common]) == 0
    a, b = pl.read_csv(tmp_path / "a.csv"), pl.read_csv(tmp_path / "b.csv")
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-4)
    device = EdgeScorer(exported)
    newcomer = device.fold_in(None, None, age="18-24", gender="female")
    np.testing.assert_allclose(a["score"].tail(6), device.score(dataset.embeddings.take(pl.Series(images)),
                                                                 newcomer[None, :]), atol=1e-6)


def test_score_cli_refuses_people_the_scorer_knows(fitted, world, exported, tmp_path, capsys):
    pl.DataFrame({"participant_id": [str(fitted.users_[0])]}).write_csv(tmp_path / "people.csv")
    pl.DataFrame({"participant_id": [str(fitted.users_[0])], "image_id": [100000]}).write_csv(tmp_path / "p.csv")
    code = run(score.main, ["--scorer", str(exported), "--pairs", str(tmp_path / "p.csv"), "--people",
                            str(tmp_path / "people.csv"), "--embeddings", str(world / "embeddings.parquet"),
                            "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "already known" in err[0] and "people.csv" in err[0]


def test_score_cli_ranks_a_gallery(fitted, world, exported, tmp_path):
    out = tmp_path / "top.json"
    assert run(score.main, ["--scorer", str(exported), "--embeddings", str(world / "embeddings.parquet"),
                            "--top", "5", "--user", str(fitted.users_[0]), "--out", str(out), "--quiet"]) == 0
    top = pl.read_json(out)
    assert top["rank"].to_list() == [1, 2, 3, 4, 5]
    assert top["score"].is_sorted(descending=True)


def test_score_cli_unknown_user_exits_2(world, exported, tmp_path, capsys):
    pl.DataFrame({"participant_id": ["nobody"], "image_id": [100000]}).write_csv(tmp_path / "p.csv")
    code = run(score.main, ["--scorer", str(exported), "--pairs", str(tmp_path / "p.csv"),
                            "--embeddings", str(world / "embeddings.parquet"), "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'nobody'" in err[0]


def test_score_cli_missing_scorer_exits_2(world, tmp_path, capsys):
    code = run(score.main, ["--scorer", str(tmp_path / "none.onnx"), "--top", "3", "--user", "x",
                            "--embeddings", str(world / "embeddings.parquet"), "--out", str(tmp_path / "o.csv")])
    assert code == 2 and "no such file" in capsys.readouterr().err


def test_export_to_a_name_that_is_not_onnx_is_refused_before_any_work(fitted, tmp_path, capsys):
    # x.txt once held the graph, beside x.fitted/ and x.users.npz, which score then could not find
    fitted.save(tmp_path / "model")
    code = run(export.main, ["--model", str(tmp_path / "model"), "--out", str(tmp_path / "x.txt"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "name the file .onnx" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_export_cli_writes_scorer_and_users(fitted, tmp_path):
    fitted.save(tmp_path / "model")
    assert run(export.main, ["--model", str(tmp_path / "model"), "--out", str(tmp_path / "s.onnx"), "--quiet"]) == 0
    assert (tmp_path / "s.onnx").exists() and (tmp_path / "s.users.npz").exists()


def test_export_cli_bad_model_exits_2(tmp_path, capsys):
    assert run(export.main, ["--model", str(tmp_path), "--out", str(tmp_path / "s.onnx")]) == 2
    assert not (tmp_path / "s.onnx").exists()


def test_encoder_and_scorer_merge_into_one_pixels_to_score_graph(fitted, dataset, exported, tmp_path):
    import onnxruntime as ort

    from pamela_lite import tiny_encoder

    encoder = tiny_encoder.write(tmp_path / "enc.onnx", size=16, dim=dataset.embeddings.dim)
    assert run(export.main, ["--model", str(_saved(fitted, tmp_path)), "--out", str(tmp_path / "s.onnx"),
                             "--encoder", str(encoder), "--quiet"]) == 0
    pixels = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    states = fitted.user_states_[:4]
    merged = ort.InferenceSession(str(tmp_path / "s.pixels.onnx"), providers=["CPUExecutionProvider"])
    one_graph = merged.run(None, {"pixels": pixels, "user_state": states})[0]
    embedding = ort.InferenceSession(str(encoder), providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels})[0]
    two_steps = EdgeScorer(exported).score(embedding, states)
    np.testing.assert_allclose(one_graph, two_steps, atol=1e-5)


def test_encoder_of_another_dimension_is_refused(fitted, tmp_path, capsys):
    from pamela_lite import tiny_encoder

    encoder = tiny_encoder.write(tmp_path / "enc.onnx", size=16, dim=5)
    code = run(export.main, ["--model", str(_saved(fitted, tmp_path)), "--out", str(tmp_path / "s.onnx"),
                             "--encoder", str(encoder)])
    assert code == 2 and "5-d" in capsys.readouterr().err
    assert not (tmp_path / "s.pixels.onnx").exists() and not (tmp_path / "s.onnx").exists()


def test_an_empty_encoder_file_is_refused_in_one_line(fitted, tmp_path, capsys):
    # onnx loads a 0-byte file as an empty model, and the merge failed with "unexpected IndexError", exit 1
    (tmp_path / "empty.onnx").write_bytes(b"")
    code = run(export.main, ["--model", str(_saved(fitted, tmp_path)), "--out", str(tmp_path / "s.onnx"),
                             "--encoder", str(tmp_path / "empty.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].endswith("empty.onnx: the file is empty")
    assert not (tmp_path / "s.pixels.onnx").exists() and not (tmp_path / "s.onnx").exists()


def test_an_encoder_graph_without_outputs_is_refused_in_one_line(fitted, tmp_path, capsys):
    import onnx

    from pamela_lite import tiny_encoder

    encoder = onnx.load(tiny_encoder.write(tmp_path / "enc.onnx", size=16, dim=fitted.fitted_.embedding_dim))
    del encoder.graph.output[:]
    onnx.save(encoder, tmp_path / "no_output.onnx")
    code = run(export.main, ["--model", str(_saved(fitted, tmp_path)), "--out", str(tmp_path / "s.onnx"),
                             "--encoder", str(tmp_path / "no_output.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no_output.onnx: not an image encoder" in err[0]


def _saved(model, tmp_path):
    model.save(tmp_path / "model")
    return tmp_path / "model"


def test_a_users_file_from_another_export_is_refused(fitted, dataset, exported, world, tmp_path, capsys):
    # A refit (here: another seed) changes what every state means; its users file must not be
    # paired with this scorer, on the device or from the command line.
    import shutil
    other = PersonalScorer(random_state=1, **SMALL_MODEL).fit(dataset.split("train"), dataset.embeddings)
    _, other_users = onnx_scorer.export(other, tmp_path / "other.onnx")
    mixed = tmp_path / "mixed.onnx"
    shutil.copy(exported, mixed)
    shutil.copytree(exported.with_name("scorer.fitted"), tmp_path / "mixed.fitted")
    shutil.copy(other_users, tmp_path / "mixed.users.npz")
    with pytest.raises(ValueError, match="another scorer"):
        EdgeScorer(mixed)
    code = run(score.main, ["--scorer", str(mixed), "--top", "3", "--user", str(fitted.users_[0]),
                            "--embeddings", str(world / "embeddings.parquet"), "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "another scorer" in err[0]
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_top_k_refuses_a_k_that_is_not_a_count(fitted, dataset, exported, k):
    # k = -1 once returned every image but one, silently; 2.5 failed inside numpy
    edge = EdgeScorer(exported)
    with pytest.raises(ValueError, match="k must be a whole number >= 1"):
        edge.top_k(str(fitted.users_[0]), dataset.embeddings.matrix[:50], k=k)


def test_a_device_fold_in_names_the_shape_it_needs(exported):
    # "cannot reshape array of size 20 into shape (32)" said nothing useful
    edge = EdgeScorer(exported)
    with pytest.raises(ValueError, match=rf"embeddings must have shape \(k, {edge.embedding_dim}\)"):
        edge.fold_in(np.zeros((2, 10), dtype=np.float32), np.array([3.0, 4.0]))


def test_device_scoring_refuses_a_nan_embedding_naming_its_row(fitted, dataset, exported):
    # onnxruntime scored it silently (a NaN score, or what the trees make of a missing value)
    edge = EdgeScorer(exported)
    gallery = dataset.embeddings.matrix[:4].copy()
    gallery[2, 5] = np.nan
    with pytest.raises(ValueError, match=r"embeddings: NaN or infinite values in 1 row\(s\) \(2\)"):
        edge.score_user(str(fitted.users_[0]), gallery)


@pytest.mark.parametrize("where", ["state", "inf_state", "inf_state_clipped", "inf_state_cached", "fold_in", "cache",
                                   "cached_state", "add_user"])
def test_device_refuses_non_finite_states_and_fold_in_embeddings(fitted, dataset, exported, where):
    edge = EdgeScorer(exported)
    bad = dataset.embeddings.matrix[:3].copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        if where == "state":
            edge.score_user(np.full(edge.state_dim, np.nan, dtype=np.float32), dataset.embeddings.matrix[:3])
        elif where == "inf_state":  # once scored as the top of the scale (a NaN check missed it)
            state = edge.states[0].copy()
            state[0] = np.inf
            edge.score_user(state, dataset.embeddings.matrix[:3])
        elif where == "inf_state_clipped":  # clipping made the score the top of the scale, which passed a check
            states = np.repeat(edge.states[:1], 3, axis=0)
            states[:, 0] = np.inf
            edge.score(dataset.embeddings.matrix[:3], states)
        elif where == "inf_state_cached":
            cache = edge.cache_features(dataset.embeddings.matrix[:20])
            states = edge.states[:1].copy()
            states[0, 0] = np.inf
            edge.score_cached(cache, states)
        elif where == "add_user":
            edge.add_user("x", np.full(edge.state_dim, np.inf, dtype=np.float32))
        elif where == "fold_in":
            edge.fold_in(bad, np.array([3.0, 4.0, 5.0]))
        elif where == "cache":
            edge.cache_features(bad)
        else:
            cache = edge.cache_features(dataset.embeddings.matrix[:20])
            edge.top_k(np.full(edge.state_dim, np.nan, dtype=np.float32), cache, k=3)


@pytest.mark.parametrize("where", ["fold_in", "cache", "top_k"])
def test_device_refuses_an_all_zero_embedding_as_the_files_reader_does(fitted, dataset, exported, where):
    # fold_in built a state from it and top_k ranked it, where score/predict refuse the same file
    edge = EdgeScorer(exported)
    rows = dataset.embeddings.matrix[:3].copy()
    rows[1] = 0.0
    with pytest.raises(ValueError, match=r"embeddings: 1 row\(s\) are all zeros \(1\)"):
        if where == "fold_in":
            edge.fold_in(rows, np.array([3.0, 4.0, 5.0]))
        elif where == "cache":
            edge.cache_features(rows)
        else:
            edge.top_k(str(fitted.users_[0]), rows, k=2)


def test_add_user_refuses_a_known_id_unless_told_to_replace(fitted, exported):
    # it once appended a second row under the same id: user_ids listed the person twice
    edge = EdgeScorer(exported)
    known, n = str(fitted.users_[0]), len(edge.user_ids)
    new_state = edge.states[1].copy()
    with pytest.raises(ValueError, match="already known"):
        edge.add_user(known, new_state)
    edge.add_user(known, new_state, replace=True)
    assert len(edge.user_ids) == n and np.array_equal(edge.state(known), new_state)
    edge.add_user("someone new", new_state)
    assert edge.user_ids[-1] == "someone new" and len(edge.states) == n + 1


@pytest.mark.parametrize("age, problem", [(np.inf, "between 0 and 120"), (1e6, "between 0 and 120"),
                                          (-5, "between 0 and 120"), ("old", "neither a number nor a range")])
def test_device_fold_in_checks_the_age_as_the_command_line_does(dataset, exported, age, problem):
    # inf gave a NaN state, 1e6 an absurd one, "25-34" a float() error
    edge = EdgeScorer(exported)
    with pytest.raises(ValueError, match=problem):
        edge.fold_in(dataset.embeddings.matrix[:3], [3, 4, 5], age=age)


def test_device_fold_in_reads_an_age_range_as_its_midpoint(dataset, exported):
    edge = EdgeScorer(exported)
    rows = dataset.embeddings.matrix[:3]
    np.testing.assert_array_equal(edge.fold_in(rows, [3, 4, 5], age="25-35"), edge.fold_in(rows, [3, 4, 5], age=30))


def test_device_fold_in_of_nothing_is_the_prior_and_none_counts_as_nothing(exported):
    edge = EdgeScorer(exported)
    np.testing.assert_array_equal(edge.fold_in(None, None, age=40), edge.fold_in([], [], age=40))


def test_device_warns_of_a_demographic_value_it_was_not_fitted_with(dataset, exported):
    edge = EdgeScorer(exported)
    with pytest.warns(UserWarning, match="gender 'robot' was not seen at fit time"):
        edge.fold_in(dataset.embeddings.matrix[:3], [3, 4, 5], gender="robot")


def test_a_state_given_as_a_list_is_a_state_not_an_id(fitted, dataset, exported):
    edge = EdgeScorer(exported)
    state = edge.state(str(fitted.users_[0]))
    gallery = dataset.embeddings.matrix[:20]
    np.testing.assert_array_equal(edge.score_user(state.tolist(), gallery), edge.score_user(state, gallery))


@pytest.mark.parametrize("bad", ["ragged", "folder", "not onnx", "threads"])
def test_device_inputs_that_numpy_or_onnxruntime_would_reject_get_a_plain_message(dataset, exported, tmp_path, bad):
    with pytest.raises(ValueError) as err:
        if bad == "ragged":
            rows = dataset.embeddings.matrix
            EdgeScorer(exported).fold_in([rows[0], rows[1][:5]], [3, 4])
        elif bad == "folder":
            EdgeScorer(exported.parent)
        elif bad == "not onnx":
            (tmp_path / "scorer.onnx").write_text("not a graph")
            EdgeScorer(tmp_path / "scorer.onnx")
        else:
            EdgeScorer(exported, threads=-1)
    expected = {"ragged": "rows of different lengths", "folder": "is a folder", "not onnx": "not an exported scorer",
                "threads": "threads must be a whole number"}[bad]
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_score_cached_checks_raw_feature_rows(fitted, dataset, exported):
    edge = EdgeScorer(exported)
    features = edge.cache_features(dataset.embeddings.matrix[:5]).features
    state = edge.state(str(fitted.users_[0]))
    with pytest.raises(ValueError, match=r"features must have shape \(N, "):
        edge.score_cached(features[:, :3], state)
    with pytest.raises(ValueError, match="features: NaN or infinite"):
        edge.score_cached(np.full_like(features, np.nan), state)


@pytest.mark.parametrize("candidates", [0, 2.5, True])
def test_top_k_refuses_candidates_that_are_not_a_count_on_either_path(fitted, dataset, exported, candidates):
    edge = EdgeScorer(exported)
    gallery = dataset.embeddings.matrix[:30]
    for images in (gallery, edge.cache_features(gallery)):
        with pytest.raises(ValueError, match="candidates must be None or a whole number"):
            edge.top_k(str(fitted.users_[0]), images, k=3, candidates=candidates)


def test_score_broadcasts_one_state_over_the_batch(fitted, dataset, exported):
    edge = EdgeScorer(exported)
    state = edge.state(str(fitted.users_[0]))
    gallery = dataset.embeddings.matrix[:7]
    np.testing.assert_array_equal(edge.score(gallery, state[None]), edge.score_user(state, gallery))


def test_a_boolean_is_not_a_rating(dataset, exported):
    with pytest.raises(ValueError, match="not True/False"):
        EdgeScorer(exported).fold_in(dataset.embeddings.matrix[:2], [3, True])
