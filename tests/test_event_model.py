"""The implicit-feedback channel: events fold into the same user state, in Python and on the device alike."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from pamela_lite import event_sim, worlds
from pamela_lite.edge import EdgeScorer
from pamela_lite.event_channel import EventChannel, EventRows
from pamela_lite.event_fit import (calibrate, candidate_rank, fit_events_only, fold_seen_events,
                                   without_scored_pairs)
from pamela_lite.errors import InputError
from pamela_lite.events import DEFAULT_EVENTS, validate_events
from pamela_lite.features import ImageFeatures
from pamela_lite.fitted import FittedScorer
from pamela_lite.model import PersonalScorer, read_kept_events, read_kept_ratings
from pamela_lite.onnx_scorer import export

from .conftest import SMALL_MODEL, cli, write_embeddings

CHANNEL = EventChannel(dict(DEFAULT_EVENTS), alpha=1.0, strength=0.5, gain=1.5)


@pytest.fixture(scope="module")
def small():
    """A small zoo world, a model fitted on its ratings, and a session log of everyone."""
    world = worlds.make("demo", n_users=48, n_images=500, n_ratings=7000, dim=24, seed=5)
    data = worlds.dataset(world)
    model = PersonalScorer(random_state=0, **SMALL_MODEL).fit(data.split("train"), data.embeddings, data.scale,
                                                             validation=data.split("val_seen"))
    model.fitted_.events = replace(CHANNEL)
    events = validate_events(event_sim.simulate(world, "session", impressions=120), "sim")
    return world, data, model, events


def _newcomer(events: pl.DataFrame, n: int = 80) -> pl.DataFrame:
    first = events["participant_id"][0]
    return events.filter(pl.col("participant_id") == first).head(n).with_columns(participant_id=pl.lit("newcomer"))


def test_events_move_only_the_taste_of_a_person_without_ratings(small):
    _, data, model, events = small
    empty = pl.DataFrame(schema={"participant_id": pl.String, "image_id": pl.Int64, "rating": pl.Int64})
    me = _newcomer(events)
    _, prior = model.fold_in(empty, data.embeddings, users=me.select("participant_id").unique())
    _, state = model.fold_in(empty, data.embeddings, events=me)
    at = model.state_slices
    assert not np.allclose(state[0, at["taste"]], prior[0, at["taste"]])
    for part in ("bias", "factors", "demographics"):
        np.testing.assert_array_equal(state[0, at[part]], prior[0, at[part]])


def test_a_channel_of_strength_zero_changes_nothing(small):
    _, data, model, events = small
    context = data.split("train").filter(pl.col("participant_id") == data.split("train")["participant_id"][0]).head(10)
    me = events.filter(pl.col("participant_id") == context["participant_id"][0])
    model.fitted_.events = replace(CHANNEL, strength=0.0)
    try:
        with_events = model.fold_in(context, data.embeddings, events=me)[1]
    finally:
        model.fitted_.events = replace(CHANNEL)
    np.testing.assert_array_equal(with_events, model.fold_in(context, data.embeddings)[1])


def test_a_skip_only_session_teaches_something_only_when_rejections_are_signed():
    rng = np.random.default_rng(1)
    n, d = 8, 3
    z = rng.normal(size=(n, d))
    m = np.array([0, DEFAULT_EVENTS["skip"], 0, 0, DEFAULT_EVENTS["skip"], 0, 0, 0])  # viewed or skipped, none kept
    feats = ImageFeatures(np.zeros(n), z, np.ones((n, 1)), np.zeros((n, 1)))
    rows = EventRows(np.zeros(n, int), np.zeros(n, int), m, z)
    _, b_implicit, _ = replace(CHANNEL, signed=False).normal_equations(feats, rows, 1)
    _, b_signed, _ = replace(CHANNEL, signed=True).normal_equations(feats, rows, 1)
    assert np.allclose(b_implicit, 0) and not np.allclose(b_signed, 0)
    # the taste it learns points away from the skipped images
    assert b_signed[0] @ (z[[1, 4]].mean(0) - z.mean(0)) < 0


def test_a_saved_everything_session_is_evidence_only_when_centred_per_person():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(6, 3))
    m = np.array([1, 1, 1, 0, 0, 0])  # session 0: every image saved; session 1: nothing kept
    feats = ImageFeatures(np.zeros(6), z, np.ones((6, 1)), np.zeros((6, 1)))
    rows = EventRows(np.zeros(6, int), np.array([0, 0, 0, 1, 1, 1]), m, z)
    _, b_session, _ = replace(CHANNEL, within="session").normal_equations(feats, rows, 1)
    _, b_person, _ = replace(CHANNEL, within="person").normal_equations(feats, rows, 1)
    assert np.allclose(b_session, 0) and not np.allclose(b_person, 0)
    # the taste it learns points toward the saved session's images
    assert b_person[0] @ (z[:3].mean(0) - z[3:].mean(0)) > 0


@pytest.mark.parametrize("option, value", [("signed", True), ("within", "person")])
def test_a_saved_model_keeps_a_channel_option_and_the_default_is_written_as_before_it(small, tmp_path, option, value):
    _, _, model, _ = small
    for set_it in (False, True):
        model.fitted_.events = replace(CHANNEL, **({option: value} if set_it else {}))
        try:
            model.save(tmp_path / f"m{set_it}")
        finally:
            model.fitted_.events = replace(CHANNEL)
        written = json.loads((tmp_path / f"m{set_it}" / "model.json").read_text())["events"]
        # the default: byte for byte the JSON of files written before the option existed, so their digest holds
        assert (option in written) == set_it
        expected = value if set_it else getattr(CHANNEL, option)
        assert getattr(PersonalScorer.load(tmp_path / f"m{set_it}").fitted_.events, option) == expected


def test_an_unknown_centring_in_model_json_is_refused():
    with pytest.raises(ValueError, match="events.within is 'day'"):
        EventChannel.from_json({**CHANNEL.to_json(), "within": "day"})


@pytest.mark.parametrize("within", ["session", "person"])
def test_centring_is_the_pairwise_least_squares_over_the_pairs_it_compares(within):
    rng = np.random.default_rng(0)
    n, d = 6, 3
    z, m, w = rng.normal(size=(n, d)), np.array([0, 2, 0, -0.5, 1, 0]), rng.normal(size=d)
    feats = ImageFeatures(np.zeros(n), z, np.ones((n, 1)), np.zeros((n, 1)))
    channel = EventChannel(dict(DEFAULT_EVENTS), alpha=0.7, strength=1.0, gain=1.0, within=within)
    # one session (the pairs within it) or three of two images each, centred per person (all pairs)
    sessions = np.zeros(n, int) if within == "session" else np.repeat(np.arange(3), 2)
    A, b, _ = channel.normal_equations(feats, EventRows(np.zeros(n, int), sessions, m, z), 1)
    c, p = 1 + 0.7 * np.abs(m), (m > 0).astype(float)
    i, j = np.triu_indices(n, 1)
    pairwise = lambda v: np.sum(c[i] * c[j] * ((p[i] - p[j]) - (z[i] - z[j]) @ v) ** 2)
    centred = lambda v: c.sum() * (v @ A[0] @ v - 2 * b[0] @ v + np.sum(c * (p - (c @ p) / c.sum()) ** 2))
    assert pairwise(w) == pytest.approx(centred(w))
    assert pairwise(2 * w) == pytest.approx(centred(2 * w))


def test_sessions_of_one_image_teach_nothing(small):
    _, data, model, events = small
    me = _newcomer(events).with_columns(session_id=pl.col("image_id").cast(pl.String))  # each image alone
    empty = pl.DataFrame(schema={"participant_id": pl.String, "image_id": pl.Int64, "rating": pl.Int64})
    _, alone = model.fold_in(empty, data.embeddings, events=me)
    _, prior = model.fold_in(empty, data.embeddings, users=me.select("participant_id").unique())
    np.testing.assert_allclose(alone, prior, atol=1e-6)


def test_sessions_of_one_image_teach_something_when_centred_per_person():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(5, 3))
    feats = ImageFeatures(np.zeros(5), z, np.ones((5, 1)), np.zeros((5, 1)))
    rows = EventRows(np.zeros(5, int), np.arange(5), np.array([1.0, 0, 0, 0, 0]), z)  # each image its own session
    _, _, informed_session = replace(CHANNEL, within="session").normal_equations(feats, rows, 1)
    _, b, informed_person = replace(CHANNEL, within="person").normal_equations(feats, rows, 1)
    assert not informed_session[0] and informed_person[0]
    assert b[0] @ (z[0] - z.mean(0)) > 0  # toward the saved image


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_numeric_weight_is_refused_on_the_device_as_in_files(bad):
    with pytest.raises(ValueError, match="finite"):
        CHANNEL.evidence_of([1.0, bad])


def test_a_channel_with_an_unknown_centring_is_refused():
    with pytest.raises(ValueError, match="expected one of session, person"):
        replace(CHANNEL, within="Person")


@pytest.mark.parametrize("within", ["session", "person"])
def test_device_fold_in_from_events_and_ratings_equals_pythons(small, tmp_path, within):
    _, data, model, events = small
    me = _newcomer(events, 60)
    context = data.split("train").head(8).select("image_id", "rating").with_columns(participant_id=pl.lit("newcomer"))
    model.fitted_.events = replace(CHANNEL, within=within)
    try:
        _, python = model.fold_in(context, data.embeddings, events=me)
        export(model, tmp_path / "scorer.onnx")
    finally:
        model.fitted_.events = replace(CHANNEL)
    edge = EdgeScorer(tmp_path / "scorer.onnx")
    device = edge.fold_in(data.embeddings.take(context["image_id"]), context["rating"].to_numpy(),
                          event_embeddings=data.embeddings.take(me["image_id"]), events=me["event"].to_list(),
                          sessions=me["session_id"].to_list())
    np.testing.assert_allclose(device, python[0], rtol=1e-5, atol=1e-6)


def test_device_counts_a_repeated_event_row_once(small, tmp_path):
    _, data, model, events = small
    me = _newcomer(events, 40)
    export(model, tmp_path / "scorer.onnx")
    edge = EdgeScorer(tmp_path / "scorer.onnx")
    emb = data.embeddings.take(me["image_id"])
    once = edge.fold_in([], [], event_embeddings=emb, events=me["event"].to_list(), sessions=me["session_id"].to_list())
    twice = edge.fold_in([], [], event_embeddings=np.vstack([emb, emb]), events=me["event"].to_list() * 2,
                         sessions=me["session_id"].to_list() * 2)
    np.testing.assert_allclose(once, twice, rtol=1e-6)


@pytest.mark.parametrize("kwargs, problem", [
    ({"event_embeddings": "half", "events": ["view", "download"]}, r"must have shape \(k, "),  # once: garbage rows
    ({"events": ["view", "download"]}, "no event_embeddings"),  # once: numpy's reshape error
    ({"event_embeddings": "two"}, "without events"),  # once: ignored, the prior came back
    ({"event_embeddings": "zero", "events": ["view", "download"]}, r"1 row\(s\) are all zeros"),  # once: a state
])
def test_device_event_fold_in_names_what_is_wrong(small, tmp_path, kwargs, problem):
    _, data, model, _ = small
    export(model, tmp_path / "scorer.onnx")
    edge = EdgeScorer(tmp_path / "scorer.onnx")
    rows = data.embeddings.matrix[:4]
    given = {"half": rows[:, : rows.shape[1] // 2], "two": rows[:2], "zero": np.vstack([rows[:1], 0 * rows[:1]])}
    kwargs = {k: given.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=problem):
        edge.fold_in([], [], **kwargs)


def test_device_takes_one_event_as_a_name_and_an_embedding(small, tmp_path):
    _, data, model, _ = small
    export(model, tmp_path / "scorer.onnx")
    edge = EdgeScorer(tmp_path / "scorer.onnx")
    one = edge.fold_in([], [], event_embeddings=data.embeddings.matrix[0], events="download")
    listed = edge.fold_in([], [], event_embeddings=data.embeddings.matrix[:1], events=["download"])
    np.testing.assert_array_equal(one, listed)


def test_channel_survives_the_model_folder(small, tmp_path):
    _, _, model, _ = small
    model.save(tmp_path / "m")
    read = FittedScorer.read(tmp_path / "m")
    assert read.events.to_json() == model.fitted_.events.to_json()
    assert "events" in json.loads((tmp_path / "m" / "model.json").read_text())


def test_a_model_without_events_has_no_events_entry(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    assert "events" not in json.loads((tmp_path / "m" / "model.json").read_text())


def test_events_without_taste_get_no_weight_on_validation(small):
    world, data, model, _ = small
    noise = validate_events(event_sim.simulate(world, "nosignal", impressions=120), "sim")
    channel = calibrate(model, noise, data.split("train"), data.split("val_seen"), data.embeddings)
    model.fitted_.events = replace(CHANNEL)
    assert channel.strength == 0.0 and channel.report["accepted"] is False
    assert channel.within == "session" and not channel.signed  # the defaults: the model.json of a channel-less era


@pytest.fixture(scope="module")
def crowd():
    """Many people with about 50 training ratings each (so validation can tell a small gain from
    noise), a model fitted on them and a channel that weighs events as CHANNEL does, but more."""
    world = worlds.make("demo", n_users=300, n_images=1500, n_ratings=24000, dim=24, seed=5)
    data = worlds.dataset(world)
    model = PersonalScorer(random_state=0, **SMALL_MODEL).fit(data.split("train"), data.embeddings, data.scale,
                                                             validation=data.split("val_seen"))
    model.fitted_.events = replace(CHANNEL, gain=4.0)
    return world, data, model


def _choices(world, best: bool, sessions: int = 200) -> pl.DataFrame:
    """Sessions of four shown images in which each person downloads the one they like most (best)
    or least by the world's true utility: taste without noise, or its opposite."""
    rng = np.random.default_rng(0)
    catalogue = event_sim.event_catalogue(world)
    people = world.users["participant_id"]
    utility = event_sim.true_utility(world, np.arange(len(people)), np.arange(world.images.height)[
        world.images["image_id"].is_in(catalogue.implode()).to_numpy()])
    shown = np.stack([rng.permutation(len(catalogue))[: 4 * sessions] for _ in people]).reshape(len(people), sessions, 4)
    liked = np.take_along_axis(utility[:, None, :].repeat(sessions, 1), shown, 2) * (1 if best else -1)
    chosen = np.take_along_axis(shown, liked.argmax(2)[:, :, None], 2).ravel()
    views = pl.DataFrame({"participant_id": people.gather(np.repeat(np.arange(len(people)), 4 * sessions)),
                          "image_id": catalogue.gather(shown.ravel()), "session_id": np.arange(shown.size) // 4,
                          "event": "view"})
    downloads = pl.DataFrame({"participant_id": people.gather(np.repeat(np.arange(len(people)), sessions)),
                              "image_id": catalogue.gather(chosen), "session_id": np.arange(chosen.size),
                              "event": "download"})
    return validate_events(pl.concat([views, downloads]), "sim")


