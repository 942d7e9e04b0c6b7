"""Reading and validating ratings and embeddings (polars).

Two layouts of ratings are read:

* a **PAMELA root**: ``annotations/pamela_<split>.json``, each a JSON list of rating records with
  nested ``image_metadata`` and ``user_demographics`` (see ``shared/reference/pamela.md``);
* a **ratings table** (CSV, Parquet or JSON) with ``participant_id``, ``image_id``, ``rating`` and
  optionally ``split``, ``age``, ``gender``, ``nationality`` and the image metadata ``group``,
  ``style``, ``type``.

Both become one polars frame with the columns of :data:`RATING_COLUMNS` (plus demographics and
image metadata when known). Embeddings are one Parquet file with ``image_id`` and a fixed-size float ``embedding``.

Every problem raises :class:`~pamela_lite.errors.InputError` with one line that names the file.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from .errors import InputError, preview
from .rules import AGE_OPEN, AGE_RANGE, MAX_AGE, not_whole

log = logging.getLogger("pamela_lite")

SPLITS = ("train", "val_seen", "test_seen", "val_unseen", "test_unseen")
RATING_COLUMNS = ("participant_id", "image_id", "rating", "split")
DEMOGRAPHICS = ("age", "gender", "nationality")
# PAMELA's image metadata (``image_metadata`` in a record): kept when present, because people's
# likes often follow them (pamela_lite.metadata turns them into taste directions of the embedding).
IMAGE_METADATA = ("group", "style", "type")
ID_COLUMNS = ("participant_id", "image_id")
# Where each rating came from, kept until validation so messages can name file lines:
LINE, FILE = "_line", "_file"  # line (CSV), record (JSON) or row (Parquet) number, 1-based; file name
EMBEDDINGS_FILE = "embeddings.parquet"
TRUTH_FILE = "demo_truth.parquet"


SCALE_PATTERN = re.compile(r"(-?\d+)\s*-\s*(-?\d+)")  # LOW-HIGH; either end may be negative


@dataclass(frozen=True)
class Scale:
    """An integer rating scale ``low..high``; taken from the data or from a flag, never assumed."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> "Scale":
        """Parse ``"1-5"`` (or ``"0-10"``, or ``"-3-3"``: either end may be negative)."""
        match = SCALE_PATTERN.fullmatch(text.strip())
        if match is None:
            raise InputError(None, f"--scale takes LOW-HIGH such as 1-5 (a negative low end: --scale=-3-3), "
                                   f"not {text!r}")
        low, high = int(match[1]), int(match[2])
        if low >= high:
            raise InputError(None, f"--scale {text}: LOW must be below HIGH")
        return cls(low, high)

    def __post_init__(self):
        for name in ("low", "high"):
            end = getattr(self, name)
            whole = isinstance(end, (int, np.integer)) or (isinstance(end, (float, np.floating)) and float(end).is_integer())
            if isinstance(end, (bool, np.bool_)) or not whole:
                raise InputError(None, f"a rating scale takes whole numbers, not {end!r}")
            object.__setattr__(self, name, int(end))  # frozen: the one place the ends are normalised
        if self.low >= self.high:
            raise InputError(None, f"a rating scale runs from low to high: {self.low}-{self.high} does not")

    @classmethod
    def of(cls, scale: "Scale | tuple | str | None") -> "Scale | None":
        """A Scale from a Scale, a (low, high) pair or text such as "1-5" (None stays None)."""
        if scale is None or isinstance(scale, Scale):
            return scale
        if isinstance(scale, str):
            return cls.parse(scale)
        if isinstance(scale, (tuple, list)) and len(scale) == 2:
            return cls(*scale)
        raise InputError(None, f"a rating scale is a Scale, (low, high) or text such as '1-5', not {scale!r}")

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


