"""Command-line front end: fit a personal scorer and evaluate it, ``python -m pamela_lite.fit``.

Without ``--data`` or ``--events`` it writes (or reuses) the built-in demo world and fits on it,
so the whole pipeline runs on a fresh machine with no download. With ``--data`` it reads a
PAMELA root (``annotations/pamela_<split>.json``) or a ratings table, fits on ``train``,
early-stops on ``val_seen``, evaluates on ``test_seen`` and k-shot ``test_unseen``, prints a
table and writes the model folder (with ``metrics.json``) to ``--out``.

With ``--events FILE`` (an events table, :mod:`pamela_lite.events`) the fit also learns from what
people did: with ratings, the event channel's weights are chosen on val_seen (they may come out
as zero), and the training people's own events are added to their states when val_seen says they
help; without ``--data``, the scorer is fitted on the events alone (scores on a preference
scale; see :mod:`pamela_lite.event_fit`).

A user state means something only for the fit that made it. ``--refold-from OLD_MODEL`` carries
an earlier model folder's users over to the new fit: everyone OLD_MODEL keeps ratings or events
of (``ratings.parquet``, ``events.parquet``) whom the new fit is not trained on is folded in
again from them and kept by the new model; re-export it to give devices the new states.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import polars as pl

from . import __version__, demo
from ._atomic import check_replaceable, write_text
from .cli import (Stopwatch, log, output_path, parse_kshot, parser_for, report_json, run, seed_arg,
                  show_progress)
from .data import EMBEDDINGS_FILE, Scale, load_dataset, read_embeddings
from .errors import InputError, preview
from .event_fit import NothingChosen, calibrate, fit_events_only, fold_seen_events, without_scored_pairs
from .events import load_events, parse_event_weights
from .protocol import evaluate_models, format_table
from .fitted import EVENTS_FILE, RATINGS_FILE
from .model import HEAD_SETTINGS, PersonalScorer, block_price, kept_ratings_path

# The baselines every table shows beside the full model, as switches of the same estimator.
BASELINES = {
    "global mean": dict(use_bias=False, use_population=False, use_taste=False, use_mf=False, use_head=False),
    "population head": dict(use_bias=False, use_taste=False, use_mf=False, use_head=False),
    "MF only": dict(use_population=False, use_taste=False, use_head=False),
}
# Ablation on validation: what each component adds to the one before (cumulative rows), and
# what the full model loses without it (the "full - X" rows).
# The head's tree count is early-stopped on val_seen, so ablation models (scored on val_seen)
# keep the fixed tree count instead: no row is tuned on the data it is scored on.
ABLATION = {
    "population + bias": dict(use_taste=False, use_mf=False, use_head=False),
    "+ MF (implicit)": dict(use_taste=False, use_head=False),
    "+ taste, PCA-32": dict(use_head=False, taste_basis="pca"),
    "+ learned taste dirs": dict(use_head=False, use_metadata=False),
    "+ metadata dirs": dict(use_head=False),
    "+ LightGBM head": dict(),
    "full - MF": dict(use_mf=False),
    "full - learned dirs": dict(taste_rank=0),
    "full - metadata dirs": dict(use_metadata=False),
    "full - EM prior": dict(taste_prior="moment"),
    "full - linear taste": dict(use_taste=False),
}
FULL = "pamela_lite (full)"


def head_settings_given(params: dict) -> bool:
    """Whether --params sets any of the residual head's settings (then the tuner leaves it alone)."""
    return any(name in params for name in HEAD_SETTINGS)


