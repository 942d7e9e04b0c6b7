"""Reading and validating ratings and embeddings (polars).

Two layouts of ratings are read:

* a **PAMELA root**: ``annotations/pamela_<split>.json``, each a JSON list of rating records with
  nested ``image_metadata`` and ``user_demographics`` (see ``shared/reference/pamela.md``);
* a **ratings table** (CSV, Parquet or JSON) with ``participant_id``, ``image_id``, ``rating`` and
  optionally ``split``, ``age``, ``gender``, ``nationality``.

Both become one polars frame with the columns of :data:`RATING_COLUMNS` (plus demographics when
known). Embeddings are one Parquet file with ``image_id`` and a fixed-size float ``embedding``.

Every problem raises :class:`~pamela_lite.errors.InputError` with one line that names the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from .errors import InputError, preview

SPLITS = ("train", "val_seen", "test_seen", "val_unseen", "test_unseen")
RATING_COLUMNS = ("participant_id", "image_id", "rating", "split")
DEMOGRAPHICS = ("age", "gender", "nationality")
EMBEDDINGS_FILE = "embeddings.parquet"
TRUTH_FILE = "demo_truth.parquet"


@dataclass(frozen=True)
class Scale:
    """An integer rating scale ``low..high``; taken from the data or from a flag, never assumed."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> "Scale":
        """Parse ``"1-5"`` (or ``"0-10"``)."""
        try:
            low, high = (int(part) for part in text.split("-"))
        except ValueError:
            raise InputError(None, f"--scale takes LOW-HIGH such as 1-5, not {text!r}") from None
        if low >= high:
            raise InputError(None, f"--scale {text}: LOW must be below HIGH")
        return cls(low, high)

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


@dataclass
class Embeddings:
    """Image embeddings: ``ids`` (as given: ints or strings) and a float32 ``matrix`` (n, d)."""

    ids: pl.Series
    matrix: np.ndarray
    source: str = "<memory>"

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    def rows(self, image_ids: pl.Series, source: str | Path | None = None) -> np.ndarray:
        """Row index of each image id; unknown ids raise one InputError that lists them."""
        index = pl.DataFrame({"image_id": self.ids, "_row": np.arange(len(self.ids), dtype=np.int64)})
        wanted = pl.DataFrame({"image_id": _same_dtype(image_ids, self.ids.dtype)})
        found = wanted.join(index, on="image_id", how="left", maintain_order="left")
        missing = found.filter(pl.col("_row").is_null())["image_id"].unique(maintain_order=True)
        if len(missing):
            raise InputError(source or self.source,
                             f"{len(missing)} image id(s) have no embedding in {self.source}: "
                             f"{preview(missing.to_list())}")
        return found["_row"].to_numpy()

    def take(self, image_ids: pl.Series, source: str | Path | None = None) -> np.ndarray:
        """The embedding of each image id, in order."""
        return self.matrix[self.rows(image_ids, source)]


@dataclass
class Dataset:
    """Validated ratings (with ``split``), their embeddings, the scale, and the demo's truth."""

    ratings: pl.DataFrame
    embeddings: Embeddings
    scale: Scale
    source: str
    truth: pl.DataFrame | None = None

    def split(self, name: str) -> pl.DataFrame:
        return self.ratings.filter(pl.col("split") == name)

    def has_split(self, name: str) -> bool:
        return self.ratings.select((pl.col("split") == name).any()).item()


def _same_dtype(ids: pl.Series, dtype: pl.DataType) -> pl.Series:
    # Ids stay as given; only when two files disagree (ints in one, strings in the other) do we
    # compare them as strings, which is what a person would mean.
    if ids.dtype == dtype:
        return ids
    return ids.cast(pl.String) if dtype == pl.String else ids.cast(pl.String).cast(dtype, strict=False)


# ----------------------------------------------------------------------------- reading files


def _read_json_records(path: Path) -> pl.DataFrame:
    text = path.read_text()
    if not text.strip():
        raise InputError(path, "the file is empty")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON ({err.msg} at line {err.lineno})") from None
    if isinstance(records, dict) and "data" in records:
        records = records["data"]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InputError(path, "expected a JSON list of records (objects)")
    if not records:
        return pl.DataFrame()
    try:
        return pl.from_dicts(records, infer_schema_length=None)
    except Exception as err:  # polars raises several types for ragged records
        raise InputError(path, f"records do not form a table: {str(err).splitlines()[0]}") from None


