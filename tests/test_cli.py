"""The command-line contract: exit codes, one-line errors, no tracebacks, files never clobbered."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from pamela_lite import evaluate, fit, predict, protocol
from pamela_lite.cli import CONSOLE_ENV, run
from pamela_lite.errors import InputError
from pamela_lite.model import PersonalScorer

from .conftest import SMALL_MODEL, cli, write_embeddings




def test_fit_writes_model_and_metrics(model_dir):
    metrics = json.loads((model_dir / "metrics.json").read_text())
    models = {row["model"] for row in metrics["test"]}
    assert {"global mean", "population head", "MF only", "pamela_lite (full)", "noise ceiling"} <= models
    assert {(r["split"], r["k"]) for r in metrics["test"]} == {("test_seen", None), ("test_unseen", 0), ("test_unseen", 5)}


def test_a_table_over_few_people_says_so():
    row = dict(k=0, model="m", srocc=0.3, plcc=0.3, pairwise_acc=0.6, mae=1.0, rmse=1.2)
    rows = [{**row, "split": "test_seen", "n_users": 189}, {**row, "split": "test_unseen", "n_users": 7},
            {**row, "split": "test_unseen", "k": 10, "n_users": 6}]
    note = protocol.few_people_note(rows)
    assert note.startswith("note: test_unseen has 6-7 people:") and "test_seen" not in note
    assert protocol.few_people_note(rows[:2]).startswith("note: test_unseen has 7 people:")
    assert protocol.few_people_note(rows[:1]) is None
    assert protocol.format_table(rows).splitlines()[-1] == note


def test_a_split_where_nobody_can_be_ranked_is_not_called_empty():
    # "test_seen has 0 people" was printed for 32 ratings of people with fewer than 5 each
    row = dict(k=None, model="m", srocc=float("nan"), plcc=float("nan"), pairwise_acc=float("nan"), mae=2.5, rmse=2.9)
    rows = [{**row, "split": "test_seen", "n_users": 0}, {**row, "split": "test_unseen", "k": 0, "n_users": 7}]
    lines = protocol.few_people_note(rows).splitlines()
    assert lines[0].startswith("note: test_unseen has 7 people:") and "test_seen" not in lines[0]
    assert lines[1].startswith("note: in test_seen nobody has the 5 or more ratings, not all equal,")
    assert "has 0 people" not in lines[1]


def _one_line_error(capsys, code):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


def test_bad_data_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "r.csv"
    pl.DataFrame({"participant_id": ["a"], "image_id": [1]}).write_csv(bad)
    line = _one_line_error(capsys, run(fit.main, ["--data", str(bad), "--out", str(tmp_path / "m")]))
    assert str(bad) in line and "rating" in line
    assert not (tmp_path / "m").exists()


def test_bad_input_leaves_existing_model_untouched(tmp_path, capsys, model_dir, world):
    out = tmp_path / "m"
    out.mkdir()
    (out / "model.json").write_text("previous model")
    bad = tmp_path / "e.parquet"
    write_embeddings(bad, [1, 2], np.array([[np.nan, 1.0], [1.0, 1.0]]))
    _one_line_error(capsys, run(fit.main, ["--data", str(world), "--embeddings", str(bad), "--out", str(out)]))
    assert (out / "model.json").read_text() == "previous model"


@pytest.mark.parametrize("kind", ["file", "folder of other things"])
def test_fit_never_replaces_what_is_not_a_model(tmp_path, capsys, world, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("notes")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("notes")
    line = _one_line_error(capsys, run(fit.main, ["--data", str(world), "--out", str(out), "--quiet"]))
    assert str(out) in line
    assert (out.read_text() if kind == "file" else (out / "notes.txt").read_text()) == "notes"


def test_demo_and_steer_never_replace_what_is_not_theirs(tmp_path, model_dir, capsys):
    from pamela_lite import demo, steer

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("notes")
    _one_line_error(capsys, run(demo.main, ["--out", str(out), "--users", "20", "--images", "40", "--ratings", "200"]))
    _one_line_error(capsys, run(steer.main, ["--model", str(model_dir), "--user", "x", "--prompt", "p",
                                             "--generator", "stub", "--out", str(out)]))
    assert (out / "notes.txt").read_text() == "notes" and len(list(out.iterdir())) == 1


def test_refold_from_a_missing_folder_says_so(tmp_path, capsys, world):
    line = _one_line_error(capsys, run(fit.main, ["--data", str(world), "--out", str(tmp_path / "m"),
                                                  "--refold-from", str(tmp_path / "nowhere")]))
    assert "no such model folder" in line


def test_fit_help_explains_the_defaults():
    done = cli("fit", "--help")
    assert done.returncode == 0 and "--data" in done.stdout and "demo" in done.stdout


TOOLS = ["fit", "predict", "evaluate", "export", "score", "cache", "embed", "steer", "distributed", "events"]


@pytest.mark.parametrize("tool", TOOLS)
def test_help_prints_no_none_default(tool):
    import importlib

    text = importlib.import_module(f"pamela_lite.{tool}").build_parser().format_help()
    assert "default: None" not in " ".join(text.split())


@pytest.mark.parametrize("tool", TOOLS)
def test_options_are_never_taken_from_a_prefix(tool):
    import importlib

    parser = importlib.import_module(f"pamela_lite.{tool}").build_parser()
    assert parser.allow_abbrev is False


def test_help_still_prints_real_defaults():
    text = " ".join(fit.build_parser().format_help().split())
    assert "(default: 0)" in text and "(default: runs/model)" in text


FRONT_ENDS = [*TOOLS, "demo", "tiny_encoder"]


def _usage_line(capsys, call) -> str:
    """The one stderr line of an argparse usage error (exit 2, no usage block)."""
    with pytest.raises(SystemExit) as done:
        call()
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1, err
    assert err[0].endswith(" (see --help)") and "usage:" not in err[0]
    return err[0]


@pytest.mark.parametrize("tool", FRONT_ENDS)
def test_unknown_option_is_one_line(tool, capsys, monkeypatch):
    import importlib

    monkeypatch.delenv(CONSOLE_ENV, raising=False)
    main = importlib.import_module(f"pamela_lite.{tool}").main
    line = _usage_line(capsys, lambda: main(["--no-such-option"]))
    assert line.startswith("python -m pamela_lite.") and ": error: " in line


def test_missing_required_arguments_are_one_line(capsys, monkeypatch):
    monkeypatch.delenv(CONSOLE_ENV, raising=False)
    line = _usage_line(capsys, lambda: predict.main([]))
    assert line == ("python -m pamela_lite.predict: error: the following arguments are required: "
                    "--model, --pairs, --embeddings, --out (see --help)")


def test_bad_type_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv(CONSOLE_ENV, raising=False)
    line = _usage_line(capsys, lambda: fit.main(["--threads", "x"]))
    assert line == "python -m pamela_lite.fit: error: argument --threads: invalid int value: 'x' (see --help)"


@pytest.mark.parametrize("tool", ["fit", "demo"])
def test_console_usage_error_names_the_console_command(tool, capsys, monkeypatch):
    from pamela_lite import __main__ as console

    monkeypatch.setenv(CONSOLE_ENV, "1")  # restored after the test (the console sets it for good)
    line = _usage_line(capsys, lambda: console.main([tool, "--no-such-option"]))
    assert line == f"pamela-lite {tool}: error: unrecognized arguments: --no-such-option (see --help)"


@pytest.mark.parametrize("command", [["-m", "pamela_lite", "export"], ["-m", "pamela_lite.export"]])
def test_usage_error_is_one_line_from_either_front_door(command):
    done = subprocess.run([sys.executable, *command, "--model"], capture_output=True, text=True, timeout=600)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "argument --model: expected one argument" in lines[0]


def test_usage_error_exits_2():
    done = cli("fit", "--kshot", "ten")
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_predict_scores_known_and_context_users(model_dir, world, dataset, tmp_path):
    # Two new people with different context ratings, and known users: each must be scored from
    # their own state (a CLI that gave every context user the same state, or the prior, fails).
    unseen = dataset.ratings.filter(pl.col("split").str.ends_with("unseen"))
    newcomers = unseen["participant_id"].unique(maintain_order=True).to_list()
    assert len(newcomers) >= 2
    context = unseen.group_by("participant_id", maintain_order=True).head(12)
    query = unseen.join(context, on=["participant_id", "image_id"], how="anti").group_by("participant_id").head(5)
    shared = query["image_id"][0]  # one image scored for every newcomer: their scores must differ
    pairs = pl.concat([dataset.split("test_seen").select("participant_id", "image_id").head(5),
                       query.select("participant_id", "image_id"),
                       pl.DataFrame({"participant_id": newcomers, "image_id": [shared] * len(newcomers)})])
    pairs.write_csv(tmp_path / "pairs.csv")
    context.select("participant_id", "image_id", "rating", "age", "gender", "nationality").write_parquet(
        tmp_path / "context.parquet")
    out = tmp_path / "scores.parquet"
    done = cli("predict", "--model", model_dir, "--pairs", tmp_path / "pairs.csv",
               "--embeddings", world / "embeddings.parquet", "--context", tmp_path / "context.parquet", "--out", out)
    assert done.returncode == 0, done.stderr
    scores = pl.read_parquet(out)
    assert scores.columns == ["participant_id", "image_id", "score"] and scores.height == pairs.height
    model = PersonalScorer.load(model_dir)
    expected = np.empty(pairs.height)
    for user in pairs["participant_id"].unique():
        rows = (pairs["participant_id"] == user).to_numpy()
        alone = context.filter(pl.col("participant_id") == user)
        states = model.fold_in(alone, dataset.embeddings) if alone.height else None
        expected[rows] = model.predict(pairs.filter(pl.Series(rows)), dataset.embeddings, states)
    np.testing.assert_allclose(scores["score"], expected, rtol=0, atol=1e-9)
    on_shared = scores.tail(len(newcomers))["score"]
    assert on_shared.n_unique() == len(newcomers)


def test_predict_unknown_user_without_context_exits_2(model_dir, world, tmp_path, capsys):
    pl.DataFrame({"participant_id": ["nobody"], "image_id": [100000]}).write_csv(tmp_path / "pairs.csv")
    line = _one_line_error(capsys, run(predict.main, [
        "--model", str(model_dir), "--pairs", str(tmp_path / "pairs.csv"),
        "--embeddings", str(world / "embeddings.parquet"), "--out", str(tmp_path / "o.csv")]))
    assert "'nobody'" in line and "--context" in line
    assert not (tmp_path / "o.csv").exists()


def _people_args(model_dir, world, tmp_path, people: pl.DataFrame, *extra):
    people.write_csv(tmp_path / "people.csv")
    ids = [u for u in people.get_column("participant_id", default=pl.Series(["new1"])).to_list() if u is not None]
    pairs = pl.DataFrame({"participant_id": ids * 2, "image_id": [100000] * len(ids) + [100001] * len(ids)})
    pairs.write_csv(tmp_path / "pairs.csv")
    return pairs, ["--model", str(model_dir), "--pairs", str(tmp_path / "pairs.csv"), "--people",
                   str(tmp_path / "people.csv"), "--embeddings", str(world / "embeddings.parquet"), *extra]


def test_predict_scores_people_with_nothing_rated_from_their_demographics(model_dir, world, dataset, tmp_path):
    # a brand-new person with no ratings could not be scored from the command line at all
    people = pl.DataFrame({"participant_id": ["new1", "new2"], "age": [22, 67], "gender": ["Female", "Male"]})
    pairs, args = _people_args(model_dir, world, tmp_path, people, "--out", str(tmp_path / "o.csv"))
    assert run(predict.main, args) == 0
    model = PersonalScorer.load(model_dir)
    nobody_rated = pl.DataFrame(schema={"participant_id": pl.String, "image_id": pl.Int64, "rating": pl.Int64})
    expected = model.predict(pairs, dataset.embeddings, model.fold_in(nobody_rated, dataset.embeddings, users=people))
    np.testing.assert_allclose(pl.read_csv(tmp_path / "o.csv")["score"], expected, rtol=0, atol=1e-9)
    assert expected[0] != expected[1]  # two people, two demographic priors (not one population mean)


def test_predict_people_are_kept_with_add_to_model(model_dir, world, tmp_path):
    people = pl.DataFrame({"participant_id": ["new1"], "age": [30]})
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    _, args = _people_args(folder, world, tmp_path, people, "--add-to-model", "--out", str(tmp_path / "a.csv"))
    assert run(predict.main, args) == 0
    again = ["--model", str(folder), "--pairs", str(tmp_path / "pairs.csv"), "--embeddings",
             str(world / "embeddings.parquet"), "--out", str(tmp_path / "b.csv")]
    assert run(predict.main, again) == 0  # known now, without --people
    assert pl.read_csv(tmp_path / "a.csv")["score"].to_list() == pl.read_csv(tmp_path / "b.csv")["score"].to_list()


def test_predict_people_give_demographics_to_context_people_and_the_kept_ratings_carry_them(
        model_dir, world, dataset, tmp_path, caplog):
    # --people and --context for one person: the people file's demographics win over the context's,
    # in the fold-in and in the rows --add-to-model keeps (which a refit folds in again)
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    image = int(dataset.embeddings.ids[0])
    pl.DataFrame({"participant_id": ["new1"], "image_id": [image], "rating": [3], "age": [20],
                  "gender": ["male"]}).write_csv(tmp_path / "ctx.csv")
    people = pl.DataFrame({"participant_id": ["new1"], "age": ["65+"], "gender": ["female"]})
    _, args = _people_args(folder, world, tmp_path, people, "--context", str(tmp_path / "ctx.csv"),
                           "--add-to-model", "--out", str(tmp_path / "o.csv"))
    assert run(predict.main, args) == 0
    assert "the demographics of 1 person(s) differ from those in their context ratings; this file's are used: " \
           "'new1'" in caplog.text
    model = PersonalScorer.load(folder)
    kept = model.ratings_.filter(pl.col("participant_id") == "new1")
    assert kept["gender"].to_list() == ["female"] and kept["age"].to_list() == [65.0]
    ids, states = model.fold_in(kept.drop("origin"), dataset.embeddings)  # what a refit does with the kept rows
    np.testing.assert_allclose(model.user_states_[model.users_.index("new1")], states[0], rtol=0, atol=1e-6)


def test_predict_people_bad_age_range_is_warned_once(model_dir, world, tmp_path, caplog):
    people = pl.DataFrame({"participant_id": ["new1"], "age_binned": ["thirty-ish"]})
    _, args = _people_args(model_dir, world, tmp_path, people, "--out", str(tmp_path / "o.csv"))
    assert run(predict.main, args) == 0
    warned = [r.getMessage() for r in caplog.records if "thirty-ish" in r.getMessage()]
    assert len(warned) == 1 and "people.csv" in warned[0]


def test_predict_people_known_from_demographics_alone_may_be_corrected_with_refit_known(model_dir, world, tmp_path,
                                                                                        capsys):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    _, args = _people_args(folder, world, tmp_path, pl.DataFrame({"participant_id": ["new1"], "age": [20]}),
                           "--add-to-model", "--out", str(tmp_path / "a.csv"))
    assert run(predict.main, args) == 0
    capsys.readouterr()
    _, args = _people_args(folder, world, tmp_path, pl.DataFrame({"participant_id": ["new1"], "age": [80]}),
                           "--add-to-model", "--out", str(tmp_path / "b.csv"))
    line = _one_line_error(capsys, run(predict.main, args))
    assert "added from demographics alone: add --refit-known to correct them" in line
    assert run(predict.main, [*args, "--refit-known"]) == 0
    assert PersonalScorer.load(folder).ratings_.filter(pl.col("participant_id") == "new1")["age"].to_list() == [80.0]


def test_ages_for_a_model_fitted_without_ages_are_warned_about(fitted, caplog):
    # they changed no score, silently (a gender the model never saw was already warned about)
    from pamela_lite.cli import warn_unknown_demographics
    from pamela_lite.user_solver import DemographicPrior

    frame = pl.DataFrame({"participant_id": ["a"], "age": [30.0]})
    assert fitted.fitted_.prior.knows_ages  # the demo world has ages
    warn_unknown_demographics(frame, fitted.fitted_.prior, "people.csv")
    assert "without ages" not in caplog.text
    warn_unknown_demographics(frame, DemographicPrior(0.0, 1.0, [], []), "people.csv")  # what a fit without ages keeps
    assert "people.csv: the model was fitted without ages, so the ages given here change no score" in caplog.text


@pytest.mark.parametrize("people, expected", [
    (pl.DataFrame({"person": ["new1"]}), "missing column(s) participant_id"),
    (pl.DataFrame({"participant_id": [None, "new1"]}, schema={"participant_id": pl.String}), "have no participant_id"),
    (pl.DataFrame({"participant_id": ["new1", "new1"], "age": [70, 20]}), "given more than once: 'new1'"),
])
def test_predict_bad_people_file_exits_2(model_dir, world, tmp_path, capsys, people, expected):
    _, args = _people_args(model_dir, world, tmp_path, people, "--out", str(tmp_path / "o.csv"))
    line = _one_line_error(capsys, run(predict.main, args))
    assert "people.csv" in line and expected in line and not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("refit", [[], ["--refit-known"]])
def test_predict_people_the_model_knows_are_refused(model_dir, world, dataset, tmp_path, capsys, refit):
    # even with --refit-known: a known person would be scored from demographics alone, and
    # --add-to-model would drop the ratings the folder keeps of them
    known = dataset.split("train")["participant_id"][0]
    _, args = _people_args(model_dir, world, tmp_path, pl.DataFrame({"participant_id": [known]}),
                           "--out", str(tmp_path / "o.csv"), *refit)
    line = _one_line_error(capsys, run(predict.main, args))
    assert "already known" in line and "people.csv" in line and "--context" in line


def test_predict_people_from_a_json_file_read_like_ratings(model_dir, world, tmp_path, capsys):
    # a list where a word belongs ended in a traceback (exit 1)
    (tmp_path / "people.json").write_text('[{"participant_id": "new1", "gender": ["female"]}]')
    pl.DataFrame({"participant_id": ["new1"], "image_id": [100000]}).write_csv(tmp_path / "pairs.csv")
    line = _one_line_error(capsys, run(predict.main, [
        "--model", str(model_dir), "--pairs", str(tmp_path / "pairs.csv"), "--people", str(tmp_path / "people.json"),
        "--embeddings", str(world / "embeddings.parquet"), "--out", str(tmp_path / "o.csv")]))
    assert "people.json" in line and "gender holds lists" in line


def test_predict_context_outside_scale_exits_2(model_dir, world, tmp_path, capsys):
    pl.DataFrame({"participant_id": ["new"], "image_id": [100000]}).write_csv(tmp_path / "pairs.csv")
    pl.DataFrame({"participant_id": ["new"], "image_id": [100001], "rating": [99]}).write_csv(tmp_path / "ctx.csv")
    line = _one_line_error(capsys, run(predict.main, [
        "--model", str(model_dir), "--pairs", str(tmp_path / "pairs.csv"), "--context", str(tmp_path / "ctx.csv"),
        "--embeddings", str(world / "embeddings.parquet"), "--out", str(tmp_path / "o.csv")]))
    assert "ctx.csv" in line and "outside the scale" in line


def test_predict_wrong_dimension_exits_2(model_dir, tmp_path, capsys):
    pl.DataFrame({"participant_id": ["x"], "image_id": [1]}).write_csv(tmp_path / "pairs.csv")
    write_embeddings(tmp_path / "e.parquet", [1], np.ones((1, 5)))
    line = _one_line_error(capsys, run(predict.main, [
        "--model", str(model_dir), "--pairs", str(tmp_path / "pairs.csv"),
        "--embeddings", str(tmp_path / "e.parquet"), "--out", str(tmp_path / "o.csv")]))
    assert "dimension 5" in line


def test_predict_missing_model_exits_2(tmp_path, capsys):
    line = _one_line_error(capsys, run(predict.main, [
        "--model", str(tmp_path), "--pairs", "p.csv", "--embeddings", "e.parquet", "--out", "o.csv"]))
    assert "not a pamela_lite model" in line


def test_evaluate_reports_the_saved_models_test_figures(model_dir, world, tmp_path):
    out = tmp_path / "eval.json"
    assert run(evaluate.main, ["--model", str(model_dir), "--data", str(world), "--kshot", "0,5",
                               "--no-baselines", "--out", str(out), "--quiet"]) == 0
    again = {(r["split"], r["k"]): r["srocc"] for r in json.loads(out.read_text()) if r["model"].startswith("model")}
    at_fit = {(r["split"], r["k"]): r["srocc"] for r in json.loads((model_dir / "metrics.json").read_text())["test"]
              if r["model"] == "pamela_lite (full)"}
    assert again == pytest.approx(at_fit)


def test_evaluate_skips_a_split_the_data_lacks_with_a_warning(model_dir, world, dataset, tmp_path, caplog):
    table = tmp_path / "ratings.parquet"
    dataset.ratings.filter(pl.col("split").is_in(["train", "test_seen"])).write_parquet(table)
    out = tmp_path / "eval.json"
    assert run(evaluate.main, ["--model", str(model_dir), "--data", str(table), "--embeddings",
                               str(world / "embeddings.parquet"), "--no-baselines", "--out", str(out), "--quiet"]) == 0
    assert {r["split"] for r in json.loads(out.read_text())} == {"test_seen"}
    assert "no ratings in split(s) test_unseen" in caplog.text


def test_evaluate_without_baselines_needs_no_train_split(model_dir, world, dataset, tmp_path, caplog):
    table = tmp_path / "ratings.parquet"
    dataset.ratings.filter(pl.col("split") == "test_seen").write_parquet(table)
    out = tmp_path / "eval.json"
    assert run(evaluate.main, ["--model", str(model_dir), "--data", str(table), "--embeddings",
                               str(world / "embeddings.parquet"), "--splits", "test_seen", "--no-baselines",
                               "--out", str(out), "--quiet"]) == 0
    at_fit = [r["srocc"] for r in json.loads((model_dir / "metrics.json").read_text())["test"]
              if r["model"] == "pamela_lite (full)" and r["split"] == "test_seen"]
    assert [r["srocc"] for r in json.loads(out.read_text())] == pytest.approx(at_fit)
    assert "not in train" not in caplog.text  # the model's users, not the table's, are the known ones


def test_evaluate_with_baselines_still_needs_the_train_split(model_dir, world, dataset, tmp_path, capsys):
    table = tmp_path / "ratings.parquet"
    dataset.ratings.filter(pl.col("split") == "test_seen").write_parquet(table)
    line = _one_line_error(capsys, run(evaluate.main, [
        "--model", str(model_dir), "--data", str(table), "--embeddings", str(world / "embeddings.parquet"),
        "--splits", "test_seen", "--quiet"]))
    assert "ratings.parquet" in line and "no ratings in split train" in line


def test_evaluate_with_none_of_the_splits_exits_2_with_one_line(model_dir, world, dataset, tmp_path, capsys):
    table = tmp_path / "ratings.parquet"
    dataset.ratings.filter(pl.col("split").is_in(["train", "test_seen"])).write_parquet(table)
    line = _one_line_error(capsys, run(evaluate.main, [
        "--model", str(model_dir), "--data", str(table), "--embeddings", str(world / "embeddings.parquet"),
        "--splits", "test_unseen,val_unseen", "--no-baselines", "--quiet"]))
    assert "ratings.parquet" in line and "no ratings in split(s) test_unseen, val_unseen" in line


def test_evaluate_takes_the_split_of_one_pamela_split_file_from_its_name(model_dir, world, tmp_path):
    # the file was re-split 80/10/10 by image: a test_seen row of NaNs for people the model never saw
    out = tmp_path / "eval.json"
    assert run(evaluate.main, ["--model", str(model_dir), "--data", str(world / "annotations" / "pamela_test_unseen.json"),
                               "--embeddings", str(world / "embeddings.parquet"), "--no-baselines", "--kshot", "5",
                               "--out", str(out), "--quiet"]) == 0
    at_fit = [r["srocc"] for r in json.loads((model_dir / "metrics.json").read_text())["test"]
              if r["model"] == "pamela_lite (full)" and r["split"] == "test_unseen" and r["k"] == 5]
    assert [(r["split"], r["k"], r["srocc"]) for r in json.loads(out.read_text())] == [
        ("test_unseen", 5, pytest.approx(at_fit[0]))]


def test_evaluate_reads_a_pamela_root_holding_only_some_split_files(model_dir, world, tmp_path, caplog):
    # "pamela_train.json: missing split file", even with --no-baselines
    root = tmp_path / "tests_only"
    (root / "annotations").mkdir(parents=True)
    for split in ("test_seen", "test_unseen"):
        shutil.copy(world / "annotations" / f"pamela_{split}.json", root / "annotations")
    out = tmp_path / "eval.json"
    assert run(evaluate.main, ["--model", str(model_dir), "--data", str(root), "--embeddings",
                               str(world / "embeddings.parquet"), "--no-baselines", "--kshot", "5",
                               "--out", str(out), "--quiet"]) == 0
    assert {r["split"] for r in json.loads(out.read_text())} == {"test_seen", "test_unseen"}
    assert "no pamela_train.json, pamela_val_seen.json, pamela_val_unseen.json" in caplog.text


def test_evaluate_on_people_the_model_does_not_know_is_one_line_not_a_row_of_nans(model_dir, world, dataset,
                                                                                  tmp_path, capsys):
    table = tmp_path / "ratings.parquet"
    strangers = dataset.ratings.filter(pl.col("split") == "test_seen").with_columns(
        participant_id=pl.lit("stranger_") + pl.col("participant_id"))
    strangers.write_parquet(table)
    line = _one_line_error(capsys, run(evaluate.main, [
        "--model", str(model_dir), "--data", str(table), "--embeddings", str(world / "embeddings.parquet"),
        "--splits", "test_seen", "--no-baselines", "--quiet"]))
    assert "nothing to score" in line


def test_evaluate_names_an_unknown_split(capsys):
    line = _one_line_error(capsys, run(evaluate.main, ["--model", "m", "--data", "d", "--splits", "test_seen,tset_unseen"]))
    assert "tset_unseen" in line


def test_unknown_output_type_is_refused_before_any_work(model_dir, world, tmp_path, capsys):
    pl.DataFrame({"participant_id": ["nobody"], "image_id": [100000]}).write_csv(tmp_path / "p.csv")
    line = _one_line_error(capsys, run(predict.main, [
        "--model", str(model_dir), "--pairs", str(tmp_path / "p.csv"),
        "--embeddings", str(world / "embeddings.parquet"), "--out", str(tmp_path / "scores.txt")]))
    assert "unknown output type '.txt'" in line


def test_an_output_table_never_replaces_a_file_of_a_model_folder(model_dir, world, tmp_path, capsys):
    # predict --out MODEL/ratings.parquet once overwrote the ratings the model folder keeps
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    kept = (folder / "ratings.parquet").read_bytes()
    pl.DataFrame({"participant_id": ["nobody"], "image_id": [100000]}).write_csv(tmp_path / "p.csv")
    line = _one_line_error(capsys, run(predict.main, [
        "--model", str(folder), "--pairs", str(tmp_path / "p.csv"),
        "--embeddings", str(world / "embeddings.parquet"), "--out", str(folder / "ratings.parquet")]))
    assert "is a file of the model folder it is in" in line and (folder / "ratings.parquet").read_bytes() == kept


def test_evaluate_out_never_replaces_a_file_of_a_model_folder(model_dir, world, tmp_path, capsys):
    # evaluate --out MODEL/model.json once destroyed the model, after the whole evaluation
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    kept = (folder / "model.json").read_bytes()
    line = _one_line_error(capsys, run(evaluate.main, ["--model", str(folder), "--data", str(world),
                                                        "--out", str(folder / "model.json")]))
    assert "is a file of the model folder it is in" in line and (folder / "model.json").read_bytes() == kept


def test_fit_params_reach_the_model_and_are_recorded(world, tmp_path):
    out = tmp_path / "model"
    done = cli("fit", "--data", world, "--out", out, "--no-baselines", "--kshot", "0", "--quiet",
               "--params", '{"n_components": 6, "taste_basis": "pca"}')
    assert done.returncode == 0, done.stderr
    params = json.loads((out / "model.json").read_text())["params"]
    assert params["n_components"] == 6 and params["taste_basis"] == "pca"


def test_fit_refuses_unknown_params(world, tmp_path):
    done = cli("fit", "--data", world, "--out", tmp_path / "m", "--params", '{"n_componnets": 6}')
    assert done.returncode == 2 and "n_componnets" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", ["n_components", "taste_rank", "head_trees", "gain_bin"])
def test_fit_refuses_a_count_written_as_a_fraction(world, tmp_path, name):
    # 16.0 once passed the check and then failed deep inside numpy / LightGBM with a traceback
    done = cli("fit", "--data", world, "--out", tmp_path / "m", "--params", json.dumps({name: 16.0}))
    assert done.returncode == 2 and f"{name} must be a whole number (like 48, not 48.0), not 16.0" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "m").exists()


def test_fit_refuses_gain_bins_too_narrow_to_steady_the_gains(world, tmp_path):
    done = cli("fit", "--data", world, "--out", tmp_path / "m", "--params", '{"gain_bin": 4}')
    assert done.returncode == 2 and "gain_bin must be 0 (no weighting) or at least 16, not 4" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "m").exists()


def test_fit_refuses_a_whiten_dim_that_is_not_a_whole_number_or_null(world, tmp_path):
    done = cli("fit", "--data", world, "--out", tmp_path / "m", "--params", '{"whiten_dim": "all"}')
    assert done.returncode == 2 and "whiten_dim must be a whole number of at least n_components (32) or null" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "m").exists()


def test_fit_refuses_a_whiten_dim_that_would_cut_the_principal_components(world, tmp_path):
    done = cli("fit", "--data", world, "--out", tmp_path / "m", "--params", '{"whiten_dim": 8}')
    assert done.returncode == 2 and "at least n_components (32)" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("tool", ["fit", "demo", "evaluate", "steer"])
@pytest.mark.parametrize("seed", ["-1", "99999999999999999999", "1.5"])
def test_a_seed_no_library_takes_is_refused_in_one_line(tool, seed, capsys):
    # a negative seed once reached numpy: exit 1, "unexpected ValueError"
    from importlib import import_module

    with pytest.raises(SystemExit) as stop:
        import_module(f"pamela_lite.{tool}").main(["--seed", seed])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and f"takes a whole number from 0 to 4294967295, not {seed}" in err[0]


def test_console_without_a_command_is_a_usage_error_on_stderr(capsys):
    # the usage went to stdout with exit 2: a pipe took it for output
    from pamela_lite import __main__ as console

    assert console.main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: pamela-lite COMMAND")


@pytest.mark.parametrize("argv", [["--version"], ["fit", "--version"], ["demo", "--version"]])
def test_every_front_door_answers_version(argv):
    from pamela_lite import __version__

    out = subprocess.run([sys.executable, "-m", "pamela_lite", *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"pamela_lite {__version__}", out.stderr


@pytest.mark.parametrize("tool, args", [
    ("fit", ["--data", "nowhere"]), ("demo", []), ("predict", ["--model", "m", "--pairs", "p.csv"]),
    ("steer", ["--model", "m", "--user", "u", "--prompt", "a cat"]), ("export", ["--model", "m"]),
])
def test_an_output_under_a_file_is_refused_before_any_work(tool, args, tmp_path):
    # it once failed after the whole fit, as an unexpected FileExistsError (exit 1)
    (tmp_path / "f.csv").write_text("x\n")
    out = subprocess.run([sys.executable, "-m", f"pamela_lite.{tool}", *args, "--out", str(tmp_path / "f.csv" / "o")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "f.csv is a file, not a folder" in out.stderr
    assert (tmp_path / "f.csv").read_text() == "x\n"


@pytest.mark.parametrize("tool, args", [("fit", ["--data", "nowhere"]), ("predict", ["--model", "m", "--pairs", "p.csv"])])
def test_an_output_in_a_folder_nobody_can_write_in_is_refused_before_any_work(tool, args, tmp_path):
    # /proc refuses new files even to root (permission bits would not tell); the error once came
    # after the whole fit, as an unexpected FileNotFoundError (exit 1)
    out = subprocess.run([sys.executable, "-m", f"pamela_lite.{tool}", *args, "--out", "/proc/pamela_lite_out"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "/proc is a folder this user cannot write in" in out.stderr


def test_a_job_folder_written_into_is_checked_itself_not_its_parent(tmp_path):
    from pamela_lite.cli import output_folder

    # score --dask writes into --out: a writable folder under a parent it cannot write in is fine
    assert output_folder(str(tmp_path)) == tmp_path
    with pytest.raises(argparse.ArgumentTypeError, match="cannot write into /proc"):
        output_folder("/proc")
    with pytest.raises(argparse.ArgumentTypeError, match="/proc is a folder this user cannot write in"):
        output_folder("/proc/new_job")


def test_an_output_under_a_broken_link_is_refused(tmp_path):
    from pamela_lite.cli import output_path

    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(argparse.ArgumentTypeError, match="is a broken link"):
        output_path(str(tmp_path / "gone" / "m"))
    assert output_path(str(tmp_path / "new" / "m")) == tmp_path / "new" / "m"  # a folder still to make is fine


def test_a_split_column_without_val_seen_fits_without_tuning(ratings_table, dataset, tmp_path):
    # it stopped with "validation: no ratings", naming no file
    ratings_table.filter(pl.col("split") != "val_seen").write_csv(tmp_path / "r.csv")
    write_embeddings(tmp_path / "e.parquet", dataset.embeddings.ids, dataset.embeddings.matrix)
    done = cli("fit", "--data", tmp_path / "r.csv", "--embeddings", tmp_path / "e.parquet", "--out", tmp_path / "m",
               "--params", json.dumps({k: v for k, v in SMALL_MODEL.items() if k != "n_threads"}), "--no-baselines",
               "--kshot", "0")
    assert done.returncode == 0, done.stderr
    assert "residual head not tuned" in done.stderr and (tmp_path / "m" / "model.json").is_file()


def test_a_folder_as_an_output_table_or_as_a_scorer_is_named_as_a_folder(model_dir, tmp_path):
    from pamela_lite.cli import check_table_path
    from pamela_lite.score import load_scorer

    with pytest.raises(InputError, match="is a folder: name an output file"):
        check_table_path(tmp_path)
    with pytest.raises(InputError, match="a model folder: export it first"):
        load_scorer(model_dir)


def test_evaluating_ratings_the_model_was_fitted_on_warns(model_dir, ratings_table, dataset, tmp_path):
    # a model fitted on a table without splits, evaluated on the same rows split later: scores inflated, silently
    relabelled = ratings_table.with_columns(
        split=pl.when((pl.col("split") == "train") & (pl.int_range(pl.len()) % 7 == 0)).then(pl.lit("test_seen"))
        .otherwise(pl.col("split")))
    relabelled.write_csv(tmp_path / "r.csv")
    write_embeddings(tmp_path / "e.parquet", dataset.embeddings.ids, dataset.embeddings.matrix)
    done = cli("evaluate", "--model", model_dir, "--data", tmp_path / "r.csv", "--embeddings", tmp_path / "e.parquet",
               "--no-baselines", "--splits", "test_seen")
    assert done.returncode == 0, done.stderr
    assert "are ratings the model was fitted on" in done.stderr
    clean = cli("evaluate", "--model", model_dir, "--data", tmp_path / "r.csv", "--embeddings", tmp_path / "e.parquet",
                "--no-baselines", "--splits", "val_seen")
    assert clean.returncode == 0 and "fitted on: their" not in clean.stderr
