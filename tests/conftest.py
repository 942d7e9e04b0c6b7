"""Small generated worlds and models shared by the tests (nothing is downloaded)."""

from __future__ import annotations

import os

# One thread per engine: the suite's models are tiny, and on a shared 2-core machine two-thread
# BLAS/OpenMP pools spin against other work and run many times slower.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import subprocess  # noqa: E402
import sys  # noqa: E402

import polars as pl  # noqa: E402
import pytest  # noqa: E402

from pamela_lite import demo, worlds  # noqa: E402
from pamela_lite.data import load_dataset  # noqa: E402
from pamela_lite.model import PersonalScorer  # noqa: E402
from pamela_lite.steer_sim import SimulatedGenerator  # noqa: E402

SMALL = demo.DemoConfig(n_users=48, n_images=400, n_ratings=6000, dim=32, seed=3)
# A model small enough to fit in about a second, with every component switched on.
SMALL_MODEL = dict(n_components=8, n_prototypes=12, factors=4, head_trees=60, n_folds=3, n_threads=1)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A PAMELA-layout demo world on disk (annotations JSON, embeddings, truth)."""
    return demo.write_world(tmp_path_factory.mktemp("world") / "pamela", SMALL)


@pytest.fixture(scope="session")
def dataset(world):
    return load_dataset(world)


@pytest.fixture(scope="session")
def fitted(dataset):
    model = PersonalScorer(random_state=0, **SMALL_MODEL)
    return model.fit(dataset.split("train"), dataset.embeddings, dataset.scale,
                     validation=dataset.split("val_seen"))


@pytest.fixture(scope="session")
def exported(fitted, tmp_path_factory):
    """The fitted model exported once (scorer.onnx with its parameters, users file and stage graphs)."""
    from pamela_lite.onnx_scorer import export

    path = tmp_path_factory.mktemp("onnx") / "scorer.onnx"
    export(fitted, path)
    return path


@pytest.fixture(scope="session")
def steer_world():
    """A small lowvar world for the steering tests (taste off the principal components)."""
    return worlds.make("lowvar", n_users=40, n_images=300, dim=64)


@pytest.fixture(scope="session")
def sim(steer_world):
    """The simulated generator on `steer_world`."""
    return SimulatedGenerator(steer_world)


@pytest.fixture
def ratings_table(dataset):
    """A plain ratings table (participant_id, image_id, rating, split) as a polars frame."""
    return dataset.ratings.select("participant_id", "image_id", "rating", "split")


def write_embeddings(path, ids, matrix):
    pl.DataFrame({"image_id": ids, "embedding": pl.Series(matrix.tolist(), dtype=pl.List(pl.Float32))}).write_parquet(path)
    return path


def cli(module, *args):
    """Run python -m pamela_lite.<module> in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", f"pamela_lite.{module}", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def model_dir(world, tmp_path_factory):
    """A model folder written by the fit command on the small world."""
    out = tmp_path_factory.mktemp("fit") / "model"
    done = cli("fit", "--data", world, "--out", out, "--kshot", "0,5", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "pamela_lite (full)" in done.stdout and "noise ceiling" in done.stdout
    return out