@dataclass
class Embeddings:
    """Image embeddings: ``ids`` (as given: ints or strings) and a float32 ``matrix`` (n, d)."""

    ids: pl.Series
    matrix: np.ndarray
    source: str = "<memory>"

    def __post_init__(self):
        """The checks a file gets from :func:`read_embeddings`, for embeddings built in memory: a
        duplicated id would shift every later image onto another's vector, silently."""
        if not isinstance(self.ids, pl.Series):
            values = list(self.ids) if isinstance(self.ids, (list, tuple)) else np.asarray(self.ids)
            if isinstance(values, list) and len({isinstance(v, (str, np.str_)) for v in values if v is not None}) > 1:
                raise InputError(self.source, "image ids of mixed types (integers and text): give one kind")
            self.ids = pl.Series("image_id", values)
        if not isinstance(self.matrix, np.ndarray):
            self.matrix = np.asarray(self.matrix, dtype=np.float32)
        if self.matrix.ndim != 2 or self.matrix.dtype.kind != "f":
            raise InputError(self.source, f"embeddings must be a 2-D float array (images x dimensions), not "
                                          f"{self.matrix.ndim}-D {self.matrix.dtype}")
        if len(self.ids) != len(self.matrix):
            raise InputError(self.source, f"{len(self.ids)} image ids for {len(self.matrix)} embedding rows")
        duplicated = self.ids.filter(self.ids.is_duplicated()).unique(maintain_order=True)
        if len(duplicated):
            raise InputError(self.source, f"{len(duplicated)} image id(s) appear more than once: "
                                          f"{preview(duplicated.to_list())}")
        # A finite float32 matrix cannot overflow a float64 sum, so one pass says whether to look
        # closer; a memory-mapped feature cache was checked when written, and stays unread here.
        if not isinstance(self.matrix, np.memmap) and not np.isfinite(self.matrix.sum(dtype=np.float64)):
            bad = ~np.isfinite(self.matrix).all(axis=1)
            if bad.any():  # (huge float64 values can overflow the sum without being infinite themselves)
                raise InputError(self.source, f"{int(bad.sum())} embedding(s) contain NaN or inf: image ids "
                                              f"{preview(self.ids.filter(pl.Series(bad)).to_list())}")

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    def rows(self, image_ids: pl.Series, source: str | Path | None = None) -> np.ndarray:
        """Row index of each image id; unknown ids raise one InputError that lists them.

        Ids are kept as given. When the two files type them differently (integers in one, text
        in the other) they are compared as text, so "077" never becomes 77.
        """
        mine, theirs = comparable_ids(self.ids, image_ids)
        index = pl.DataFrame({"_key": mine, "_row": np.arange(len(self.ids), dtype=np.int64)})
        wanted = pl.DataFrame({"_key": theirs, "image_id": image_ids})
        found = wanted.join(index, on="_key", how="left", maintain_order="left")
        missing = found.filter(pl.col("_row").is_null())["image_id"].unique(maintain_order=True)
        if len(missing):
            raise InputError(source or self.source,
                             f"{len(missing)} image id(s) have no embedding in {self.source}: "
                             f"{preview(missing.to_list())}{id_type_note(image_ids, self.ids, 'the embeddings', missing)}"
                             f"{near_miss_note(missing, self.ids)}"
                             f"{self._skipped_hint(missing)}; its ids look like {preview(self.ids[:3].to_list(), 3)}")
        return found["_row"].to_numpy()

    def _skipped_hint(self, missing: pl.Series) -> str:
        """Points at embed's report of skipped files only when some missing ids are among them
        (the report lists paths as given to embed; an id is a path's tail)."""
        skipped = Path(f"{self.source}.skipped.csv")  # what embed writes beside its output
        try:
            report = pl.read_csv(skipped, infer_schema=False) if skipped.is_file() else None
            if report is None or not report.height:
                return ""
            ids = [str(i) for i in missing.to_list()]
            if "image_id" in report.columns:  # the id each skipped file would have had
                hits = len(set(ids) & set(report["image_id"].to_list()))
            else:  # a report of an earlier version: paths as given to embed, an id being a path's tail
                paths = report["path"].to_list()
                hits = sum(any(p == i or p.endswith("/" + i) for p in paths) for i in ids)
        except Exception:  # an unreadable or foreign report is no reason to hide the real message
            return ""
        return f" ({hits} of them embed could not read: see {skipped})" if hits else ""

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


