"""Simulated behaviour logs on the world zoo, from each world's TRUE utilities (issue 9 §3).

Whoever writes the simulator can decide the result: if every event were a cut of the same
noisy utility, mapping events to pseudo-ratings would be optimal by construction. The logs here
have what real logs have, and the event models differ in how actions arise:

``session``
    A text-to-image product. A session is one prompt (an image group) whose batch of 4 images is
    chosen by an earlier model and by popularity (appeal and a taste-blind popularity, never the
    person's taste), shown in a ranked order. The person **chooses among the alternatives**: with
    a personal propensity to act (some people download often, some almost never) and more often
    when the batch has something good, they download one image — picked by a softmax of
    ``utility + task noise + position bonus`` (the task at hand and the mood of the moment move
    the choice as much as taste does) — otherwise they often regenerate the batch. Independent
    of that, each shown image is saved at a low personal rate (about 1-5%), also driven by
    utility + task noise; a downloaded image is sometimes shared.
``feed``
    A scrolling feed: pages of 12 images from the same exposure policy; the person looks at
    position k with probability 0.85^k (position bias: unlooked images are logged as viewed all
    the same), and for the ones looked at saves (about 2%, personal rate), dislikes (rare),
    skips quickly (personal propensity, more for poor images) or shares a saved one.
``nosignal``
    The session model with the person's utility replaced by nothing: actions come from position,
    propensity, popularity-blind task noise only. These logs carry no taste at all; a model
    that learns from them must not get worse.

Every shown image is logged as a ``view`` row; actions are extra rows at the same position.
Utility of person u for image i is the world's truth, ``appeal_coef * appeal_i + W_u . F_i``
(:mod:`pamela_lite.worlds`), standardised over the catalogue. Images rated by anyone outside the
train split are never shown, so no event touches an image a model is scored on.

    python -m pamela_lite.demo --world demo --events session --out runs/demo_events
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.special import expit, logit

MODELS = ("session", "feed", "nosignal")
EVENTS_FILE = "events.parquet"
BATCH = 4
PAGE = 12
POSITION_BONUS = np.array([0.5, 0.25, 0.1, 0.0])  # session model: the first image of a batch draws the eye


def event_catalogue(world) -> pl.Series:
    """Images that may be shown: every image not rated in val_seen or test_seen (where seen and
    pseudo-unseen people are scored). A person's own unseen-split images are kept from them too
    (:func:`blocked`)."""
    scored = world.ratings.filter(pl.col("split").is_in(["val_seen", "test_seen"]))["image_id"].unique()
    return world.images.filter(~pl.col("image_id").is_in(scored.implode()))["image_id"]


def blocked(world, users: pl.Series, catalogue: pl.Series) -> np.ndarray:
    """(users x catalogue) True where the person rated the image in val_unseen or test_unseen:
    images on which that person is scored, never shown to them."""
    own = world.ratings.filter(pl.col("split").is_in(["val_unseen", "test_unseen"]))
    out = np.zeros((len(users), len(catalogue)), dtype=bool)
    u, i = _rows(users, own["participant_id"]), _rows(catalogue, own["image_id"])
    hit = ~(np.isnan(u.astype(float)) | np.isnan(i.astype(float)))
    out[u[hit].astype(np.int64), i[hit].astype(np.int64)] = True
    return out


def true_utility(world, user_rows: np.ndarray, image_rows: np.ndarray) -> np.ndarray:
    """(users x images) noise-free utility from the world's truth, standardised over the matrix."""
    coef = float(world.info.get("appeal_coef", 1.0))
    utility = coef * world.appeal[image_rows][None, :] + world.user_weights[user_rows] @ world.taste_features[image_rows].T
    return (utility - utility.mean()) / max(float(utility.std()), 1e-12)


def _rows(ids: pl.Series, wanted: pl.Series) -> np.ndarray:
    table = pl.DataFrame({"k": ids, "_r": np.arange(len(ids), dtype=np.int64)})
    return pl.DataFrame({"k": wanted}).join(table, on="k", how="left", maintain_order="left")["_r"].to_numpy()