def test_training_peoples_own_events_are_added_to_their_taste_when_validation_says_they_help(crowd):
    world, data, model = crowd
    fitted_states = model.user_states_.copy()
    report = fold_seen_events(model, _choices(world, best=True), data.split("train"), data.split("val_seen"),
                              data.embeddings)
    moved, at = model.user_states_, model.state_slices
    model.user_states_ = fitted_states
    assert report["kept"] and report["gain"] > 2 * report["gain_se"] > 0
    assert model.fitted_.events.report["seen_people"] == report
    assert not np.allclose(moved[:, at["taste"]], fitted_states[:, at["taste"]])
    for part in ("bias", "factors", "demographics"):
        np.testing.assert_array_equal(moved[:, at[part]], fitted_states[:, at[part]])


def test_training_peoples_own_events_that_mislead_leave_their_states_as_fitted(crowd):
    world, data, model = crowd
    fitted_states = model.user_states_.copy()
    report = fold_seen_events(model, _choices(world, best=False), data.split("train"), data.split("val_seen"),
                              data.embeddings)
    assert not report["kept"] and report["srocc_with_events"] < report["srocc_without_events"]
    np.testing.assert_array_equal(model.user_states_, fitted_states)


def test_a_channel_of_strength_zero_adds_no_events_to_training_people(crowd):
    world, data, model = crowd
    fitted_states, channel = model.user_states_.copy(), model.fitted_.events
    model.fitted_.events = replace(channel, strength=0.0)
    report = fold_seen_events(model, _choices(world, best=True), data.split("train"), data.split("val_seen"),
                              data.embeddings)
    model.fitted_.events = channel
    assert not report["kept"]
    np.testing.assert_array_equal(model.user_states_, fitted_states)