def comparable_ids(a: pl.Series, b: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Two id columns in a type they can be joined on: as they are, or both as text.

    Text is never turned into numbers: "077" and "77" stay two people, and an integer id 77
    matches the text "77" only.
    """
    if a.dtype == b.dtype:
        return a, b
    return a.cast(pl.String), b.cast(pl.String)


def _id_kind(ids: pl.Series) -> str:
    return "text" if ids.dtype == pl.String else "integers" if ids.dtype.is_integer() else str(ids.dtype)


def id_type_note(given: pl.Series, known: pl.Series, where: str, missing: pl.Series | None = None) -> str:
    """A hint for a failed id lookup when the two sides type their ids differently; with the
    `missing` ids, only when one of them would match as a number ("077" against 77): an id that
    exists in no form needs no lesson in typing."""
    if given.dtype == known.dtype:
        return ""
    if missing is not None:
        number = lambda ids: pl.Series(ids).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
        if not number(missing).drop_nulls().is_in(number(known).drop_nulls().implode()).any():
            return ""
    return (f" (these ids are {_id_kind(given)}, those of {where} are {_id_kind(known)}: they are compared as "
            f"text, e.g. {known[0]!r} matches {str(known[0])!r} only)")


def near_miss_note(missing, known) -> str:
    """A hint when some `missing` ids differ from a `known` id only in surrounding spaces, letter
    case or Unicode form (" u7" or "U7" against "u7": a spreadsheet's padding, another export's
    casing; "café" typed against a macOS file name's decomposed "café"); ids are matched exactly,
    so such an id is unknown. Empty when none does."""
    key = lambda ids: (pl.Series(list(ids), dtype=pl.String, strict=False).str.normalize("NFC")
                       .str.strip_chars().str.to_lowercase())
    known = pl.Series(list(known)).cast(pl.String)
    exact = set(known.to_list())
    table = pl.DataFrame({"_key": key(known), "known": known}).unique("_key", keep="first", maintain_order=True)
    given = pl.Series(list(missing)).cast(pl.String)
    # an id that matches once both sides are text is id_type_note's case, not a near miss
    near = (pl.DataFrame({"_key": key(given), "given": given}).filter(~pl.col("given").is_in(list(exact)))
            .join(table, on="_key", how="inner", maintain_order="left"))
    if not near.height:
        return ""
    return (f" ({near.height} of them {'differs' if near.height == 1 else 'differ'} from a known id only in "
            f"spaces, letter case or Unicode form "
            f"(composed or decomposed accents), e.g. {near['given'][0]!r} against {near['known'][0]!r}: ids must "
            f"match exactly)")


# ----------------------------------------------------------------------------- reading files


def _read_json_records(path: Path) -> pl.DataFrame:
    text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors write one) is not data
    if not text.strip():
        raise InputError(path, "the file is empty")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:  # a record export is often one long line: the column says where
        raise InputError(path, f"not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
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
            # Ids are text as written: participant "077" stays "077", never the number 77.
            return pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema_length=None,
                               schema_overrides={c: pl.String for c in ID_COLUMNS})
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
    if "rating" in missing and Path(str(source)).suffix.lower() == ".json":  # PAMELA's records call it original_score
        missing[missing.index("rating")] = "rating (original_score in PAMELA's records)"
    if missing:
        found = [c for c in frame.columns if not c.startswith("_")]  # not our own bookkeeping columns
        raise InputError(source, f"missing column(s) {', '.join(missing)}; found: {', '.join(found) or 'none'}")


def read_pamela_root(root: str | Path) -> pl.DataFrame:
    """All splits of a PAMELA root as one flat frame with a ``split`` column."""
    root = Path(root)
    folder = root / "annotations"
    if not folder.is_dir():
        raise InputError(root, "no annotations/ folder: not a PAMELA root (expected annotations/pamela_<split>.json)")
    parts = []
    absent = [split for split in SPLITS if not (folder / f"pamela_{split}.json").exists()]
    if len(absent) == len(SPLITS):
        raise InputError(folder, f"no split files (expected {', '.join(f'pamela_{s}.json' for s in SPLITS)})")
    if absent:  # a copy of some splits (the test files alone, to evaluate a model) is read as it is
        log.warning(f"warning: {folder}: no {', '.join(f'pamela_{s}.json' for s in absent)}; reading the other splits")
    for split in (s for s in SPLITS if s not in absent):
        path = folder / f"pamela_{split}.json"
        frame = _flatten_pamela(_with_positions(read_table(path), path))
        if frame.height == 0:
            raise InputError(path, f"split {split} has no ratings")
        _require_columns(frame, ("participant_id", "image_id", "rating"), path)
        parts.append(_standard_columns(frame, path).with_columns(split=pl.lit(split)))
    try:
        return pl.concat(parts, how="diagonal_relaxed")
    except Exception as err:  # e.g. ids that are integers in one split file and text in another
        raise InputError(folder, f"the split files do not agree on column types: {str(err).splitlines()[0]}") from None


def _with_positions(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    """Tag rows with their place in the file: CSV line (after the header), JSON record, row."""
    first = 2 if path.suffix.lower() in (".csv", ".tsv", ".txt") else 1
    return frame.with_columns(pl.int_range(first, first + frame.height, dtype=pl.Int64).alias(LINE),
                              pl.lit(path.name).alias(FILE))


def _unit(file_name: str) -> str:
    suffix = Path(file_name).suffix.lower()
    return "line" if suffix in (".csv", ".tsv", ".txt") else "record" if suffix == ".json" else "row"


def _where(frame: pl.DataFrame, bad: pl.Expr, limit: int = 5) -> str:
    """Where the rows matching `bad` are: "lines 3, 9", or "pamela_train.json record 12, ..."."""
    if LINE not in frame.columns:
        frame = frame.with_columns(pl.int_range(1, frame.height + 1, dtype=pl.Int64).alias(LINE),
                                   pl.lit("").alias(FILE))
    hits = frame.filter(bad).select(LINE, FILE)
    files = frame[FILE].unique()
    places = []
    for line, name in hits.head(limit).iter_rows():
        unit = _unit(name or "")
        places.append(f"{name} {unit} {line}" if len(files) > 1 else f"{unit} {line}")
    if len(files) == 1 and places:
        unit = _unit(files[0] or "")
        places = [f"{unit}s " if len(places) > 1 else f"{unit} "] + [p.split(" ", 1)[1] for p in places]
        text = places[0] + ", ".join(places[1:])
    else:
        text = ", ".join(places)
    return text + (f" (+{hits.height - limit} more)" if hits.height > limit else "")


def _check_plain_values(frame: pl.DataFrame, columns, source) -> None:
    """Refuse columns that hold lists or objects where a number or a word belongs."""
    for col in columns:
        if col in frame.columns and isinstance(frame.schema[col], (pl.List, pl.Array, pl.Struct, pl.Object)):
            raise InputError(source, f"column {col} holds lists or objects, not plain values")


def _ids(frame: pl.DataFrame, source, columns: tuple[str, ...] = ID_COLUMNS) -> pl.DataFrame:
    """Id `columns` as integers or text, kept exactly; whole floats (JSON 77.0) become integers."""
    for col in columns:
        dtype = frame.schema[col]
        if dtype == pl.String or dtype.is_integer():
            continue
        if dtype.is_float():
            bad = pl.col(col).is_not_null() & (~pl.col(col).is_finite() | (pl.col(col) != pl.col(col).round())
                                               | (pl.col(col).abs() > 2**53))
            if frame.select(bad.any()).item():
                raise InputError(source, f"{col} must be an integer or text, not a fraction or a huge number: "
                                         f"{preview(frame.filter(bad)[col].to_list(), 3)} ({_where(frame, bad)})")
            frame = frame.with_columns(pl.col(col).cast(pl.Int64))
        elif dtype == pl.Null:
            continue  # every value missing: reported as missing ids
        else:
            raise InputError(source, f"{col} must be integers or text, not {dtype}")
    return frame


def person_demographics(ratings: pl.DataFrame) -> pl.DataFrame:
    """One row per participant (in order of appearance) with the first value each demographic
    column has over their records: a record without demographics does not erase the others'."""
    cols = [c for c in DEMOGRAPHICS if c in ratings.columns]
    return ratings.group_by("participant_id", maintain_order=True).agg(pl.col(c).drop_nulls().first() for c in cols)


def _age_years(frame: pl.DataFrame, col: str) -> pl.Expr:
    """Age in years from a number, "34", a range such as "25-34" (its midpoint) or "65+" (65): the
    rule of :func:`pamela_lite.rules.age_years`, over a column."""
    dtype = frame.schema[col]
    if dtype.is_numeric():
        return pl.col(col).cast(pl.Float64)
    if dtype != pl.String:
        return pl.lit(None, dtype=pl.Float64)
    text = pl.col(col).str.strip_chars()
    bounds = text.str.extract_groups(AGE_RANGE)
    midpoint = (bounds.struct.field("1").cast(pl.Float64) + bounds.struct.field("2").cast(pl.Float64)) / 2
    return pl.coalesce(text.cast(pl.Float64, strict=False), midpoint,
                       text.str.extract(AGE_OPEN, 1).cast(pl.Float64, strict=False))


def normalise_ages(frame: pl.DataFrame, source) -> pl.DataFrame:
    """``age`` in years; where it is missing, the midpoint of PAMELA's ``age_binned``."""
    given = [c for c in ("age", "age_binned") if c in frame.columns]
    if not given:
        return frame
    years = {c: _age_years(frame, c) for c in given}
    for col in given:  # values that carried something but gave no age: say so, once (before age is replaced)
        if frame.schema[col] == pl.String:
            lost = (pl.col(col).str.strip_chars().str.len_chars() > 0) & years[col].is_null()
            values = frame.filter(lost)[col].unique(maintain_order=True)
            if len(values):
                log.warning(f"warning: {source}: {len(values)} {col} value(s) are neither a number nor a range "
                            f"such as 25-34 and are ignored: {preview([v[:40] for v in values.to_list()])}")
    frame = frame.with_columns(pl.coalesce(*years.values()).fill_nan(None).alias("age"))  # NaN: unknown, as on devices
    impossible = pl.col("age").is_not_null() & ((pl.col("age") < 0) | (pl.col("age") > MAX_AGE))
    if frame.select(impossible.any()).item():
        raise InputError(source, f"age must be between 0 and {MAX_AGE} years, not "
                                 f"{preview(frame.filter(impossible)['age'].unique(maintain_order=True).to_list(), 3)}"
                                 f" ({_where(frame, impossible)})")
    return frame


def _standard_columns(frame: pl.DataFrame, source) -> pl.DataFrame:
    _check_plain_values(frame, ("participant_id", "image_id", "rating", "split", *DEMOGRAPHICS, "age_binned",
                                *IMAGE_METADATA), source)
    frame = _ids(normalise_ages(frame, source), source)
    optional = ("split", *DEMOGRAPHICS, *IMAGE_METADATA, LINE, FILE)
    frame = frame.select("participant_id", "image_id", "rating", *(c for c in optional if c in frame.columns))
    for col in ("gender", "nationality", "split", *IMAGE_METADATA):
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
    frame = _flatten_pamela(_with_positions(read_table(path), path))
    if frame.height == 0:
        raise InputError(path, "no ratings in the file")
    _require_columns(frame, ("participant_id", "image_id", "rating"), path)
    return _standard_columns(frame, path)


def read_pairs(path: str | Path) -> pl.DataFrame:
    """(participant_id, image_id) pairs to score, from a table or PAMELA JSON."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder; --pairs takes a table file")
    frame = _flatten_pamela(_with_positions(read_table(path), path))
    if frame.height == 0:
        raise InputError(path, "no pairs in the file")
    _require_columns(frame, ("participant_id", "image_id"), path)
    _check_plain_values(frame, ID_COLUMNS, path)
    _reject_nulls(frame, ("participant_id", "image_id"), path)
    return _ids(frame, path).select("participant_id", "image_id")


def read_people(path: str | Path) -> pl.DataFrame:
    """New people's ids and demographics (``participant_id`` and any of ``age``/``age_binned``,
    ``gender``, ``nationality``), read as a ratings file's are (PAMELA's nested
    ``user_demographics``, JSON ids such as 7.0, ages in years); one row each: an id given twice is
    refused."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder; --people takes a table file")
    frame = _flatten_pamela(_with_positions(read_table(path), path))  # messages name a CSV row by its line
    _require_columns(frame, ("participant_id",), path)
    fields = ["participant_id", *(c for c in (*DEMOGRAPHICS, "age_binned") if c in frame.columns)]
    frame = frame.select(*fields, LINE, FILE)
    _check_plain_values(frame, fields, path)
    if frame.height == 0:
        raise InputError(path, "no people in the file")
    _reject_nulls(frame, ("participant_id",), path)
    # age in years from here on (age_binned read once: later readers would warn of its bad values again)
    frame = normalise_ages(_ids(frame, path, ("participant_id",)), path).drop("age_binned", strict=False)
    twice = frame.filter(pl.col("participant_id").is_duplicated())["participant_id"].unique(maintain_order=True)
    if len(twice):
        raise InputError(path, f"{len(twice)} participant(s) are given more than once: {preview(twice.to_list())}; "
                               f"give each person one row")
    return frame.drop(LINE, FILE)


