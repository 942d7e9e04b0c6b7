"""Command-line front end: score (participant, image) pairs with a model folder, ``python -m pamela_lite.predict``.

Users known at fit time are scored from their stored state. Users in ``--context`` (ratings of
people not seen in training, same columns as a ratings table) are folded in first, without
refitting; so are people in ``--context-events`` (what they did: an events table, see
:mod:`pamela_lite.events`), from their events alone or with their ratings, and people in
``--people`` (participant_id and demographics) with nothing rated yet, from the demographic prior
(k = 0). A user who is neither known nor given is an error, not a silent mean.
Output columns: participant_id, image_id, score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

from .cli import (REFIT_KNOWN, Stopwatch, check_table_path, log, output_path, parser_for, read_new_people,
                  refuse_known_context, refuse_known_people, refuse_rating_context, run, warn_demographic_conflicts,
                  warn_unknown_demographics, write_table)
from .data import (Scale, id_type_note, near_miss_note, read_embeddings, read_pairs, read_ratings, validate_ratings,
                   with_demographics)
from .errors import InputError, preview
from .events import comparing_nothing, evidence, load_events, no_ratings, without_actions
from .fitted import MODEL_FILES
from .model import FROM_EVENTS, PersonalScorer


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for("predict", __doc__.split("\n\n")[1],
                        "{prog} --model runs/model --pairs pairs.csv --embeddings runs/demo_world/embeddings.parquet "
                        "--context new_user_ratings.csv --out scores.csv")
    parser.add_argument("--model", type=Path, required=True, help="model folder written by pamela_lite.fit")
    parser.add_argument("--pairs", type=Path, required=True,
                        help="table or PAMELA JSON with participant_id, image_id")
    parser.add_argument("--embeddings", type=Path, required=True, help="embeddings Parquet (image_id, embedding)")
    parser.add_argument("--context", type=Path,
                        help="ratings of new users (participant_id, image_id, rating [, age or age_binned, gender, "
                             "nationality])")
    parser.add_argument("--context-events", type=Path,
                        help="events of new users (participant_id, image_id, event or weight [, session_id, ...]), "
                             "folded in with the model's event channel, alone or with --context; a numeric weight is "
                             "used as given (your own signed confidence), not replaced by the fitted event weights")
    parser.add_argument("--people", type=Path,
                        help="new people (participant_id [, age or age_binned, gender, nationality]); those with "
                             "nothing in --context / --context-events are scored from their demographics alone "
                             "(k = 0: what the model expects of anyone like them), the others get these "
                             "demographics with their ratings or events")
    parser.add_argument("--refit-known", action="store_true",
                        help="let --context / --context-events replace the stored state of users the model "
                             "already knows (with --add-to-model, also the ratings and events it kept of them), and "
                             "--people correct the demographics of people it knows from demographics alone")
    parser.add_argument("--no-catalogue", action="store_true",
                        help="score every image by its embedding alone, as the exported ONNX scorer does (by "
                             "default images rated at fit time get the model's per-image correction, if it kept one)")
    parser.add_argument("--add-to-model", action="store_true",
                        help="also keep the --context / --context-events / --people users in the model folder (their "
                             "states, ratings and events), so later predict and export know them and a refit "
                             "folds them in again")
    parser.add_argument("--out", type=output_path, required=True, help="output table (.csv, .parquet or .json)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    return parser


def load_context_events(path: Path, model: PersonalScorer, model_path, embeddings, refit_known: bool = False,
                        remedy: str = REFIT_KNOWN) -> pl.DataFrame:
    """New people's events, read with the model's event weights; people the model knows are refused
    unless `refit_known`, and a model fitted without events is refused (it has no weights)."""
    if model.fitted_.events is None:
        raise InputError(model_path, "this model was fitted without --events, so it has no event weights: "
                                     "refit it with --events to fold people in from their events")
    events = load_events(path, embeddings, model.fitted_.events.weights)
    refuse_known_context(events["participant_id"], model.users_, path, refit_known, remedy)
    return events


def warn_idle_events(events: pl.DataFrame, model: PersonalScorer, model_path, path: Path) -> None:
    """Warn, once per kind, about new people's events that cannot change a score: a channel the
    fit gave no weight, people whose events hold no action, people whose events compare nothing."""
    channel = model.fitted_.events
    if channel.strength <= 0:
        log.warning(f"warning: {model_path}: the fit gave events no weight (validation found they did not "
                    f"help; metrics.json's event_channel says by how much), so {path} changes no score")
        return
    quiet = without_actions(evidence(events, channel.weights))
    if len(quiet):
        # Not "no change": a shown image is an observation even unacted on (implicit's confident 0), so
        # a log without actions says the person preferred none of the images shown to another.
        log.warning(f"warning: {path}: the events of {len(quiet)} person(s) hold no action (every event weighs 0 "
                    f"under the model's event weights): they say only that nothing shown stood out, so their "
                    f"scores move toward ranking the images they were shown alike: {preview(quiet.to_list())}")
    idle = comparing_nothing(events, channel.within)
    if len(idle):
        log.warning(f"warning: {path}: the events of {len(idle)} person(s) compare nothing "
                    f"(every {'session' if channel.within == 'session' else 'log'} shows one "
                    f"image: give a 'view' row for each image shown), so they change no score: "
                    f"{preview(idle.to_list())}")


def load_context(path: Path, model: PersonalScorer, refit_known: bool = False, remedy: str = REFIT_KNOWN
                 ) -> pl.DataFrame:
    """Context ratings, validated against the model's scale (not the file's own range).

    Users the model already knows are refused unless `refit_known`; gender and nationality
    values the model never saw are reported once (they count as unknown).
    """
    refuse_rating_context(model.fitted_, path)
    frame, _ = validate_ratings(read_ratings(path), path, Scale(*model.fitted_.scale))
    refuse_known_context(frame["participant_id"], model.users_, path, refit_known, remedy)
    prior = model.fitted_.prior
    warn_unknown_demographics(frame, prior, path)
    return frame


def add_to_model(model: PersonalScorer, context: pl.DataFrame, embeddings, folder: Path,
                 events: pl.DataFrame | None = None, people: pl.DataFrame | None = None) -> None:
    """Keep context users (their ratings, events and demographics) in the model folder (atomically;
    the folder's other files are kept as they are)."""
    model.add_users(context, embeddings, users=people, events=events)
    others = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name not in MODEL_FILES}
    model.save(folder, extra_files=others)


