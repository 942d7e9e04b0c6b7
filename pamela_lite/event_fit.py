"""Fitting the implicit-feedback channel: event weights chosen on validation, or a scorer from events alone.

Two ways a fit uses events (``python -m pamela_lite.fit --events FILE``):

* **with ratings** (:func:`calibrate`): the rating model is fitted as always; then the event
  channel's numbers (:class:`pamela_lite.event_channel.EventChannel`: strength, gain, confidence
  scale alpha, whether a rejection is preference -1, whether the intercept profiled out is a
  session's or the person's, each event's weight) are chosen by the per-user SROCC on validation
  ratings (``val_seen``) of training users folded in from their events plus k of their own training
  ratings (k = 0 and 10: the new-user regime events are for), against the same fold-in without
  events. Candidates are compared by their mean gain over the context sizes, among those that
  lower none (compared by the gain where they help least, a demo world's session log once got a
  channel no better with 10 ratings and much worse with none). The best is
  kept only if its gain over "no events" exceeds two standard errors (paired over users) at the
  context size where it helps least; otherwise strength is 0 and events change nothing. A stream with
  no taste in it thus gets no weight, by validation. Then (:func:`fold_seen_events`) the
  training people's own events are added to their fitted states if that is two standard errors
  better on the same validation ratings.
* **events alone** (:func:`fit_events_only`): no rating exists, so the scorer is fitted on the
  events themselves. Each shown image becomes a pseudo-observation, the confidence-weighted,
  session-centred preference ``p~`` (what the person chose against what was shown beside it; the
  target of a channel centred per session, which an events-only scorer's channel is), and the
  population head and the taste on the principal components (with the EM taste prior; no factor
  model, no residual head: :data:`EVENTS_ONLY`) are fitted on those. Scores are then on a
  preference scale (-1..1), not a rating scale: rank by them. New people fold in from events with
  gain 1 (the units the scorer was fitted in) and the strength held-out sessions of the log choose
  (:func:`_held_out_strength`; 0, the population alone, unless events predict the held-out choices).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import polars as pl

from .data import Embeddings, Scale
from .event_channel import EventChannel, EventRows
from .events import DEFAULT_EVENTS, WEIGHT, event_rows, no_ratings
from .model import KEPT_COLUMNS, PersonalScorer, _demographic_columns, _users_table
from .protocol import kshot_split

log = logging.getLogger("pamela_lite")

STRENGTHS = (0.03, 0.1, 0.3, 1.0)
GAINS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # times the spread of the training ratings (rare actions need large ones)
ALPHAS = (0.3, 3.0)  # tried after the default 1.0
MULTIPLIERS = (0.0, 0.5, 2.0)  # each event's weight times these, tried one event at a time
CONTEXTS = (0, 10)
MAX_USERS = 400
ALONE_STRENGTHS = (0.0, 0.1, 0.3, 1.0, 3.0)  # a person's events against the population, tried on held-out sessions
MIN_JUDGED_PEOPLE = 10  # fewer people scored on held-out sessions: two standard errors mean little
# Events alone: principal taste coordinates (the learned directions need ratings' noise to be
# told from taste), the EM taste prior, no head (nothing to early-stop on). A plain ridge prior
# (taste_prior="isotropic", shrinkage 10) let a new person's events pull their state far past what
# they support: in a trial on the demo and lowvar worlds, 200 events ranked held-out people below
# what the same scorer gave them with no event. The EM prior sets each taste coordinate's spread
# from the training people's states. What it reaches: benchmarks/implicit_feedback.py, the row
# "scorer fitted on events alone".
EVENTS_ONLY = dict(taste_basis="pca", taste_prior="empirical", taste_shrinkage=10.0, use_mf=False, use_head=False)


class _Rows:
    """Events of a set of people, aggregated once, whose evidence any event weights give quickly."""

    def __init__(self, events: pl.DataFrame, ids: list, embeddings: Embeddings, fitted):
        order = pl.DataFrame({"participant_id": pl.Series(ids, dtype=events["participant_id"].dtype, strict=False),
                              "_user": np.arange(len(ids), dtype=np.int64)})
        named = sorted(set(events["event"].drop_nulls().unique().to_list()))
        grouped = (events.join(order, on="participant_id", how="inner")
                   .group_by("_user", "image_id", "session_id", maintain_order=True)
                   .agg(*(pl.col("event").eq(name).any().alias(f"_has_{name}") for name in named),
                        pl.when(pl.col("event").is_null()).then(pl.col(WEIGHT)).otherwise(0.0).sum().alias("_num")))
        self.names = named
        # Events given only as numeric weights have no names (and no per-event weights to tune).
        self.presence = (grouped.select(f"_has_{n}" for n in named).to_numpy().astype(np.float64) if named
                         else np.zeros((grouped.height, 0)))
        self.numeric = grouped["_num"].to_numpy().astype(np.float64)
        group = grouped.select(pl.struct("_user", "session_id").rank("dense") - 1)[:, 0].to_numpy().astype(np.int64)
        rows = embeddings.take(grouped["image_id"])
        self.base = EventRows(grouped["_user"].to_numpy(), group, self.numeric, rows, fitted.image_features(rows))

    def rows(self, weights: dict[str, float]) -> EventRows:
        vector = np.array([weights.get(n, 0.0) for n in self.names])
        return replace(self.base, evidence=self.presence @ vector + self.numeric)


def _per_user_srocc(query: pl.DataFrame, scores: np.ndarray) -> np.ndarray:
    frame = query.select("participant_id", "rating").with_columns(score=pl.Series(scores, dtype=pl.Float64))
    stats = (frame.group_by("participant_id", maintain_order=True)
             .agg(pl.len().alias("n"), pl.col("rating").std().alias("spread"), pl.col("score").std().alias("sspread"),
                  pl.corr("rating", "score", method="spearman").alias("srocc"))
             .filter((pl.col("n") >= 5) & (pl.col("spread") > 0)))
    return stats.select(pl.when(pl.col("sspread") > 0).then(pl.col("srocc")).otherwise(0.0).fill_nan(0.0))[:, 0].to_numpy()


def candidate_rank(scores: np.ndarray, base: np.ndarray) -> float:
    """How :func:`calibrate` ranks a channel by its per-user validation SROCC (contexts x users)
    against "no events" (`base`): by the mean gain over context sizes; a channel that lowers any
    ranks below every one that lowers none (by its worst gain: acceptance asks every size to gain)."""
    gains = (np.asarray(scores) - np.asarray(base)).mean(axis=1)
    return float(gains.mean()) if gains.min() >= 0 else float(gains.min()) - 1.0


def calibrate(model: PersonalScorer, events: pl.DataFrame, train: pl.DataFrame, validation: pl.DataFrame,
              embeddings: Embeddings, vocabulary: dict[str, float] | None = None, seed: int = 0) -> EventChannel:
    """Choose the event channel of a model fitted on ratings, on validation ratings (module docstring).

    Parameters
    ----------
    model : PersonalScorer
        Fitted on `train`; its ``fitted_.events`` is set to the result.
    events : polars.DataFrame
        Validated events (:func:`pamela_lite.events.validate_events`); those of training users
        who also have validation ratings are used.
    train, validation : polars.DataFrame
        The model's training ratings and ``val_seen``.
    embeddings : Embeddings
        Cover the events' and the ratings' images.
    vocabulary : dict, optional
        Event name -> signed weight to start from (default :data:`pamela_lite.events.DEFAULT_EVENTS`).
    seed : int
        Seed of the k-rating context draws.

    Returns
    -------
    EventChannel
        With ``report`` holding the validation SROCC without and with events and the choice.
    """
    vocabulary = dict(DEFAULT_EVENTS if vocabulary is None else vocabulary)
    fitted = model.fitted_
    fitted.events = channel = EventChannel(vocabulary, 1.0, 0.0, 1.0,
                                           {"mode": "ratings + events", "chosen_on": "val_seen"})
    with_events = set(events["participant_id"].cast(pl.String).unique().to_list())
    with_val = set(validation["participant_id"].cast(pl.String).unique().to_list())
    ids = [u for u in model.users_ if str(u) in with_events and str(u) in with_val][:MAX_USERS]
    if len(ids) < 5:
        channel.report["note"] = f"only {len(ids)} training user(s) with events and validation ratings: events get no weight"
        log.warning(f"warning: {channel.report['note']}")
        return channel
    keep = pl.Series([str(u) for u in ids], dtype=pl.String).implode()
    query = validation.filter(pl.col("participant_id").cast(pl.String).is_in(keep))
    mine = train.filter(pl.col("participant_id").cast(pl.String).is_in(keep))
    users_table = _users_table(mine, ids)
    demographics = _demographic_columns(users_table)
    rows = _Rows(events.filter(pl.col("participant_id").cast(pl.String).is_in(keep)), ids, embeddings, fitted)
    position = {str(u): k for k, u in enumerate(ids)}
    contexts = []
    for k in CONTEXTS:
        context, _ = kshot_split(mine, k, seed)
        index = np.array([position[str(u)] for u in context["participant_id"].to_list()], dtype=np.int64)
        contexts.append((index, context["rating"].to_numpy().astype(np.float64), embeddings.take(context["image_id"])))

    def score(candidate: EventChannel) -> np.ndarray:
        """Per-user validation SROCC, one row per context size."""
        fitted.events = candidate
        event_rows = rows.rows(candidate.weights)
        out = []
        for index, y, emb in contexts:
            states = fitted.fold_in(index, len(ids), y, emb, *demographics, events=event_rows)
            out.append(_per_user_srocc(query, model.predict(query, embeddings, (list(ids), states))))
        return np.stack(out)

    spread = float(train["rating"].std())
    base = score(replace(channel, strength=0.0))

    def ranked(scores):
        return candidate_rank(scores, base)

    best, best_scores = None, None
    for strength in STRENGTHS:
        for gain in GAINS:
            candidate = replace(channel, strength=strength, gain=gain * spread)
            scores = score(candidate)
            if best is None or ranked(scores) > ranked(best_scores):
                best, best_scores = candidate, scores
    for alpha in ALPHAS:
        scores = score(replace(best, alpha=alpha))
        if ranked(scores) > ranked(best_scores):
            best, best_scores = replace(best, alpha=alpha), scores
    for gain in GAINS:  # rejections as negative preferences: the targets change scale, so gain is tried again
        candidate = replace(best, signed=True, gain=gain * spread)
        scores = score(candidate)
        if ranked(scores) > ranked(best_scores):
            best, best_scores = candidate, scores
    for signed in (False, True):  # an intercept per person: sessions are compared with each other too
        for gain in GAINS:
            candidate = replace(best, within="person", signed=signed, gain=gain * spread)
            scores = score(candidate)
            if ranked(scores) > ranked(best_scores):
                best, best_scores = candidate, scores
    for name in rows.names:
        if vocabulary.get(name, 0.0) == 0.0:
            continue
        for factor in MULTIPLIERS:
            weights = {**best.weights, name: vocabulary[name] * factor}
            scores = score(replace(best, weights=weights))
            if ranked(scores) > ranked(best_scores):
                best, best_scores = replace(best, weights=weights), scores
    by_size = (best_scores - base).mean(axis=1)
    gain = (best_scores - base)[int(np.argmin(by_size))]  # the context size where events help least
    se = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("inf")
    accepted = gain.mean() > 2 * se
    chosen = best if accepted else replace(best, strength=0.0, signed=False, within="session")
    chosen.report = {**channel.report, "users": len(ids), "contexts": list(CONTEXTS),
                     "srocc_without_events": round(float(base.mean()), 4),
                     "srocc_with_events": round(float(best_scores.mean()), 4),
                     "gain": round(float(gain.mean()), 4), "gain_se": round(se, 4),
                     "gain_by_context": [round(float(v), 4) for v in by_size], "accepted": bool(accepted)}
    fitted.events = chosen
    return chosen


def fold_seen_events(model: PersonalScorer, events: pl.DataFrame, train: pl.DataFrame, validation: pl.DataFrame,
                     embeddings: Embeddings) -> dict:
    """Add the training people's own events to their fitted states, if validation says they help.

    A person's events move only the linear taste (the channel's intercept is profiled out), by
    what folding in their training ratings *with* their events gives over folding in the same
    ratings *without* them; the rest of the fitted state stays. The moved states replace
    ``model.user_states_`` only when they beat the fitted ones on the per-user SROCC of
    validation ratings by more than two standard errors (paired over people), the rule
    :func:`calibrate` keeps a channel by; so a person's own events never make their scores worse
    on validation. Run after :func:`calibrate` (a channel with strength 0 changes nothing).

    Parameters
    ----------
    model : PersonalScorer
        Fitted on `train`, with its event channel chosen.
    events : polars.DataFrame
        Validated events; those of the model's training people are used.
    train, validation : polars.DataFrame
        The model's training ratings and ``val_seen``.
    embeddings : Embeddings
        Cover the events' and the ratings' images.

    Returns
    -------
    dict
        What was compared and whether the moved states were kept (also under ``seen_people`` in
        the report of ``model.fitted_.events``, which is replaced by a copy that carries it).
    """
    channel = model.fitted_.events
    if channel is None:
        return {"kept": False, "note": "the model has no event channel"}

    def judged(report: dict) -> dict:  # recorded in a new channel: reports are not shared between channels
        model.fitted_.events = replace(channel, report={**channel.report, "seen_people": report})
        return report

    if channel.strength == 0:
        return judged({"kept": False, "note": "the event channel was not kept"})
    # ids compared as text (ratings and events may type them differently), as the rows are matched below
    text = pl.col("participant_id").cast(pl.String)
    with_events = events.select(text.unique())["participant_id"]
    mine = train.with_columns(text).filter(pl.col("participant_id").is_in(with_events.implode()))
    theirs = events.with_columns(text).filter(pl.col("participant_id").is_in(mine["participant_id"].implode()))
    query = validation.filter(text.is_in(theirs["participant_id"].implode()))
    if not query.height:
        return judged({"kept": False, "people": 0, "note": "no training person has both events and validation ratings"})
    # Both fold-ins list the same people in the same order (those of `mine`; `theirs` adds nobody).
    without, moved = model.fold_in(mine, embeddings), model.fold_in(mine, embeddings, events=theirs)
    position = {str(u): k for k, u in enumerate(model.users_)}
    rows = np.array([position[u] for u in without[0]], dtype=np.int64)
    fitted_states = model.user_states_
    candidate = fitted_states.copy()
    shift = np.asarray(moved[1], np.float64) - np.asarray(without[1], np.float64)
    candidate[rows] = (fitted_states[rows] + shift).astype(fitted_states.dtype)
    before = _per_user_srocc(query, model.predict(query, embeddings))
    model.user_states_ = candidate
    after = _per_user_srocc(query, model.predict(query, embeddings))
    gain = after - before
    se = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("inf")
    kept = bool(gain.mean() > 2 * se)
    if not kept:
        model.user_states_ = fitted_states
    return judged({"kept": kept, "people": len(gain), "srocc_without_events": round(float(before.mean()), 4),
                   "srocc_with_events": round(float(after.mean()), 4), "gain": round(float(gain.mean()), 4),
                   "gain_se": round(se, 4)})


def without_scored_pairs(events: pl.DataFrame, scored: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """`events` less those on an image the same person rated in `scored` (held-out ratings), and how
    many were left out: such an event would tell validation or the test what the rating says."""
    text = [pl.col("participant_id").cast(pl.String).alias("_p"), pl.col("image_id").cast(pl.String).alias("_i")]
    kept = (events.with_columns(*text)
            .join(scored.select(*text).unique(), on=["_p", "_i"], how="anti", maintain_order="left")
            .drop("_p", "_i"))
    return kept, events.height - kept.height


def preference_rows(events: pl.DataFrame, alpha: float = 1.0) -> pl.DataFrame:
    """Per (participant, image, session): the confidence-weighted, session-centred preference ``p~``.

    Sessions with one shown image compare nothing and are left out. Columns participant_id,
    image_id, session_id, rating (= p~).
    """
    from .events import evidence

    m = evidence(events)
    pref = (pl.col("evidence") > 0).cast(pl.Float64)
    conf = 1.0 + alpha * pl.col("evidence").abs()
    keys = ["participant_id", "session_id"]
    return (m.with_columns(_p=pref, _c=conf)
            .with_columns(rating=pl.col("_p") - (pl.col("_c") * pl.col("_p")).sum().over(keys) / pl.col("_c").sum().over(keys),
                          _n=pl.len().over(keys))
            .filter(pl.col("_n") > 1)
            .select("participant_id", "image_id", "session_id", "rating"))


def _fit_on_choices(chosen: pl.DataFrame, embeddings: Embeddings, settings: dict, vocabulary: dict) -> PersonalScorer:
    """The events-only image side (population head, taste map and prior) fitted on `chosen`
    (:func:`choice_rows`), with a channel of strength 1 and gain 1 (its units)."""
    model = PersonalScorer(**settings)
    model._fit(chosen.drop("session_id"), embeddings, Scale(-1, 1), None)  # preferences: not whole ratings
    model.fitted_.blend = np.array([1.0, 1.0])  # no rating to fit a blend on: taste and factors count as they are
    model.fitted_.events = EventChannel(vocabulary, 1.0, 1.0, 1.0,
                                        {"mode": "events only", "pseudo_observations": chosen.height})
    return model


def _halves(events: pl.DataFrame, seed: int) -> pl.Series:
    """Per event row, whether it falls in its person's first half (the rest is held out).

    A person's sessions are sorted by id and permuted with the seed, and the first half of them
    (at least one) is theirs to learn from, so everyone with two sessions or more appears on
    both sides whatever the order of the rows. A person with a single session (a log without
    session ids) is split by row order instead: the first half of their rows (by timestamp when
    given) against the rest.
    """
    rng = np.random.default_rng(seed)
    frame = events.with_row_index("_row")
    sessions = frame.select("participant_id", "session_id").unique().sort("participant_id", "session_id")
    sessions = sessions.with_columns(_n=pl.len().over("participant_id"))
    draw = pl.Series(rng.random(sessions.height))  # a seeded order of each person's sessions
    sessions = sessions.with_columns(_key=draw).with_columns(
        _first=(pl.col("_key").rank("ordinal").over("participant_id") <= pl.col("_n") // 2))
    frame = frame.join(sessions.select("participant_id", "session_id", "_first", "_n"),
                       on=["participant_id", "session_id"], how="left")
    order = ["timestamp", "_row"] if "timestamp" in events.columns else ["_row"]
    frame = frame.sort(order).with_columns(_position=pl.int_range(pl.len()).over("participant_id"))
    alone = pl.col("_position") < pl.len().over("participant_id") // 2  # a single session: its first rows
    frame = frame.with_columns(_split=pl.when(pl.col("_n") > 1).then(pl.col("_first")).otherwise(alone))
    return frame.sort("_row")["_split"]


def _held_out_strength(events: pl.DataFrame, embeddings: Embeddings, settings: dict, vocabulary: dict,
                       seed: int) -> tuple[float, dict]:
    """The strength of a person's events against the population that held-out sessions choose
    (there is no rating to choose it on), and what was measured.

    Each person's log is split in two (:func:`_halves`). A scorer fitted on the first halves alone
    folds people in from them at each of :data:`ALONE_STRENGTHS` and is scored on the choices of
    the second halves (per-person SROCC of the score against the session-centred preference
    ``p~``), on images the person was not shown in their first half; nothing of the second halves
    is fitted on (with them in the image side, random choices passed). Strength 0 is the
    population alone: a strength is kept only when, on the mean over at least
    :data:`MIN_JUDGED_PEOPLE` people, it beats that by two standard errors (paired over people),
    the rule :func:`calibrate` keeps a channel by; otherwise events get no weight. The strength is
    chosen on a scorer fitted on about half of each log and applied to the one fitted on all of
    it. It is a check on the log, not on ratings: a log whose choices are consistent for reasons
    other than taste passes it.
    """
    split = _halves(events, seed)
    first, second = events.filter(split), events.filter(~split)
    # a person's second half is renamed apart from the first when both are one session (no session ids)
    second = second.with_columns(pl.col("session_id") + "#held-out")
    seen = first.select("participant_id", "image_id").unique()
    query = (choice_rows(second).join(seen, on=["participant_id", "image_id"], how="anti")
             .filter(pl.col("participant_id").is_in(first["participant_id"].unique().implode())))
    chosen = choice_rows(first)
    if chosen["participant_id"].n_unique() < 2 or not query.height:
        return 0.0, {"note": "no held-out choices to judge events by: events get no weight", "accepted": False}
    model = _fit_on_choices(chosen, embeddings, settings, vocabulary)
    fitted, scores = model.fitted_, {}
    # The first halves' event rows and their features, once for every strength (as calibrate does).
    ids = first["participant_id"].unique(maintain_order=True).to_list()
    rows = event_rows(first, ids, embeddings, vocabulary)
    rows.features = fitted.image_features(rows.embeddings)
    demographics = _demographic_columns(_users_table(first.select("participant_id"), ids))
    nothing = np.zeros((0, fitted.embedding_dim), dtype=np.float32)
    channel = fitted.events
    for strength in ALONE_STRENGTHS:
        fitted.events = replace(channel, strength=strength)
        states = fitted.fold_in(np.zeros(0, dtype=np.int64), len(ids), np.zeros(0), nothing, *demographics,
                                events=rows)
        scores[strength] = _per_user_srocc(query, model.utility(query, embeddings, (ids, states)))
    people = len(scores[0.0])
    if people < MIN_JUDGED_PEOPLE:
        return 0.0, {"note": f"{people} people with enough held-out choices (fewer than {MIN_JUDGED_PEOPLE}): "
                             f"events get no weight", "people": people, "accepted": False}
    best = max(ALONE_STRENGTHS[1:], key=lambda k: scores[k].mean())
    gain = scores[best] - scores[0.0]
    se = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("inf")
    accepted = bool(gain.mean() > 2 * se)
    per_person = events.group_by("participant_id").agg(pl.col("session_id").n_unique())["session_id"]
    single = int((per_person == 1).sum())  # people split by row order: their log is one session
    chosen_on = ("held-out later halves of each log (one session a person)" if single == len(per_person) else
                 "held-out sessions" if not single else
                 f"held-out sessions (later halves of the log for the {single} people with one session)")
    return (best if accepted else 0.0), {
        "chosen_on": chosen_on,
        "people": int(len(gain)),
        "srocc_by_strength": {str(k): round(float(v.mean()), 4) for k, v in scores.items()},
        "gain": round(float(gain.mean()), 4), "gain_se": round(se, 4), "accepted": accepted}


class NothingChosen(ValueError):
    """Events alone in which no session shows a choice: an events-only scorer has nothing to learn."""


NOTHING_CHOSEN = ("no session shows a choice (an image with positive evidence, such as a save or a download, "
                  "beside one without): events alone have nothing to learn from views and rejections only, "
                  "or from sessions of one image")


def choice_rows(events: pl.DataFrame) -> pl.DataFrame:
    """The :func:`preference_rows` of the sessions in which something was chosen: where nothing was,
    every ``p~`` is 0 and the session compares nothing. An events-only scorer is fitted on these."""
    return preference_rows(events).filter((pl.col("rating") != 0).any().over("participant_id", "session_id"))


def fit_events_only(events: pl.DataFrame, embeddings: Embeddings, params: dict | None = None, seed: int = 0,
                    vocabulary: dict[str, float] | None = None, threads: int | None = None) -> PersonalScorer:
    """A personal scorer from events alone (no rating anywhere; module docstring).

    Parameters
    ----------
    events : polars.DataFrame
        Validated events.
    embeddings : Embeddings
        Cover the events' images.
    params : dict, optional
        PersonalScorer hyperparameters.
    seed, threads : int
        As for PersonalScorer (random_state, n_threads).
    vocabulary : dict, optional
        The event weights the events were read with (stored in the channel).

    Returns
    -------
    PersonalScorer
        Scores on the preference scale -1..1; ``fitted_.events`` folds new people in from events.

    Raises
    ------
    NothingChosen
        A ValueError: no session shows a choice (:func:`choice_rows` is empty).
    """
    chosen = choice_rows(events)
    if not chosen.height:
        raise NothingChosen(NOTHING_CHOSEN)
    settings = dict(random_state=seed, n_threads=threads, **{**EVENTS_ONLY, **(params or {})})
    vocabulary = dict(DEFAULT_EVENTS if vocabulary is None else vocabulary)
    strength, judged = _held_out_strength(events, embeddings, settings, vocabulary, seed)
    model = _fit_on_choices(chosen, embeddings, settings, vocabulary)
    channel = model.fitted_.events
    model.fitted_.events = replace(channel, strength=strength, report={**channel.report, "strength": judged})
    # The known people's states: their events through the same channel a new person's go through.
    ids, states = model.fold_in(no_ratings(events), embeddings, events=events)
    model.users_, model.user_states_ = list(ids), states
    # No ratings to keep: the states of events-only users cannot be refolded from ratings.
    model.ratings_ = pl.DataFrame(schema={**KEPT_COLUMNS, "origin": pl.String})
    return model
