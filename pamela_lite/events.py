"""Reading and validating an events table: what people *do* with images, not what they rate (polars).

An events table (CSV, Parquet or JSON) has one row per logged action:

========== =========================================================================================
column     meaning
========== =========================================================================================
participant_id  who acted (kept as given: integers or text, never "077" -> 77)
image_id   the image acted on; it must have an embedding
event      a name from the vocabulary (default :data:`DEFAULT_EVENTS`; ``--event-weights`` adds or
           changes names) — or, instead of ``event``, a numeric ``weight`` (signed evidence)
timestamp  optional; a number, a date-time, or ISO 8601 text (``2024-05-01T12:30:00Z``), one kind
           per file; kept as given (first of duplicates; numbers written as text become numbers,
           so "10" comes after "9"), used to order a person's events
session_id optional; images shown together (one prompt's batch, one feed page). Choices are
           compared within a session, or (when validation prefers it) across the person's
           sessions too; without it, within everything the person was shown
prompt_id, position   optional; kept for analysis (the solver does not read them)
========== =========================================================================================

Every image a person was **shown** should have a ``view`` row (an image acted on may also have
just its action rows); an image never shown is not evidence of anything and must not appear.

Each event name carries a signed **evidence** weight ``m`` (:data:`DEFAULT_EVENTS`): positive
for an action that says "I like this" (save, download, share), zero for a plain view, negative
for a rejection (skip, regenerate, dislike). Per (person, image, session) the weights of its
events add up; the image's preference is 1 if the sum is positive and 0 otherwise, with
confidence ``1 + alpha*|m|`` — implicit's feedback model (see :mod:`pamela_lite.event_channel`);
when validation prefers it, a negative sum is preference -1 (a skip then says more than a view).

Duplicated rows (the same person, image, session and event logged twice) are the same fact:
they count once, and a warning says how many rows were merged. A numeric weight names no
action, so two rows of equal weight may be two actions (a save and a share): they are merged
only when they also agree in timestamp, position and prompt_id (those given), and otherwise add
up; without any of those, equal rows cannot be told from a row logged twice, and are merged. Bad input raises one
:class:`~pamela_lite.errors.InputError` naming the file and the problem.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from .data import LINE, FILE, Embeddings, _check_plain_values, _ids, _reject_nulls, _require_columns, _where, \
    _with_positions, read_table
from .errors import InputError, preview
from .event_channel import EventRows

log = logging.getLogger("pamela_lite")

# Signed evidence per event (documented defaults; a fit with ratings re-weighs them on validation).
#   view 0: shown, not acted on -> preference 0 at the base confidence 1
#   save 1, download 2, share 3: kept the image -> preference 1, confidence 1 + alpha*m
#   skip -0.5, regenerate -0.5: passed over / asked for another batch -> preference 0, a little more sure
#   dislike -2: an explicit rejection -> preference 0, confidence 1 + 2*alpha
DEFAULT_EVENTS: dict[str, float] = {"view": 0.0, "save": 1.0, "download": 2.0, "share": 3.0,
                                    "skip": -0.5, "regenerate": -0.5, "dislike": -2.0}
OPTIONAL = ("timestamp", "session_id", "prompt_id", "position")
WEIGHT = "weight"
NO_SESSION = ""  # the session of rows without one: everything a person was shown


def parse_event_weights(text: str | None) -> dict[str, float]:
    """The vocabulary: :data:`DEFAULT_EVENTS` updated by a JSON object of name -> signed weight."""
    vocabulary = dict(DEFAULT_EVENTS)
    if not text:
        return vocabulary
    try:
        extra = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(None, f"--event-weights is not valid JSON ({err.msg})") from None
    if not isinstance(extra, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and np.isfinite(v) for v in extra.values()):
        raise InputError(None, "--event-weights must be a JSON object of event name: finite number")
    vocabulary.update({str(k).strip().lower(): float(v) for k, v in extra.items()})
    return vocabulary


def _is_iso_time(text: str) -> bool:
    """ISO 8601 date or date-time text; a trailing Z means UTC (Python 3.10's parser lacks it)."""
    text = text.strip()
    try:
        datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        return False
    return True


def _check_timestamps(frame: pl.DataFrame, source) -> pl.DataFrame:
    """Text timestamps must be times or numbers: "abc" would silently sort a person's events anyhow.

    Numeric and date-time columns are times already; text is parsed value by value (distinct
    values only), because a log may mix dates with date-times and a single inferred format would not.
    Text that holds numbers only becomes numbers (as text, "10" would sort before "9"); numbers
    mixed with date-times are refused (no order holds between them).
    """
    dtype = frame.schema.get("timestamp")
    if dtype is None or not (dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum))):
        return frame
    text = pl.col("timestamp").cast(pl.String)
    number = text.str.strip_chars().cast(pl.Float64, strict=False)
    is_number = number.is_finite().fill_null(False)
    values = frame.filter(text.is_not_null() & ~is_number)["timestamp"].cast(pl.String)
    odd = [v for v in values.unique(maintain_order=True).to_list() if not _is_iso_time(v)]
    if odd:
        bad = text.is_in(pl.Series(odd, dtype=pl.String).implode())
        raise InputError(source, f"timestamp must be a number, a date-time or ISO 8601 text such as "
                                 f"2024-05-01T12:30:00, not {preview(odd, 3)} ({_where(frame, bad)})")
    if not len(values):
        return frame.with_columns(number.alias("timestamp"))
    if frame.select(is_number.any()).item():
        raise InputError(source, f"timestamp mixes numbers with date-times (e.g. {values[0]!r}), which cannot be "
                                 f"ordered together; give every timestamp in one form "
                                 f"(numbers: {_where(frame, is_number)})")
    return frame


