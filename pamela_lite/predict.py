"""Score (participant, image) pairs with a fitted model: ``python -m pamela_lite.predict``.

Users known at fit time are scored from their stored state. Users in ``--context`` (ratings of
people not seen in training, same columns as a ratings table) are folded in first, without
refitting; a user who is neither known nor in the context is an error, not a silent mean.
Output columns: participant_id, image_id, score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

from .cli import Stopwatch, check_table_path, parser_for, run, write_table
from .data import Embeddings, read_embeddings, read_pairs, read_ratings, validate_ratings
from .errors import InputError
from .model import PersonalScorer


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for("predict", __doc__.split("\n\n")[1],
                        "{prog} --model runs/model --pairs pairs.csv --embeddings runs/demo_world/embeddings.parquet "
                        "--context new_user_ratings.csv --out scores.csv")
    parser.add_argument("--model", type=Path, required=True, help="model folder written by pamela_lite.fit")
    parser.add_argument("--pairs", type=Path, required=True,
                        help="table or PAMELA JSON with participant_id, image_id")
    parser.add_argument("--embeddings", type=Path, required=True, help="embeddings Parquet (image_id, embedding)")
    parser.add_argument("--context", type=Path,
                        help="ratings of new users (participant_id, image_id, rating [, age, gender, nationality])")
    parser.add_argument("--out", type=Path, required=True, help="output table (.csv, .parquet or .json)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    return parser


def check_dimension(model: PersonalScorer, embeddings: Embeddings) -> None:
    expected = model.pca_mean_.shape[0]
    if embeddings.dim != expected:
        raise InputError(embeddings.source, f"embeddings have dimension {embeddings.dim}; the model was "
                                            f"fitted on dimension {expected} (use the same encoder)")


def load_context(path: Path, model: PersonalScorer) -> pl.DataFrame:
    """Context ratings, validated against the model's scale (not the file's own range)."""
    frame, _ = validate_ratings(read_ratings(path), path, model.scale_)
    return frame


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_table_path(args.out)
    watch = Stopwatch(args.quiet)
    model = PersonalScorer.load(args.model)
    embeddings = read_embeddings(args.embeddings)
    check_dimension(model, embeddings)
    pairs = read_pairs(args.pairs)
    embeddings.rows(pairs["image_id"].unique(), args.pairs)
    states = None
    if args.context is not None:
        context = load_context(args.context, model)
        embeddings.rows(context["image_id"].unique(), args.context)
        states = model.fold_in(context, embeddings)
        watch.step(f"folded in {len(states[0])} user(s) from {context.height} context ratings")
    try:
        scores = model.predict(pairs, embeddings, states)
    except InputError as err:
        raise InputError(args.pairs, err.problem) from None
    write_table(pairs.with_columns(score=pl.Series(scores)), args.out)
    watch.step(f"scored {pairs.height} pairs → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
