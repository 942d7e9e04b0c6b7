"""The data layer: both layouts load, and every bad input is one clear InputError."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import polars as pl
import pytest

from pamela_lite.data import (SPLITS, Scale, load_dataset, read_embeddings, read_people, read_ratings,
                              validate_ratings)
from pamela_lite.errors import InputError

from .conftest import write_embeddings


def test_pamela_root_loads_all_splits_with_demographics(world):
    frame = read_ratings(world)
    assert set(frame["split"].unique()) == set(SPLITS)
    assert {"participant_id", "image_id", "rating", "age", "gender", "nationality"} <= set(frame.columns)
    on_disk = sum(len(json.loads((world / "annotations" / f"pamela_{s}.json").read_text())) for s in SPLITS)
    assert frame.height == on_disk


def test_pamela_image_metadata_is_kept_as_plain_columns(world):
    frame = read_ratings(world)
    assert {"group", "style", "type"} <= set(frame.columns)
    assert frame["style"].null_count() > 0  # photorealistic images have no style
    assert frame["group"].null_count() == 0 and frame["type"].dtype == pl.String


def test_metadata_holding_lists_is_one_error_naming_the_column(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"participant_id": 1, "image_id": 1, "rating": 3, "group": ["a", "b"]}]))
    with pytest.raises(InputError, match="column group holds lists"):
        read_ratings(path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_ratings_table_loads_in_each_format(tmp_path, ratings_table, dataset, suffix):
    path = tmp_path / f"ratings{suffix}"
    getattr(ratings_table, {".csv": "write_csv", ".parquet": "write_parquet", ".json": "write_json"}[suffix])(path)
    loaded = load_dataset(path, embeddings=dataset.embeddings.source)
    assert loaded.ratings.height == ratings_table.height
    assert loaded.scale == dataset.scale


def test_table_without_split_gets_seen_splits_by_image(tmp_path, ratings_table, dataset):
    path = tmp_path / "r.csv"
    ratings_table.drop("split").write_csv(path)
    loaded = load_dataset(path, embeddings=dataset.embeddings.source)
    per_image = loaded.ratings.group_by("image_id").agg(pl.col("split").n_unique())
    assert per_image["split"].max() == 1  # an image is in one split only: its users see it as new
    assert set(loaded.ratings["split"].unique()) == {"train", "val_seen", "test_seen"}


def test_string_image_ids_are_kept_as_given(tmp_path, dataset):
    ids = [f"img-{k}" for k in range(3)]
    frame = pl.DataFrame({"participant_id": ["a", "a", "b"], "image_id": ids, "rating": [1, 3, 2]})
    frame.write_csv(tmp_path / "r.csv")
    write_embeddings(tmp_path / "e.parquet", ids, np.eye(3, 4))
    loaded = load_dataset(tmp_path / "r.csv", tmp_path / "e.parquet")
    assert loaded.ratings["image_id"].dtype == pl.String
    assert loaded.embeddings.take(pl.Series(["img-2"]))[0, 2] == 1.0


def test_scale_is_taken_from_the_data(ratings_table):
    shifted = ratings_table.with_columns(pl.col("rating") * 2 + 3)  # 5..13, nothing like 1-5
    _, scale = validate_ratings(shifted, "x")
    assert scale == Scale(int(shifted["rating"].min()), int(shifted["rating"].max()))


# --------------------------------------------------------------------------- errors


def _error(func, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "r.csv"
    pl.DataFrame({"participant_id": ["a"], "image_id": [1]}).write_csv(path)
    message = _error(read_ratings, path)
    assert str(path) in message and "rating" in message


def test_duplicated_pairs_are_listed():
    frame = pl.DataFrame({"participant_id": ["a", "a"], "image_id": [7, 7], "rating": [1, 2]})
    assert "(a, 7)" in _error(validate_ratings, frame, "r.csv")


@pytest.mark.parametrize("rating", [2.5, "good"])
def test_non_integer_rating_is_rejected(rating):
    frame = pl.DataFrame({"participant_id": ["a", "b"], "image_id": [1, 2], "rating": [1, rating]},
                         strict=False)
    assert "integer" in _error(validate_ratings, frame, "r.csv")


def test_rating_outside_given_scale_is_rejected():
    frame = pl.DataFrame({"participant_id": ["a", "b"], "image_id": [1, 2], "rating": [1, 7]})
    message = _error(validate_ratings, frame, "r.csv", Scale(1, 5))
    assert "outside the scale 1-5" in message and "row 2" in message  # 1-based, as a person counts


def test_unknown_split_name_is_rejected():
    frame = pl.DataFrame({"participant_id": ["a", "b"], "image_id": [1, 2], "rating": [1, 2], "split": ["train", "tst"]})
    assert "'tst'" in _error(validate_ratings, frame, "r.csv")


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("")
    assert "empty" in _error(read_ratings, path)


def test_invalid_json_is_rejected_naming_line_and_column(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('[{"participant_id": "a", "image_id": 1, "original_score": 3}, {oops')
    message = _error(read_ratings, path)
    assert "not valid JSON" in message and "(line 1, column 64)" in message and " at at " not in message


def test_a_json_file_with_a_byte_order_mark_is_read(tmp_path):
    # refused with Python's own hint "(decode using utf-8-sig)"
    path = tmp_path / "r.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'[{"participant_id": "a", "image_id": 1, "original_score": 3}]')
    assert read_ratings(path)["rating"].to_list() == [3]


def test_a_pamela_record_without_original_score_names_that_field(tmp_path):
    path = tmp_path / "pamela_train.json"
    path.write_text('[{"participant_id": "a", "image_id": 1, "score": 3}]')
    assert "original_score" in _error(read_ratings, path)


def test_a_duplicated_rating_says_where_it_is(tmp_path, world):
    # "1 duplicated (participant_id, image_id) pair(s): (001, 2967)" named neither file nor record
    root = tmp_path / "copy"
    shutil.copytree(world, root)
    train = json.loads((root / "annotations" / "pamela_train.json").read_text())
    test = json.loads((root / "annotations" / "pamela_test_seen.json").read_text())
    (root / "annotations" / "pamela_test_seen.json").write_text(json.dumps(test + [train[4]]))
    message = _error(load_dataset, root)
    assert "pamela_train.json record 5" in message and f"pamela_test_seen.json record {len(test) + 1}" in message


def test_a_missing_split_file_is_named_in_a_warning_and_the_others_are_read(tmp_path, world, caplog):
    root = tmp_path / "copy"
    shutil.copytree(world, root)
    (root / "annotations" / "pamela_val_seen.json").unlink()
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        frame = read_ratings(root)
    assert "no pamela_val_seen.json" in caplog.text
    assert "val_seen" not in set(frame["split"].to_list()) and "train" in set(frame["split"].to_list())


def test_a_root_without_the_train_file_cannot_be_fitted_on_and_says_which_file(tmp_path, world):
    root = tmp_path / "copy"
    shutil.copytree(world, root)
    (root / "annotations" / "pamela_train.json").unlink()
    assert "no annotations/pamela_train.json" in _error(load_dataset, root)


def test_empty_split_is_rejected(tmp_path, world):
    root = tmp_path / "copy"
    shutil.copytree(world, root)
    (root / "annotations" / "pamela_test_seen.json").write_text("[]")
    assert "split test_seen has no ratings" in _error(read_ratings, root)


def test_rated_image_without_embedding_is_listed(tmp_path, dataset, ratings_table):
    keep = dataset.embeddings.ids[1:]
    write_embeddings(tmp_path / "e.parquet", keep, dataset.embeddings.matrix[1:])
    ratings_table.write_csv(tmp_path / "r.csv")
    message = _error(load_dataset, tmp_path / "r.csv", tmp_path / "e.parquet")
    assert "no embedding" in message and repr(dataset.embeddings.ids[0]) in message


def test_nan_embedding_is_rejected(tmp_path):
    matrix = np.ones((3, 4))
    matrix[1, 2] = np.nan
    path = write_embeddings(tmp_path / "e.parquet", [10, 11, 12], matrix)
    message = _error(read_embeddings, path)
    assert "NaN" in message and "11" in message


def test_mixed_dimension_embeddings_are_rejected(tmp_path):
    path = tmp_path / "e.parquet"
    pl.DataFrame({"image_id": [1, 2, 3], "embedding": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6, 0.7]]}).write_parquet(path)
    message = _error(read_embeddings, path)
    assert "mixed dimension" in message and "3" in message


def test_duplicated_embedding_ids_are_rejected(tmp_path):
    path = write_embeddings(tmp_path / "e.parquet", [1, 1], np.ones((2, 3)))
    assert "more than once" in _error(read_embeddings, path)


def test_missing_file_is_named(tmp_path):
    assert "no such file" in _error(read_embeddings, tmp_path / "nope.parquet")


@pytest.mark.parametrize("age", [-5, 500])
def test_an_impossible_age_is_one_line_naming_the_file_and_line(tmp_path, ratings_table, age):
    path = tmp_path / "ratings.csv"
    ratings_table.head(20).with_columns(age=pl.when(pl.int_range(pl.len()) == 2).then(age).otherwise(30)).write_csv(path)
    with pytest.raises(InputError) as err:
        read_ratings(path)
    text = str(err.value)
    assert text.startswith(str(path)) and "age must be between 0 and 120" in text and "line 4" in text
    assert "\n" not in text


@pytest.mark.parametrize("text, scale", [("1-5", Scale(1, 5)), ("0-10", Scale(0, 10)), ("-3-3", Scale(-3, 3)),
                                         ("-5--1", Scale(-5, -1))])
def test_a_scale_may_have_negative_ends(text, scale):
    # "-3-3" was once split on every "-" and refused
    assert Scale.parse(text) == scale


@pytest.mark.parametrize("text", ["1-2-3", "a-b", "5", "5-1"])
def test_a_scale_that_is_not_low_high_is_refused(text):
    with pytest.raises(InputError, match="--scale"):
        Scale.parse(text)


def test_a_persons_demographics_come_from_any_of_their_records_not_only_the_first():
    # the first record alone decided: one record without demographics erased the person's
    from pamela_lite.data import person_demographics

    frame = pl.DataFrame({"participant_id": ["a", "a", "b", "a"], "image_id": [1, 2, 1, 3],
                          "age": [None, 35.0, 20.0, 35.0], "gender": [None, "male", None, "male"]})
    people = person_demographics(frame)
    assert people.to_dicts() == [{"participant_id": "a", "age": 35.0, "gender": "male"},
                                 {"participant_id": "b", "age": 20.0, "gender": None}]


def test_a_fit_keeps_the_demographic_prior_when_first_records_lack_demographics(dataset):
    from pamela_lite.model import PersonalScorer

    train = dataset.split("train")
    first = pl.int_range(pl.len()).over("participant_id") == 0
    blanked = train.with_columns(*(pl.when(first).then(None).otherwise(pl.col(c)).alias(c)
                                   for c in ("age", "gender", "nationality")))
    small = dict(random_state=0, n_components=4, n_prototypes=4, factors=2, head_trees=5, n_folds=2, use_head=False)
    model = PersonalScorer(**small).fit(blanked, dataset.embeddings, dataset.scale)
    whole = PersonalScorer(**small).fit(train, dataset.embeddings, dataset.scale)
    assert model.fitted_.prior.genders == whole.fitted_.prior.genders != []
    assert model.fitted_.prior.age_mean == whole.fitted_.prior.age_mean


def test_pamelas_train_file_alone_is_split_by_image_and_an_evaluation_file_keeps_its_name(world, caplog):
    train = load_dataset(world / "annotations" / "pamela_train.json", world / "embeddings.parquet")
    assert {"train", "val_seen", "test_seen"} <= set(train.ratings["split"].unique().to_list())
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        test = load_dataset(world / "annotations" / "pamela_test_seen.json", world / "embeddings.parquet",
                            require_train=False)
    assert test.ratings["split"].unique().to_list() == ["test_seen"] and "as the file name says" in caplog.text


def test_a_nan_age_is_unknown_not_an_error(tmp_path):
    # refused as "age must be between 0 and 120, not nan" while a device took it as unknown
    path = tmp_path / "r.parquet"
    pl.DataFrame({"participant_id": ["a", "b"], "image_id": [1, 2], "rating": [1, 2], "age": [float("nan"), 40.0]}
                 ).write_parquet(path)
    assert read_ratings(path)["age"].to_list() == [None, 40.0]


def test_a_people_file_names_a_bad_row_by_its_line_as_a_ratings_file_does(tmp_path):
    # it said "(row 1)" where the same age in a ratings file said "(line 2)"
    (tmp_path / "people.csv").write_text("participant_id,age\nsomeone,30\nnew,200\n")
    with pytest.raises(InputError, match=r"age must be between 0 and 120 years, not 200.0 \(line 3\)"):
        read_people(tmp_path / "people.csv")
    (tmp_path / "people.csv").write_text("participant_id,age\nsomeone,30\n")
    assert read_people(tmp_path / "people.csv").columns == ["participant_id", "age"]  # no place columns