def parse_params(text: str) -> dict:
    """``--params`` JSON: an object whose keys are PersonalScorer hyperparameters (checked here)."""
    try:
        params = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(None, f"--params is not valid JSON ({err.msg})") from None
    if not isinstance(params, dict):
        raise InputError(None, "--params must be a JSON object of name: value")
    known = set(PersonalScorer().get_params()) - {"random_state", "progress", "n_threads"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InputError(None, f"--params: unknown hyperparameter(s) {unknown}; known: {sorted(known)}")
    try:
        PersonalScorer(**params)._check_params()
    except InputError as err:
        raise InputError(None, f"--params: {err.problem}") from None
    return params


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for("fit", __doc__.split("\n\n")[1],
                        "{prog} --data /data/PAMELA --out runs/pamela", defaults=True)
    parser.add_argument("--data", type=Path,
                        help="PAMELA root or ratings table (.csv/.parquet/.json); default: the demo world "
                             "(with --events: none, the scorer is fitted on the events alone)")
    parser.add_argument("--embeddings", type=Path,
                        help="embeddings Parquet (image_id, embedding); default: embeddings.parquet beside "
                             "--data (without --data: beside --events)")
    parser.add_argument("--out", type=output_path, default="runs/model", help="model folder to write")
    parser.add_argument("--seed", type=seed_arg, default=0, help="seed for the model, the demo and k-shot draws")
    parser.add_argument("--scale", type=Scale.parse,
                        help="rating scale LOW-HIGH such as 1-5 (a negative low end: --scale=-3-3); default: the "
                             "data's range")
    parser.add_argument("--kshot", type=parse_kshot, default="0,10,50",
                        help="context sizes for users unseen in training")
    parser.add_argument("--demo-dir", type=Path, default=Path("runs/demo_world"),
                        help="where the demo world is written when --data is not given")
    parser.add_argument("--ablation", action="store_true",
                        help="also fit the cumulative ablation and report it on validation")
    parser.add_argument("--no-baselines", action="store_true", help="skip the baseline models")
    parser.add_argument("--params", default="{}",
                        help='model hyperparameters as JSON, e.g. \'{"n_components": 48, "taste_rank": 16}\' '
                             "(names as in PersonalScorer; recorded in model.json). whiten_dim caps the embedding "
                             "directions searched for taste; its default, null, searches all of them, so taste in "
                             "an encoder's lowest-variance directions is found. gain_bin (default 32) weighs each "
                             "searched direction by how much taste its bin of that many neighbours shows; "
                             '\'{"gain_bin": 0}\' turns the weighting off, which did better where taste sits in one '
                             "band and people are few (benchmarks/results/gain_ablation.md)")
    parser.add_argument("--no-tune", action="store_true",
                        help="fit as the hyperparameters say, choosing nothing: by default val_seen chooses the "
                             "residual head's size (a larger head is also fitted, about 1.5x the fit time, and "
                             "kept only if it ranks the known users' validation images clearly better; recorded in "
                             "model.json under 'tuning'; without val_seen ratings of known people the head is not "
                             "tuned, a progress line says so), and the out-of-fold training ratings choose 8 "
                             "principal components instead of n_components when they rank better by 0.002 (the "
                             "taste model is fitted twice; the choice is in metrics.json, the count used in "
                             "model.json under 'taste_coordinates'). Head settings given in --params turn both "
                             "choices off")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for BLAS, OpenMP, implicit and LightGBM (1 measured fastest on a 2-core "
                             "machine shared with other work: 2 threads took 3x longer)")
    parser.add_argument("--refold-from", type=Path, metavar="OLD_MODEL",
                        help="model folder of an earlier fit: every user it keeps whom this fit does not train on "
                             "(e.g. people added with predict --add-to-model) is folded in again from their kept "
                             "ratings and events and kept by the new model (states of one fit mean nothing to "
                             "another)")
    parser.add_argument("--events", type=Path,
                        help="events table (participant_id, image_id, event or weight [, timestamp, session_id, "
                             "prompt_id, position]); with --data its weights are chosen on val_seen (and the training "
                             "people's own events join their states if val_seen says they help), without "
                             "--data the scorer is fitted on the events alone; a numeric weight is used as given "
                             "(your own signed confidence), not replaced by --event-weights or fitted event weights")
    parser.add_argument("--event-weights", metavar="JSON",
                        help='signed weight of event names, added to or replacing the defaults '
                             '(view 0, save 1, download 2, share 3, skip -0.5, regenerate -0.5, dislike -2), '
                             'e.g. \'{"like": 1.5}\'')
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    return parser


def fit_on_events_only(args, watch: Stopwatch) -> int:
    """``fit --events FILE`` without ``--data``: a scorer from events alone (pamela_lite.event_fit)."""
    vocabulary = parse_event_weights(args.event_weights)
    beside = args.events.parent / EMBEDDINGS_FILE
    if args.embeddings is None and not beside.exists():  # the default, which the user may not know they asked for
        raise InputError(beside, f"no such file (the embeddings looked for beside {args.events}); "
                                 f"pass --embeddings FILE")
    embeddings = read_embeddings(args.embeddings or beside)
    events = load_events(args.events, embeddings, vocabulary)
    people = events["participant_id"].n_unique()
    if people < 2:  # one person's choices say nothing about what people share: the fit would be degenerate
        raise InputError(args.events, f"events of {people} person; fitting on events alone needs at least two "
                                      f"people (or fit on ratings with --data and fold this person in with "
                                      f"predict --context-events)")
    watch.step(f"read {events.height} events of {people} people (no ratings: fitting on the events alone)")
    start = time.perf_counter()
    try:
        model = fit_events_only(events, embeddings, args.params, args.seed, vocabulary, args.threads)
    except NothingChosen as err:
        raise InputError(args.events, str(err)) from None
    report = {"events": str(args.events), "seed": args.seed, "fit_seconds": round(time.perf_counter() - start, 2),
              "people": len(model.users_), "event_channel": model.fitted_.events.to_json()}
    model.save(args.out, extra_files={"metrics.json": report_json(report)})
    watch.step(f"fitted on the events of {len(model.users_)} people in {report['fit_seconds']}s; scores are on a "
               f"preference scale (-1..1): rank by them")
    judged, strength = model.fitted_.events.report.get("strength", {}), model.fitted_.events.strength
    if "note" in judged:
        watch.step(f"a person's events weigh {strength:g} against the population: {judged['note']}")
    elif "srocc_by_strength" in judged:
        watch.step(f"a person's events weigh {strength:g} against the population, chosen on "
                   f"{judged.get('chosen_on', 'held-out sessions')} of {judged['people']} people (SROCC of their "
                   f"choices {judged['srocc_by_strength']['0.0']:.4f} with no events; best {judged['gain']:+.4f} +- {judged['gain_se']:.4f}: "
                   f"{'kept' if judged['accepted'] else 'not two standard errors better, so events get no weight'})")
    watch.step(f"wrote the model and metrics.json to {args.out}")
    return 0


def demo_stamp(seed: int) -> str:
    """What a demo world depends on: the seed and the generator (package version + demo.py's source)."""
    generator = hashlib.sha256(Path(demo.__file__).read_bytes()).hexdigest()[:16]
    return f"seed {seed}; pamela_lite {__version__}; generator {generator}"


def ensure_demo(folder: Path, seed: int) -> Path:
    """The demo world at `folder`, written once per seed and generator version (it is deterministic).
    Rewriting a world of another seed or generator is warned: its image ids stay, its embeddings
    change, so models fitted on the old world would score them unwarned."""
    stamp = folder / "demo_seed.txt"
    held = stamp.read_text().strip() if stamp.exists() else None
    if held != demo_stamp(seed):
        if held is not None:
            log.warning(f"warning: {folder}: held a demo world of {held or 'an unknown generator'}; rewritten for "
                        f"{demo_stamp(seed)} (models fitted on the old one no longer match its embeddings; "
                        f"--demo-dir keeps worlds apart)")
        demo.write_world(folder, demo.DemoConfig(seed=seed))
        write_text(stamp, demo_stamp(seed))
    return folder


def fit_variants(variants: dict, dataset, seed: int, watch: Stopwatch, progress: bool,
                 threads: int | None = None, params: dict | None = None, early_stop: bool = True) -> dict:
    """Fit one PersonalScorer per entry of `variants` (name -> switches) on the train split."""
    train = dataset.split("train")
    val = dataset.split("val_seen") if early_stop else None
    val = val if val is not None and val.height else None  # no val_seen rows: nothing to early-stop or tune on
    models = {}
    for name, switches in variants.items():
        t0 = time.perf_counter()
        settings = {**(params or {}), **switches}
        models[name] = PersonalScorer(random_state=seed, progress=progress, n_threads=threads, **settings).fit(
            train, dataset.embeddings, dataset.scale, validation=val)
        watch.step(f"fitted {name} in {time.perf_counter() - t0:.1f}s")
    return models


def read_refold_source(folder: Path) -> PersonalScorer:
    """The model in `folder` whose users a fit folds in again, read before the fit so a folder
    that cannot serve fails in seconds. The kept ratings file is looked for before the rest: its
    message says what a folder written before models kept ratings lacks (load then reads it). Kept
    rows edited since are not warned about: the fit solves everyone from them again (and checks them)."""
    if folder.is_dir() and not (folder / "model.json").exists():
        raise InputError(folder, "not a model folder (no model.json): --refold-from takes a folder written by fit")
    kept_ratings_path(folder)
    return PersonalScorer.load(folder, check_kept=False)


def check_refold_images(source: PersonalScorer, dataset, folder: Path, with_events: bool) -> None:
    """Before the fit: every image of the kept people it will fold in again (those not in its
    training ratings) has an embedding here, and their ratings lie on this fit's scale; a missing
    image or an outside rating is blamed on the kept file that names it. Kept events are read only
    by a fit with events."""
    trained = dataset.split("train")["participant_id"].cast(pl.String).unique().implode()
    rated = source.ratings_.filter(~pl.col("participant_id").cast(pl.String).is_in(trained)
                                   & pl.col("rating").is_not_null())
    odd = rated.filter(~pl.col("rating").cast(pl.Float64).is_finite() | (pl.col("rating") != pl.col("rating").round()))
    if odd.height:  # a model folder keeps whole ratings only: the file was changed by hand or damaged
        raise InputError(folder / RATINGS_FILE, f"{odd.height} kept rating(s) are not whole numbers "
                                                f"({preview(odd['rating'].to_list(), 3)}): the file is damaged")
    scale = dataset.scale
    outside = rated.filter((pl.col("rating") < scale.low) | (pl.col("rating") > scale.high))
    if outside.height:
        who = outside["participant_id"].unique(maintain_order=True).to_list()
        low, high = min(scale.low, int(outside["rating"].min())), max(scale.high, int(outside["rating"].max()))
        raise InputError(folder / RATINGS_FILE, f"{outside.height} kept rating(s) of {len(who)} person(s) to fold in "
                                                f"again ({preview(who)}) lie outside this fit's scale {scale}: "
                                                f"give {'--scale=' if low < 0 else '--scale '}{low}-{high}")
    kept = [(source.ratings_, RATINGS_FILE)] + ([(source.events_, EVENTS_FILE)] if with_events else [])
    for table, name in kept:
        # (a person added from events alone keeps a ratings row without an image)
        refolded = table.filter(~pl.col("participant_id").cast(pl.String).is_in(trained) & pl.col("image_id").is_not_null())
        if refolded.height:
            dataset.embeddings.rows(refolded["image_id"].unique(maintain_order=True), folder / name)


def refold(model: PersonalScorer, source: PersonalScorer, old: Path, embeddings, watch: Stopwatch) -> None:
    """Fold in again, against `model`, the users whose ratings and events the model `source` (read
    from folder `old`) keeps and `model` was not fitted on."""
    kept, kept_events = source.ratings_, source.events_  # their images: check_refold_images
    try:
        ids = model.refold(kept, embeddings, kept_events)
    except InputError as err:
        raise InputError(err.source or old / RATINGS_FILE, err.problem) from None
    watch.step(f"folded in again {len(ids)} user(s) kept by {old} that this fit was not trained on "
               f"(the {len(model.users_) - len(ids)} it was trained on have states from this fit)")
    with_events = kept_events.filter(pl.col("participant_id").is_in([str(u) for u in ids]))["participant_id"]
    if with_events.len() and (model.fitted_.events is None or model.fitted_.events.strength == 0):
        why = ("which this fit cannot use (it was fitted without --events)" if model.fitted_.events is None else
               "to which this fit gives no weight (validation did not keep its event channel)")
        print(f"warning: {with_events.n_unique()} of them were added from their events, {why}: they are folded "
              f"in from their ratings or demographics alone; their events stay in the model folder for a later "
              f"fit", file=sys.stderr)
    lost = {str(u) for u in source.users_} - {str(u) for u in model.users_}
    if lost:
        print(f"warning: {len(lost)} user(s) of {old} have no kept ratings or events to fold in again from "
              f"(the people of a fit on events alone, say) and are not in the new model", file=sys.stderr)


def report_own_events(model: PersonalScorer, seen: dict, rows: list[dict], dataset, seed: int, report: dict) -> str:
    """The line saying what became of the training people's own events (event_fit.fold_seen_events).
    The table printed above scored the states fitted on ratings; when the events were added,
    test_seen is scored again with the states the folder keeps (into
    ``report["test_seen_with_own_events"]``)."""
    if "srocc_with_events" not in seen:
        return f"training people's own events not judged: {seen.get('note', 'nothing to judge')}"
    judged = (f"val_seen SROCC {seen['srocc_without_events']:.4f} -> {seen['srocc_with_events']:.4f} over "
              f"{seen['people']} people, gain {seen['gain']:+.4f} +- {seen['gain_se']:.4f}")
    if not seen["kept"]:
        return f"training people's own events not added to their states ({judged}: not two standard errors better)"
    moved = evaluate_models({FULL: model}, dataset, (0,), splits=("test_seen",), seed=seed)
    report["test_seen_with_own_events"] = moved
    before = next((r["srocc"] for r in rows if r["model"] == FULL and r["split"] == "test_seen"), float("nan"))
    after = next((r["srocc"] for r in moved if r["model"] == FULL), float("nan"))
    return (f"training people's own events added to their states ({judged}); test_seen SROCC {before:.4f} -> "
            f"{after:.4f} (the table above is without them; the model folder keeps them)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.params = parse_params(args.params)
    check_replaceable(args.out, "model.json", "model")  # before the work, not after it
    source = read_refold_source(args.refold_from) if args.refold_from is not None else None
    watch = Stopwatch(args.quiet)
    if args.threads is not None and args.threads < 1:
        raise InputError(None, "--threads takes a number >= 1")
    if args.event_weights is not None and args.events is None:
        raise InputError(None, "--event-weights needs --events (the events table they weigh)")
    if args.events is not None and args.data is None:
        return fit_on_events_only(args, watch)
    vocabulary = parse_event_weights(args.event_weights)
    if args.data is None:
        data = ensure_demo(args.demo_dir, args.seed)
        watch.step(f"demo world ready in {data}")
    else:
        data = args.data
    dataset = load_dataset(data, args.embeddings, args.scale, seed=args.seed)
    # the events are checked before the fit, so a bad file costs seconds, not a whole fit
    events = None if args.events is None else load_events(args.events, dataset.embeddings, vocabulary)
    if events is not None:
        rated = dataset.split("train")["participant_id"].cast(pl.String).unique().implode()
        unrated = events.filter(~pl.col("participant_id").cast(pl.String).is_in(rated))["participant_id"].n_unique()
        if unrated == events["participant_id"].n_unique():  # the model would be fitted as if no events were given
            train_ids = dataset.split("train")["participant_id"]
            raise InputError(args.events, f"none of its {unrated} people has training ratings in {data} (its ids "
                                          f"such as {events['participant_id'][0]!r}, theirs such as "
                                          f"{train_ids[0]!r}): check the ids, or fit on the events alone (--events "
                                          f"without --data)")
        if unrated:  # their events choose nothing and fit nothing: the model is fitted on ratings
            log.warning(f"warning: {args.events}: {unrated} person(s) with events but no training ratings are "
                        f"left out (fold them in with predict --context-events, or fit on the events alone)")
        held_out = dataset.ratings.filter(pl.col("split").is_in(["val_seen", "test_seen"]))
        events, leaking = without_scored_pairs(events, held_out)
        if leaking:
            log.warning(f"warning: {args.events}: {leaking} event(s) on images the same person rated in val_seen or "
                        f"test_seen are left out (they would tell validation and the test those ratings)")
    if source is not None:
        check_refold_images(source, dataset, args.refold_from, with_events=events is not None)
    counts = dataset.ratings.group_by("split").len().sort("split")
    watch.step(f"read {dataset.ratings.height} ratings (scale {dataset.scale}) and "
               f"{dataset.embeddings.matrix.shape[0]} embeddings of dimension {dataset.embeddings.dim}: "
               + ", ".join(f"{s}={n}" for s, n in counts.iter_rows()))

    fit_start = time.perf_counter()
    if args.no_tune:
        args.params["tune"] = False
    elif "tune" not in args.params and head_settings_given(args.params):
        args.params["tune"] = False  # head settings you chose are used as given, not replaced by the tuner
    full = fit_variants({FULL: {}}, dataset, args.seed, watch, show_progress(args.quiet), args.threads,
                        args.params)[FULL]
    fit_seconds = time.perf_counter() - fit_start
    if full.taste_basis == "learned":
        known, learned, metadata, searched = full.taste_dimensions()
        chosen = full.principal_choice_
        why = ("" if chosen is None else
               f"; chosen on out-of-fold training ratings of {chosen['users']} people: per-user SROCC of the base "
               + ", ".join(f"{k} components {v:.4f}" for k, v in chosen["out_of_fold_srocc"].items())
               + f", the smaller block needed a gain of {chosen['gain_needed']:.4f}")
        watch.step(f"taste coordinates: the top {known} principal components + {learned} learned directions "
                   f"(searched among {searched} whitened embedding directions)"
                   + (f" + {sum(metadata.values())} metadata directions" if metadata else "") + why)
        if full.metadata_evidence_:
            fields = ", ".join((f"{field} kept, {metadata[field]} directions" if field in metadata else f"{field} dropped")
                               + f" ({gain:+.1f})" for field, gain in full.metadata_evidence_.items())
            watch.step(f"image metadata, by the log-likelihood each field's block adds (kept above "
                       f"{block_price(len(full.users_)):.1f}): {fields}")
    if full.fitted_.tuning is None and full.use_head:
        why = ("--no-tune, or head settings given in --params" if not full.tune else
               "val_seen has no known people with enough ratings (5+, not all equal) to rank")
        watch.step(f"residual head not tuned ({why}): {full._booster().num_trees()} trees (of at most "
                   f"{full.head_trees}, as set) of at most {full.head_leaves} leaves")
    if full.fitted_.tuning is not None:
        chosen = full.fitted_.tuning
        watch.step(f"tuned on val_seen: kept the {chosen['head']} residual head (per-user SROCC "
                   + ", ".join(f"{k} {v:.3f}" for k, v in chosen["validation_srocc"].items())
                   + f"; the larger head needed a gain of {chosen['gain_needed']:.4f} over "
                   f"{chosen['validation_users']} people, it gained {chosen['gain']:+.4f})")
    models = {} if args.no_baselines else fit_variants(BASELINES, dataset, args.seed, watch, False, args.threads)
    models[FULL] = full

    rows = evaluate_models(models, dataset, args.kshot, seed=args.seed)
    watch.step("evaluated on the test splits")
    report = {"data": str(data), "scale": str(dataset.scale), "seed": args.seed, "threads": full._threads(),
              "fit_seconds": round(fit_seconds, 2), "test": rows}
    print(format_table(rows))
    if args.ablation:
        ablation = fit_variants(ABLATION, dataset, args.seed, watch, False, args.threads, args.params,
                                early_stop=False)
        val_rows = evaluate_models(ablation, dataset, args.kshot, splits=("val_seen", "val_unseen"), seed=args.seed)
        report["ablation_validation"] = val_rows
        print("\nablation on validation (each row adds one component):")
        print(format_table(val_rows))

    if events is not None:
        calibration_start = time.perf_counter()
        channel = calibrate(full, events, dataset.split("train"), dataset.split("val_seen"), dataset.embeddings,
                            vocabulary, args.seed)
        # fit_seconds is the rating model's fit; choosing the event channel is timed on its own
        report["event_channel_seconds"] = round(time.perf_counter() - calibration_start, 2)
        found = channel.report
        least = (f"; where events help least (k = 0 or 10 ratings) {found['gain']:+.4f} +- {found['gain_se']:.4f}"
                 if "gain" in found else "")
        if "note" in found:  # too few people to choose on: the warning said why
            watch.step("event channel not kept: too few people to choose its weight on (the warning above)")
        else:
            watch.step(f"event channel chosen on val_seen over {found.get('users', 0)} people: strength "
                       f"{channel.strength:g}, centred per {channel.within} (SROCC "
                       f"{found.get('srocc_without_events')} without events, {found.get('srocc_with_events')} with"
                       f"{least}: {'kept' if channel.strength else 'not kept, it must be two standard errors above 0'})")
        seen = fold_seen_events(full, events, dataset.split("train"), dataset.split("val_seen"), dataset.embeddings)
        report["event_channel"] = full.fitted_.events.to_json()
        watch.step(report_own_events(full, seen, rows, dataset, args.seed, report))
    if source is not None:
        refold(full, source, args.refold_from, dataset.embeddings, watch)
    found = full.catalogue_report_
    report["catalogue"] = found
    report["principal_components"] = full.principal_choice_
    if full.fitted_.catalogue is not None:
        kept = full.fitted_.catalogue
        watch.step(f"kept per-image catalogue corrections for {len(kept.image_ids)} training images ({found['factors']} "
                   f"factors, penalty {found['penalty']:g}, size x{found['scale']:g}; validation error on such images "
                   f"{found['validation_mse']['without']} -> {found['validation_mse']['with']} over "
                   f"{found['validation_rows']} ratings; predict applies them, the exported ONNX scorer does not)")
    else:
        watch.step(f"no per-image catalogue corrections: {found['reason']}")
    full.save(args.out, extra_files={"metrics.json": report_json(report)})
    watch.step(f"wrote the model and metrics.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
