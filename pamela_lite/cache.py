"""Cache a catalogue's image features for an exported scorer: ``python -m pamela_lite.cache``.

Runs the image-feature graph (written beside the scorer by ``pamela_lite.export``) once over an
embeddings file and writes the features, with the image ids, to one memory-mappable ``.npz``
(:mod:`pamela_lite.cached`). ``score --top K --cache FILE`` then ranks the catalogue for a user
without recomputing any image's features, and ``--candidates M`` ranks it by the linear part and
runs the trees on the best M only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl

from .cached import CacheError, FeatureCache, TwoStage, is_feature_cache, write_cache
from .cli import Stopwatch, output_path, parser_for, run
from .data import read_embeddings
from .edge import EdgeScorer
from .errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for("cache", __doc__.split("\n\n")[1],
                        "{prog} --scorer runs/scorer.onnx --embeddings runs/demo_world/embeddings.parquet "
                        "--out runs/catalogue.features.npz")
    parser.add_argument("--scorer", type=Path, required=True, help="ONNX file written by pamela_lite.export")
    parser.add_argument("--embeddings", type=Path, required=True, help="embeddings Parquet (image_id, embedding)")
    parser.add_argument("--out", type=output_path, required=True, help="feature cache to write (.npz)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    return parser


def load_scorer_with_stages(path: Path) -> EdgeScorer:
    """An EdgeScorer whose two-stage graphs are loaded and checked (one-line errors)."""
    from .score import load_scorer

    scorer = load_scorer(path)
    load_scorer_stages(scorer)
    return scorer


def load_scorer_stages(scorer: EdgeScorer) -> TwoStage:
    """The scorer's two-stage graphs, or one InputError naming the missing or mismatched file."""
    try:
        return scorer.stages
    except CacheError as err:
        raise InputError(err.path, err.problem) from None


def open_cache(scorer: EdgeScorer, path: Path) -> FeatureCache:
    """A feature cache file checked against `scorer`, or one InputError naming the file."""
    try:
        return scorer.load_cache(path)
    except CacheError as err:
        raise InputError(err.path, err.problem) from None


def build_cache(scorer: EdgeScorer, embeddings_path: Path, out: Path) -> FeatureCache:
    """Read, check and cache an embeddings file's features; write them to `out` atomically."""
    embeddings = read_embeddings(embeddings_path)
    scorer.fitted.check_dimension(embeddings.dim, embeddings_path)
    cache = scorer.cache_features(embeddings.matrix, embeddings.ids.to_numpy())
    write_cache(out, cache)
    return cache


def cached_top(scorer: EdgeScorer, cache_path: Path, state: np.ndarray, k: int,
               candidates: int | None = None) -> pl.DataFrame:
    """One user's top k of a cache file: rank, image_id, score, utility (as ``score --top``)."""
    stages = load_scorer_stages(scorer)
    cache = open_cache(scorer, cache_path)
    best, utility = stages.top_k(state, cache, k, candidates)
    return pl.DataFrame({"rank": np.arange(1, len(best) + 1), "image_id": cache.image_ids[best],
                         "score": np.clip(utility, *scorer.scale).astype(np.float64),
                         "utility": utility.astype(np.float64)})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out.suffix.lower() != ".npz":
        raise InputError(args.out, "a feature cache is an .npz file; name it e.g. catalogue.features.npz")
    if args.out.exists() and not is_feature_cache(args.out):  # say, a model folder's users.npz
        raise InputError(args.out, "exists and is not a feature cache: it is not replaced; choose another name")
    watch = Stopwatch(args.quiet)
    scorer = load_scorer_with_stages(args.scorer)
    cache = build_cache(scorer, args.embeddings, args.out)
    watch.step(f"wrote {args.out}: features of {len(cache):,} images ({cache.features.shape[1]} per image, "
               f"{args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
