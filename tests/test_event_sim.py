"""Simulated behaviour logs: realistic rates, no leakage into scored images, and a no-signal model."""

from __future__ import annotations

import polars as pl
import pytest

from pamela_lite import event_sim, worlds
from pamela_lite.events import load_events

from .conftest import cli


@pytest.fixture(scope="module")
def small_world():
    return worlds.make("demo", n_users=40, n_images=500, n_ratings=6000, dim=24, seed=2)


def _utility_of_actions(world, events: pl.DataFrame, action: str) -> float:
    """Mean true utility of images acted on minus that of all images shown (same people)."""
    users = world.users["participant_id"]
    catalogue = event_sim.event_catalogue(world)
    utility = event_sim.true_utility(world, event_sim._rows(world.users["participant_id"], users),
                                     event_sim._rows(world.images["image_id"], catalogue))
    u = event_sim._rows(users, events["participant_id"])
    i = event_sim._rows(catalogue, events["image_id"])
    value = utility[u, i]
    acted = (events["event"] == action).to_numpy()
    return float(value[acted].mean() - value[(events["event"] == "view").to_numpy()].mean())


def test_log_is_deterministic_per_seed(small_world):
    a = event_sim.simulate(small_world, "session", impressions=40, seed=1)
    b = event_sim.simulate(small_world, "session", impressions=40, seed=1)
    assert a.equals(b)


@pytest.mark.parametrize("model", event_sim.MODELS)
def test_no_event_touches_an_image_its_person_is_scored_on(small_world, model):
    events = event_sim.simulate(small_world, model, impressions=60)
    ratings = small_world.ratings
    seen = ratings.filter(pl.col("split").is_in(["val_seen", "test_seen"]))["image_id"].unique()
    assert not events["image_id"].is_in(seen.implode()).any()
    own = ratings.filter(pl.col("split").is_in(["val_unseen", "test_unseen"])).select("participant_id", "image_id")
    assert own.height and not events.join(own, on=["participant_id", "image_id"], how="inner").height


@pytest.mark.parametrize("model", ["session", "feed"])
def test_saves_are_rare(small_world, model):
    rates = event_sim.summary(event_sim.simulate(small_world, model, impressions=200))
    assert 0.01 <= rates["save_rate"] <= 0.05


def test_session_downloads_follow_taste_and_nosignal_ones_do_not(small_world):
    taste = _utility_of_actions(small_world, event_sim.simulate(small_world, "session", impressions=200), "download")
    blind = _utility_of_actions(small_world, event_sim.simulate(small_world, "nosignal", impressions=200), "download")
    assert taste > 0.3 and abs(blind) < 0.1


def test_each_session_shows_one_batch_in_ranked_positions(small_world):
    views = event_sim.simulate(small_world, "session", impressions=20).filter(pl.col("event") == "view")
    per_session = views.group_by("session_id").agg(pl.col("position").sort())
    assert all(p == list(range(event_sim.BATCH)) for p in per_session["position"].to_list())


def test_demo_cli_writes_an_events_table_the_loader_accepts(tmp_path):
    out = tmp_path / "w"
    done = cli("demo", "--world", "demo", "--users", "30", "--images", "300", "--ratings", "3000", "--dim", "16",
               "--events", "feed", "--impressions", "24", "--events-only-users", "3", "--out", out)
    assert done.returncode == 0, done.stderr
    events = load_events(out / event_sim.EVENTS_FILE)
    rated = pl.concat([pl.read_json(p) for p in (out / "annotations").glob("*.json")])["participant_id"].unique()
    assert events["participant_id"].n_unique() == 30 and len(rated) == 27  # 3 people have events only