def test_training_people_with_integer_ids_and_events_naming_them_as_text_are_judged():
    world = worlds.make("demo", n_users=30, n_images=300, n_ratings=3000, dim=16, seed=6, string_ids=False)
    data = worlds.dataset(world)
    assert data.ratings["participant_id"].dtype == pl.Int64
    model = PersonalScorer(random_state=0, **SMALL_MODEL).fit(data.split("train"), data.embeddings, data.scale,
                                                             validation=data.split("val_seen"))
    model.fitted_.events = replace(CHANNEL)
    events = validate_events(event_sim.simulate(world, "session", impressions=40)
                             .with_columns(pl.col("participant_id").cast(pl.String)), "sim")
    report = fold_seen_events(model, events, data.split("train"), data.split("val_seen"), data.embeddings)
    assert report["people"] > 0 and model.fitted_.events.report["seen_people"] == report


def test_events_on_images_the_person_rated_in_held_out_splits_are_left_out():
    events = pl.DataFrame({"participant_id": ["7", "7", "8"], "image_id": [1, 2, 1], "event": ["save"] * 3})
    held_out = pl.DataFrame({"participant_id": [7], "image_id": ["1"], "rating": [5]})
    kept, left_out = without_scored_pairs(events, held_out)
    assert left_out == 1 and kept.select("participant_id", "image_id").rows() == [("7", 2), ("8", 1)]


