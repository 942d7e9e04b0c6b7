"""Every command the READMEs document runs, as written, on a small generated world.

The full-size forms (the default demo world, PAMELA itself) differ only in their data paths.
Benchmarks run with --quick (and latency's hidden --tiny for a small world): they must write to
benchmarks/results/quick/ and leave the committed results untouched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from .conftest import cli

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _ok(done) -> str:
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done.stdout


def test_the_readme_commands_run_on_a_small_world(world, model_dir, tmp_path):
    emb = world / "embeddings.parquet"
    test = pl.read_json(world / "annotations" / "pamela_test_unseen.json")
    pl.concat([pl.read_json(world / "annotations" / "pamela_test_seen.json").select("participant_id", "image_id")
               .head(5), test.select("participant_id", "image_id").tail(5)]).write_csv(tmp_path / "pairs.csv")
    test.head(10).select("participant_id", "image_id", rating="original_score").write_csv(tmp_path / "new.csv")
    _ok(cli("demo", "--out", tmp_path / "demo_world", "--users", 30, "--images", 100, "--ratings", 1000, "--dim", 16))
    assert "model (model)" in _ok(cli("evaluate", "--model", model_dir, "--data", world, "--kshot", "0,10"))
    _ok(cli("predict", "--model", model_dir, "--pairs", tmp_path / "pairs.csv", "--embeddings", emb,
            "--context", tmp_path / "new.csv", "--out", tmp_path / "scores.csv"))
    _ok(cli("export", "--model", model_dir, "--out", tmp_path / "scorer.onnx"))
    _ok(cli("score", "--scorer", tmp_path / "scorer.onnx", "--pairs", tmp_path / "pairs.csv", "--embeddings", emb,
            "--context", tmp_path / "new.csv", "--out", tmp_path / "scores_edge.csv"))
    user = pl.read_csv(tmp_path / "pairs.csv")["participant_id"][0]
    _ok(cli("score", "--scorer", tmp_path / "scorer.onnx", "--top", 10, "--user", user, "--embeddings", emb,
            "--out", tmp_path / "top10.csv"))
    a, b = pl.read_csv(tmp_path / "scores.csv"), pl.read_csv(tmp_path / "scores_edge.csv")
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-4)
    assert pl.read_csv(tmp_path / "top10.csv").height == 10


def test_the_readme_people_commands_run(world, model_dir, tmp_path):
    # README: predict / score --people score people with nothing rated from their demographics
    emb = world / "embeddings.parquet"
    image = pl.read_json(world / "annotations" / "pamela_test_seen.json")["image_id"][0]
    pl.DataFrame({"participant_id": ["someone_new"], "image_id": [image]}).write_csv(tmp_path / "pairs.csv")
    pl.DataFrame({"participant_id": ["someone_new"], "age": [41], "gender": ["female"]}).write_csv(
        tmp_path / "people.csv")
    _ok(cli("predict", "--model", model_dir, "--pairs", tmp_path / "pairs.csv", "--embeddings", emb,
            "--people", tmp_path / "people.csv", "--out", tmp_path / "scores.csv"))
    _ok(cli("export", "--model", model_dir, "--out", tmp_path / "scorer.onnx"))
    _ok(cli("score", "--scorer", tmp_path / "scorer.onnx", "--pairs", tmp_path / "pairs.csv", "--embeddings", emb,
            "--people", tmp_path / "people.csv", "--out", tmp_path / "scores_edge.csv"))
    a, b = pl.read_csv(tmp_path / "scores.csv"), pl.read_csv(tmp_path / "scores_edge.csv")
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-4)


def test_the_readme_events_check_runs(tmp_path):
    # README: demo --events writes a log; python -m pamela_lite.events checks it and says what it holds
    _ok(cli("demo", "--world", "demo", "--events", "session", "--users", 20, "--images", 120, "--ratings", 800,
            "--dim", 16, "--impressions", 40, "--out", tmp_path / "demo_events"))
    out = _ok(cli("events", "--events", tmp_path / "demo_events" / "events.parquet"))
    assert out.startswith("20 people, ") and "actions per shown image: " in out


def test_the_console_command_is_the_same_tool(model_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "pamela_lite", "export", "--model", str(model_dir),
                           "--out", str(tmp_path / "s.onnx"), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s.users.npz").exists()


def _committed_results():
    return {p.name: p.stat().st_mtime_ns for p in (BENCHMARKS / "results").glob("*.*")}


@pytest.mark.parametrize("script, extra, stem", [
    ("accuracy.py", ["--data", "{world}", "--embeddings", "{world}/embeddings.parquet", "--kshot", "0,10"], None),
    ("latency.py", ["--tiny"], None),
    ("steering.py", ["--tiny", "--worlds", "lowvar"], None),
    # without torch (CI) it runs the head and pamela_lite and notes that the deep rows were skipped
    ("deep_zoo.py", ["--tiny", "--worlds", "lowvar", "--draws", "1", "--kshots", "0,10"], "deep_baseline"),
    ("implicit_feedback.py", ["--worlds", "lowvar", "--seeds", "0"], None),
    ("dask_scaling.py", ["--tiny"], None),
])
def test_benchmarks_quick_runs_write_to_the_scratch_folder(script, extra, stem, world):
    before = _committed_results()
    args = [a.format(world=world) for a in extra]
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", *args],
                          capture_output=True, text=True, timeout=600)
    _ok(done)
    stem = stem or script.removesuffix(".py")
    assert (BENCHMARKS / "results" / "quick" / f"{stem}.json").exists()
    assert _committed_results() == before  # git status stays clean


def test_the_own_images_route_runs_as_written(tmp_path):
    # README "Your own images and ratings": embed a folder, rate its images by their ids, fit, predict
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(60):
        folder = tmp_path / "my_images" / ("cats" if k % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{k:02d}.png")
    _ok(cli("tiny_encoder", "--out", tmp_path / "tiny.onnx", "--dim", 16))
    _ok(cli("embed", "--encoder", tmp_path / "tiny.onnx", "--images", tmp_path / "my_images",
            "--out", tmp_path / "my_embeddings.parquet", "--quiet"))
    ids = pl.read_parquet(tmp_path / "my_embeddings.parquet")["image_id"].to_list()
    assert "cats/01.png" in ids  # the path relative to --images
    people = [f"rater {p}" for p in range(12)]
    rows = [(p, i, int(rng.integers(0, 11))) for p in people for i in rng.choice(ids, 40, replace=False)]
    pl.DataFrame(rows, schema=["participant_id", "image_id", "rating"], orient="row").write_csv(tmp_path / "my_ratings.csv")
    _ok(cli("fit", "--data", tmp_path / "my_ratings.csv", "--embeddings", tmp_path / "my_embeddings.parquet",
            "--scale", "0-10", "--out", tmp_path / "runs" / "mine", "--no-baselines", "--kshot", "0",
            "--params", '{"n_components": 4, "n_prototypes": 4, "factors": 2, "head_trees": 10, "n_folds": 2}'))
    pl.DataFrame({"participant_id": people[:2], "image_id": ids[:2]}).write_csv(tmp_path / "pairs.csv")
    _ok(cli("predict", "--model", tmp_path / "runs" / "mine", "--pairs", tmp_path / "pairs.csv",
            "--embeddings", tmp_path / "my_embeddings.parquet", "--out", tmp_path / "scores.csv"))
    assert pl.read_csv(tmp_path / "scores.csv")["score"].is_between(0, 10).all()
