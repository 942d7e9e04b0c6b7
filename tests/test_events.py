"""The events table: read in each format, kept as given, and refused in one line when wrong."""

from __future__ import annotations

import logging
from datetime import datetime

import numpy as np
import polars as pl
import pytest

from pamela_lite.data import Embeddings
from pamela_lite.errors import InputError
from pamela_lite.events import DEFAULT_EVENTS, evidence, first_events, load_events, parse_event_weights, \
    validate_events


def _events(**columns) -> pl.DataFrame:
    base = {"participant_id": ["077", "077", "8"], "image_id": ["a", "b", "a"], "event": ["save", "view", "skip"]}
    return pl.DataFrame({**base, **columns})


def _embeddings(ids=("a", "b", "c")) -> Embeddings:
    return Embeddings(pl.Series(list(ids)), np.eye(len(ids), 4, dtype=np.float32), "emb.parquet")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_events_load_in_each_format_with_ids_as_text(tmp_path, suffix):
    path = tmp_path / f"events{suffix}"
    getattr(_events(), {".csv": "write_csv", ".parquet": "write_parquet", ".json": "write_json"}[suffix])(path)
    frame = load_events(path, _embeddings())
    assert frame["participant_id"].to_list() == ["077", "077", "8"]  # "077" never becomes 77
    assert frame["weight"].to_list() == [DEFAULT_EVENTS["save"], 0.0, DEFAULT_EVENTS["skip"]]


def _refusal(tmp_path, **columns) -> str:
    """The one-line message with which an events CSV of `columns` is refused (it names the file)."""
    path = tmp_path / "events.csv"
    _events(**columns).write_csv(path)
    with pytest.raises(InputError) as err:
        load_events(path)
    text = str(err.value)
    assert text.startswith(str(path)) and "\n" not in text
    return text


def test_unknown_event_name_is_one_line_naming_the_file_and_line(tmp_path):
    text = _refusal(tmp_path, event=["save", "kept", "view"])
    assert "'kept'" in text and "line 3" in text


def test_event_weights_add_names_to_the_vocabulary(tmp_path):
    path = tmp_path / "events.csv"
    _events(event=["save", "kept", "view"]).write_csv(path)
    frame = load_events(path, vocabulary=parse_event_weights('{"kept": 1.5}'))
    assert frame["weight"].to_list()[1] == 1.5


def test_images_without_embeddings_are_refused(tmp_path):
    path = tmp_path / "events.csv"
    _events(image_id=["a", "zzz", "a"]).write_csv(path)
    with pytest.raises(InputError, match="zzz"):
        load_events(path, _embeddings())


def test_duplicated_rows_count_once_with_a_warning(caplog):
    frame = pl.DataFrame({"participant_id": ["u"] * 4, "image_id": ["a", "a", "a", "b"],
                          "event": ["save", "save", "view", "view"]})
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        out = validate_events(frame, "log.csv")
    assert "1 event row(s) appear more than once" in caplog.text and "1 extra cop" in caplog.text
    assert "log.csv" in caplog.text
    assert out.filter(pl.col("event") == "save")["count"].to_list() == [2]
    m = evidence(out)
    assert m.filter(pl.col("image_id") == "a")["evidence"].item() == DEFAULT_EVENTS["save"]  # counted once


def test_equal_numeric_weights_of_two_actions_add_up(caplog):
    # a weight names no action: two rows of weight 1 at different times may be a save and a share
    # (they once counted once, while weights of 1 and 1.0001 counted twice)
    frame = pl.DataFrame({"participant_id": ["u"] * 4, "image_id": ["a", "a", "b", "b"],
                          "weight": [1.0, 1.0, 1.0, 1.0], "timestamp": [1.0, 2.0, 3.0, 3.0]})
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        out = validate_events(frame, "w.csv")
    m = evidence(out)
    assert m.filter(pl.col("image_id") == "a")["evidence"].item() == 2.0  # two actions
    assert m.filter(pl.col("image_id") == "b")["evidence"].item() == 1.0  # one row logged twice
    assert "1 event row(s) appear more than once (same participant, image, session, weight, timestamp" in caplog.text