@pytest.fixture(scope="module")
def logged():
    """A world large enough for held-out sessions to tell taste from noise, and everyone's session log."""
    world = worlds.make("demo", n_users=150, n_images=1500, n_ratings=15000, dim=48, seed=5)
    return world, worlds.dataset(world), event_sim.simulate(world, "session", impressions=800)


def test_events_alone_give_a_scorer_that_ranks_new_people_better_than_the_population(logged):
    world, data, raw = logged
    events = validate_events(raw, "sim")
    people = data.ratings["participant_id"].unique().sort()
    train_ids, new = people.head(120), people.tail(30)
    model = fit_events_only(events.filter(pl.col("participant_id").is_in(train_ids.implode())), data.embeddings,
                            dict(n_prototypes=12), threads=1)
    assert model.fitted_.events.strength > 0 and model.fitted_.events.report["strength"]["accepted"]
    empty = pl.DataFrame(schema={"participant_id": pl.String, "image_id": pl.Int64, "rating": pl.Int64})
    query = data.ratings.filter(pl.col("participant_id").is_in(new.implode()))
    mine = events.filter(pl.col("participant_id").is_in(new.implode()))
    population = model.predict(query, data.embeddings, model.fold_in(empty, data.embeddings,
                                                                     users=query.select("participant_id").unique()))
    personal = model.predict(query, data.embeddings, model.fold_in(empty, data.embeddings, events=mine))
    truth = data.truth.join(query.select("participant_id", "image_id"), on=["participant_id", "image_id"])
    frame = query.select("participant_id", "image_id").with_columns(pop=pl.Series(population),
                                                                     me=pl.Series(personal)).join(
        truth, on=["participant_id", "image_id"])
    corr = frame.group_by("participant_id").agg(pl.corr("pop", "utility", method="spearman").alias("a"),
                                                pl.corr("me", "utility", method="spearman").alias("b"))
    assert corr["b"].mean() > corr["a"].mean()


def test_events_alone_whose_choices_are_random_get_no_strength(logged):
    _, data, raw = logged
    views = raw.filter(pl.col("event") == "view")
    draw = pl.Series(np.random.default_rng(1).random(views.height))
    # one download per session, on an image drawn at random: the log has the real exposure, no taste
    random = (views.with_columns(_r=draw).filter(pl.col("_r") == pl.col("_r").max().over("participant_id", "session_id"))
              .drop("_r").with_columns(event=pl.lit("download")))
    model = fit_events_only(validate_events(pl.concat([views, random]), "sim"), data.embeddings,
                            dict(n_prototypes=12), threads=1)
    judged = model.fitted_.events.report["strength"]
    assert model.fitted_.events.strength == 0.0 and judged["accepted"] is False
    assert judged["chosen_on"] == "held-out sessions" and set(judged["srocc_by_strength"]) == {"0.0", "0.1", "0.3",
                                                                                              "1.0", "3.0"}


@pytest.fixture(scope="module")
def events_only_scorer(small, tmp_path_factory):
    """A scorer fitted on events alone, exported, with the embeddings file and a rating context."""
    _, data, _, events = small
    model = fit_events_only(events, data.embeddings, dict(n_components=8, n_prototypes=12, factors=4, head_trees=30,
                                                          n_folds=3), threads=1)
    folder = tmp_path_factory.mktemp("events_only")
    export(model, folder / "scorer.onnx")
    write_embeddings(folder / "embeddings.parquet", data.embeddings.ids, data.embeddings.matrix)
    pl.DataFrame({"participant_id": ["rater", "rater"], "image_id": data.embeddings.ids.head(2),
                  "rating": [1, -1]}).write_csv(folder / "rated.csv")
    return folder


def test_a_device_refuses_ratings_for_a_scorer_fitted_on_events_alone(events_only_scorer, small):
    # ratings of -1 and 1 were once read as preferences; any other rating as "outside the scale -1-1"
    scorer = EdgeScorer(events_only_scorer / "scorer.onnx")
    with pytest.raises(ValueError, match="fitted on events alone"):
        scorer.fold_in(small[1].embeddings.matrix[:2], np.array([1.0, -1.0]))


def test_the_python_api_refuses_ratings_for_a_scorer_fitted_on_events_alone(small):
    _, data, _, events = small
    model = fit_events_only(events, data.embeddings, dict(n_components=8, n_prototypes=12, factors=4, head_trees=30,
                                                          n_folds=3), threads=1)
    for rating in (1, 4):  # 4, off the preference scale, once got "outside the scale -1-1" instead
        rated = pl.DataFrame({"participant_id": ["rater"], "image_id": data.embeddings.ids.head(1), "rating": [rating]})
        with pytest.raises(InputError, match="fitted on events alone"):
            model.fold_in(rated, data.embeddings)


def test_score_refuses_a_rating_context_for_a_scorer_fitted_on_events_alone(events_only_scorer):
    folder = events_only_scorer
    done = cli("score", "--scorer", folder / "scorer.onnx", "--context", folder / "rated.csv", "--top", 3,
               "--user", "rater", "--embeddings", folder / "embeddings.parquet", "--out", folder / "top.csv")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "rated.csv" in lines[0] and "fitted on events alone" in lines[0]
    assert not (folder / "top.csv").exists()


def _no_ratings(data) -> pl.DataFrame:
    return data.ratings.head(0).select("participant_id", "image_id", "rating")


def _folder_with_newcomer(model, data, me, folder):
    """A copy of `model` in `folder` that keeps the newcomer, added from their events `me`."""
    copy = PersonalScorer.load(model.save(folder))
    copy.add_users(_no_ratings(data), data.embeddings, events=me)
    return copy.save(folder)


