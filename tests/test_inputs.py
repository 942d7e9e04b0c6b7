"""What users hand us is kept as given or refused in one line: ids, ages, splits, contexts, files."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import polars as pl
import pytest

from pamela_lite import embed, fit, predict, score, tiny_encoder
from pamela_lite.cli import run
from pamela_lite.data import Scale, load_dataset, read_ratings, validate_ratings
from pamela_lite.edge import EdgeScorer
from pamela_lite.errors import InputError
from pamela_lite.protocol import evaluate_models
from pamela_lite.onnx_scorer import export
from pamela_lite.model import PersonalScorer



def _one_line_error(capsys, code) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    fitted.save(folder / "model")
    export(fitted, folder / "scorer.onnx")
    return folder


def _records(world, split):
    return json.loads((world / "annotations" / f"pamela_{split}.json").read_text())


def _copy_root(world, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(world, root)
    return root


# --------------------------------------------------------------------------- ages, splits, seen users


def test_a_binned_age_becomes_the_midpoint_of_its_range(tmp_path):
    path = tmp_path / "r.csv"
    pl.DataFrame({"participant_id": ["a", "b", "c"], "image_id": [1, 2, 3], "rating": [1, 2, 3],
                  "age": ["25-34", "41", "65+"]}).write_csv(path)
    assert read_ratings(path)["age"].to_list() == [29.5, 41.0, 65.0]


def test_pamelas_age_binned_fills_a_missing_age(tmp_path, world):
    root = _copy_root(world, tmp_path)
    records = _records(world, "train")
    user = records[0]["participant_id"]
    for record in records:
        if record["participant_id"] == user:
            record["user_demographics"].update(age=None, age_binned="25-34")
    (root / "annotations" / "pamela_train.json").write_text(json.dumps(records))
    frame = read_ratings(root).filter((pl.col("participant_id") == user) & (pl.col("split") == "train"))
    assert frame["age"].unique().to_list() == [29.5]


def test_a_row_without_split_is_refused_with_its_line(tmp_path, ratings_table):
    path = tmp_path / "r.csv"
    ratings_table.head(5).with_columns(split=pl.when(pl.int_range(5) == 2).then(None).otherwise(pl.col("split"))) \
        .write_csv(path)
    with pytest.raises(InputError, match="1 row\\(s\\) have no split \\(line 4\\)"):
        load_dataset(path, embeddings=tmp_path / "unused.parquet")


def test_seen_split_users_absent_from_train_are_counted_in_a_warning(tmp_path, ratings_table, dataset, caplog):
    path = tmp_path / "r.csv"
    orphan = ratings_table.filter(pl.col("split") == "test_seen")["participant_id"][0]
    ratings_table.filter((pl.col("participant_id") != orphan) | (pl.col("split") != "train")).write_csv(path)
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        load_dataset(path, embeddings=dataset.embeddings.source)
    lines = [r.getMessage() for r in caplog.records if "not in train" in r.getMessage()]
    assert len(lines) == 1 and "1 participant(s)" in lines[0] and orphan in lines[0]


def test_unseen_split_users_who_also_have_train_ratings_are_named_in_a_warning(tmp_path, ratings_table, dataset,
                                                                                 caplog):
    # they were fitted on and scored as "unseen", silently
    path = tmp_path / "r.csv"
    unseen = ratings_table.filter(pl.col("split") == "test_unseen")
    person = unseen["participant_id"][0]
    leak = unseen.filter(pl.col("participant_id") == person).head(3).with_columns(split=pl.lit("train"))
    rest = ratings_table.join(leak.select("participant_id", "image_id"), on=["participant_id", "image_id"], how="anti")
    pl.concat([rest, leak]).write_csv(path)
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        load_dataset(path, embeddings=dataset.embeddings.source)
    lines = [r.getMessage() for r in caplog.records if "also have train ratings" in r.getMessage()]
    assert len(lines) == 1 and "1 participant(s)" in lines[0] and person in lines[0]


def test_an_age_that_is_no_age_is_named_in_a_warning(tmp_path, caplog):
    # the warning was meant but never fired for the age column itself
    path = tmp_path / "r.csv"
    pl.DataFrame({"participant_id": ["a", "b"], "image_id": [1, 2], "rating": [1, 2], "age": ["n/a", "41"]}
                 ).write_csv(path)
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        frame = read_ratings(path)
    assert frame["age"].to_list() == [None, 41.0]
    lines = [r.getMessage() for r in caplog.records if "neither a number nor a range" in r.getMessage()]
    assert len(lines) == 1 and "n/a" in lines[0]


@pytest.mark.parametrize("extreme, warned", [(11, True), (None, False)])
def test_a_scale_end_that_a_handful_of_ratings_reach_is_named_in_a_warning(tmp_path, caplog, extreme, warned):
    # one 11 in 1-10 data made the scale 1-11, silently (no hole in the scale for the old warning)
    rng = np.random.default_rng(0)
    ratings = list(rng.integers(1, 11, size=3000)) + ([extreme] if extreme else [])
    path = tmp_path / "r.csv"
    pl.DataFrame({"participant_id": [f"p{i % 50}" for i in range(len(ratings))], "image_id": list(range(len(ratings))),
                  "rating": ratings}).write_csv(path)
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        validate_ratings(read_ratings(path), path)
    lines = [r.getMessage() for r in caplog.records if "rests on" in r.getMessage()]
    assert lines == ([] if not warned else [lines[0]]) and (not warned or "top of the scale" in lines[0]
                                                             and "1 of 3,001 ratings" in lines[0])


# --------------------------------------------------------------------------- ids


def test_csv_ids_are_text_kept_exactly(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("participant_id,image_id,rating\n077,0012,3\n77,12,4\n")
    frame = read_ratings(path)
    assert frame["participant_id"].to_list() == ["077", "77"]  # two people, not one
    assert frame["image_id"].to_list() == ["0012", "12"]


def test_predictions_come_back_under_the_ids_as_given(saved, dataset, tmp_path):
    image = dataset.embeddings.ids[0]
    (tmp_path / "ctx.csv").write_text(f"participant_id,image_id,rating\n077,{image},5\n")
    (tmp_path / "pairs.csv").write_text(f"participant_id,image_id\n077,{image}\n")
    assert run(predict.main, ["--model", str(saved / "model"), "--pairs", str(tmp_path / "pairs.csv"),
                              "--context", str(tmp_path / "ctx.csv"), "--embeddings", dataset.embeddings.source,
                              "--out", str(tmp_path / "o.parquet"), "--quiet"]) == 0
    assert pl.read_parquet(tmp_path / "o.parquet")["participant_id"].to_list() == ["077"]


def test_text_ids_missing_from_integer_embeddings_are_named_with_the_type_mismatch(tmp_path, dataset):
    path = tmp_path / "r.csv"
    path.write_text("participant_id,image_id,rating\na,0100000,3\na,100001,4\n")
    message = str(pytest.raises(InputError, load_dataset, path, dataset.embeddings.source).value)
    assert "'0100000'" in message and "None" not in message
    assert "these ids are text" in message and "integers" in message


# --------------------------------------------------------------------------- line numbers


def test_messages_give_the_file_line_of_a_bad_rating(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("participant_id,image_id,rating\na,1,3\nb,2,4\nc,3,2.5\n")
    with pytest.raises(InputError, match="line 4"):
        validate_ratings(read_ratings(path), path)


def test_messages_give_the_json_record_of_a_bad_rating(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"participant_id": "a", "image_id": 1, "rating": 3},
                                {"participant_id": "b", "image_id": 2, "rating": 9}]))
    with pytest.raises(InputError, match="record 2"):
        validate_ratings(read_ratings(path), path, Scale(1, 5))


def test_an_empty_image_metadata_record_loads(tmp_path, world):
    root = _copy_root(world, tmp_path)
    records = _records(world, "val_unseen")
    records[0]["image_metadata"] = {}
    (root / "annotations" / "pamela_val_unseen.json").write_text(json.dumps(records))
    assert load_dataset(root).split("val_unseen").height == len(records)


def test_an_object_where_a_value_belongs_is_one_clear_error(tmp_path, world):
    root = _copy_root(world, tmp_path)
    records = _records(world, "val_unseen")
    records[0]["user_demographics"]["age"] = {}
    (root / "annotations" / "pamela_val_unseen.json").write_text(json.dumps(records))
    with pytest.raises(InputError, match="pamela_val_unseen.json: column age holds lists or objects"):
        load_dataset(root)


# --------------------------------------------------------------------------- contexts at predict time


def _context_of_known_user(fitted, dataset, tmp_path):
    user = fitted.users_[0]
    ctx = dataset.split("train").filter(pl.col("participant_id") == user).head(5)
    ctx.select("participant_id", "image_id", "rating").write_csv(tmp_path / "ctx.csv")
    ctx.select("participant_id", "image_id").write_csv(tmp_path / "pairs.csv")
    return user


@pytest.mark.parametrize("tool", ["predict", "score"])
def test_a_context_naming_a_known_user_is_refused_unless_asked(tool, fitted, saved, dataset, tmp_path, capsys):
    user = _context_of_known_user(fitted, dataset, tmp_path)
    main, model = (predict.main, ["--model", str(saved / "model")]) if tool == "predict" else \
        (score.main, ["--scorer", str(saved / "scorer.onnx")])
    args = [*model, "--pairs", str(tmp_path / "pairs.csv"), "--context", str(tmp_path / "ctx.csv"),
            "--embeddings", dataset.embeddings.source, "--out", str(tmp_path / "o.csv")]
    line = _one_line_error(capsys, run(main, args))
    assert "already known" in line and repr(user) in line and "--refit-known" in line
    assert not (tmp_path / "o.csv").exists()
    assert run(main, [*args, "--refit-known", "--quiet"]) == 0


@pytest.mark.parametrize("tool", ["predict", "score"])
def test_unknown_demographic_values_are_listed_in_one_warning(tool, saved, dataset, tmp_path, caplog):
    image = dataset.embeddings.ids[0]
    pl.DataFrame({"participant_id": ["n1", "n2"], "image_id": [image, image], "rating": [4, 2],
                  "gender": ["robot", "female"], "nationality": ["atlantis", "atlantis"]}).write_csv(tmp_path / "c.csv")
    pl.DataFrame({"participant_id": ["n1"], "image_id": [image]}).write_csv(tmp_path / "p.csv")
    model = ["--model", str(saved / "model")] if tool == "predict" else ["--scorer", str(saved / "scorer.onnx")]
    main = predict.main if tool == "predict" else score.main
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        assert run(main, [*model, "--pairs", str(tmp_path / "p.csv"), "--context", str(tmp_path / "c.csv"),
                          "--embeddings", dataset.embeddings.source, "--out", str(tmp_path / "o.csv"), "--quiet"]) == 0
    warnings = [r.getMessage() for r in caplog.records if "not fitted with" in r.getMessage()]
    assert len(warnings) == 1 and "'robot'" in warnings[0] and "'atlantis'" in warnings[0]
    assert "'female'" not in warnings[0]


# --------------------------------------------------------------------------- one rating rule


def test_device_fold_in_refuses_a_rating_the_command_line_refuses(saved, dataset, tmp_path, capsys):
    edge = EdgeScorer(saved / "scorer.onnx")
    with pytest.raises(ValueError, match="not whole numbers"):
        edge.fold_in(dataset.embeddings.matrix[:2], [3.5, 4])
    image = dataset.embeddings.ids[0]
    (tmp_path / "c.csv").write_text(f"participant_id,image_id,rating\nn1,{image},3.5\n")
    (tmp_path / "p.csv").write_text(f"participant_id,image_id\nn1,{image}\n")
    line = _one_line_error(capsys, run(score.main, [
        "--scorer", str(saved / "scorer.onnx"), "--pairs", str(tmp_path / "p.csv"), "--context",
        str(tmp_path / "c.csv"), "--embeddings", dataset.embeddings.source, "--out", str(tmp_path / "o.csv")]))
    assert "not integers" in line and "line 2" in line
    assert edge.fold_in(dataset.embeddings.matrix[:2], [3.0, 4]).shape == (edge.state_dim,)


# --------------------------------------------------------------------------- outputs


def test_top_k_writes_the_utility_it_ranks_by_beside_the_score(fitted, saved, dataset, tmp_path):
    out = tmp_path / "top.csv"
    assert run(score.main, ["--scorer", str(saved / "scorer.onnx"), "--embeddings", dataset.embeddings.source,
                            "--top", "5", "--user", str(fitted.users_[0]), "--out", str(out), "--quiet"]) == 0
    top = pl.read_csv(out)
    assert top.columns == ["rank", "image_id", "score", "utility"]
    assert top["utility"].is_sorted(descending=True)
    np.testing.assert_allclose(top["score"], top["utility"].clip(dataset.scale.low, dataset.scale.high), atol=1e-6)


def test_outputs_follow_the_umask(saved, dataset, tmp_path):
    old = os.umask(0o022)
    try:
        run(score.main, ["--scorer", str(saved / "scorer.onnx"), "--embeddings", dataset.embeddings.source,
                         "--top", "2", "--user", "p0000", "--out", str(tmp_path / "top.csv"), "--quiet"])
        PersonalScorer.load(saved / "model").save(tmp_path / "m")
    finally:
        os.umask(old)
    assert (tmp_path / "top.csv").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755


def test_kshot_beyond_the_users_rating_counts_skips_them_in_one_line(fitted, dataset, caplog):
    most = dataset.split("test_unseen").group_by("participant_id").len()["len"].max()
    with caplog.at_level(logging.WARNING, logger="pamela_lite"), np.errstate(all="raise"):
        rows = evaluate_models({"full": fitted}, dataset, kshots=(5, most + 10), splits=("test_unseen",))
    assert {r["k"] for r in rows} == {5}  # no NaN row for the k nobody can give
    lines = [r.getMessage() for r in caplog.records if f"k={most + 10}" in r.getMessage()]
    assert len(lines) == 1 and "left out" in lines[0]


def test_kshot_skips_a_person_left_with_one_rating_to_rank_and_scores_the_others(fitted, dataset, caplog):
    # k = count - 1 once scored that person's one remaining rating: a NaN SROCC, or MAE/RMSE of one row
    from dataclasses import replace

    from pamela_lite.protocol import score_rows

    unseen = dataset.ratings.filter(pl.col("split") == "test_unseen")
    first = unseen["participant_id"][0]
    short = unseen.filter(pl.col("participant_id") == first).head(12).with_columns(participant_id=pl.lit("short"))
    data = replace(dataset, ratings=pl.concat([dataset.ratings, short.select(dataset.ratings.columns)]))
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        rows = evaluate_models({"full": fitted}, data, kshots=(11,), splits=("test_unseen",))
    assert [r["n_users"] for r in rows if r["model"] == "full"] == [1] and np.isfinite(rows[0]["srocc"])
    assert set(score_rows(fitted, data, "test_unseen", 11)["participant_id"]) == {first}
    assert any("k=11: 1 of 2 user(s) have 12 or fewer ratings, fewer than two left to rank: skipped" in r.getMessage()
               for r in caplog.records)


def test_metrics_files_are_strict_json(tmp_path):
    # Python writes NaN bare, which strict JSON parsers refuse
    from pamela_lite.cli import report_json

    text = report_json([{"srocc": float("nan"), "rmse": float("inf"), "n_users": 0, "k": None}])
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name}")) == [
        {"srocc": None, "rmse": None, "n_users": 0, "k": None}]


def test_fit_shows_no_progress_bar_in_a_log(world, tmp_path):
    from .conftest import cli

    done = cli("fit", "--data", world, "--out", tmp_path / "m", "--kshot", "0", "--no-baselines")
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "fit:" not in done.stderr
    assert all(line.startswith("[") for line in done.stderr.splitlines())  # the plain step lines


# --------------------------------------------------------------------------- embed, demo


def test_embedding_into_a_file_of_another_dimension_is_refused(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (32, 32), "red").save(tmp_path / "imgs" / "a.png")
    small = tiny_encoder.write(tmp_path / "e8.onnx", dim=8)
    large = tiny_encoder.write(tmp_path / "e16.onnx", dim=16)
    out = tmp_path / "e.parquet"
    common = ["--images", str(tmp_path / "imgs"), "--out", str(out), "--quiet"]
    assert run(embed.main, ["--encoder", str(small), *common]) == 0
    line = _one_line_error(capsys, run(embed.main, ["--encoder", str(large), *common]))
    assert "8-d" in line and "16-d" in line


def test_a_demo_world_of_an_older_generator_is_written_again(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(fit.demo, "write_world", lambda folder, cfg: calls.append(cfg.seed) or folder.mkdir(
        parents=True, exist_ok=True))
    folder = tmp_path / "demo"
    fit.ensure_demo(folder, 0)
    fit.ensure_demo(folder, 0)
    assert calls == [0]  # reused while nothing changed
    (folder / "demo_seed.txt").write_text("0")  # the stamp an older generator wrote: the seed alone
    fit.ensure_demo(folder, 0)
    assert calls == [0, 0]


def test_a_demo_world_of_another_seed_is_rewritten_with_a_warning(tmp_path, monkeypatch, caplog):
    # fit --seed 1 silently replaced the seed-0 world (same image ids, other embeddings)
    monkeypatch.setattr(fit.demo, "write_world", lambda folder, cfg: folder.mkdir(parents=True, exist_ok=True))
    folder = tmp_path / "demo"
    fit.ensure_demo(folder, 0)
    fit.ensure_demo(folder, 0)
    assert "rewritten" not in caplog.text  # written once, then reused
    fit.ensure_demo(folder, 1)
    assert f"{folder}: held a demo world of seed 0; pamela_lite" in caplog.text and "rewritten for seed 1;" in caplog.text


def test_a_scale_read_off_the_data_with_a_hole_is_flagged(caplog):
    from pamela_lite.data import validate_ratings
    frame = pl.DataFrame({"participant_id": ["a"] * 6, "image_id": [1, 2, 3, 4, 5, 6], "rating": [1, 2, 3, 4, 5, 7]})
    with caplog.at_level("WARNING"):
        _, scale = validate_ratings(frame, "r.csv")
    assert (scale.low, scale.high) == (1, 7)
    assert "r.csv" in caplog.text and "no rating is 6" in caplog.text and "--scale" in caplog.text


def test_a_table_with_nothing_scored_says_so_instead_of_printing_an_empty_header():
    from pamela_lite.protocol import format_table

    assert format_table([]).startswith("nothing scored: the data has no ratings in these splits")


def test_a_missing_id_that_matches_in_no_form_gets_no_lesson_in_id_types(tmp_path, dataset):
    path = tmp_path / "r.csv"
    path.write_text("participant_id,image_id,rating\na,999999999,3\na,100001,4\n")
    message = str(pytest.raises(InputError, load_dataset, path, dataset.embeddings.source).value)
    assert "'999999999'" in message and "these ids are text" not in message


def test_predict_explains_id_types_only_for_ids_that_would_match_as_numbers(tmp_path, capsys):
    from pamela_lite import demo

    from .conftest import SMALL_MODEL

    assert demo.main(["--world", "demo", "--out", str(tmp_path / "w"), "--users", "30", "--images", "200",
                      "--dim", "16", "--int-ids", "--seed", "3"]) == 0
    ds = load_dataset(tmp_path / "w")
    PersonalScorer(random_state=0, **SMALL_MODEL).fit(ds.split("train"), ds.embeddings, ds.scale).save(tmp_path / "m")
    person, image = ds.split("train")["participant_id"][0], ds.split("train")["image_id"][0]
    for written, explained in ((f"0{person}", True), ("987654321", False)):
        (tmp_path / "pairs.csv").write_text(f"participant_id,image_id\n{written},{image}\n")
        capsys.readouterr()
        code = run(predict.main, ["--model", str(tmp_path / "m"), "--pairs", str(tmp_path / "pairs.csv"),
                                  "--embeddings", ds.embeddings.source, "--out", str(tmp_path / "o.csv"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and f"'{written}'" in err
        assert ("these ids are text, those of the model are integers" in err) == explained, err


@pytest.mark.parametrize("cli", ["predict", "score"])
def test_an_id_off_by_spaces_or_case_is_pointed_at_the_id_it_nearly_is(cli, saved, dataset, tmp_path, capsys):
    person, image = dataset.split("train")["participant_id"][0], dataset.split("train")["image_id"][0]
    near, far = f" {str(person).upper()} ", "nobody-at-all"
    for written, hinted in ((near, True), (far, False)):
        pl.DataFrame({"participant_id": [written], "image_id": [image]}).write_csv(tmp_path / "pairs.csv")
        capsys.readouterr()
        source = ["--model", str(saved / "model")] if cli == "predict" else ["--scorer", str(saved / "scorer.onnx")]
        code = run({"predict": predict.main, "score": score.main}[cli],
                   [*source, "--pairs", str(tmp_path / "pairs.csv"), "--embeddings", dataset.embeddings.source,
                    "--out", str(tmp_path / "o.csv"), "--quiet"])
        line = _one_line_error(capsys, code)
        assert (f"e.g. {near!r} against {str(person)!r}: ids must match exactly" in line) == hinted, line


def test_an_image_id_off_by_spaces_is_pointed_at_the_id_it_nearly_is(dataset):
    image = str(dataset.embeddings.ids[0])
    message = str(pytest.raises(InputError, dataset.embeddings.rows, pl.Series([f"{image} "])).value)
    assert f"e.g. '{image} ' against '{image}'" in message


def test_an_image_id_in_another_unicode_form_is_pointed_at_the_id_it_nearly_is():
    import unicodedata

    from pamela_lite.data import Embeddings

    stored = unicodedata.normalize("NFD", "later/café.png")  # as a macOS file name gives it
    embeddings = Embeddings(pl.Series([stored, "cats/c0.jpg"]), np.eye(2, 4, dtype=np.float32), "emb.parquet")
    typed = unicodedata.normalize("NFC", "later/café.png")
    message = str(pytest.raises(InputError, embeddings.rows, pl.Series([typed])).value)
    assert "1 of them differs from a known id only in spaces, letter case or Unicode form" in message