def test_a_users_own_row_column_is_ignored():
    frame = pl.DataFrame({"participant_id": ["u", "u"], "image_id": ["a", "b"], "event": ["save", "view"],
                          "_row": [7, 8]})
    assert validate_events(frame, "log.csv")["event"].to_list() == ["save", "view"]


def test_numeric_weight_column_replaces_event_names():
    frame = pl.DataFrame({"participant_id": [1, 1], "image_id": [10, 11], "weight": [2.5, -1.0]})
    out = validate_events(frame, "w.csv")
    assert out["weight"].to_list() == [2.5, -1.0] and out["participant_id"].dtype == pl.Int64


def test_a_number_beside_an_event_name_is_used_as_given_whatever_the_weights():
    frame = _events(weight=[0.25, None, None])  # the first row names "save" and gives its own number
    out = validate_events(frame, "w.csv")
    assert out["weight"].to_list() == [0.25, 0.0, DEFAULT_EVENTS["skip"]]
    # weights chosen by a fit act on names; the given number stays
    assert evidence(out, {"save": 9.0, "skip": -9.0})["evidence"].to_list() == [0.25, 0.0, -9.0]


def test_an_unknown_name_beside_a_number_is_accepted_and_the_number_used():
    out = validate_events(_events(event=["bookmark", "view", "skip"], weight=[1.5, None, None]), "w.csv")
    assert out["event"].to_list() == [None, "view", "skip"] and out["weight"][0] == 1.5


def test_an_unknown_name_without_a_number_is_still_refused():
    with pytest.raises(InputError, match="unknown event name"):
        validate_events(_events(event=["bookmark", "view", "skip"], weight=[None, 1.0, None]), "w.csv")


def test_an_empty_event_name_is_no_name():
    out = validate_events(_events(event=["", "view", "skip"], weight=[1.5, None, None]), "w.csv")
    assert out["event"].to_list() == [None, "view", "skip"] and out["weight"][0] == 1.5


def test_non_numeric_weight_is_refused():
    frame = pl.DataFrame({"participant_id": [1], "image_id": [10], "weight": ["lots"]})
    with pytest.raises(InputError, match="weight must be a finite number"):
        validate_events(frame, "w.csv")


def test_timestamp_text_that_is_not_a_time_is_refused_naming_file_and_column(tmp_path):
    text = _refusal(tmp_path, timestamp=["2024-05-01T12:30:00", "abc", "2024-05-01"])
    assert "timestamp" in text and "'abc'" in text and "line 3" in text


@pytest.mark.parametrize("stamps", [["2024-05-01T12:30:00Z", "2024-05-01 12:30:00+02:00", "2024-05-01"],
                                    [3.0, 1.5, 2.0], [datetime(2024, 5, 1), None, None]])
def test_times_numbers_and_datetimes_are_accepted_as_timestamps(stamps):
    out = validate_events(_events(timestamp=stamps), "x.csv")
    assert out["timestamp"].to_list() == _events(timestamp=stamps)["timestamp"].to_list()  # kept as given


def test_numbers_written_as_text_are_timestamps_in_number_order():
    frame = pl.DataFrame({"participant_id": ["u"] * 3, "image_id": ["a", "b", "c"], "event": ["view"] * 3,
                          "timestamp": ["10", "9", " 1.5"]})
    out = validate_events(frame, "x.json")
    assert out["timestamp"].to_list() == [10.0, 9.0, 1.5]
    assert first_events(out, 2)["image_id"].to_list() == ["b", "c"]  # as text, "10" came before "9"


def test_timestamps_mixing_numbers_and_datetimes_are_refused_in_one_line(tmp_path):
    text = _refusal(tmp_path, timestamp=["9", "2024-05-01T12:30:00", "100"])
    assert "mixes numbers with date-times" in text and "lines 2, 4" in text


def test_a_weight_other_than_its_event_names_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        validate_events(_events(weight=[1.0, 1.0, None]), "both.csv")  # save weighs 1: only the view clashes
    assert "both.csv: 1 row(s) give a weight other than their event's (e.g. 'view', which weighs 0, with 1.0)" \
        in caplog.text