def read_table(path: str | Path) -> pl.DataFrame:
    """Read a CSV, Parquet or JSON table; a bad or empty file raises InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a table file (.csv, .parquet or .json)")
    if path.stat().st_size == 0:
        raise InputError(path, "the file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return _read_json_records(path)
        if suffix in (".parquet", ".pq"):
            return pl.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema_length=None)
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"cannot read as {suffix[1:]}: {str(err).splitlines()[0]}") from None
    raise InputError(path, f"unknown table type {suffix!r}; use .csv, .tsv, .parquet or .json")


def _flatten_pamela(frame: pl.DataFrame) -> pl.DataFrame:
    """PAMELA records → flat columns: ``original_score`` → ``rating``, nested structs unnested."""
    if "rating" not in frame.columns and "original_score" in frame.columns:
        frame = frame.rename({"original_score": "rating"})
    for nested in ("user_demographics", "image_metadata"):
        if nested in frame.columns and isinstance(frame.schema[nested], pl.Struct):
            inner = [f.name for f in frame.schema[nested].fields if f.name not in frame.columns]
            frame = frame.with_columns(pl.col(nested).struct.field(inner)).drop(nested) if inner else frame.drop(nested)
    return frame


def _require_columns(frame: pl.DataFrame, columns, source) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(source, f"missing column(s) {', '.join(missing)}; found: {', '.join(frame.columns) or 'none'}")


def read_pamela_root(root: str | Path) -> pl.DataFrame:
    """All splits of a PAMELA root as one flat frame with a ``split`` column."""
    root = Path(root)
    folder = root / "annotations"
    if not folder.is_dir():
        raise InputError(root, "no annotations/ folder: not a PAMELA root (expected annotations/pamela_<split>.json)")
    parts = []
    for split in SPLITS:
        path = folder / f"pamela_{split}.json"
        if not path.exists():
            raise InputError(path, "missing split file")
        frame = _flatten_pamela(read_table(path))
        if frame.height == 0:
            raise InputError(path, f"split {split} has no ratings")
        _require_columns(frame, ("participant_id", "image_id", "rating"), path)
        parts.append(_standard_columns(frame, path).with_columns(split=pl.lit(split)))
    return pl.concat(parts, how="diagonal_relaxed")


def _standard_columns(frame: pl.DataFrame, source) -> pl.DataFrame:
    keep = ["participant_id", "image_id", "rating", *(c for c in ("split", *DEMOGRAPHICS) if c in frame.columns)]
    frame = frame.select(keep)
    if "age" in frame.columns:
        frame = frame.with_columns(pl.col("age").cast(pl.Float64, strict=False))
    for col in ("gender", "nationality"):
        if col in frame.columns:
            frame = frame.with_columns(pl.col(col).cast(pl.String))
    return frame


def read_ratings(path: str | Path) -> pl.DataFrame:
    """Ratings from a PAMELA root (folder) or a table / PAMELA JSON file, unvalidated."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        return read_pamela_root(path)
    frame = _flatten_pamela(read_table(path))
    if frame.height == 0:
        raise InputError(path, "no ratings in the file")
    _require_columns(frame, ("participant_id", "image_id", "rating"), path)
    return _standard_columns(frame, path)


