"""Evaluate models on a world of the zoo, beside references that know the world's truth.

Four protocols, all with per-user SROCC / PLCC / pairwise accuracy (``metrics.evaluate_scores``):

``test_seen``
    Fit on train (early-stopping on val_seen), score test_seen of the users seen in training.
``test_unseen``
    The test_unseen users (about 7 in PAMELA: a noisy number), k-shot: k of each user's ratings
    are context (``protocol.kshot_split``, folded in without refitting), the rest are scored;
    the mean over `draws` seeded draws of the context (one draw for k = 0).
``pseudo_unseen``
    A seeded `holdout` share (20%) of the seen users is removed from training entirely (their
    train ratings and their val_seen ratings leave the fit and the early stopping); the model
    is refitted without them. Each held-out user then folds in k ratings drawn from their own
    (removed) train ratings, and is scored on their val_seen + test_seen ratings — images no
    one rated in training (in PAMELA-protocol worlds), the same query for every k and draw.
    About 40 new users instead of 7: a much less noisy unseen-user figure.
``users_cv``
    Leave-users-out cross-validation over every seen user (off by default: one refit per
    fold). The seen users are split into `n_folds` seeded groups; each group is held out as in
    ``pseudo_unseen`` while the model is refitted on the others, and every user with val_seen or
    test_seen ratings is scored once, as a new user. Scored rows are pooled over the folds before
    the per-user means, so a figure covers all seen users (about 190 in PAMELA) rather than one
    20% draw of them.

Reference rows on the same query rows: ``true-taste ridge`` (``worlds.TasteRidge``: per-user
ridge on the world's true image features, fitted on the same training / context ratings) and
``noise ceiling`` (the true expected rating).

Example::

    from pamela_lite import worlds
    from pamela_lite.model import PersonalScorer
    from pamela_lite.world_eval import evaluate_world

    world = worlds.make("lowvar")
    rows = evaluate_world({"full": lambda seed: PersonalScorer(random_state=seed)},
                          worlds.dataset(world), worlds.WorldTruth.from_world(world))
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import polars as pl

from .data import Dataset, person_demographics
from .protocol import ceiling_rows, kshot_split
from .metrics import evaluate_scores
from .worlds import TasteRidge, WorldTruth

RIDGE = "true-taste ridge"
CEILING = "noise ceiling"
METRICS = ("srocc", "plcc", "pairwise_acc", "mae", "rmse")


def pseudo_unseen_split(dataset: Dataset, holdout: float = 0.2, seed: int = 0):
    """Hold a seeded share of the seen users out of training.

    Returns
    -------
    train, validation : polars.DataFrame
        train and val_seen without the held-out users (what the model is fitted on).
    pool : polars.DataFrame
        The held-out users' train ratings, from which k-shot context is drawn.
    query : polars.DataFrame
        The held-out users' val_seen + test_seen ratings, which are scored.
    """
    users = _seen_users(dataset)
    rng = np.random.default_rng([seed, 7919])
    n_out = max(1, round(holdout * len(users)))
    return _hold_out(dataset, users.gather(np.sort(rng.choice(len(users), n_out, replace=False))))


def user_folds(dataset: Dataset, n_folds: int = 5, seed: int = 0):
    """Leave-users-out folds over every seen user: yields, for each of `n_folds` seeded groups,
    ``(train, validation, pool, query)`` with that group held out (as :func:`pseudo_unseen_split`).

    Every seen user is in exactly one group; group sizes differ by at most one. A bad `n_folds`
    is refused here, before any fold is fitted.
    """
    users = _seen_users(dataset)
    check_folds(n_folds, len(users))
    order = np.random.default_rng([seed, 104729]).permutation(len(users))
    return (_hold_out(dataset, users.gather(np.sort(group))) for group in np.array_split(order, n_folds))


def check_folds(n_folds: int, n_users: int) -> None:
    """Leave-users-out needs at least 2 folds and no more folds than seen users."""
    if not 2 <= n_folds <= n_users:
        raise ValueError(f"n_folds must be between 2 and the {n_users} seen users, not {n_folds}")


def _seen_users(dataset: Dataset) -> pl.Series:
    return dataset.split("train")["participant_id"].unique().sort()


def _hold_out(dataset: Dataset, held: pl.Series):
    out = pl.col("participant_id").is_in(held.implode())
    train = dataset.split("train")
    seen_rest = dataset.ratings.filter(pl.col("split").is_in(["val_seen", "test_seen"]))
    return (train.filter(~out), dataset.split("val_seen").filter(~out),
            train.filter(out), seen_rest.filter(out))


def _factories(model_factory) -> dict[str, Callable[[int], object]]:
    if isinstance(model_factory, dict):
        return dict(model_factory)
    return {"model": model_factory}


def _metrics(scored: pl.DataFrame) -> dict:
    return evaluate_scores(scored)


def _mean_rows(parts: list[dict]) -> dict:
    out = {m: float(np.nanmean([p[m] for p in parts])) for m in METRICS}
    out["srocc_sd_draws"] = float(np.std([p["srocc"] for p in parts])) if len(parts) > 1 else 0.0
    out["n_users"] = int(round(np.mean([p["n_users"] for p in parts])))
    out["n_ratings"] = int(round(np.mean([p["n_ratings"] for p in parts])))
    out["context_mean"] = float(np.mean([p.get("context_mean", 0.0) for p in parts]))
    out["draws"] = len(parts)
    return out


def _fit_all(factories, train, validation, dataset, truth, seed):
    models, fit_s = {}, {}
    for name, factory in factories.items():
        t = time.perf_counter()
        models[name] = factory(seed).fit(train, dataset.embeddings, dataset.scale, validation=validation)
        fit_s[name] = time.perf_counter() - t
    ridge = TasteRidge(truth).fit(train, validation) if truth is not None else None
    return models, fit_s, ridge


def _scored_all(models, ridge, dataset, query, context=None, users=None) -> dict[str, pl.DataFrame]:
    """`query` scored by every model and reference (after folding in `context` if given)."""
    out = {}
    for name, model in models.items():
        states = None if context is None else model.fold_in(context, dataset.embeddings, users=users)
        out[name] = query.with_columns(score=pl.Series(model.predict(query, dataset.embeddings, states),
                                                       dtype=pl.Float64))
    if ridge is not None:
        states = None if context is None else ridge.fold_in(context, users)
        out[RIDGE] = query.with_columns(score=pl.Series(ridge.predict(query, states), dtype=pl.Float64))
    ceiling = ceiling_rows(dataset, query.with_columns(score=pl.lit(0.0)))
    if ceiling is not None:
        out[CEILING] = ceiling
    return out


def _score_all(models, ridge, dataset, query, context=None, users=None) -> dict[str, dict]:
    """Metrics of every model and reference on `query` (after folding in `context` if given),
    with the context ratings per scored user."""
    out = {name: _metrics(frame) for name, frame in _scored_all(models, ridge, dataset, query, context, users).items()}
    if context is not None:
        n_users = query["participant_id"].n_unique()
        ctx = float(_scored_context(context, query) / n_users) if n_users else 0.0
        for m in out.values():
            m["context_mean"] = ctx
    return out


def _scored_context(context: pl.DataFrame, query: pl.DataFrame) -> int:
    """Context rows of the users who are scored (a user with context but nothing left to score
    does not count toward the context per scored user)."""
    return context.filter(pl.col("participant_id").is_in(query["participant_id"].unique().implode())).height


def cross_validate_users(model_factory, dataset: Dataset, world_truth: WorldTruth | None = None,
                         kshots=(0, 10, 100), draws: int = 10, n_folds: int = 5, seed: int = 0,
                         log: Callable[[str], None] | None = None):
    """Leave-users-out cross-validation: every seen user scored once as a new user.

    For each fold of :func:`user_folds` the models (and the true-taste ridge, given
    `world_truth`) are refitted without the fold's users, who then fold in k of their own train
    ratings (seeded draw d uses seed + d, as in ``pseudo_unseen``) and are scored on their
    val_seen + test_seen ratings (a user without any is held out but not scored).

    Returns
    -------
    scored : dict
        ``{(k, draw): {name: frame}}``: the scored rows of every fold, concatenated (columns of
        the ratings plus ``score``); one draw for k = 0.
    context : dict
        ``{(k, draw): context rows per scored user}``.
    fit_s : dict
        Mean fit seconds per model over the folds.
    """
    folds = user_folds(dataset, n_folds, seed)  # refuses a bad n_folds before any fit
    return _held_out_scores(_factories(model_factory), dataset, world_truth, folds, kshots, draws, seed,
                            log or (lambda message: None))


def _held_out_scores(factories, dataset, world_truth, holdouts, kshots, draws, seed, say):
    """New-user scores of people held out of training: for each ``(train, validation, pool,
    query)`` of `holdouts` the models are refitted on `train` and the held-out people fold in k of
    their `pool` ratings per seeded draw; the scored `query` rows are pooled over the hold-outs.
    Returns what :func:`cross_validate_users` does."""
    parts: dict = {}
    context_rows: dict = {}
    fit_total: dict = {}
    n_users = n_holdouts = 0
    for train, validation, pool, query in holdouts:
        models, fit_s, ridge = _fit_all(factories, train, validation, dataset, world_truth, seed)
        for name, seconds in fit_s.items():
            fit_total[name] = fit_total.get(name, 0.0) + seconds
        users = person_demographics(query)
        n_users, n_holdouts = n_users + users.height, n_holdouts + 1
        say(f"refit without {users.height} users ({', '.join(f'{n} {s:.1f}s' for n, s in fit_s.items())})")
        for k in kshots:
            for d in range(1 if k == 0 else draws):
                context, _ = kshot_split(pool, k, seed + d)
                for name, frame in _scored_all(models, ridge, dataset, query, context, users).items():
                    parts.setdefault((k, d), {}).setdefault(name, []).append(frame)
                context_rows[(k, d)] = context_rows.get((k, d), 0) + _scored_context(context, query)
    scored = {key: {name: pl.concat(frames) for name, frames in by_name.items()} for key, by_name in parts.items()}
    context_mean = {key: rows / max(n_users, 1) for key, rows in context_rows.items()}
    return scored, context_mean, {name: total / max(n_holdouts, 1) for name, total in fit_total.items()}


def _pooled_rows(world, protocol, kshots, draws, scored, context_mean, fit_s) -> list[dict]:
    """Rows of a held-out protocol from :func:`_held_out_scores`: metrics per draw, then means."""
    rows = []
    for k in kshots:
        per_draw = []
        for d in range(1 if k == 0 else draws):
            metrics = {name: _metrics(frame) for name, frame in scored[(k, d)].items()}
            for m in metrics.values():
                m["context_mean"] = context_mean[(k, d)]
            per_draw.append(metrics)
        rows += _rows(world, protocol, k, per_draw, fit_s)
    return rows


def _rows(world, protocol, k, per_draw: list[dict], fit_s: dict) -> list[dict]:
    rows = []
    for name in per_draw[0]:
        agg = _mean_rows([d[name] for d in per_draw])
        rows.append({"world": world, "protocol": protocol, "k": k, "model": name, **agg,
                     "fit_s": fit_s.get(name)})
    return rows


def evaluate_world(model_factory, dataset: Dataset, world_truth: WorldTruth | None = None,
                   kshots=(0, 10, 100), draws: int = 5, seed: int = 0, holdout: float = 0.2,
                   protocols=("test_seen", "test_unseen", "pseudo_unseen"), world: str | None = None,
                   log: Callable[[str], None] | None = None, n_folds: int = 5) -> list[dict]:
    """Evaluate one or more models on one world; one row per (protocol, k, model).

    Parameters
    ----------
    model_factory : callable or dict of name -> callable
        ``factory(seed)`` returns an unfitted model with ``fit(train, embeddings, scale,
        validation=...)``, ``predict(pairs, embeddings, states)`` and ``fold_in(context,
        embeddings, users=...)`` — the public API of ``PersonalScorer``.
    dataset : Dataset
        The world (``worlds.dataset(world)`` or ``data.load_dataset(folder)``); with
        ``dataset.truth`` the noise ceiling is reported.
    world_truth : WorldTruth, optional
        Adds the ``true-taste ridge`` reference.
    kshots, draws, seed, holdout
        k values for unseen users, seeded context draws per k (k = 0: one), base seed (models
        get it as random_state; draw d uses seed + d), held-out share of seen users.
    protocols
        Any of "test_seen", "test_unseen", "pseudo_unseen" and "users_cv" (`n_folds` folds).

    Returns
    -------
    list of dict
        Keys: world, protocol, k (None for test_seen), model, srocc, plcc, pairwise_acc, mae,
        rmse (means over draws), srocc_sd_draws, n_users, n_ratings, context_mean (context
        ratings per scored user), draws, fit_s (None for references).
    """
    factories = _factories(model_factory)
    world = world or dataset.source
    say = log or (lambda message: None)
    if "users_cv" in protocols:  # before the other protocols' fits, not after them
        check_folds(n_folds, len(_seen_users(dataset)))
    rows: list[dict] = []
    if "test_seen" in protocols or "test_unseen" in protocols:
        models, fit_s, ridge = _fit_all(factories, dataset.split("train"), dataset.split("val_seen"),
                                        dataset, world_truth, seed)
        say(f"{world}: fitted {', '.join(f'{n} {s:.1f}s' for n, s in fit_s.items())}")
        if "test_seen" in protocols and dataset.has_split("test_seen"):
            query = dataset.split("test_seen").filter(pl.col("participant_id").is_in(dataset.split("train")["participant_id"].unique().implode()))
            rows += _rows(world, "test_seen", None, [_score_all(models, ridge, dataset, query)], fit_s)
        if "test_unseen" in protocols and dataset.has_split("test_unseen"):
            frame = dataset.split("test_unseen")
            users = person_demographics(frame)
            for k in kshots:
                per_draw = []
                for d in range(1 if k == 0 else draws):
                    context, query = kshot_split(frame, k, seed + d)
                    if query.height:
                        per_draw.append(_score_all(models, ridge, dataset, query, context, users))
                if per_draw:
                    rows += _rows(world, "test_unseen", k, per_draw, fit_s)
    if "pseudo_unseen" in protocols:
        held = [pseudo_unseen_split(dataset, holdout, seed)]
        rows += _pooled_rows(world, "pseudo_unseen", kshots, draws, *_held_out_scores(
            factories, dataset, world_truth, held, kshots, draws, seed, lambda m: say(f"{world}: pseudo-unseen {m}")))
    if "users_cv" in protocols:
        rows += _pooled_rows(world, "users_cv", kshots, draws, *cross_validate_users(
            factories, dataset, world_truth, kshots, draws, n_folds, seed, log=lambda m: say(f"{world}: users_cv {m}")))
    return rows
