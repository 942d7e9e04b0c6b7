"""benchmarks/implicit_feedback.py: figures over several seeds are their mean, targets show each seed's range."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "implicit_feedback.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("implicit_feedback_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(bench, seed: int, level: float) -> dict:
    """A fake run of one world whose every curve sits at `level` (10 ratings at 0.6)."""
    curve = {n: level for n in bench.EVENTS}
    row = {"channel": {"strength": 0.03, "gain": 1.0, "alpha": 1.0, "report": {}}, "log": {"save_rate": level},
           **{name: dict(curve) for name in bench.CURVES},
           "seen": {"kept": seed == 1, "val_gain": 0.01, "val_gain_se": 0.004, "test_without": 0.75,
                    "test_with": 0.75 + (level - 0.6) / 10, "people": 150}}
    return {"world": "w", "seed": seed, "held_out_people": 40, "ratings": {k: 0.6 for k in bench.RATINGS},
            "events": {"session": row}}


def test_figures_are_the_mean_over_seeds_and_targets_show_the_range(bench):
    world = bench.mean_over_seeds([_run(bench, 0, 0.55), _run(bench, 1, 0.65)])
    assert world["events"]["session"]["alone"][200] == pytest.approx(0.60)
    assert len(world["events"]["session"]["channels"]) == 2
    reach = bench.targets({"worlds": [world]})[0]
    assert "0.600, +0.000 (-0.050 to +0.050)" in reach and reach.endswith("| met |")


def test_seen_peoples_change_is_the_mean_over_seeds_and_fails_when_one_seed_is_worse(bench):
    world = bench.mean_over_seeds([_run(bench, 0, 0.5), _run(bench, 1, 0.62)])
    assert world["events"]["session"]["seen"]["kept"] == [False, True]
    line = next(t for t in bench.targets({"worlds": [world]}) if "seen people" in t)
    assert "-0.004 (-0.010 to +0.002)" in line and "added on 1 of 2 seed(s)" in line and line.endswith("| NOT met |")