def test_repeats_without_session_ids_say_the_whole_log_is_one_session(caplog):
    frame = pl.DataFrame({"participant_id": ["u"] * 3, "image_id": ["a", "a", "b"],
                          "event": ["regenerate"] * 2 + ["view"], "timestamp": [1.0, 9.0, 2.0]})
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        validate_events(frame, "log.csv")
    assert "without a session_id column a person's whole log is one session" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        validate_events(frame.with_columns(session_id=pl.lit("s1")), "log.csv")
    assert "appear more than once" in caplog.text and "whole log is one session" not in caplog.text


def test_missing_event_and_weight_columns_is_refused():
    with pytest.raises(InputError, match="missing column event .* or weight"):
        validate_events(pl.DataFrame({"participant_id": [1], "image_id": [2]}), "x.csv")


def test_evidence_sums_events_per_image_and_session():
    frame = pl.DataFrame({"participant_id": ["u"] * 4, "image_id": ["a", "a", "a", "b"],
                          "session_id": ["s1", "s1", "s2", "s1"], "event": ["view", "download", "dislike", "view"]})
    m = evidence(validate_events(frame, "x"))
    assert m["evidence"].to_list() == [DEFAULT_EVENTS["download"], DEFAULT_EVENTS["dislike"], 0.0]


def test_first_events_keeps_each_persons_earliest():
    frame = pl.DataFrame({"participant_id": ["u", "u", "v", "u"], "image_id": ["a", "b", "c", "d"],
                          "event": ["view"] * 4, "timestamp": [3, 1, 5, 2]})
    out = first_events(validate_events(frame, "x"), 2)
    assert sorted(out.filter(pl.col("participant_id") == "u")["image_id"].to_list()) == ["b", "d"]
    assert out.filter(pl.col("participant_id") == "v").height == 1


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("tool", ["fit", "predict"])
def test_help_says_a_numeric_weight_is_used_as_given(tool):
    import importlib

    text = _flat(importlib.import_module(f"pamela_lite.{tool}").build_parser().format_help())
    assert "a numeric weight is used as given" in text and "fitted event weights" in text


def test_readme_events_section_says_a_numeric_weight_is_used_as_given():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = _flat(readme.split("## Learning from what people do", 1)[1].split("\n## ", 1)[0])
    assert "numeric `weight` is used as given" in section and "per-event weights" in section


@pytest.mark.parametrize("position", [1.5, -1.0])
def test_a_position_that_is_not_a_whole_number_from_0_is_refused(position):
    # 1.5 was once truncated to 1 without a word
    frame = pl.DataFrame({"participant_id": [1, 1], "image_id": [10, 11], "event": ["view", "save"],
                          "position": [0.0, position]})
    with pytest.raises(InputError, match=r"position must be a whole number >= 0"):
        validate_events(frame, "w.csv")


def test_whole_positions_written_as_floats_are_kept():
    frame = pl.DataFrame({"participant_id": [1, 1], "image_id": [10, 11], "event": ["view", "save"],
                          "position": [0.0, 3.0]})
    assert validate_events(frame, "w.csv")["position"].to_list() == [0, 3]


def test_a_person_who_acted_on_every_image_logged_is_warned_about_missing_views(caplog):
    frame = pl.DataFrame({"participant_id": ["u", "u", "v", "v"], "image_id": ["a", "b", "a", "b"],
                          "event": ["save", "skip", "save", "view"]})
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        validate_events(frame, "log.csv")
    assert "log.csv: 1 person(s) acted on every image logged and have no 'view' row" in caplog.text
    assert "'u'" in caplog.text and "'v'" not in caplog.text


@pytest.mark.parametrize("frame", [
    # an action's image need not have its own view row when the images left beside it have theirs
    {"participant_id": ["u"] * 2, "image_id": ["a", "b"], "event": ["save", "view"]},
    # views written as a number beside named actions
    {"participant_id": ["u"] * 2, "image_id": ["a", "b"], "event": ["save", "view"], "weight": [None, 0.0]},
    # numeric weights alone: a confidence per shown image, possibly nonzero for every one
    {"participant_id": ["u"] * 2, "image_id": ["a", "b"], "weight": [2.0, 0.5]},
])
def test_logs_that_show_what_was_left_give_no_view_warning(frame, caplog):
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        validate_events(pl.DataFrame(frame), "log.csv")
    assert "view" not in caplog.text