def with_demographics(context: pl.DataFrame, people: pl.DataFrame) -> pl.DataFrame:
    """`context` (ratings) with the demographics `people` (a --people file) gives, over the context's
    own values (ids compared as text): the one rule of predict's and score's fold-ins, so kept rows
    and states agree."""
    given = [c for c in people.columns if c != "participant_id"]
    theirs = people.unique("participant_id", keep="first").select(
        pl.col("participant_id").cast(pl.String).alias("_key"), *(pl.col(c).alias(f"_{c}") for c in given))
    joined = context.with_columns(_key=pl.col("participant_id").cast(pl.String)).join(theirs, on="_key", how="left",
                                                                                     maintain_order="left")
    # As text: the two files may type a column differently (integers, floats, all nulls); fold-ins read both.
    return joined.with_columns((pl.coalesce(pl.col(f"_{c}").cast(pl.String), pl.col(c).cast(pl.String))
                                if c in context.columns else pl.col(f"_{c}")).alias(c)
                               for c in given).drop("_key", *(f"_{c}" for c in given))


# ----------------------------------------------------------------------------- validation


def _reject_nulls(frame: pl.DataFrame, columns, source) -> None:
    for col in columns:
        missing = pl.col(col).is_null()
        count = frame.select(missing.sum()).item()
        if count:
            raise InputError(source, f"{count} row(s) have no {col}: {_where(frame, missing)}")


