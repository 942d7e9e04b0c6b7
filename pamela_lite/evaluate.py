"""Command-line front end: evaluate a model folder on a dataset, ``python -m pamela_lite.evaluate``.

Seen splits are scored directly; for unseen splits each user's ratings are split by a seeded
draw into k context ratings (folded in) and the rest (scored), for each k of ``--kshot``.
Baselines (global mean, population head, MF only) are fitted on the data's train split and shown
beside the model, with the noise ceiling when the data is the demo world.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

from ._atomic import write_text
from .cli import (Stopwatch, log, output_path, parse_kshot, parser_for, refuse_model_file, report_json, run,
                  seed_arg)
from .data import Scale, load_dataset
from .protocol import SEEN_SPLITS, UNSEEN_SPLITS, evaluate_models, format_table
from .errors import InputError
from .fit import BASELINES, fit_variants
from .model import PersonalScorer


def parse_splits(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in SEEN_SPLITS + UNSEEN_SPLITS]
    if unknown or not names:
        raise InputError(None, (f"--splits: unknown split(s) {', '.join(unknown)}; " if unknown else "--splits: ")
                         + f"names from {', '.join(SEEN_SPLITS + UNSEEN_SPLITS)}")
    return names


def present_splits(dataset, wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The wanted splits the data has; a warning names the others, an error if none is left."""
    present = tuple(name for name in wanted if dataset.has_split(name))
    has = dataset.ratings["split"].unique(maintain_order=True).to_list()
    if not present:
        raise InputError(dataset.source, f"no ratings in split(s) {', '.join(wanted)} (the data has "
                                         f"{', '.join(map(str, has))}); choose others with --splits")
    missing = [name for name in wanted if name not in present]
    if missing:
        log.warning(f"warning: {dataset.source}: no ratings in split(s) {', '.join(missing)}; evaluating "
                    f"{', '.join(present)}")
    return present


def warn_trained_on(model: PersonalScorer, dataset, splits: tuple[str, ...]) -> None:
    """Warn when evaluated ratings are ratings the model was fitted on (the model folder keeps them):
    their scores are not a test, e.g. a model fitted on a table without a split column, evaluated
    on the same rows split later."""
    kept = model.ratings_.filter(pl.col("image_id").is_not_null()).select("participant_id", "image_id")
    as_text = [pl.col("participant_id").cast(pl.String), pl.col("image_id").cast(pl.String)]
    scored = dataset.ratings.filter(pl.col("split").is_in(list(splits))).select(*as_text, "split")
    seen = scored.join(kept.select(*as_text), on=["participant_id", "image_id"], how="semi")
    if seen.height:
        log.warning(f"warning: {dataset.source}: {seen.height} of the {scored.height} ratings evaluated "
                    f"({', '.join(seen['split'].unique(maintain_order=True).to_list())}) are ratings the model was "
                    f"fitted on: their scores are not a test of it")


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for("evaluate", __doc__.split("\n\n")[1],
                        "{prog} --model runs/model --data runs/demo_world --kshot 0,10,50", defaults=True)
    parser.add_argument("--model", type=Path, required=True, help="model folder written by pamela_lite.fit")
    parser.add_argument("--data", type=Path, required=True, help="PAMELA root or ratings table")
    parser.add_argument("--embeddings", type=Path, help="embeddings Parquet; default: beside --data")
    parser.add_argument("--kshot", type=parse_kshot, default="0,10,50", help="context sizes for unseen users")
    parser.add_argument("--splits", type=parse_splits, default="test_seen,test_unseen",
                        help="splits to evaluate, comma-separated; those the data does not have are skipped "
                             "with a warning")
    parser.add_argument("--seed", type=seed_arg, default=0, help="seed of the k-shot draws and the baselines")
    parser.add_argument("--no-baselines", action="store_true",
                        help="evaluate the model alone (the data then needs no train split: its seen-split people "
                             "are the model's own users)")
    parser.add_argument("--out", type=output_path, help="also write the rows as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out:
        refuse_model_file(args.out)  # before the evaluation, not after it
    watch = Stopwatch(args.quiet)
    model = PersonalScorer.load(args.model)
    if model.fitted_.events_only:  # its scale is a preference's: every rating would be "outside the scale"
        raise InputError(args.model, "a scorer fitted on events alone (its scores are preferences, not ratings) "
                                     "cannot be evaluated on ratings: fit it with --data beside --events to compare")
    # The baselines are fitted on the data's train split; the model alone needs none.
    dataset = load_dataset(args.data, args.embeddings, Scale(*model.fitted_.scale), seed=args.seed,
                           require_train=not args.no_baselines)
    model.fitted_.check_dimension(dataset.embeddings.dim, dataset.embeddings.source)
    splits = present_splits(dataset, args.splits)
    warn_trained_on(model, dataset, splits)
    models = {} if args.no_baselines else fit_variants(BASELINES, dataset, args.seed, watch, progress=False)
    models[f"model ({args.model.name})"] = model
    rows = evaluate_models(models, dataset, args.kshot, splits=splits, seed=args.seed)
    if not rows:
        raise InputError(args.data, "nothing to score: no split holds people the model knows (seen splits) or "
                                    "people with two ratings left to rank (unseen splits); see the warnings above")
    print(format_table(rows))
    if args.out:
        write_text(args.out, report_json(rows))
    watch.step("done")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
