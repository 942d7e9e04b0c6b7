"""Command-line front end: score pairs with an exported ONNX scorer, ``python -m pamela_lite.score``.

Takes predict's pairs, embeddings, ``--context`` ratings and ``--people`` demographics (not its
events: people fold in from events with ``pamela_lite.predict --context-events``, or on a device
with ``EdgeScorer.fold_in``) and writes the same columns (participant_id,
image_id, score), so the two can be compared row by row — but scores with onnxruntime through
:mod:`pamela_lite.edge`, exactly as a device would. With ``--top K --user ID`` it ranks every
image of the embeddings file for one user instead (columns rank, image_id, score, utility: the
unclipped value it ranks by); with ``--cache FILE`` (from ``pamela_lite.cache``) it ranks the
cached catalogue instead, and ``--candidates M`` runs the trees on the linear part's best M only.
``--dask [ADDRESS]`` runs pairs or users x catalogue as a batch job on Dask
(:mod:`pamela_lite.distributed`; ``python -m pamela_lite.distributed --help``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import polars as pl

from .cli import (REFIT_KNOWN, Stopwatch, check_table_path, output_path, parser_for, read_new_people,
                  refuse_known_context, refuse_known_people, refuse_rating_context, run, warn_demographic_conflicts,
                  warn_unknown_demographics, write_table)
from .data import (Embeddings, Scale, near_miss_note, person_demographics, read_embeddings, read_pairs,
                   read_ratings, validate_ratings, with_demographics)
from .edge import EdgeScorer, UnknownUsers, fitted_path, users_path
from .errors import InputError, preview


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for("score", __doc__.split("\n\n")[1],
                        "{prog} --scorer runs/scorer.onnx --top 10 --user p0007 "
                        "--embeddings runs/demo_world/embeddings.parquet --out top10.csv")
    parser.add_argument("--scorer", type=Path, required=True, help="ONNX file written by pamela_lite.export")
    parser.add_argument("--embeddings", type=Path, help="embeddings Parquet (image_id, embedding); "
                                                         "not needed with --top and --cache")
    parser.add_argument("--pairs", type=Path, help="table or PAMELA JSON with participant_id, image_id")
    parser.add_argument("--context", type=Path,
                        help="ratings of new users (participant_id, image_id, rating [, age or age_binned, gender, "
                             "nationality])")
    parser.add_argument("--people", type=Path,
                        help="new people (participant_id [, age or age_binned, gender, nationality]); those not in "
                             "--context are scored from their demographics alone (k = 0), the others get these "
                             "demographics with their ratings (as predict --people)")
    parser.add_argument("--refit-known", action="store_true",
                        help="let --context replace the stored state of users the scorer already knows (not "
                             "--people: the scorer keeps no ratings, so it cannot tell who was added from demographics "
                             "alone; predict --refit-known can)")
    parser.add_argument("--user", help="with --top: the participant whose gallery ranking is wanted")
    parser.add_argument("--top", type=int, help="rank the whole embeddings file for --user and keep the best K")
    parser.add_argument("--cache", type=Path, help="with --top: rank this feature cache (pamela_lite.cache)")
    parser.add_argument("--candidates", type=int, help="with --cache: retrieval mode, trees on the linear part's "
                                                       "best M images only (approximate; see README)")
    parser.add_argument("--dask", nargs="?", const="local", metavar="ADDRESS",
                        help="batch job on Dask (a LocalCluster without ADDRESS): see python -m "
                             "pamela_lite.distributed --help for its arguments; --out is then a folder of Parquet "
                             "partitions and the job's own _* files: read the results with "
                             'pl.scan_parquet("OUT/part-*.parquet")')
    parser.add_argument("--out", type=output_path, required=True, help="output table (.csv, .parquet or .json)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    return parser


def load_scorer(path: Path) -> EdgeScorer:
    if path.is_dir():  # a model folder is not a scorer: the device reads the export
        hint = (f" (a model folder: export it first, python -m pamela_lite.export --model {path} --out scorer.onnx)"
                if (path / "model.json").is_file() else "")
        raise InputError(path, f"is a folder, not the .onnx scorer python -m pamela_lite.export wrote{hint}")
    for needed in (path, fitted_path(path), users_path(path)):
        if not needed.exists():
            raise InputError(needed, "no such file (write it with python -m pamela_lite.export)")
    try:
        return EdgeScorer(path)
    except Exception as err:  # onnxruntime raises its own types for a damaged file
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise InputError(path, f"cannot load the scorer: {first.removeprefix(f'{path}: ')}") from None


def fold_in_context(scorer: EdgeScorer, path: Path, embeddings: Embeddings, refit_known: bool = False,
                    remedy: str = REFIT_KNOWN, people: pl.DataFrame | None = None, people_source=None
                    ) -> pl.DataFrame:
    """Fold each context user in with numpy (as a device would) and remember their state; `people`
    (from --people) gives demographics over the context's own. Returns the context ratings."""
    refuse_rating_context(scorer.fitted, path)
    frame, _ = validate_ratings(read_ratings(path), path, Scale(*scorer.scale))
    refuse_known_context(frame["participant_id"], scorer.user_ids, path, refit_known, remedy)
    warn_unknown_demographics(frame, scorer.fitted.prior, path)
    rows = embeddings.rows(frame["image_id"], path)
    frame = frame.with_columns(_row=pl.Series(rows))
    if people is not None:
        warn_demographic_conflicts(frame, people, people_source)
        frame = with_demographics(frame, people)
    demographics = {str(row["participant_id"]): row for row in person_demographics(frame).iter_rows(named=True)}
    for (user,), part in frame.group_by("participant_id", maintain_order=True):
        state = _fold_in(scorer, demographics[str(user)], embeddings.matrix[part["_row"].to_numpy()],
                         part["rating"].to_numpy())
        scorer.add_user(str(user), state, replace=refit_known)
    return frame