def validate_ratings(frame: pl.DataFrame, source, scale: Scale | None = None,
                     unique_pairs: bool = True) -> tuple[pl.DataFrame, Scale]:
    """Check ratings and return them with an Int64 ``rating`` column, plus the scale.

    Rejected: nulls in the key columns or in ``split``, ratings that are not whole numbers
    (:mod:`pamela_lite.rules`, the rule every reader applies), ratings outside `scale` (when
    given), duplicated (participant, image) pairs (unless ``unique_pairs=False``: a fold-in
    context may rate an image twice, two observations), unknown split names. Messages give
    file line (CSV), record (JSON) or row numbers.
    """
    _require_columns(frame, ("participant_id", "image_id", "rating"), source)
    if frame.height == 0:
        raise InputError(source, "no ratings")
    scale = Scale.of(scale)
    _check_plain_values(frame, ("participant_id", "image_id", "rating", "split"), source)
    _reject_nulls(frame, ("participant_id", "image_id", "rating"), source)
    rating = frame["rating"]
    if rating.dtype == pl.String:
        unreadable = pl.col("rating").cast(pl.Float64, strict=False).is_null()
        if frame.select(unreadable.any()).item():
            raise InputError(source, f"rating must be an integer; found {preview(frame.filter(unreadable)['rating'].to_list(), 3)} "
                                     f"({_where(frame, unreadable)})")
        frame = frame.with_columns(pl.col("rating").cast(pl.Float64))
    elif not rating.dtype.is_numeric():
        raise InputError(source, f"rating must be an integer, not {rating.dtype}")
    whole = pl.Series(~not_whole(frame["rating"].cast(pl.Float64).to_numpy()))
    if not whole.all():
        bad = frame.filter(~whole)
        raise InputError(source, f"{bad.height} rating(s) are not integers, e.g. "
                                 f"{preview(bad['rating'].to_list(), 3)} ({_where(frame, ~pl.lit(whole))})")
    frame = frame.with_columns(pl.col("rating").cast(pl.Int64))
    if scale is None:
        low, high = int(frame["rating"].min()), int(frame["rating"].max())
        if low == high:
            raise InputError(source, f"every rating is {low}: nothing to learn; give --scale if it is wider")
        scale = Scale(low, high)
        used = set(frame["rating"].unique().to_list())
        unused = [v for v in range(scale.low, scale.high + 1) if v not in used]
        if unused and scale.high - scale.low <= 20:
            # A scale read off the data with a hole in it is usually one typo at an end (a 7 in 1-5 data).
            log.warning(f"warning: {source}: the scale was read off the data as {scale}, but no rating is "
                        f"{preview(unused)}; if an extreme value is a typo, fix it or pass --scale LOW-HIGH")
        else:  # without a hole: an end that only a handful of ratings reach (an 11 in 1-10 data)
            _warn_thin_scale_ends(frame["rating"], scale, source)
    outside = ~pl.col("rating").is_between(scale.low, scale.high)
    if frame.select(outside.any()).item():
        values = frame.filter(outside)["rating"]
        raise InputError(source, f"{len(values)} rating(s) outside the scale {scale}: "
                                 f"{preview(values.to_list(), 3)} ({_where(frame, outside)})")
    dup = (frame.group_by("participant_id", "image_id", maintain_order=True).len().filter(pl.col("len") > 1)
           if unique_pairs else frame.head(0))
    if dup.height:
        pairs = [f"({p}, {i})" for p, i in dup.select("participant_id", "image_id").iter_rows()]
        first = dup.row(0, named=True)
        again = (pl.col("participant_id") == first["participant_id"]) & (pl.col("image_id") == first["image_id"])
        raise InputError(source, f"{dup.height} duplicated (participant_id, image_id) pair(s): {', '.join(pairs[:5])}"
                                 + (" ..." if dup.height > 5 else "") + f"; the first at {_where(frame, again)}")
    if "split" in frame.columns:
        no_split = pl.col("split").is_null()
        count = frame.select(no_split.sum()).item()
        if count:
            raise InputError(source, f"{count} row(s) have no split ({_where(frame, no_split)}); give each one "
                                     f"of {', '.join(SPLITS)}, or drop the split column to split images 80/10/10")
        unknown = frame.filter(~pl.col("split").is_in(SPLITS))["split"].unique().to_list()
        if unknown:
            raise InputError(source, f"unknown split name(s) {preview(unknown)}; use {', '.join(SPLITS)}")
    return frame.drop(LINE, FILE, strict=False), scale


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
    embeddings = Embeddings(frame["image_id"], matrix, str(path))  # duplicated ids and NaN/inf: checked there
    zero = np.linalg.norm(matrix, axis=1) == 0
    if zero.any():
        raise InputError(path, f"{int(zero.sum())} embedding(s) are all zeros: image ids "
                               f"{preview(frame['image_id'].filter(pl.Series(zero)).to_list())}")
    return embeddings