def test_people_added_from_their_events_are_kept_by_the_model_folder(small, tmp_path):
    _, data, model, events = small
    me = _newcomer(events)
    query = data.ratings.head(40).select("image_id").with_columns(participant_id=pl.lit("newcomer"))
    folded = model.predict(query, data.embeddings, model.fold_in(_no_ratings(data), data.embeddings, events=me))
    kept_by = PersonalScorer.load(_folder_with_newcomer(model, data, me, tmp_path / "m"))
    np.testing.assert_array_equal(kept_by.predict(query, data.embeddings), folded)
    kept = read_kept_events(tmp_path / "m")
    assert kept.height == me.height and set(kept["participant_id"]) == {"newcomer"}


def test_a_model_folder_that_lost_the_events_of_people_added_from_them_is_refused(small, tmp_path):
    _, data, model, events = small
    folder = _folder_with_newcomer(model, data, _newcomer(events), tmp_path / "m")
    (folder / "events.parquet").unlink()
    with pytest.raises(InputError, match=r"events.parquet: missing: .* 1 person\(s\) added from their events"):
        PersonalScorer.load(folder)


def test_a_model_folder_without_added_events_writes_no_events_file(small, tmp_path):
    _, _, model, _ = small
    model.save(tmp_path / "m")
    assert not (tmp_path / "m" / "events.parquet").exists() and read_kept_events(tmp_path / "m").height == 0


def _refit(data, channel):
    new = PersonalScorer(random_state=1, **SMALL_MODEL).fit(data.split("train"), data.embeddings, data.scale,
                                                           validation=data.split("val_seen"))
    new.fitted_.events = channel
    return new


def test_a_refit_folds_people_kept_from_their_events_in_again(small, tmp_path):
    _, data, model, events = small
    me = _newcomer(events)
    _folder_with_newcomer(model, data, me, tmp_path / "old")
    new = _refit(data, replace(CHANNEL))
    refolded = new.refold(read_kept_ratings(tmp_path / "old"), data.embeddings, read_kept_events(tmp_path / "old"))
    assert refolded == ["newcomer"]
    query = data.ratings.head(40).select("image_id").with_columns(participant_id=pl.lit("newcomer"))
    fresh = new.fold_in(_no_ratings(data), data.embeddings, events=me)
    np.testing.assert_allclose(new.predict(query, data.embeddings),
                               new.predict(query, data.embeddings, fresh), rtol=0, atol=1e-6)
    assert new.events_.height == me.height  # kept again, for the refit after this one


def test_a_refit_without_events_keeps_the_events_it_cannot_use(small, tmp_path):
    _, data, model, events = small
    me = _newcomer(events)
    _folder_with_newcomer(model, data, me, tmp_path / "old")
    new = _refit(data, None)
    assert new.refold(read_kept_ratings(tmp_path / "old"), data.embeddings,
                      read_kept_events(tmp_path / "old")) == ["newcomer"]
    position = [str(u) for u in new.users_].index("newcomer")
    prior = new.fold_in(_no_ratings(data), data.embeddings, users=pl.DataFrame({"participant_id": ["newcomer"]}))
    np.testing.assert_array_equal(new.user_states_[position], prior[1][0])  # demographics alone: none here
    assert new.events_.height == me.height


def test_a_refit_without_events_says_whose_events_it_cannot_use(tmp_path, capsys):
    from pamela_lite import fit
    from pamela_lite.cli import run
    from pamela_lite.data import read_embeddings

    world = _demo_with_events(tmp_path / "w")
    params = json.dumps(dict(n_components=6, n_prototypes=8, factors=3, head_trees=20, n_folds=2))
    common = ["--data", str(world), "--params", params, "--no-baselines", "--kshot", "0", "--quiet"]
    assert run(fit.main, [*common, "--events", str(world / "events.parquet"), "--out", str(tmp_path / "old")]) == 0
    embeddings = read_embeddings(world / "embeddings.parquet")
    old = PersonalScorer.load(tmp_path / "old")
    me = _newcomer(validate_events(pl.read_parquet(world / "events.parquet"), "sim"), 30)
    old.add_users(me.head(0).select("participant_id", "image_id", rating=pl.lit(3)), embeddings, events=me)
    old.save(tmp_path / "old")
    capsys.readouterr()
    assert run(fit.main, [*common, "--refold-from", str(tmp_path / "old"), "--out", str(tmp_path / "new")]) == 0
    assert "1 of them were added from their events, which this fit cannot use" in capsys.readouterr().err
    assert set(read_kept_events(tmp_path / "new")["participant_id"]) == {"newcomer"}