def test_a_view_given_its_own_weight_still_marks_an_image_as_shown(caplog):
    frame = pl.DataFrame({"participant_id": ["u"] * 2, "image_id": ["a", "b"], "event": ["save", "view"]})
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        validate_events(frame, "log.csv", {**DEFAULT_EVENTS, "view": -0.1})
    assert "'view' row" not in caplog.text


def test_a_default_action_a_fitted_model_weighs_0_does_not_count_as_a_view(caplog):
    frame = pl.DataFrame({"participant_id": ["u"] * 2, "image_id": ["a", "b"], "event": ["save", "share"]})
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        validate_events(frame, "log.csv", {**DEFAULT_EVENTS, "share": 0.0})
    assert "1 person(s) acted on every image logged" in caplog.text


def test_a_name_of_ones_own_weighing_0_counts_as_a_view(caplog):
    frame = pl.DataFrame({"participant_id": ["u"] * 2, "image_id": ["a", "b"], "event": ["save", "impression"]})
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        validate_events(frame, "log.csv", {**DEFAULT_EVENTS, "impression": 0.0})
    assert "'view' row" not in caplog.text


def test_the_events_command_says_what_a_log_holds(tmp_path, capsys):
    from pamela_lite import events as events_cli
    from pamela_lite.cli import run

    frame = pl.DataFrame({"participant_id": ["u", "u", "u", "u", "v", "v"], "image_id": ["a", "b", "a", "c", "a", "b"],
                          "session_id": ["s1", "s1", "s2", "s2", "t1", "t1"],
                          "event": ["view", "view", "view", "save", "view", "view"]})
    frame.write_csv(tmp_path / "log.csv")
    assert run(events_cli.main, ["--events", str(tmp_path / "log.csv")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "2 people, 6 shown image(s) (distinct person, image and session), 3 sessions (2.0 images each)"
    assert out[1] == "actions per shown image: save 0.1667"
    assert out[2].startswith("1 person(s) with no action") and "'v'" in out[2]


def test_the_events_command_refuses_a_bad_log_in_one_line(tmp_path, capsys):
    from pamela_lite import events as events_cli
    from pamela_lite.cli import run

    _events(event=["save", "view", "bookmark"]).write_csv(tmp_path / "log.csv")
    assert run(events_cli.main, ["--events", str(tmp_path / "log.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "log.csv") in err[0] and "unknown event name" in err[0]


def test_a_name_of_ones_own_that_weighs_nothing_is_not_counted_as_an_action():
    from pamela_lite.events import summary

    vocabulary = {**DEFAULT_EVENTS, "hover": 0.0}
    frame = pl.DataFrame({"participant_id": ["u", "u"], "image_id": ["a", "b"], "event": ["view", "hover"]})
    lines = summary(validate_events(frame, "log.csv", vocabulary), vocabulary)
    assert not any(line.startswith("actions per shown image") for line in lines)
    assert any(line.startswith("1 person(s) with no action") for line in lines)


def test_the_events_command_checks_the_embeddings_beside_the_log_as_fit_does(tmp_path, capsys):
    from pamela_lite import events as events_cli
    from pamela_lite.cli import run

    from .conftest import write_embeddings

    _events().write_csv(tmp_path / "log.csv")
    write_embeddings(tmp_path / "embeddings.parquet", pl.Series(["a"]), np.eye(1, 4, dtype=np.float32))
    assert run(events_cli.main, ["--events", str(tmp_path / "log.csv")]) == 2  # image b has no embedding
    assert "have no embedding" in capsys.readouterr().err
    write_embeddings(tmp_path / "embeddings.parquet", pl.Series(["a", "b"]), np.eye(2, 4, dtype=np.float32))
    assert run(events_cli.main, ["--events", str(tmp_path / "log.csv")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("every image has an embedding in ")