THIN_END_SHARE = 0.001  # an end of the scale that fewer than 0.1% of the ratings reach is suspect


def _warn_thin_scale_ends(ratings: pl.Series, scale: Scale, source) -> None:
    """Warn when an end of a scale read off the data rests on a handful of ratings (at most
    0.1% of them, from 1,000 ratings on: fewer cannot tell a rare extreme from a typo)."""
    n = len(ratings)
    if n < 1000:
        return
    for name, value in (("bottom", scale.low), ("top", scale.high)):
        count = int((ratings == value).sum())
        if count <= THIN_END_SHARE * n:
            log.warning(f"warning: {source}: the {name} of the scale read off the data ({scale}), {value}, rests on "
                        f"{count} of {n:,} ratings; if it is a typo, fix it or pass --scale LOW-HIGH")


def warn_seen_without_train(frame: pl.DataFrame, source) -> int:
    """Warn (once, with the count) about seen-split users who have no train ratings.

    They cannot be scored as known users, so their val_seen/test_seen ratings are left out of
    the seen-split figures; returns how many there are.
    """
    trained = frame.filter(pl.col("split") == "train")["participant_id"].unique()
    orphans = (frame.filter(pl.col("split").is_in(["val_seen", "test_seen"]) & ~pl.col("participant_id").is_in(trained.implode()))
               .group_by("participant_id").len())
    if orphans.height:
        log.warning(f"warning: {source}: {orphans.height} participant(s) rated in val_seen/test_seen but not in "
                    f"train ({int(orphans['len'].sum())} ratings); they are left out of the seen-split figures: "
                    f"{preview(orphans['participant_id'].to_list())}")
    return orphans.height