def known_from_demographics_alone(model: PersonalScorer) -> frozenset[str]:
    """Ids (text) of the people the model knows from demographics alone (kept without a rating or
    an event: added with --people)."""
    kept = model.ratings_.group_by("participant_id").agg(
        bare=pl.col("image_id").is_null().all() & (pl.col("origin") != FROM_EVENTS).all())
    return frozenset(kept.filter("bare")["participant_id"].cast(pl.String).to_list())


def _count_without_ratings_or_events(ids: list, context: pl.DataFrame, events: pl.DataFrame | None) -> int:
    """How many of the folded-in `ids` have neither ratings nor events."""
    given = {str(u) for f in (context, events) if f is not None for u in f["participant_id"].to_list()}
    return sum(str(u) not in given for u in ids)


def lookup_ids(pairs: pl.DataFrame, *others: pl.Series) -> pl.DataFrame:
    """Pairs whose participant ids compare with the model's and the context's: as text if any side is.

    Text is never read as a number, so "077" and "77" stay two people (see data.comparable_ids).
    """
    if pairs["participant_id"].dtype != pl.String and any(o.dtype == pl.String for o in others):
        return pairs.with_columns(pl.col("participant_id").cast(pl.String))
    return pairs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_table_path(args.out)
    if args.add_to_model and args.context is None and args.context_events is None and args.people is None:
        raise InputError(None, "--add-to-model needs --context, --context-events or --people (the users to add)")
    watch = Stopwatch(args.quiet)
    model = PersonalScorer.load(args.model)
    embeddings = read_embeddings(args.embeddings)
    model.fitted_.check_dimension(embeddings.dim, embeddings.source)
    pairs = read_pairs(args.pairs)
    embeddings.rows(pairs["image_id"].unique(), args.pairs)
    states, others = None, [pl.Series(model.users_)]
    events = None
    if args.context_events is not None:
        events = load_context_events(args.context_events, model, args.model, embeddings, args.refit_known)
        warn_idle_events(events, model, args.model, args.context_events)
        others.append(events["participant_id"])
    prior = model.fitted_.prior
    people = read_new_people(args.people, prior) if args.people is not None else None
    if args.context is not None or events is not None or people is not None:
        if args.context is not None:
            context = load_context(args.context, model, args.refit_known)
            embeddings.rows(context["image_id"].unique(), args.context)
            others.append(context["participant_id"])
        else:
            context = no_ratings(events if events is not None else people.with_columns(image_id=pl.lit(None, pl.String)))
        if people is not None:
            refuse_known_people(people, model.users_, args.people, context, events,
                                from_demographics=known_from_demographics_alone(model), refit_known=args.refit_known)
            others.append(people["participant_id"])
            if context.height:  # kept with their ratings, so a refit folds them in alike
                warn_demographic_conflicts(context, people, args.people)
                context = with_demographics(context, people)
        states = model.fold_in(context, embeddings, users=people, events=events)
        watch.step(f"folded in {len(states[0])} user(s) from {context.height} context ratings"
                   + (f" and {events.height} events" if events is not None else "")
                   + (f" ({_count_without_ratings_or_events(states[0], context, events)} from demographics alone)"
                      if people is not None else ""))
    try:
        scores = model.predict(lookup_ids(pairs, *others), embeddings, states, catalogue=not args.no_catalogue)
    except InputError as err:
        known = pl.concat([o.cast(pl.String) for o in others])
        missing = pairs.filter(~pl.col("participant_id").cast(pl.String).is_in(known.implode()))["participant_id"]
        note = (id_type_note(pairs["participant_id"], others[0], "the model", missing) + near_miss_note(missing, known)
                if "unknown" in err.problem else "")
        raise InputError(args.pairs, err.problem + note) from None
    write_table(pairs.with_columns(score=pl.Series(scores)), args.out)
    watch.step(f"scored {pairs.height} pairs → {args.out}")
    if args.add_to_model:
        add_to_model(model, context, embeddings, args.model, events, people)
        watch.step(f"kept {len(states[0])} context user(s) and their "
                   + ("ratings and events" if context.height and events is not None else
                      "events" if events is not None else "ratings" if context.height else "demographics")
                   + f" in {args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