def test_fit_and_predict_from_events_on_the_command_line(tmp_path):
    out = tmp_path / "w"
    assert cli("demo", "--world", "demo", "--users", "40", "--images", "300", "--ratings", "4000", "--dim", "16",
               "--events", "session", "--impressions", "80", "--out", out).returncode == 0
    params = json.dumps(dict(n_components=6, n_prototypes=8, factors=3, head_trees=20, n_folds=2))
    done = cli("fit", "--events", out / "events.parquet", "--out", tmp_path / "m", "--params", params, "--quiet")
    assert done.returncode == 0, done.stderr
    events = pl.read_parquet(out / "events.parquet")
    new = events.filter(pl.col("participant_id") == events["participant_id"][0]).with_columns(
        participant_id=pl.lit("someone new"))
    new.write_csv(tmp_path / "new.csv")
    new.select("participant_id", "image_id").unique().write_csv(tmp_path / "pairs.csv")
    done = cli("predict", "--model", tmp_path / "m", "--pairs", tmp_path / "pairs.csv", "--embeddings",
               out / "embeddings.parquet", "--context-events", tmp_path / "new.csv", "--add-to-model",
               "--out", tmp_path / "s.csv")
    assert done.returncode == 0, done.stderr
    assert "kept 1 context user(s) and their events" in done.stderr
    assert pl.read_csv(tmp_path / "s.csv")["score"].n_unique() > 1
    # known to the folder now: scored without the events, as with them
    done = cli("predict", "--model", tmp_path / "m", "--pairs", tmp_path / "pairs.csv", "--embeddings",
               out / "embeddings.parquet", "--out", tmp_path / "t.csv", "--quiet")
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(pl.read_csv(tmp_path / "t.csv")["score"], pl.read_csv(tmp_path / "s.csv")["score"])
    # ratings cannot fold into a scorer of preferences
    pl.DataFrame({"participant_id": ["rater"], "image_id": [new["image_id"][0]], "rating": [4]}).write_csv(
        tmp_path / "rated.csv")
    done = cli("predict", "--model", tmp_path / "m", "--pairs", tmp_path / "pairs.csv", "--embeddings",
               out / "embeddings.parquet", "--context", tmp_path / "rated.csv", "--out", tmp_path / "u.csv")
    assert done.returncode == 2 and "fitted on events alone" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    # nor be evaluated on ratings (every rating was once called "outside the scale -1-1")
    done = cli("evaluate", "--model", tmp_path / "m", "--data", out, "--no-baselines")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "fitted on events alone" in done.stderr and "outside the scale" not in done.stderr