def warn_unseen_in_train(frame: pl.DataFrame, source) -> int:
    """Warn (once, with the count) about unseen-split users who also have train ratings: the
    model is fitted on them, so their "unseen" figures are not; returns how many there are."""
    trained = frame.filter(pl.col("split") == "train")["participant_id"].unique()
    leaked = frame.filter(pl.col("split").is_in(["val_unseen", "test_unseen"])
                          & pl.col("participant_id").is_in(trained.implode()))["participant_id"].unique(
                              maintain_order=True)
    if len(leaked):
        log.warning(f"warning: {source}: {len(leaked)} participant(s) of val_unseen/test_unseen also have train "
                    f"ratings, so the model is fitted on them and their unseen-split figures are not of unseen "
                    f"people: {preview(leaked.to_list())}")
    return len(leaked)


def default_embeddings_path(data: str | Path) -> Path:
    data = Path(data)
    return (data if data.is_dir() else data.parent) / EMBEDDINGS_FILE


def load_dataset(data: str | Path, embeddings: str | Path | None = None,
                 scale: Scale | None = None, seed: int = 0, require_train: bool = True) -> Dataset:
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
    require_train : bool
        False when nothing is fitted on the data (a fitted model evaluated alone): no train split
        is needed, and seen-split people are matched against the model's own users instead.
    """
    data = Path(data)
    frame = read_ratings(data)
    source = data / "annotations" if data.is_dir() else data
    frame, scale = validate_ratings(frame, source, scale)
    named = re.fullmatch(r"pamela_(\w+)\.json", data.name) if data.is_file() else None
    if "split" not in frame.columns and named and named[1] in SPLITS and named[1] != "train":
        # One of PAMELA's evaluation files on its own: its people and images are that split's.
        # (pamela_train.json alone is split 80/10/10 by image like any table, so a fit can tune.)
        log.warning(f"warning: {data}: no split column; every rating is taken as {named[1]}, as the file name says")
        frame = frame.with_columns(split=pl.lit(named[1]))
    if "split" not in frame.columns:
        frame = assign_splits(frame, seed)
    if require_train:
        if not frame.select((pl.col("split") == "train").any()).item():
            raise InputError(source, "no ratings in split train"
                             + (" (no annotations/pamela_train.json)" if data.is_dir() else ""))
        warn_seen_without_train(frame, source)
        warn_unseen_in_train(frame, source)
    emb_path = Path(embeddings) if embeddings else default_embeddings_path(data)
    if not emb_path.exists():
        raise InputError(emb_path, "no such embeddings file; pass --embeddings FILE")
    emb = read_embeddings(emb_path)
    emb.rows(frame["image_id"].unique(), source)  # every rated image must have an embedding
    truth_path = (data if data.is_dir() else data.parent) / TRUTH_FILE
    truth = pl.read_parquet(truth_path) if truth_path.exists() else None
    return Dataset(frame, emb, scale, str(data), truth)