def simulate(world, model: str = "session", users: pl.Series | None = None, impressions: int = 400,
             seed: int = 0) -> pl.DataFrame:
    """A behaviour log of `users` (default everyone) in `world` under event `model`.

    Parameters
    ----------
    world : pamela_lite.worlds.World
        A zoo world (its truth drives the behaviour).
    model : {"session", "feed", "nosignal"}
        The event model (module docstring).
    users : polars.Series, optional
        Participant ids to simulate; people without ratings may be included too.
    impressions : int
        About how many images each person is shown (whole sessions / pages).
    seed : int
        Seed; the log is deterministic per (world, model, users, impressions, seed).

    Returns
    -------
    polars.DataFrame
        participant_id, image_id, event, timestamp, session_id, prompt_id, position — the
        events-table layout of :mod:`pamela_lite.events`, ids typed as the world's.
    """
    if model not in MODELS:
        raise ValueError(f"unknown event model {model!r}; known: {', '.join(MODELS)}")
    rng = np.random.default_rng([seed, 4049, MODELS.index(model)])
    users = world.users["participant_id"] if users is None else users
    user_rows = _rows(world.users["participant_id"], users)
    catalogue = event_catalogue(world)
    image_rows = _rows(world.images["image_id"], catalogue)
    utility = true_utility(world, user_rows, image_rows)
    if model == "nosignal":
        utility = np.zeros_like(utility)
    # Exposure: an earlier (population) model and a taste-blind popularity; never the person's taste.
    appeal = world.appeal[image_rows]
    exposure = 0.8 * (appeal - appeal.mean()) / max(float(appeal.std()), 1e-12) + 0.8 * rng.normal(0, 1, len(image_rows))
    groups = world.images["group"].to_numpy()[image_rows]
    n = len(user_rows)
    hidden = blocked(world, users, catalogue)
    if model == "feed":
        parts = _feed(rng, utility, exposure, hidden, n, max(1, -(-impressions // PAGE)))
    else:
        parts = _sessions(rng, utility, exposure, hidden, groups, n, max(1, -(-impressions // BATCH)))
    user_k, session_k, position, item, event, prompt = parts
    order = np.lexsort((event != "view", position, session_k, user_k))
    user_k, session_k, position, item, event, prompt = (a[order] for a in parts)
    pid = users.gather(user_k)
    return pl.DataFrame({
        "participant_id": pid,
        "image_id": catalogue.gather(item),
        "event": event,
        "timestamp": session_k * 100.0 + position + np.where(event == "view", 0.0, 0.5),
        "session_id": pl.Series(np.char.add(np.char.add(pid.cast(pl.String).to_numpy().astype(str), "-s"),
                                            session_k.astype(str))),
        "prompt_id": prompt,
        "position": position.astype(np.int64),
    })


def _top(keys: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest keys, largest first (the shown order)."""
    top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1), axis=1)


def _sessions(rng, utility, exposure, hidden, groups, n_users, n_sessions):
    """The session model's rows (see the module docstring)."""
    names, counts = np.unique(groups, return_counts=True)
    names = names[counts >= 5 * BATCH]  # prompts whose batches can vary
    if not len(names):  # a tiny catalogue: one prompt over everything
        groups, names = np.full(len(groups), "any", dtype=object), np.array(["any"], dtype=object)
    prompt = rng.integers(0, len(names), (n_users, n_sessions))
    batch = np.zeros((n_users, n_sessions, BATCH), dtype=np.int64)
    for g, name in enumerate(names):  # one Gumbel top-k per prompt group, all its sessions at once
        members = np.flatnonzero(groups == name)
        u, s = np.nonzero(prompt == g)
        keys = exposure[members][None, :] + rng.gumbel(0, 1, (len(u), len(members)))
        keys[hidden[u][:, members]] = -np.inf
        batch[u, s] = members[_top(keys, BATCH)]
    user_k = np.repeat(np.arange(n_users), n_sessions * BATCH).reshape(n_users, n_sessions, BATCH)
    session_k = np.broadcast_to(np.arange(n_sessions)[None, :, None], batch.shape)
    position = np.broadcast_to(np.arange(BATCH)[None, None, :], batch.shape)
    task = rng.normal(0, 1.0, batch.shape)  # the task at hand and the mood: not taste
    value = np.take_along_axis(utility[:, None, :].repeat(n_sessions, axis=1), batch, axis=2) + task
    value = value + POSITION_BONUS[None, None, :]
    propensity = rng.beta(2.0, 5.0, n_users)[:, None]  # how readily each person downloads at all
    acts = rng.random((n_users, n_sessions)) < propensity * expit(1.5 * (value.max(axis=2) - 1.0))
    choice_p = np.exp((value - value.max(axis=2, keepdims=True)) / 0.5)
    choice_p /= choice_p.sum(axis=2, keepdims=True)
    chosen = (rng.random((n_users, n_sessions, 1)) > np.cumsum(choice_p, axis=2)).sum(axis=2)
    download = acts[..., None] & (position == chosen[..., None])
    regenerate = (~acts & (rng.random((n_users, n_sessions)) < 0.5))[..., None] & np.ones(batch.shape, bool)
    save_rate = np.clip(0.02 * np.exp(rng.normal(0, 0.7, n_users)), 0.003, 0.15)[:, None, None]
    save = rng.random(batch.shape) < expit(logit(save_rate) + 1.0 * (value - 1.0))
    share = download & (rng.random(batch.shape) < 0.1)
    prompts = np.asarray(names)[prompt][..., None].repeat(BATCH, axis=2)
    return _flatten(user_k, session_k, position, batch, prompts,
                    {"view": np.ones(batch.shape, bool), "download": download, "regenerate": regenerate,
                     "save": save, "share": share})


def _feed(rng, utility, exposure, hidden, n_users, n_pages):
    """The feed model's rows (see the module docstring)."""
    shape = (n_users, n_pages, PAGE)
    items = np.zeros(shape, dtype=np.int64)
    for u in range(n_users):  # one page draw per person (a loop over people, not rows)
        keys = exposure[None, :] + rng.gumbel(0, 1, (n_pages, len(exposure)))
        keys[:, hidden[u]] = -np.inf
        items[u] = _top(keys, PAGE)
    user_k = np.broadcast_to(np.arange(n_users)[:, None, None], shape)
    session_k = np.broadcast_to(np.arange(n_pages)[None, :, None], shape)
    position = np.broadcast_to(np.arange(PAGE)[None, None, :], shape)
    looked = rng.random(shape) < 0.85 ** position
    value = np.take_along_axis(utility[:, None, :].repeat(n_pages, axis=1), items, axis=2) + rng.normal(0, 1.0, shape)
    save_rate = np.clip(0.02 * np.exp(rng.normal(0, 0.7, n_users)), 0.003, 0.15)[:, None, None]
    save = looked & (rng.random(shape) < expit(logit(save_rate) + 1.2 * (value - 1.0)))
    dislike = looked & ~save & (rng.random(shape) < expit(logit(0.004) - 1.2 * (value + 1.0)))
    skipper = rng.beta(2.0, 4.0, n_users)[:, None, None]
    skip = looked & ~save & ~dislike & (rng.random(shape) < skipper * expit(-1.5 * (value + 0.5)))
    share = save & (rng.random(shape) < 0.15)
    prompts = np.full(shape, "feed")
    return _flatten(user_k, session_k, position, items, prompts,
                    {"view": np.ones(shape, bool), "save": save, "dislike": dislike, "skip": skip, "share": share})


def _flatten(user_k, session_k, position, items, prompts, masks: dict[str, np.ndarray]):
    """Rows (user, session, position, item, event, prompt) of every event mask that is set."""
    out = [[] for _ in range(6)]
    for name, mask in masks.items():
        for column, values in zip(out, (user_k, session_k, position, items, np.full(mask.shape, name), prompts)):
            column.append(np.asarray(values)[mask])
    return tuple(np.concatenate(column) for column in out)


def summary(events: pl.DataFrame) -> dict:
    """Per shown image, how often each action happened (the log's action rates)."""
    shown = events.filter(pl.col("event") == "view").height
    counts = events.group_by("event").len()
    return {"impressions": shown, "people": events["participant_id"].n_unique(),
            **{f"{e}_rate": round(c / max(shown, 1), 4) for e, c in counts.iter_rows() if e != "view"}}