def read_pairs(path: str | Path) -> pl.DataFrame:
    """(participant_id, image_id) pairs to score, from a table or PAMELA JSON."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder; --pairs takes a table file")
    frame = _flatten_pamela(read_table(path))
    if frame.height == 0:
        raise InputError(path, "no pairs in the file")
    _require_columns(frame, ("participant_id", "image_id"), path)
    _reject_nulls(frame, ("participant_id", "image_id"), path)
    return frame.select("participant_id", "image_id")


# ----------------------------------------------------------------------------- validation


def _reject_nulls(frame: pl.DataFrame, columns, source) -> None:
    for col in columns:
        rows = frame.with_row_index("_r").filter(pl.col(col).is_null())["_r"]
        if len(rows):
            raise InputError(source, f"{len(rows)} row(s) have no {col}: rows {preview(rows.to_list())}")


def validate_ratings(frame: pl.DataFrame, source, scale: Scale | None = None) -> tuple[pl.DataFrame, Scale]:
    """Check ratings and return them with an Int64 ``rating`` column, plus the scale.

    Rejected: nulls in the key columns, non-integer ratings, ratings outside `scale` (when
    given), duplicated (participant, image) pairs, unknown split names.
    """
    _require_columns(frame, ("participant_id", "image_id", "rating"), source)
    _reject_nulls(frame, ("participant_id", "image_id", "rating"), source)
    rating = frame["rating"]
    if not rating.dtype.is_numeric():
        bad = frame.with_row_index("_r").filter(pl.col("rating").cast(pl.Float64, strict=False).is_null())
        raise InputError(source, f"rating must be an integer; found {preview(bad['rating'].to_list())} "
                                 f"(rows {preview(bad['_r'].to_list())})")
    as_float = rating.cast(pl.Float64)
    not_int = frame.with_row_index("_r").filter(~as_float.is_finite() | (as_float != as_float.round()))
    if not_int.height:
        raise InputError(source, f"{not_int.height} rating(s) are not integers, e.g. "
                                 f"{preview(not_int['rating'].to_list(), 3)} (rows {preview(not_int['_r'].to_list())})")
    frame = frame.with_columns(pl.col("rating").cast(pl.Int64))
    if scale is None:
        scale = Scale(int(frame["rating"].min()), int(frame["rating"].max()))
        if scale.low == scale.high:
            raise InputError(source, f"every rating is {scale.low}: nothing to learn; give --scale if it is wider")
    outside = frame.with_row_index("_r").filter(~pl.col("rating").is_between(scale.low, scale.high))
    if outside.height:
        raise InputError(source, f"{outside.height} rating(s) outside the scale {scale}: "
                                 f"{preview(outside['rating'].to_list(), 3)} (rows {preview(outside['_r'].to_list())})")
    dup = frame.group_by("participant_id", "image_id").len().filter(pl.col("len") > 1)
    if dup.height:
        pairs = [f"({p}, {i})" for p, i in dup.select("participant_id", "image_id").iter_rows()]
        raise InputError(source, f"{dup.height} duplicated (participant_id, image_id) pair(s): {', '.join(pairs[:5])}"
                                 + (" ..." if dup.height > 5 else ""))
    if "split" in frame.columns:
        unknown = frame.filter(~pl.col("split").is_in(SPLITS))["split"].unique().to_list()
        if unknown:
            raise InputError(source, f"unknown split name(s) {preview(unknown)}; use {', '.join(SPLITS)}")
    return frame, scale


def assign_splits(frame: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """Give a ratings table without ``split`` PAMELA-like seen splits: 80/10/10 of the images."""
    images = frame["image_id"].unique().sort()
    rng = np.random.default_rng(seed)
    draw = rng.random(len(images))
    names = np.where(draw < 0.8, "train", np.where(draw < 0.9, "val_seen", "test_seen"))
    table = pl.DataFrame({"image_id": images, "split": names})
    return frame.join(table, on="image_id", how="left")


def read_embeddings(path: str | Path) -> Embeddings:
    """Read and check an embeddings Parquet file (``image_id``, ``embedding``)."""
    path = Path(path)
    frame = read_table(path)
    _require_columns(frame, ("image_id", "embedding"), path)
    if frame.height == 0:
        raise InputError(path, "no embeddings in the file")
    _reject_nulls(frame, ("image_id", "embedding"), path)
    dup = frame.filter(pl.col("image_id").is_duplicated())["image_id"].unique()
    if len(dup):
        raise InputError(path, f"{len(dup)} image id(s) appear more than once: {preview(dup.to_list())}")
    column = frame["embedding"]
    if isinstance(column.dtype, pl.List):
        lengths = column.list.len()
        if lengths.n_unique() > 1:
            common = int(lengths.mode().sort()[0])
            odd = frame.filter(lengths != common)
            raise InputError(path, f"embeddings of mixed dimension (most are {common}); "
                                   f"image ids {preview(odd['image_id'].to_list())} differ")
        width = int(lengths[0])
        column = column.cast(pl.Array(pl.Float32, width))
    if not isinstance(column.dtype, pl.Array):
        raise InputError(path, f"column embedding must be a list or array of floats, not {column.dtype}")
    matrix = np.ascontiguousarray(column.cast(pl.Array(pl.Float32, column.dtype.size)).to_numpy(), dtype=np.float32)
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise InputError(path, f"{int(bad.sum())} embedding(s) contain NaN or inf: image ids "
                               f"{preview(frame['image_id'].filter(pl.Series(bad)).to_list())}")
    zero = np.linalg.norm(matrix, axis=1) == 0
    if zero.any():
        raise InputError(path, f"{int(zero.sum())} embedding(s) are all zeros: image ids "
                               f"{preview(frame['image_id'].filter(pl.Series(zero)).to_list())}")
    return Embeddings(frame["image_id"], matrix, str(path))


def default_embeddings_path(data: str | Path) -> Path:
    data = Path(data)
    return (data if data.is_dir() else data.parent) / EMBEDDINGS_FILE


def load_dataset(data: str | Path, embeddings: str | Path | None = None,
                 scale: Scale | None = None, seed: int = 0) -> Dataset:
    """Read, validate and join everything `fit` and `evaluate` need.

    Parameters
    ----------
    data : path
        A PAMELA root or a ratings table.
    embeddings : path, optional
        Embeddings Parquet; default ``embeddings.parquet`` beside the data.
    scale : Scale, optional
        The rating scale; default: the lowest and highest rating in the data.
    seed : int
        Seed for the image split of a table that has no ``split`` column.
    """
    data = Path(data)
    frame = read_ratings(data)
    source = data / "annotations" if data.is_dir() else data
    frame, scale = validate_ratings(frame, source, scale)
    if "split" not in frame.columns:
        frame = assign_splits(frame, seed)
    if not frame.select((pl.col("split") == "train").any()).item():
        raise InputError(source, "no ratings in split train")
    emb_path = Path(embeddings) if embeddings else default_embeddings_path(data)
    if not emb_path.exists():
        raise InputError(emb_path, "no such embeddings file; pass --embeddings FILE")
    emb = read_embeddings(emb_path)
    emb.rows(frame["image_id"].unique(), source)  # every rated image must have an embedding
    truth_path = (data if data.is_dir() else data.parent) / TRUTH_FILE
    truth = pl.read_parquet(truth_path) if truth_path.exists() else None
    return Dataset(frame, emb, scale, str(data), truth)
