"""A seeded fuzz of the loaders: mutated PAMELA roots, pairs and context files.

Whatever the mutation (fields set to null, "", 2.5, "25-34", [], {}, long strings; truncated
files; NaN or missing embeddings), a command ends with exit 0, or exit 2 and one line naming the
problem: never a traceback, never an "unexpected" error.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import shutil

import numpy as np
import polars as pl
import pytest

from pamela_lite import demo, predict
from pamela_lite.cli import run
from pamela_lite.data import load_dataset
from pamela_lite.model import PersonalScorer

TINY = demo.DemoConfig(n_users=12, n_images=60, n_ratings=400, dim=8, seed=1)
VALUES = [None, "", 2.5, "25-34", [], {}, "x" * 3000, -1, True, "077", 1e300]
RECORD_FIELDS = ["participant_id", "image_id", "original_score", "image_metadata", "user_demographics",
                 "user_demographics.age", "user_demographics.age_binned", "user_demographics.gender",
                 "user_demographics.nationality", "image_metadata.group", "image_path"]
TABLE_FIELDS = ["participant_id", "image_id", "rating", "age", "gender", "nationality"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = demo.write_world(tmp_path_factory.mktemp("fuzz") / "world", TINY)
    data = load_dataset(root)
    model = PersonalScorer(n_components=4, n_prototypes=6, factors=2, head_trees=5, n_folds=2, use_head=True)
    model.fit(data.split("train"), data.embeddings, data.scale).save(root.parent / "model")
    return root, data


def _outcome(main, argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run(main, argv)
    return code, err.getvalue()


def _assert_clean(code: int, err: str, what: str) -> None:
    assert "Traceback" not in err and "unexpected" not in err, what
    assert code in (0, 2), f"{what}: exit {code}: {err}"
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], what


def _set(record: dict, field: str, value) -> None:
    outer, _, inner = field.partition(".")
    target = record.get(outer) if inner else record
    if isinstance(target, dict):
        target[inner or outer] = value


def _mutate_root(root, rng: random.Random) -> str:
    kind = rng.random()
    files = sorted((root / "annotations").iterdir())
    if kind < 0.1:
        path = rng.choice(files)
        text = path.read_text()
        path.write_text(text[: rng.randrange(len(text))])
        return f"truncated {path.name}"
    if kind < 0.2:
        frame = pl.read_parquet(root / "embeddings.parquet")
        matrix = np.stack(frame["embedding"].to_numpy()).copy()
        row = rng.randrange(len(matrix))
        if rng.random() < 0.5:
            matrix[row, 0] = np.nan
        else:
            keep = np.arange(len(matrix)) != row
            matrix, frame = matrix[keep], frame.filter(pl.Series(keep))
        pl.DataFrame({"image_id": frame["image_id"],
                      "embedding": pl.Series(matrix, dtype=pl.Array(pl.Float32, matrix.shape[1]))}) \
            .write_parquet(root / "embeddings.parquet")
        return "embeddings: NaN or a missing row"
    path = rng.choice(files)
    records = json.loads(path.read_text())
    done = []
    for _ in range(rng.randint(1, 3)):
        field, value = rng.choice(RECORD_FIELDS), rng.choice(VALUES)
        for record in (records if rng.random() < 0.2 else [rng.choice(records)]):
            _set(record, field, value)
        done.append(f"{field}={str(value)[:8]!r}")
    path.write_text(json.dumps(records))
    return f"{path.name}: {', '.join(done)}"


def test_mutated_pamela_roots_load_or_fail_in_one_line(tiny, tmp_path):
    world, _ = tiny
    rng = random.Random(0)
    for k in range(60):
        root = tmp_path / f"r{k}"
        shutil.copytree(world, root, ignore=shutil.ignore_patterns("demo_truth.parquet"))
        what = _mutate_root(root, rng)
        code, err = _outcome(lambda argv: (load_dataset(root), 0)[1], [])
        _assert_clean(code, err, what)
        shutil.rmtree(root)


def _write_table(rows: list[dict], path, rng: random.Random):
    suffix = path.suffix
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        columns = list(dict.fromkeys(c for row in rows for c in row))
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for row in rows:
                writer.writerow(["" if row.get(c) is None else json.dumps(row[c]) if isinstance(row.get(c), (list, dict))
                                 else row.get(c) for c in columns])
    if rng.random() < 0.1:
        text = path.read_text()
        path.write_text(text[: rng.randrange(max(1, len(text)))])


def test_mutated_pairs_and_context_files_score_or_fail_in_one_line(tiny, tmp_path):
    world, data = tiny
    rng = random.Random(1)
    seen = data.split("test_seen").head(6)
    unseen = data.split("test_unseen")
    context = unseen.head(8).select("participant_id", "image_id", "rating", "age", "gender", "nationality")
    pairs = pl.concat([seen.select("participant_id", "image_id"), unseen.tail(4).select("participant_id", "image_id")])
    for k in range(150):
        pair_rows, context_rows = pairs.to_dicts(), context.to_dicts()
        rows, fields = (pair_rows, TABLE_FIELDS[:2]) if rng.random() < 0.5 else (context_rows, TABLE_FIELDS)
        for _ in range(rng.randint(1, 3)):
            row, field, value = rng.choice(rows), rng.choice(fields), rng.choice(VALUES)
            if rng.random() < 0.1:
                row.pop(field, None)
            else:
                row[field] = value
        suffix = rng.choice([".csv", ".json"])
        _write_table(pair_rows, tmp_path / f"p{k}{suffix}", rng)
        _write_table(context_rows, tmp_path / f"c{k}{suffix}", rng)
        code, err = _outcome(predict.main, [
            "--model", str(world.parent / "model"), "--pairs", str(tmp_path / f"p{k}{suffix}"),
            "--context", str(tmp_path / f"c{k}{suffix}"), "--embeddings", str(world / "embeddings.parquet"),
            "--out", str(tmp_path / "o.csv"), "--quiet"])
        _assert_clean(code, err, f"case {k}")
