"""The demo world: deterministic, PAMELA-shaped, in PAMELA's layout."""

from __future__ import annotations

import argparse
import hashlib

import numpy as np
import polars as pl
import pytest

from pamela_lite import demo
from pamela_lite.data import SPLITS, read_ratings

from .conftest import SMALL, cli


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.json"))}


def test_same_seed_writes_the_same_world(tmp_path):
    a = demo.write_world(tmp_path / "a", SMALL)
    b = demo.write_world(tmp_path / "b", SMALL)
    assert _digest(a) == _digest(b)


def test_other_seed_writes_another_world(tmp_path, world):
    other = demo.write_world(tmp_path / "c", demo.DemoConfig(**{**SMALL.__dict__, "seed": 4}))
    assert _digest(other) != _digest(world)


def test_full_size_world_has_pamela_statistics():
    images, users, ratings, truth, emb = demo.make_world()
    assert (users.height, images.height, ratings.height) == (199, 5077, 69904)
    assert emb.shape == (5077, 512)
    assert images["group"].n_unique() == 21 and images["style"].drop_nulls().n_unique() == 26
    raters = ratings.group_by("image_id").len()["len"].mean()
    assert 12 <= raters <= 16
    share = ratings.group_by("split").len().with_columns(pl.col("len") / ratings.height)
    expected = {k: v / sum(demo.SPLIT_RATINGS.values()) for k, v in demo.SPLIT_RATINGS.items()}
    for split, frac in share.iter_rows():
        assert abs(frac - expected[split]) < 0.03, split
    assert set(ratings["original_score"].unique()) == {1, 2, 3, 4, 5}
    assert truth.height == ratings.height


def test_unseen_users_rate_only_in_unseen_splits(world):
    frame = read_ratings(world)
    per_user = frame.group_by("participant_id").agg(pl.col("split").unique())
    for splits in per_user["split"]:
        kinds = {s.endswith("unseen") for s in splits}
        assert len(kinds) == 1
    assert set(frame["split"].unique()) == set(SPLITS)


def test_scale_flag_sets_the_rating_range(tmp_path):
    cfg = demo.DemoConfig(**{**SMALL.__dict__, "scale": 10})
    frame = read_ratings(demo.write_world(tmp_path / "w", cfg))
    assert frame["rating"].min() == 1 and frame["rating"].max() == 10


def test_truth_explains_ratings(world):
    frame = read_ratings(world)
    truth = pl.read_parquet(world / demo.TRUTH_FILE)
    joined = frame.join(truth, on=["participant_id", "image_id"])
    assert joined.height == frame.height
    assert np.corrcoef(joined["rating"], joined["expected_rating"])[0, 1] > 0.7


def test_bad_output_from_python_m_is_one_line_not_a_traceback(tmp_path):
    (tmp_path / "notes.txt").write_text("notes")
    done = cli("demo", "--out", tmp_path / "notes.txt", "--users", "20", "--images", "40", "--ratings", "200")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "notes.txt" in lines[0]


def test_a_reversed_scale_is_named_as_reversed():
    with pytest.raises(argparse.ArgumentTypeError, match="the low end comes first, e.g. 1-5"):
        demo._parse_scale("5-1")


def test_a_smaller_demo_world_scales_its_ratings_with_its_catalogue(tmp_path):
    # the demo's 69,904 ratings once stayed the default: "--ratings cannot exceed --users x --images"
    from pamela_lite.data import load_dataset

    assert demo.main(["--users", "20", "--images", "60", "--dim", "16", "--out", str(tmp_path / "w")]) == 0
    assert load_dataset(tmp_path / "w").ratings.height == 60 * 14