def fold_in_people(scorer: EdgeScorer, people: pl.DataFrame, context: pl.DataFrame | None) -> None:
    """The demographic prior (k = 0) of each person in `people` without context ratings."""
    rated = set() if context is None else {str(u) for u in context["participant_id"].to_list()}
    for row in people.iter_rows(named=True):
        if str(row["participant_id"]) not in rated:
            scorer.add_user(str(row["participant_id"]), _fold_in(scorer, row, None, None))


def _fold_in(scorer: EdgeScorer, person: dict, embeddings, ratings) -> np.ndarray:
    with warnings.catch_warnings():  # unknown demographics were listed once for the file
        warnings.simplefilter("ignore", UserWarning)
        return scorer.fold_in(embeddings, ratings, age=person.get("age"), gender=person.get("gender"),
                              nationality=person.get("nationality"))


def user_states(scorer: EdgeScorer, ids: pl.Series, source: Path) -> np.ndarray:
    try:
        return scorer.states_of(ids.to_list())
    except UnknownUsers as err:
        near = near_miss_note(err.users, scorer.user_ids)
        raise InputError(source, f"{len(err.users)} participant(s) unknown to the scorer and without context "
                                 f"ratings: {preview(err.users)}{near}; pass their ratings as --context (or, with "
                                 f"nothing rated, their demographics as --people)") from None


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if any(a == "--dask" or a.startswith("--dask=") for a in given):
        from .distributed import main as dask_main  # the batch job has its own arguments
        return dask_main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.embeddings is None and (args.cache is None or args.context is not None or args.pairs is not None):
        parser.error("--embeddings is needed (with --top and --cache it may be left out, unless --context "
                     "names images that need embeddings)")
    if (args.cache is not None or args.candidates is not None) and args.top is None:
        parser.error("--cache and --candidates go with --top K")
    if args.candidates is not None and (args.cache is None or args.candidates < 1):
        parser.error("--candidates M needs M >= 1 and --cache FILE")
    if args.candidates is not None and args.top is not None and args.candidates < args.top:
        parser.error(f"--candidates {args.candidates} is below --top {args.top}: the trees must see at least K images")
    if (args.top is None) == (args.pairs is None):
        parser.error("give either --pairs FILE, or --top K with --user ID")
    if args.top is not None and (args.user is None or args.top < 1):
        parser.error("--top K needs K >= 1 and --user ID")
    check_table_path(args.out)
    watch = Stopwatch(args.quiet)
    scorer = load_scorer(args.scorer)
    embeddings = read_embeddings(args.embeddings) if args.embeddings is not None else None
    if embeddings is not None:
        scorer.fitted.check_dimension(embeddings.dim, args.embeddings)
    people = None
    if args.people is not None:
        people = read_new_people(args.people, scorer.fitted.prior)
    context = None
    if args.context is not None:
        context = fold_in_context(scorer, args.context, embeddings, args.refit_known, people=people,
                                  people_source=args.people)
        watch.step(f"folded in context users from {args.context}")
    if people is not None:
        refuse_known_people(people, scorer.user_ids, args.people, context)
        fold_in_people(scorer, people, context)
        watch.step(f"folded in {people.height} people from {args.people}")
    if args.top is not None:
        state = user_states(scorer, pl.Series([args.user]), args.context or args.scorer)[0]
        if args.cache is not None:  # two-stage: the catalogue's features were computed once
            from .cache import cached_top
            out = cached_top(scorer, args.cache, state, args.top, args.candidates)
        else:
            best, scores = scorer.top_k(state, embeddings.matrix, args.top)
            utility = scorer.score_user(state, embeddings.matrix[best], clip=False)  # the ranking value
            out = pl.DataFrame({"rank": np.arange(1, len(best) + 1), "image_id": embeddings.ids.gather(best),
                                "score": scores.astype(np.float64), "utility": utility.astype(np.float64)})
    else:
        pairs = read_pairs(args.pairs)
        image_rows = embeddings.rows(pairs["image_id"], args.pairs)
        states = user_states(scorer, pairs["participant_id"], args.pairs)
        scores = scorer.score(embeddings.matrix[image_rows], states)
        out = pairs.with_columns(score=pl.Series(scores.astype(np.float64)))
    write_table(out, args.out)
    watch.step(f"wrote {out.height} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
