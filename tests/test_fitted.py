"""The fitted scorer as one object: its files, the users file tied to it, and refolding users after a refit."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pamela_lite import onnx_scorer
from pamela_lite.edge import EdgeScorer
from pamela_lite.errors import InputError
from pamela_lite.protocol import kshot_split
from pamela_lite.fitted import FittedScorer
from pamela_lite.model import PersonalScorer, read_kept_ratings

from .conftest import SMALL_MODEL, cli

PACKAGE = Path(__file__).resolve().parents[1] / "pamela_lite"


@pytest.fixture(scope="module")
def other(dataset):
    """Another fit of the same data (another seed): its states mean nothing to `fitted`."""
    return PersonalScorer(random_state=1, **SMALL_MODEL).fit(dataset.split("train"), dataset.embeddings,
                                                             dataset.scale, validation=dataset.split("val_seen"))


def _newcomers(dataset, k=10):
    return kshot_split(dataset.split("test_unseen"), k, seed=4)


def test_a_saved_model_loads_as_the_same_fit_with_the_same_users(fitted, dataset, tmp_path):
    fitted.save(tmp_path / "m")
    loaded = PersonalScorer.load(tmp_path / "m")
    assert loaded.fitted_.digest() == fitted.fitted_.digest()
    assert loaded.users_ == fitted.users_
    np.testing.assert_array_equal(loaded.user_states_, fitted.user_states_)
    assert loaded.ratings_.equals(fitted.ratings_)
    context, query = _newcomers(dataset)
    np.testing.assert_array_equal(loaded.predict(query, dataset.embeddings, loaded.fold_in(context, dataset.embeddings)),
                                  fitted.predict(query, dataset.embeddings, fitted.fold_in(context, dataset.embeddings)))


def test_the_fitted_scorer_reads_back_exactly(fitted, tmp_path):
    FittedScorer.save(fitted.fitted_, tmp_path / "f")
    again = FittedScorer.read(tmp_path / "f")
    assert again.digest() == fitted.fitted_.digest() and again.head == fitted.fitted_.head
    assert json.loads((tmp_path / "f" / "model.json").read_text())["fit_sha256"] == again.digest()


def test_users_files_hold_ids_states_and_the_fits_digest_only(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    _, exported_users = onnx_scorer.export(fitted, tmp_path / "s.onnx")
    for path, kept in ((tmp_path / "m" / "users.npz", True), (exported_users, False)):
        with np.load(path, allow_pickle=False) as users:
            assert sorted(users.files) == ["meta", "user_ids", "user_states"]
            assert users["user_states"].shape == (len(fitted.users_), fitted.state_dim)
            meta = json.loads(str(users["meta"]))
        # a model folder's users file also names the digests of the ratings its states were solved from
        assert set(meta) == {"format", "format_version", "fit_sha256", "id_type", *(["kept_sha256"] if kept else [])}
        assert meta["fit_sha256"] == fitted.fitted_.digest()
        if kept:
            assert set(meta["kept_sha256"]) == {"ratings.parquet"}


def test_kept_ratings_of_another_fit_are_warned_about(fitted, dataset, tmp_path, caplog):
    fitted.save(tmp_path / "m")
    less = dataset.split("train").filter(pl.col("participant_id") != fitted.users_[0])
    PersonalScorer(random_state=0, **SMALL_MODEL).fit(less, dataset.embeddings, dataset.scale).save(tmp_path / "o")
    PersonalScorer.load(tmp_path / "m")
    assert "not the file this model folder was written with" not in caplog.text
    shutil.copy(tmp_path / "o" / "ratings.parquet", tmp_path / "m" / "ratings.parquet")
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        PersonalScorer.load(tmp_path / "m")
    assert f"{tmp_path / 'm' / 'ratings.parquet'}: not the file this model folder was written with" in caplog.text


def test_a_model_folder_written_before_kept_digests_still_loads(fitted, tmp_path):
    from pamela_lite.fitted import write_users

    fitted.save(tmp_path / "m")
    write_users(tmp_path / "m" / "users.npz", fitted.users_, fitted.user_states_, fitted.fitted_.digest())
    assert PersonalScorer.load(tmp_path / "m").users_ == fitted.users_


def test_a_model_folder_with_the_users_file_of_another_fit_is_refused(fitted, other, tmp_path):
    fitted.save(tmp_path / "m")
    other.save(tmp_path / "o")
    shutil.copy(tmp_path / "o" / "users.npz", tmp_path / "m" / "users.npz")
    with pytest.raises(InputError, match="another scorer") as err:
        PersonalScorer.load(tmp_path / "m")
    assert "\n" not in str(err.value)


def test_a_truncated_kept_ratings_file_is_called_a_damaged_model_file(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    path = tmp_path / "m" / "ratings.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="a damaged model folder file .*restore it from a copy, or refit") as err:
        PersonalScorer.load(tmp_path / "m")
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_a_device_refuses_parameters_of_another_fit(fitted, other, tmp_path):
    onnx_scorer.export(fitted, tmp_path / "s.onnx")
    onnx_scorer.export(other, tmp_path / "o.onnx")
    shutil.rmtree(tmp_path / "s.fitted")
    shutil.copytree(tmp_path / "o.fitted", tmp_path / "s.fitted")
    with pytest.raises(ValueError, match="another scorer"):
        EdgeScorer(tmp_path / "s.onnx")


def test_a_model_of_the_previous_format_is_refused_in_one_line(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "format_version": 2}))
    with pytest.raises(InputError, match="format version 2 .* reads version 3 only: refit") as err:
        PersonalScorer.load(tmp_path / "m")
    assert "\n" not in str(err.value)


def test_added_users_are_kept_with_their_ratings(fitted, dataset, tmp_path):
    context, query = _newcomers(dataset)
    model = PersonalScorer.load(fitted.save(tmp_path / "m"))
    folded = model.add_users(context, dataset.embeddings)
    model.save(tmp_path / "m")
    again = PersonalScorer.load(tmp_path / "m")
    np.testing.assert_array_equal(again.predict(query, dataset.embeddings),
                                  fitted.predict(query, dataset.embeddings, folded))
    kept = read_kept_ratings(tmp_path / "m").filter(pl.col("origin") == "context")
    assert kept.height == context.height and kept["participant_id"].dtype == pl.String


def test_a_refit_refolds_kept_users_as_a_fresh_fit_would_fold_them_in(fitted, dataset, tmp_path):
    # Users added to the old model (and its training users) survive a refit: the new model
    # scores them exactly as a fresh fit of the same data that folds them in from the same ratings.
    context, query = _newcomers(dataset)
    old = PersonalScorer.load(fitted.save(tmp_path / "old"))
    old.add_users(context, dataset.embeddings)
    old.save(tmp_path / "old")

    def refit():
        return PersonalScorer(random_state=1, **SMALL_MODEL).fit(
            dataset.split("train"), dataset.embeddings, dataset.scale, validation=dataset.split("val_seen"))

    new, fresh = refit(), refit()
    with pytest.raises(InputError, match="unknown to the model"):
        new.predict(query, dataset.embeddings)  # a refit alone does not know them
    refolded = new.refold(read_kept_ratings(tmp_path / "old"), dataset.embeddings)
    assert sorted(refolded) == sorted(context["participant_id"].unique().to_list())
    np.testing.assert_array_equal(new.predict(query, dataset.embeddings),
                                  fresh.predict(query, dataset.embeddings, fresh.fold_in(context, dataset.embeddings)))
    seen = dataset.split("test_seen")
    np.testing.assert_array_equal(new.predict(seen, dataset.embeddings), fresh.predict(seen, dataset.embeddings))
    # and the refolded users are kept by the new model, for the refit after it
    assert new.ratings_.filter(pl.col("origin") == "context").height == context.height


def test_fit_refold_from_and_predict_add_to_model_from_the_command_line(world, model_dir, tmp_path):
    context, query = kshot_split(pl.read_json(world / "annotations" / "pamela_test_unseen.json")
                                 .select("participant_id", "image_id", rating="original_score"), 5, seed=0)
    context.write_csv(tmp_path / "new.csv")
    query.select("participant_id", "image_id").write_csv(tmp_path / "pairs.csv")
    emb = world / "embeddings.parquet"
    old = shutil.copytree(model_dir, tmp_path / "old")
    done = cli("predict", "--model", old, "--pairs", tmp_path / "pairs.csv", "--embeddings", emb,
               "--context", tmp_path / "new.csv", "--add-to-model", "--out", tmp_path / "a.csv", "--quiet")
    assert done.returncode == 0, done.stderr
    assert (old / "metrics.json").exists()  # the folder's other files are kept
    done = cli("fit", "--data", world, "--out", tmp_path / "new", "--seed", 1, "--kshot", "0", "--no-baselines",
               "--refold-from", old)
    assert done.returncode == 0, done.stderr
    assert f"folded in again {context['participant_id'].n_unique()} user(s)" in done.stderr
    # known to the new fit without context, scored as a fold-in against the new fit would score them
    for out, extra in (("b.csv", []), ("c.csv", ["--context", tmp_path / "new.csv", "--refit-known"])):
        done = cli("predict", "--model", tmp_path / "new", "--pairs", tmp_path / "pairs.csv", "--embeddings", emb,
                   *extra, "--out", tmp_path / out, "--quiet")
        assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(pl.read_csv(tmp_path / "b.csv")["score"], pl.read_csv(tmp_path / "c.csv")["score"])


def test_refold_from_a_damaged_model_fails_before_the_fit(world, model_dir, tmp_path):
    # the old model was once read only after the fit: a damaged folder cost a whole fit
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    (old / "users.npz").write_bytes(b"not a users file")
    done = cli("fit", "--data", world, "--out", tmp_path / "new", "--refold-from", old)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "users.npz" in lines[0] and "not a readable users file" in lines[0]
    assert not (tmp_path / "new").exists()


def test_refold_from_a_folder_without_kept_ratings_exits_2(world, model_dir, tmp_path):
    old = tmp_path / "old"  # as a model folder written before models kept their ratings
    shutil.copytree(model_dir, old)
    (old / "ratings.parquet").unlink()
    done = cli("fit", "--data", world, "--out", tmp_path / "new", "--refold-from", old, "--quiet")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "ratings.parquet" in lines[0] and "keeps no ratings" in lines[0]
    assert not (tmp_path / "new").exists()


def test_refold_from_a_folder_that_is_not_a_model_says_so(world, tmp_path):
    (tmp_path / "junk").mkdir()
    done = cli("fit", "--data", world, "--out", tmp_path / "new", "--refold-from", tmp_path / "junk", "--quiet")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "not a model folder (no model.json)" in lines[0]


def test_refold_of_people_whose_images_are_not_embedded_here_fails_before_the_fit(world, model_dir, tmp_path):
    # once: after the whole fit, and blamed on the new embeddings file, not on the kept ratings
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    kept = pl.read_parquet(old / "ratings.parquet")
    ghost = kept.head(1).with_columns(participant_id=pl.lit("ghost"), image_id=pl.lit("no_such_image"))
    pl.concat([kept, ghost]).write_parquet(old / "ratings.parquet")
    done = cli("fit", "--data", world, "--out", tmp_path / "new", "--refold-from", old)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1  # no step line of the fit before it
    assert lines[0].startswith(f"error: {old / 'ratings.parquet'}: 1 image id(s) have no embedding") and "no_such_image" in lines[0]
    assert not (tmp_path / "new").exists()


def test_refold_of_people_rated_outside_the_new_scale_fails_before_the_fit(world, model_dir, tmp_path):
    # once: "error: context: 2 rating(s) outside the scale ..." after the whole fit, naming no file
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    kept = pl.read_parquet(old / "ratings.parquet")
    high = int(kept["rating"].max())
    added = kept.head(1).with_columns(participant_id=pl.lit("zed"), rating=pl.lit(high + 3, dtype=kept["rating"].dtype),
                                      origin=pl.lit("context"))
    pl.concat([kept, added]).write_parquet(old / "ratings.parquet")
    done = cli("fit", "--data", world, "--out", tmp_path / "new", "--refold-from", old)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: {old / 'ratings.parquet'}: 1 kept rating(s) of 1 person(s)") and "'zed'" in lines[0]
    assert f"-{high + 3}" in lines[0] and "--scale" in lines[0]
    assert not (tmp_path / "new").exists()


def test_refold_of_damaged_kept_ratings_fails_before_the_fit(world, model_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    kept = pl.read_parquet(old / "ratings.parquet")
    added = kept.head(2).with_columns(participant_id=pl.lit("zed"), origin=pl.lit("context"),
                                      rating=pl.Series([2.5, float("nan")]))
    pl.concat([kept.with_columns(pl.col("rating").cast(pl.Float64)), added]).write_parquet(old / "ratings.parquet")
    done = cli("fit", "--data", world, "--out", tmp_path / "new", "--refold-from", old)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "2 kept rating(s) are not whole numbers" in lines[0]


def test_one_writer_of_parameter_files_and_no_pickle_anywhere():
    sources = {p.name: p.read_text() for p in PACKAGE.glob("*.py")}
    writers = sorted(name for name, text in sources.items() if "np.savez" in text)
    assert writers == ["fitted.py", "worlds.py"]  # worlds.py: a generated world's ground truth, not a model
    assert not [name for name, text in sources.items()
                if "import pickle" in text or "allow_pickle=True" in text or "joblib" in text]


@pytest.mark.parametrize("edit, problem", [
    ("duplicate", "listed more than once"),  # once: the wrong row scored without a word
    ("nan", "NaN or infinite states"),  # once: NaN scores, exit 0
    ("width", "this scorer's have"),  # once: a ValueError, exit 1
    ("count", "participant ids but"),  # once: accepted
])
def test_a_hand_edited_users_file_is_refused_in_one_line(fitted, tmp_path, edit, problem):
    folder = fitted.save(tmp_path / "m")
    with np.load(folder / "users.npz") as npz:
        ids, states, meta = npz["user_ids"].copy(), npz["user_states"].copy(), npz["meta"]
    if edit == "duplicate":
        ids[1] = ids[0]
    elif edit == "nan":
        states[2, 1] = np.nan
    elif edit == "width":
        states = states[:, :-1]
    else:
        ids = ids[:-1]
    np.savez(folder / "users.npz", user_ids=ids, user_states=states, meta=meta)
    with pytest.raises(InputError, match=problem):
        PersonalScorer.load(folder)