def test_fit_on_events_alone_is_silent_under_quiet(tmp_path, capsys):
    from pamela_lite import fit
    from pamela_lite.cli import run

    _demo_with_events(tmp_path / "w")
    capsys.readouterr()
    params = json.dumps(dict(n_components=6, n_prototypes=8, factors=3, head_trees=20, n_folds=2))
    assert run(fit.main, ["--events", str(tmp_path / "w" / "events.parquet"), "--out", str(tmp_path / "m"),
                          "--params", params, "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")  # like fit --data --quiet minus its table: events alone have none


def test_fit_with_ratings_and_events_reports_the_channel_and_its_time(tmp_path):
    from pamela_lite import fit
    from pamela_lite.cli import run

    _demo_with_events(tmp_path / "w")
    params = json.dumps(dict(n_components=6, n_prototypes=8, factors=3, head_trees=20, n_folds=2))
    assert run(fit.main, ["--data", str(tmp_path / "w"), "--events", str(tmp_path / "w" / "events.parquet"),
                          "--out", str(tmp_path / "m"), "--params", params, "--no-baselines", "--kshot", "0",
                          "--quiet"]) == 0
    report = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert report["event_channel"]["report"]["chosen_on"] == "val_seen"
    assert "accepted" in report["event_channel"]["report"]  # calibration ran to its choice
    assert report["event_channel_seconds"] > 0 and report["fit_seconds"] > 0
    assert "kept" in report["event_channel"]["report"]["seen_people"]  # training people's own events were judged


def _demo_with_events(folder, *extra):
    """A small demo world with a session log of everyone, written by the demo command."""
    from pamela_lite import demo
    from pamela_lite.cli import run

    assert run(demo.main, ["--users", "30", "--images", "200", "--ratings", "2000", "--dim", "16", "--events",
                           "session", "--impressions", "40", *extra, "--out", str(folder)]) == 0
    return folder


def test_events_alone_of_one_person_exit_2_with_one_line(tmp_path, capsys):
    from pamela_lite import fit
    from pamela_lite.cli import run

    _demo_with_events(tmp_path / "w")
    events = pl.read_parquet(tmp_path / "w" / "events.parquet")
    events.filter(pl.col("participant_id") == events["participant_id"][0]).write_parquet(tmp_path / "one.parquet")
    capsys.readouterr()
    code = run(fit.main, ["--events", str(tmp_path / "one.parquet"), "--embeddings",
                          str(tmp_path / "w" / "embeddings.parquet"), "--out", str(tmp_path / "m"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "at least two people" in err[0]
    assert not (tmp_path / "m").exists()


def test_events_alone_without_embeddings_beside_them_point_to_the_option(tmp_path, capsys):
    from pamela_lite import fit
    from pamela_lite.cli import run

    _demo_with_events(tmp_path / "w")
    (tmp_path / "logs").mkdir()
    shutil.copy(tmp_path / "w" / "events.parquet", tmp_path / "logs" / "events.parquet")
    capsys.readouterr()
    code = run(fit.main, ["--events", str(tmp_path / "logs" / "events.parquet"), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert str(tmp_path / "logs" / "embeddings.parquet") in err[0] and "pass --embeddings FILE" in err[0]


def test_people_with_events_but_no_ratings_are_named_when_left_out(tmp_path, caplog):
    from pamela_lite import fit
    from pamela_lite.cli import run

    _demo_with_events(tmp_path / "w", "--events-only-users", "2")
    params = json.dumps(dict(n_components=6, n_prototypes=8, factors=3, head_trees=20, n_folds=2))
    assert run(fit.main, ["--data", str(tmp_path / "w"), "--events", str(tmp_path / "w" / "events.parquet"),
                          "--out", str(tmp_path / "m"), "--params", params, "--no-baselines", "--kshot", "0",
                          "--quiet"]) == 0
    # the 2 events-only people, and any whose ratings all sit in the unseen splits
    left_out = re.search(r"(\d+) person\(s\) with events but no training ratings are left out", caplog.text)
    assert left_out and int(left_out.group(1)) >= 2


def test_events_of_nobody_with_training_ratings_exit_2_before_the_fit(tmp_path, capsys):
    # ids written another way ("001007" for 1007) once fitted and wrote a model as if no events were given
    from pamela_lite import fit
    from pamela_lite.cli import run

    _demo_with_events(tmp_path / "w")
    pl.read_parquet(tmp_path / "w" / "events.parquet").with_columns(
        pl.concat_str(pl.lit("x"), pl.col("participant_id")).alias("participant_id")).write_parquet(
        tmp_path / "renamed.parquet")
    capsys.readouterr()
    code = run(fit.main, ["--data", str(tmp_path / "w"), "--events", str(tmp_path / "renamed.parquet"),
                          "--out", str(tmp_path / "m"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and out == ""
    assert "renamed.parquet" in err and "none of its" in err and "has training ratings" in err
    assert not (tmp_path / "m").exists()


def test_too_few_people_with_events_say_so_instead_of_an_empty_choice(tmp_path, capsys):
    from pamela_lite import fit
    from pamela_lite.cli import run

    _demo_with_events(tmp_path / "w")
    events = pl.read_parquet(tmp_path / "w" / "events.parquet")
    events.filter(pl.col("participant_id").is_in(events["participant_id"].unique().sort()[:2].implode())).write_parquet(
        tmp_path / "two.parquet")
    params = json.dumps(dict(n_components=6, n_prototypes=8, factors=3, head_trees=20, n_folds=2))
    assert run(fit.main, ["--data", str(tmp_path / "w"), "--events", str(tmp_path / "two.parquet"), "--out",
                          str(tmp_path / "m"), "--params", params, "--no-baselines", "--kshot", "0"]) == 0
    err = capsys.readouterr().err
    assert "event channel not kept: too few people" in err and "None" not in err


def test_event_weights_without_events_exit_2(tmp_path, capsys):
    from pamela_lite import fit
    from pamela_lite.cli import run

    code = run(fit.main, ["--event-weights", '{"like": 1}', "--out", str(tmp_path / "m"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--event-weights needs --events" in err[0]


def test_a_bad_events_file_is_refused_before_the_ratings_fit(tmp_path, capsys):
    from pamela_lite import fit
    from pamela_lite.cli import run

    _demo_with_events(tmp_path / "w")
    pl.read_parquet(tmp_path / "w" / "events.parquet").with_columns(event=pl.lit("downlaod")).write_parquet(
        tmp_path / "bad.parquet")
    capsys.readouterr()
    code = run(fit.main, ["--data", str(tmp_path / "w"), "--events", str(tmp_path / "bad.parquet"),
                          "--out", str(tmp_path / "m"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and "downlaod" in err and out == ""  # no results table: nothing was fitted


def _predict_from_context_events(data, me, tmp_path) -> int:
    """predict (in-process) with the model in tmp_path/m, `me` as --context-events, scoring their own images."""
    from pamela_lite import predict
    from pamela_lite.cli import run

    me.write_csv(tmp_path / "new.csv")
    me.select("participant_id", "image_id").unique().write_csv(tmp_path / "pairs.csv")
    pl.DataFrame({"image_id": data.embeddings.ids,
                  "embedding": pl.Series(data.embeddings.matrix, dtype=pl.Array(pl.Float32, 24))}).write_parquet(
        tmp_path / "e.parquet")
    return run(predict.main, ["--model", str(tmp_path / "m"), "--pairs", str(tmp_path / "pairs.csv"),
                              "--embeddings", str(tmp_path / "e.parquet"), "--context-events",
                              str(tmp_path / "new.csv"), "--out", str(tmp_path / "s.csv"), "--quiet"])


def test_context_events_on_a_model_that_gave_them_no_weight_warn(small, tmp_path, caplog):
    _, data, model, events = small
    model.fitted_.events = replace(CHANNEL, strength=0.0)
    try:
        model.save(tmp_path / "m")
    finally:
        model.fitted_.events = replace(CHANNEL)
    me = _newcomer(events, 40)
    assert _predict_from_context_events(data, me, tmp_path) == 0
    assert "gave events no weight" in caplog.text


def test_context_events_that_compare_nothing_are_named(small, tmp_path, caplog):
    _, data, model, events = small
    model.save(tmp_path / "m")
    me = _newcomer(events, 80).unique("session_id", keep="first", maintain_order=True)  # one image per session
    assert me.height and me.group_by("session_id").agg(pl.col("image_id").n_unique())["image_id"].max() == 1
    assert _predict_from_context_events(data, me, tmp_path) == 0
    assert "the events of 1 person(s) compare nothing" in caplog.text and "newcomer" in caplog.text


def test_unknown_event_in_context_events_exits_2_with_one_line(small, tmp_path):
    _, data, model, events = small
    model.save(tmp_path / "m")
    bad = _newcomer(events, 5).with_columns(event=pl.lit("adored")).drop("weight")  # a name alone must be known
    bad.write_csv(tmp_path / "new.csv")
    bad.select("participant_id", "image_id").write_csv(tmp_path / "pairs.csv")
    data_emb = tmp_path / "e.parquet"
    pl.DataFrame({"image_id": data.embeddings.ids,
                  "embedding": pl.Series(data.embeddings.matrix, dtype=pl.Array(pl.Float32, 24))}).write_parquet(data_emb)
    done = cli("predict", "--model", tmp_path / "m", "--pairs", tmp_path / "pairs.csv", "--embeddings", data_emb,
               "--context-events", tmp_path / "new.csv", "--out", tmp_path / "s.csv")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "adored" in lines[0] and "Traceback" not in done.stderr


def test_channels_are_ranked_by_their_mean_gain_over_context_sizes_among_those_lowering_none():
    base = np.zeros((2, 3))  # context sizes 0 and 10, three validation users
    gains = lambda at_0, at_10: np.array([[at_0] * 3, [at_10] * 3])
    # helping events alone much more beats helping both a little more evenly (the worst gain once decided)
    assert candidate_rank(gains(0.08, 0.01), base) > candidate_rank(gains(0.03, 0.02), base)
    # lowering either context size ranks below helping both, however much it helps the other
    assert candidate_rank(gains(0.01, 0.01), base) > candidate_rank(gains(0.30, -0.001), base)
    # among those that lower one, the one that lowers least comes first
    assert candidate_rank(gains(0.0, -0.01), base) > candidate_rank(gains(0.3, -0.02), base)


def test_events_given_only_as_numeric_weights_are_calibrated(small):
    world, data, model, _ = small
    raw = event_sim.simulate(world, "session", impressions=120)
    weighted = raw.with_columns(weight=pl.col("event").replace_strict(DEFAULT_EVENTS, return_dtype=pl.Float64)).drop("event")
    channel = calibrate(model, validate_events(weighted, "sim"), data.split("train"), data.split("val_seen"),
                        data.embeddings)
    model.fitted_.events = replace(CHANNEL)
    assert "accepted" in channel.report and channel.report["users"] > 0  # chosen on validation, with no names to tune


def test_events_alone_without_any_choice_exit_2_with_one_line(tmp_path, capsys):
    from pamela_lite import fit
    from pamela_lite.cli import run

    _demo_with_events(tmp_path / "w")
    pl.read_parquet(tmp_path / "w" / "events.parquet").with_columns(event=pl.lit("view")).write_parquet(
        tmp_path / "views.parquet")
    capsys.readouterr()
    code = run(fit.main, ["--events", str(tmp_path / "views.parquet"), "--embeddings",
                          str(tmp_path / "w" / "embeddings.parquet"), "--out", str(tmp_path / "m"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "views.parquet" in err[0] and "no session shows a choice" in err[0]
    assert not (tmp_path / "m").exists()


def test_the_library_refuses_events_alone_without_any_choice(small):
    _, data, _, events = small
    with pytest.raises(ValueError, match="no session shows a choice"):
        fit_events_only(events.with_columns(event=pl.lit("view"), weight=pl.lit(0.0)), data.embeddings)


def test_context_events_of_views_only_are_named_and_said_to_even_out_what_was_shown(small, tmp_path, caplog):
    _, data, model, events = small
    model.save(tmp_path / "m")
    me = _newcomer(events, 80).filter(pl.col("event") == "view")
    assert _predict_from_context_events(data, me, tmp_path) == 0
    assert "the events of 1 person(s) hold no action" in caplog.text and "newcomer" in caplog.text
    assert "scores move toward ranking the images they were shown alike" in caplog.text
    # what the warning says: the shown images' utilities spread less than with no event at all
    empty = pl.DataFrame(schema={"participant_id": pl.String, "image_id": pl.Int64, "rating": pl.Int64})
    pairs = me.select("participant_id", "image_id").unique()
    alone = model.fold_in(empty, data.embeddings, users=pairs.select("participant_id").unique())
    viewed = model.fold_in(empty, data.embeddings, events=me)
    spread = lambda states: float(np.std(model.utility(pairs, data.embeddings, states)))
    assert spread(viewed) < spread(alone)


def test_steer_folds_a_new_person_in_from_their_events(small, tmp_path):
    _, data, model, events = small
    model.save(tmp_path / "m")
    me = _newcomer(events)
    me.write_csv(tmp_path / "new.csv")
    me.filter(pl.col("event") == "view").write_csv(tmp_path / "views.csv")  # the same person, no action
    write_embeddings(tmp_path / "e.parquet", data.embeddings.ids, data.embeddings.matrix)
    common = ["--model", tmp_path / "m", "--prompt", "a cat", "--generator", "stub", "--budget", "8",
              "--seeds-per-prompt", "2", "--objective", "personal", "--no-plot", "--embeddings", tmp_path / "e.parquet"]
    out = cli("steer", *common, "--context-events", tmp_path / "new.csv", "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr
    assert "events move a taste but do not measure its spread" in out.stderr
    idle = cli("steer", *common, "--context-events", tmp_path / "views.csv", "--out", tmp_path / "v")
    assert idle.returncode == 0, idle.stderr
    assert "hold no action" in idle.stderr
    moved, still = (json.loads((tmp_path / f / "steer.json").read_text()) for f in ("o", "v"))
    assert moved["user"] == still["user"] == "newcomer" and moved["results"][0]["calls"] == 8
    # the same stub images, scored for the person their actions moved and for the one they did not
    assert moved["results"][0]["base_predicted"] != pytest.approx(still["results"][0]["base_predicted"], abs=1e-6)


def test_steer_names_the_flags_a_person_is_missing_from(small, tmp_path):
    _, data, model, events = small
    model.save(tmp_path / "m")
    _newcomer(events).write_csv(tmp_path / "new.csv")
    write_embeddings(tmp_path / "e.parquet", data.embeddings.ids, data.embeddings.matrix)
    out = cli("steer", "--model", tmp_path / "m", "--prompt", "a cat", "--generator", "stub", "--budget", "8",
              "--embeddings", tmp_path / "e.parquet", "--context-events", tmp_path / "new.csv",
              "--user", model.users_[0], "--out", tmp_path / "o")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "is not in --context-events" in out.stderr and "drop --context-events to steer for them" in out.stderr


def test_steer_points_an_unknown_person_to_their_events_on_a_model_fitted_with_them(small, tmp_path):
    _, _, model, _ = small
    out = cli("steer", "--model", model.save(tmp_path / "m"), "--prompt", "a cat", "--generator", "stub",
              "--budget", "8", "--user", "zz9", "--out", tmp_path / "o")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "pass their ratings as --context or their events as --context-events" in out.stderr


def test_events_alone_without_session_ids_are_judged_on_the_later_half_of_each_log(logged):
    world, data, raw = logged
    model = fit_events_only(validate_events(raw.drop("session_id"), "sim"), data.embeddings, dict(n_prototypes=12),
                            threads=1)
    judged = model.fitted_.events.report["strength"]
    assert "srocc_by_strength" in judged and judged["people"] >= 100  # judged, not waved through
    assert judged["chosen_on"] == "held-out later halves of each log (one session a person)"  # not "sessions"


def test_events_alone_of_too_few_people_to_judge_get_no_weight(logged):
    _, data, raw = logged
    few = raw.filter(pl.col("participant_id").is_in(raw["participant_id"].unique().sort().head(6).implode()))
    model = fit_events_only(validate_events(few, "sim"), data.embeddings, dict(n_prototypes=12), threads=1)
    assert model.fitted_.events.strength == 0.0
    assert "fewer than 10" in model.fitted_.events.report["strength"]["note"]