def read_events(path: str | Path) -> pl.DataFrame:
    """An events table, unvalidated, with each row's place in the file (for messages)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder; --events takes a table file (.csv, .parquet or .json)")
    frame = read_table(path)
    if frame.height == 0:
        raise InputError(path, "no events in the file")
    return _with_positions(frame, path)


def validate_events(frame: pl.DataFrame, source, vocabulary: dict[str, float] | None = None,
                    embeddings: Embeddings | None = None) -> pl.DataFrame:
    """Check an events table and return it deduplicated, one row per distinct event.

    Parameters
    ----------
    frame : polars.DataFrame
        ``participant_id``, ``image_id`` and ``event`` or ``weight``, optionally the
        :data:`OPTIONAL` columns.
    source : str or Path
        The file, named in every message.
    vocabulary : dict, optional
        Event name -> signed weight; default :data:`DEFAULT_EVENTS`.
    embeddings : Embeddings, optional
        When given, every image must have an embedding.

    Returns
    -------
    polars.DataFrame
        ``participant_id``, ``image_id``, ``session_id`` (text; "" when not given), ``event``
        (lower-case name, or null with a numeric weight), ``weight`` (the signed evidence of
        the row), ``count`` (how many identical rows were merged) and the optional columns given.
    """
    vocabulary = DEFAULT_EVENTS if vocabulary is None else vocabulary
    _require_columns(frame, ("participant_id", "image_id"), source)
    if "event" not in frame.columns and WEIGHT not in frame.columns:
        found = ", ".join(c for c in frame.columns if not c.startswith("_")) or "none"
        raise InputError(source, f"missing column event (an event name per row) or {WEIGHT} (a signed number "
                                 f"per row); found: {found}")
    _check_plain_values(frame, ("participant_id", "image_id", "event", WEIGHT, *OPTIONAL), source)
    _reject_nulls(frame, ("participant_id", "image_id"), source)
    frame = _check_timestamps(frame, source)
    frame = _ids(frame, source)
    if "event" in frame.columns:
        name = pl.col("event").cast(pl.String).str.strip_chars().str.to_lowercase()
        # an empty name (a quoted "" in CSV) is no name, like an empty field
        frame = frame.with_columns(pl.when(name == "").then(None).otherwise(name).alias("event"))
        named = pl.col("event").is_not_null()
        if WEIGHT not in frame.columns:
            _reject_nulls(frame, ("event",), source)
        # a name beside a number is dropped (the number is the evidence, below): only bare names must be known
        bare = named & pl.col(WEIGHT).is_null() if WEIGHT in frame.columns else named
        unknown = frame.filter(bare & ~pl.col("event").is_in(list(vocabulary)))["event"].unique(maintain_order=True)
        if len(unknown):
            bad = bare & pl.col("event").is_in(unknown.implode())
            raise InputError(source, f"{len(unknown)} unknown event name(s) {preview(unknown.to_list())} "
                                     f"({_where(frame, bad)}); known: {', '.join(vocabulary)} "
                                     f"(new names are added when fitting: fit --event-weights)")
    else:
        frame = frame.with_columns(event=pl.lit(None, dtype=pl.String))
    table = pl.DataFrame({"event": list(vocabulary), "_w": list(vocabulary.values())},
                         schema={"event": pl.String, "_w": pl.Float64})
    frame = frame.join(table, on="event", how="left", maintain_order="left")
    if WEIGHT in frame.columns:
        given = pl.col(WEIGHT).cast(pl.Float64, strict=False)
        bad = (pl.col(WEIGHT).is_not_null() & (given.is_null() | ~given.is_finite())) | (
            pl.col(WEIGHT).is_null() & pl.col("event").is_null())
        if frame.select(bad.any()).item():
            raise InputError(source, f"weight must be a finite number (it may be empty only where an event is "
                                     f"named) ({_where(frame, bad)})")
        # A number given beside a name is the evidence, used as given: the name is dropped, so that
        # neither --event-weights nor the weights a fit chooses replace it (they act on names).
        # Said when the two disagree on a known name (a weight of 1 on every row once turned views
        # into actions unremarked); a name of one's own beside its number is the documented way.
        clash = frame.filter(given.is_not_null() & pl.col("_w").is_not_null() & (given != pl.col("_w")))
        if clash.height:
            log.warning(f"warning: {source}: {clash.height} row(s) give a {WEIGHT} other than their event's "
                        f"(e.g. {clash['event'][0]!r}, which weighs {clash['_w'][0]:g}, with {clash[WEIGHT][0]}): "
                        f"the {WEIGHT} is used and the name ignored; leave {WEIGHT} empty on rows whose name "
                        f"should count")
        frame = frame.with_columns(pl.coalesce(given, pl.col("_w")).alias(WEIGHT),
                                   pl.when(given.is_not_null()).then(None).otherwise(pl.col("event")).alias("event"))
    else:
        frame = frame.with_columns(pl.col("_w").alias(WEIGHT))
    if "position" in frame.columns:
        position = pl.col("position").cast(pl.Int64, strict=False)
        # a cast alone truncates 1.5 to 1: a position with a fractional part is refused too
        fractional = pl.col("position").cast(pl.Float64, strict=False) != position.cast(pl.Float64)
        bad = pl.col("position").is_not_null() & (position.is_null() | (position < 0) | fractional.fill_null(False))
        if frame.select(bad.any()).item():
            raise InputError(source, f"position must be a whole number >= 0 ({_where(frame, bad)})")
        frame = frame.with_columns(position.alias("position"))
    has_sessions = "session_id" in frame.columns
    session = pl.col("session_id").cast(pl.String).fill_null(NO_SESSION) if has_sessions else pl.lit(NO_SESSION)
    frame = frame.with_columns(session.alias("session_id"))
    if "prompt_id" in frame.columns:
        frame = frame.with_columns(pl.col("prompt_id").cast(pl.String))
    if embeddings is not None:
        embeddings.rows(frame["image_id"].unique(maintain_order=True), source)

    keys = ["participant_id", "image_id", "session_id", "event", WEIGHT]
    kept = [c for c in OPTIONAL if c in frame.columns and c != "session_id"]
    frame = frame.select(*keys, *kept).with_row_index("_row")  # the columns used: a user's own '_row' is not
    named = (frame.filter(pl.col("event").is_not_null()).group_by(keys, maintain_order=True)
             .agg(pl.col("_row").first(), pl.len().alias("count"), *(pl.col(c).first() for c in kept)))
    numeric = (frame.filter(pl.col("event").is_null()).group_by(keys + kept, maintain_order=True)
               .agg(pl.col("_row").first(), pl.len().alias("count")))
    merged = pl.concat([named, numeric.select(named.columns)]).sort("_row").drop("_row")
    _warn_missing_views(merged, source)
    extra = frame.height - merged.height
    if extra:
        same = ("same participant, image, session, weight, timestamp, position and prompt" if named.is_empty() else
                "same participant, image, session and event"
                + ("" if numeric.is_empty() else "; numeric weights: and timestamp, position and prompt"))
        one_session = ("" if has_sessions or named.is_empty() else
                       " (without a session_id column a person's whole log is one session: give session_id to keep "
                       "the same event on the same image at different times apart)")
        log.warning(f"warning: {source}: {merged.filter(pl.col('count') > 1).height} event row(s) appear more than "
                    f"once ({same}; {extra} extra cop(ies)); each counts once{one_session}")
    return merged.select("participant_id", "image_id", "session_id", "event", WEIGHT, "count", *kept)


def _warn_missing_views(events: pl.DataFrame, source) -> None:
    """Warn about people whose every logged image was acted on: nobody acts on everything shown,
    so the rows of the images they were shown and left (a ``view``, a numeric weight of 0, or a
    name of the user's own that weighs 0) are missing, and their choices can only be compared
    with each other."""
    if not events.select(pl.col("event").is_not_null().any()).item():
        return  # numeric weights alone: a confidence per shown image may be nonzero for every image
    # Shown: a view, a number of 0, or a name of the user's own weighing 0. A default action name
    # never counts, even when a fitted model weighs it 0 (a shared image was shown *and* acted on).
    own_zero = ~pl.col("event").is_in(list(DEFAULT_EVENTS)) & (pl.col(WEIGHT) == 0)
    shown = (pl.col("event") == "view") | (pl.col("event").is_null() & (pl.col(WEIGHT) == 0)) | own_zero
    per_person = events.group_by("participant_id", maintain_order=True).agg(
        named=pl.col("event").is_not_null().any(), shown=shown.fill_null(False).any())
    missing = per_person.filter(pl.col("named") & ~pl.col("shown"))["participant_id"]
    if len(missing):
        log.warning(f"warning: {source}: {len(missing)} person(s) acted on every image logged and have no 'view' "
                    f"row: give one 'view' row for each image shown (a choice is compared with the images shown "
                    f"beside it): {preview(missing.to_list())}")


def load_events(path: str | Path, embeddings: Embeddings | None = None,
                vocabulary: dict[str, float] | None = None) -> pl.DataFrame:
    """Read and validate an events file (see :func:`validate_events`)."""
    return validate_events(read_events(path), path, vocabulary, embeddings)


def comparing_nothing(events: pl.DataFrame, within: str = "session") -> pl.Series:
    """People whose events compare nothing under a channel centred per `within` ("session" or
    "person"): every session (or their whole log) shows a single image, so a choice has no
    alternative (typically the shown images' ``view`` rows are missing)."""
    keys = ["participant_id", "session_id"] if within == "session" else ["participant_id"]
    shown = events.group_by(keys).agg(pl.col("image_id").n_unique().alias("_n"))
    return (shown.group_by("participant_id", maintain_order=True).agg(pl.col("_n").max())
            .filter(pl.col("_n") <= 1)["participant_id"])


def without_actions(evidence_rows: pl.DataFrame) -> pl.Series:
    """People whose :func:`evidence` rows are all 0: they were shown images and did nothing with
    them (or only what weighs 0), which says no image they were shown stood out (a fold-in then
    moves their scores toward ranking those images alike, nothing more)."""
    return (evidence_rows.group_by("participant_id", maintain_order=True).agg((pl.col("evidence") != 0).any())
            .filter(~pl.col("evidence"))["participant_id"])


def no_ratings(events: pl.DataFrame) -> pl.DataFrame:
    """An empty ratings context typed like `events`: people folded in from their events alone."""
    return pl.DataFrame(schema={"participant_id": events["participant_id"].dtype,
                                "image_id": events["image_id"].dtype, "rating": pl.Int64})


def evidence(events: pl.DataFrame, weights: dict[str, float] | None = None) -> pl.DataFrame:
    """One row per (participant, image, session): the summed signed evidence ``m`` of its events.

    `weights` (event name -> signed weight, e.g. a fitted model's, chosen on validation) replace
    the weights of the named events; numeric weights are used as given. Rows keep the order of
    first appearance.
    """
    return (weighted(events, weights).group_by("participant_id", "image_id", "session_id", maintain_order=True)
            .agg(pl.col(WEIGHT).sum().alias("evidence")))


def weighted(events: pl.DataFrame, weights: dict[str, float] | None = None) -> pl.DataFrame:
    """`events` with each row's weight as it counts: `weights` replace the named events' weights."""
    if not weights:
        return events
    table = pl.DataFrame({"event": list(weights), "_k": list(weights.values())},
                         schema={"event": pl.String, "_k": pl.Float64})
    return (events.join(table, on="event", how="left", maintain_order="left")
            .with_columns(pl.coalesce(pl.col("_k"), pl.col(WEIGHT)).alias(WEIGHT)).drop("_k"))


def event_rows(events: pl.DataFrame, ids: list, embeddings: Embeddings,
               weights: dict[str, float] | None = None) -> EventRows:
    """Validated events of people `ids` as the numpy rows a fold-in reads (:class:`EventRows`).

    Parameters
    ----------
    events : polars.DataFrame
        From :func:`validate_events`; people not in `ids` are left out.
    ids : list
        The people being folded in, in the order of their states.
    embeddings : Embeddings
        Must cover the events' images.
    weights : dict, optional
        Event name -> signed weight (the model's); default the weights the table was read with.
    """
    m = evidence(events, weights)
    order = pl.DataFrame({"participant_id": pl.Series(ids, dtype=m["participant_id"].dtype, strict=False),
                          "_user": np.arange(len(ids), dtype=np.int64)})
    m = m.join(order, on="participant_id", how="inner", maintain_order="left")
    group = m.select(pl.struct("_user", "session_id").rank("dense") - 1)[:, 0].to_numpy().astype(np.int64)
    return EventRows(m["_user"].to_numpy(), group, m["evidence"].to_numpy().astype(np.float64),
                     embeddings.take(m["image_id"]))


def first_events(events: pl.DataFrame, n: int) -> pl.DataFrame:
    """Each person's first `n` event rows (by timestamp when given, else in file order)."""
    order = ["timestamp"] if "timestamp" in events.columns else []
    ranked = events.with_row_index("_i")
    if order:
        ranked = ranked.sort([*order, "_i"])
    ranked = ranked.with_columns(_rank=pl.int_range(pl.len()).over("participant_id"))
    return ranked.filter(pl.col("_rank") < n).sort("_i").drop("_i", "_rank")


def summary(events: pl.DataFrame, vocabulary: dict[str, float] | None = None) -> list[str]:
    """What a validated events table holds, as lines to print (``python -m pamela_lite.events``):
    people, shown images, sessions, each action's rate per shown image, and the people whose
    events can teach nothing (no action; or, centred per session, one image a session)."""
    events = weighted(events, vocabulary)  # once: the evidence and the actions below read the same weights
    m = evidence(events)
    people, shown = m["participant_id"].n_unique(), m.height
    sessions = events.select("participant_id", "session_id").n_unique()
    has_sessions = bool(events.select((pl.col("session_id") != NO_SESSION).any()).item())
    lines = [f"{people} people, {shown} shown image(s) (distinct person, image and session)"
             + (f", {sessions} sessions ({shown / sessions:.1f} images each)" if has_sessions
                else "; no session_id: each person's log is one session")]
    # an action is a row that weighs something (a name of one's own may weigh 0, as a view does)
    actions = (events.filter(pl.col("event").is_not_null() & (pl.col(WEIGHT) != 0))
               .group_by("event").agg(pl.len().alias("rows")).sort("rows", descending=True))
    if actions.height:
        lines.append("actions per shown image: " + ", ".join(
            f"{name} {rows / shown:.4f}" for name, rows in actions.iter_rows()))
    numeric = events.filter(pl.col("event").is_null())
    if numeric.height:
        lines.append(f"{numeric.height} row(s) of numeric weights ({(numeric[WEIGHT] != 0).sum()} nonzero)")
    quiet = without_actions(m)
    if len(quiet):
        lines.append(f"{len(quiet)} person(s) with no action (every event weighs 0): {preview(quiet.to_list())}")
    idle = comparing_nothing(events)
    if len(idle):
        lines.append(f"{len(idle)} person(s) whose every session shows one image (a choice there has no "
                     f"alternative): {preview(idle.to_list())}")
    return lines


def build_parser():
    from .cli import parser_for  # here: cli is for the command line, this module for everything

    parser = parser_for("events", "Check an events file as fit --events would (one line and exit 2 on the first "
                        "problem, warnings for what it merges) and say what it holds: people, shown images, "
                        "sessions, each action's rate per shown image, and people whose events teach nothing.",
                        "{prog} --events runs/demo_events/events.parquet --embeddings e.parquet")
    parser.add_argument("--events", type=Path, required=True, help="events table (.csv, .parquet or .json)")
    parser.add_argument("--embeddings", type=Path,
                        help="embeddings Parquet: every image must have one (default: embeddings.parquet "
                             "beside the events file, as fit --events looks for it; without one, not checked)")
    parser.add_argument("--event-weights", metavar="JSON",
                        help='signed weight of event names, added to or replacing the defaults, as for fit')
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m pamela_lite.events --events FILE``: check an events file as fit would, and summarise it."""
    from .data import EMBEDDINGS_FILE, read_embeddings

    args = build_parser().parse_args(argv)
    vocabulary = parse_event_weights(args.event_weights)
    beside = args.events.parent / EMBEDDINGS_FILE
    source = args.embeddings or (beside if beside.exists() else None)
    embeddings = read_embeddings(source) if source is not None else None
    for line in summary(load_events(args.events, embeddings, vocabulary), vocabulary):
        print(line)
    print(f"every image has an embedding in {source}" if source is not None else
          "image ids not checked: no --embeddings, and no embeddings.parquet beside the events file")
    return 0


__all__ = ["DEFAULT_EVENTS", "evidence", "first_events", "load_events", "parse_event_weights", "read_events",
           "summary", "validate_events", "LINE", "FILE"]


if __name__ == "__main__":
    import sys

    from .cli import run

    sys.exit(run(main))
