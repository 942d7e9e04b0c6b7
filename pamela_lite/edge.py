"""Scoring on a device with numpy and onnxruntime alone.

This module imports nothing heavier than numpy and onnxruntime (a test checks it), so it runs on
a phone, a laptop or a T2I server that has neither LightGBM, implicit, scikit-learn nor polars.
It needs what ``python -m pamela_lite.export`` writes: ``scorer.onnx``, the fitted scorer's
parameters beside it (``scorer.fitted/``, read by :mod:`pamela_lite.fitted`, from which a new
user is folded in) and ``scorer.users.npz`` (known users' ids and states). All three carry the
digest of the fit they come from, and a set that does not agree is refused.

Example::

    from pamela_lite.edge import EdgeScorer
    scorer = EdgeScorer("scorer.onnx")
    scores = scorer.score_user("p0007", gallery)             # (n,) predicted ratings
    best, best_scores = scorer.top_k("p0007", gallery, k=10)  # indices into gallery
    me = scorer.fold_in(my_embeddings, my_ratings, age=34, gender="female")
    me = scorer.fold_in([], [], event_embeddings=shown, events=["view", "download", "view", "view"])
    scorer.score_user(me, gallery)                            # a new person, no re-export
    cache = scorer.load_cache("catalogue.features.npz")      # pamela_lite.cache: features computed once
    best, best_scores = scorer.top_k(me, cache, k=10, candidates=1000)  # two-stage, retrieval mode

Session settings are chosen for latency on small calls: one intra-op thread (scoring is a few
small matrix products and a tree walk; threads cost more to wake than they save) and no busy
spinning, so an idle scorer does not burn a core between calls.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .cached import CachedScoring, FeatureCache, check_candidates, check_finite, check_k, check_not_zero
from .errors import InputError
from .event_channel import EventRows, aggregate
from .fitted import FittedScorer, read_users
from .rules import age_years, check_ratings


class UnknownUsers(KeyError):
    """Users the scorer has no state for; ``.users`` lists them all."""

    def __init__(self, users: list[str]):
        self.users = users
        shown = ", ".join(repr(u) for u in users[:5]) + (" ..." if len(users) > 5 else "")
        super().__init__(f"{len(users)} user(s) not known to this scorer: {shown}; fold them in from their ratings")


def float32_array(values, what: str, dim: int) -> np.ndarray:
    """`values` as a float32 array; ValueError (not numpy's) for ragged rows or non-numbers."""
    try:
        return np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError):
        raise ValueError(f"{what} must be numbers of one length ({dim}) per image: rows of different lengths "
                         "or non-numeric values were given") from None


def session_options(threads: int = 1) -> ort.SessionOptions:
    """onnxruntime settings for latency-bound scoring (see the module docstring)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # the exported graph is clean; keep device logs quiet
    return options


def users_path(scorer_path: str | Path) -> Path:
    """Where the known users' ids and states live beside a scorer file."""
    scorer_path = Path(scorer_path)
    return scorer_path.with_name(scorer_path.stem + ".users.npz")


def fitted_path(scorer_path: str | Path) -> Path:
    """Where the fitted scorer's parameter files (the folder fold-in reads) live beside a scorer file."""
    scorer_path = Path(scorer_path)
    return scorer_path.with_name(scorer_path.stem + ".fitted")


class EdgeScorer(CachedScoring):
    """An exported scorer plus its users, ready to score.

    Given a :class:`pamela_lite.cached.FeatureCache` instead of embeddings, ``score_user`` and
    ``top_k`` score the cached catalogue with the two-stage graphs beside the scorer.

    Parameters
    ----------
    scorer_path : path
        The ONNX file from ``python -m pamela_lite.export``.
    users : path, optional
        Its ``.users.npz``; default: beside `scorer_path`.
    threads : int
        onnxruntime intra-op threads (1 is fastest for small batches).
    """

    def __init__(self, scorer_path: str | Path, users: str | Path | None = None, threads: int = 1):
        scorer_path = Path(scorer_path)
        if not scorer_path.exists():
            raise FileNotFoundError(f"{scorer_path}: no such scorer file")
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads must be a whole number >= 1, not {threads!r}")
        if scorer_path.is_dir():
            raise ValueError(f"{scorer_path}: is a folder; pass the .onnx file python -m pamela_lite.export wrote")
        self.scorer_path, self.session_options = scorer_path, session_options(int(threads))
        try:
            self.session = ort.InferenceSession(str(scorer_path), self.session_options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own error types (InvalidProtobuf, ...) for a file that is no graph
            raise ValueError(f"{scorer_path}: not an exported scorer (onnxruntime cannot load it: "
                             f"{(str(err).splitlines() or [type(err).__name__])[0][:160]})") from None
        sidecar = Path(users) if users else users_path(scorer_path)
        if not sidecar.exists():
            raise FileNotFoundError(f"{sidecar}: no users file beside the scorer (written by pamela_lite.export)")
        if not fitted_path(scorer_path).exists():
            raise FileNotFoundError(f"{fitted_path(scorer_path)}: no parameters folder beside the scorer "
                                    "(written by pamela_lite.export)")
        try:
            self.fitted = FittedScorer.read(fitted_path(scorer_path))
            digest = self.fitted.digest()
            meta = self.session.get_modelmeta().custom_metadata_map
            recorded = meta.get("pamela_lite.fit_sha256")
            if recorded != digest:
                raise InputError(fitted_path(scorer_path), f"these parameters belong to another scorer than "
                                                           f"{scorer_path.name}: export the model again")
            ids, states = read_users(sidecar, digest, scorer_path.name, "export the model again", self.fitted.state_dim)
        except InputError as err:  # the device has no command line: a plain ValueError, one line
            raise ValueError(str(err)) from None
        self.user_ids = [str(u) for u in ids]
        # What the users file, the two-stage graphs and every feature cache are tied to (cached.py).
        self.fit_sha256, self.precision = digest, meta.get("pamela_lite.precision", "exact")
        self._row = {u: k for k, u in enumerate(self.user_ids)}
        self.states = states
        self.scale = self.fitted.scale

    @property
    def embedding_dim(self) -> int:
        return self.fitted.embedding_dim

    @property
    def state_dim(self) -> int:
        return self.states.shape[1]

    @property
    def demographic_values(self) -> dict[str, list[str]]:
        """The gender and nationality values the model was fitted with; others count as unknown."""
        return {"gender": list(self.fitted.prior.genders), "nationality": list(self.fitted.prior.nationalities)}

    # ------------------------------------------------------------------ users

    def state(self, user: str | np.ndarray) -> np.ndarray:
        """The state vector of a known user id, or `user` itself when it is already a state."""
        if isinstance(user, (list, tuple)):  # a state written out as numbers (an id is never a list)
            user = np.asarray(user, dtype=np.float32)
        if isinstance(user, np.ndarray):
            if user.shape != (self.state_dim,):
                raise ValueError(f"a user state has shape ({self.state_dim},), not {user.shape}")
            return check_finite(user.astype(np.float32), "the user state")  # S values: about a µs
        return self.states_of([user])[0]

    def states_of(self, user_ids) -> np.ndarray:
        """States (n, S) of known users, in order; KeyError lists every unknown id."""
        ids = [str(u) for u in user_ids]
        unknown = list(dict.fromkeys(u for u in ids if u not in self._row))
        if unknown:
            raise UnknownUsers(unknown)
        return self.states[[self._row[u] for u in ids]]

    def fold_in(self, embeddings: np.ndarray | None, ratings: np.ndarray | None, age: float | str | None = None,
                gender: str | None = None, nationality: str | None = None, event_embeddings: np.ndarray | None = None,
                events=None, sessions=None) -> np.ndarray:
        """A new person's state from k (embedding, rating) pairs, events and optional demographics.

        k = 0 (empty arrays, or None) and no events gives the demographic prior. `age` is years
        or a range such as "25-34" (the command line's rule, :func:`pamela_lite.rules.age_years`);
        a gender or nationality the model was not fitted with counts as unknown, with a warning
        (see :attr:`demographic_values`), and so does an age given to a model fitted without ages.
        `events` are event names (or signed numeric weights), one per row of `event_embeddings`
        (the image acted on or shown; a shown-and-ignored image is a "view"); `sessions`
        (optional, one per row) say which images were shown together.
        Same arithmetic as ``PersonalScorer.fold_in`` with ``events=``; no refit, no re-export.
        """
        ratings = [] if ratings is None else ratings
        if np.size(ratings) and self.fitted.events_only:
            raise ValueError("this scorer was fitted on events alone (its scores are preferences, not ratings): "
                             "fold a person in from their events")
        embeddings = self._embedding_rows(embeddings, "embeddings")
        ratings = check_ratings(ratings, *self.scale)  # the rule the command-line tools apply too
        if len(ratings) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(ratings)} ratings")
        age = age_years(age)
        self._warn_unknown_demographics(gender, nationality, age)
        rows = None
        events = None if events is None else np.atleast_1d(np.asarray(events))
        if events is not None and len(events):
            rows = self._event_rows(event_embeddings, events, sessions)
        elif event_embeddings is not None and np.size(event_embeddings):
            raise ValueError("event_embeddings given without events: pass one event name per row")
        return self.fitted.fold_in(np.zeros(len(ratings), dtype=np.int64), 1, ratings, embeddings,
                                   [age], [gender], [nationality], events=rows)[0]

    def _embedding_rows(self, values, what: str) -> np.ndarray:
        """`values` as finite, not all-zero float32 rows (k, D): one embedding (D,), several (k, D), or none."""
        rows = float32_array([] if values is None else values, what, self.embedding_dim)
        if rows.size and (rows.ndim > 2 or rows.shape[-1] != self.embedding_dim):
            raise ValueError(f"{what} must have shape (k, {self.embedding_dim}), or ({self.embedding_dim},) for "
                             f"one image, not {rows.shape}")
        return check_not_zero(check_finite(rows.reshape(-1, self.embedding_dim), what), what)

    def _warn_unknown_demographics(self, gender, nationality, age=None) -> None:
        if age is not None and not np.isnan(age) and not self.fitted.prior.knows_ages:
            warnings.warn("the model was fitted without ages, so age changes no score", stacklevel=3)
        for name, value in (("gender", gender), ("nationality", nationality)):
            known = self.demographic_values[name]
            if value is not None and str(value) not in known:
                warnings.warn(f"{name} {value!r} was not seen at fit time and counts as unknown (known: "
                              f"{', '.join(known[:8])}{' ...' if len(known) > 8 else ''})", stacklevel=3)

    def _event_rows(self, event_embeddings, events: np.ndarray, sessions) -> EventRows:
        """One person's raw event rows, aggregated as the Python fold-in aggregates a table."""
        if self.fitted.events is None:
            raise ValueError("this scorer was fitted without events: it has no event weights")
        if event_embeddings is None:
            raise ValueError(f"{len(events)} events but no event_embeddings: pass the embedding of the image "
                             "each event is about, one row per event")
        emb = self._embedding_rows(event_embeddings, "event_embeddings")
        names = events
        if len(names) != len(emb) or (sessions is not None and len(sessions) != len(emb)):
            raise ValueError(f"{len(emb)} event embeddings but {len(names)} events"
                             + ("" if sessions is None else f" and {len(sessions)} sessions"))
        weights = self.fitted.events.evidence_of(names)
        vocabulary = list(self.fitted.events.weights)
        codes = (np.full(len(names), -1.0) if names.dtype.kind in "iuf"
                 else np.array([vocabulary.index(str(e)) for e in names.tolist()], dtype=np.float64))
        if sessions is None:
            group = np.zeros(len(names))
        else:
            _, group = np.unique(np.asarray([str(s) for s in sessions]), return_inverse=True)
        groups, evidence, rows = aggregate(group.astype(np.float64), codes, weights, emb)
        return EventRows(np.zeros(len(evidence), dtype=np.int64), groups.astype(np.int64), evidence,
                         rows.astype(np.float32))

    def add_user(self, user_id: str, state: np.ndarray, replace: bool = False) -> None:
        """Remember a folded-in user under an id (in memory).

        An id the scorer already knows is refused unless ``replace=True`` (then its state is
        replaced): quietly shadowing a known person would score them as someone else.
        """
        state, user_id = self.state(np.asarray(state)), str(user_id)
        if user_id in self._row:
            if not replace:
                raise ValueError(f"user {user_id!r} is already known to this scorer: pass replace=True to replace "
                                 "their state, or choose another id")
            if not self.states.flags.writeable:  # the users file's array may be read-only: copy it once
                self.states = self.states.copy()
            self.states[self._row[user_id]] = state
            return
        self._row[user_id] = len(self.user_ids)
        self.user_ids.append(user_id)
        self.states = np.vstack([self.states, state[None, :]])

    # ------------------------------------------------------------------ scoring

    def score(self, embeddings: np.ndarray, states: np.ndarray, clip: bool = True) -> np.ndarray:
        """Scores of N (embedding, user state) pairs: arrays (N, D) and (N, S) → (N,).

        ``clip=False`` gives the utility before clipping to the rating scale (for ranking).
        """
        embeddings = np.ascontiguousarray(float32_array(embeddings, "embeddings", self.embedding_dim))
        states = np.ascontiguousarray(float32_array(states, "states", self.state_dim))
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"embeddings must have shape (N, {self.embedding_dim}), not {embeddings.shape}")
        if states.shape == (1, self.state_dim) and embeddings.shape[0] != 1:  # one state for every image
            states = np.ascontiguousarray(np.broadcast_to(states, (embeddings.shape[0], self.state_dim)))
        if states.shape != (embeddings.shape[0], self.state_dim):
            raise ValueError(f"states must have shape ({embeddings.shape[0]}, {self.state_dim}) or "
                             f"(1, {self.state_dim}), not {states.shape}")
        # The utility is checked even when the clipped score is wanted: clipping turns an infinite
        # state's score into the end of the scale. onnxruntime scores NaN/inf inputs silently;
        # checking the N outputs costs ~1 µs, and the inputs are looked at only when one is not finite.
        outputs = self.session.run(["utility", "score"] if clip else ["utility"],
                                   {"embedding": embeddings, "user_state": states})
        if not np.isfinite(outputs[0]).all():
            check_finite(embeddings, "embeddings")
            check_finite(states, "states")
        return outputs[-1]

    def score_user(self, user: str | np.ndarray, embeddings: np.ndarray, clip: bool = True) -> np.ndarray:
        """Scores of one user (id or state) for each embedding row (or each image of a feature cache)."""
        if isinstance(embeddings, FeatureCache):
            return self.score_cached(embeddings, self.state(user), clip)
        embeddings = np.atleast_2d(float32_array(embeddings, "embeddings", self.embedding_dim))
        states = np.broadcast_to(self.state(user), (embeddings.shape[0], self.state_dim))
        return self.score(embeddings, states, clip)

    def top_k(self, user: str | np.ndarray, embeddings: np.ndarray | FeatureCache, k: int = 10,
              candidates: int | None = None, clip: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the user's k best images in a gallery, best first, and their scores.

        Ranked by the unclipped utility: images the model rates above the top of the scale
        still come out in order instead of as a tie; ``clip=False`` returns that utility instead
        of the scores (a person whose best images all score the top rating sees them apart). A
        feature cache is ranked with the two-stage graphs; with it, `candidates` M turns on the
        retrieval mode (linear part over the whole catalogue, trees on its best M only). A plain
        gallery is always ranked exactly.
        """
        check_k(k)
        check_candidates(candidates)
        if isinstance(embeddings, FeatureCache):
            return self.top_k_cached(user, embeddings, k, candidates, clip)
        # A gallery is checked as fold_in's rows are (score, the per-pair hot path, checks only its outputs)
        utility = self.score_user(user, self._embedding_rows(embeddings, "embeddings"), clip=False)
        k = min(k, len(utility))
        best = np.argpartition(-utility, k - 1)[:k]
        best = best[np.argsort(-utility[best], kind="stable")]
        low, high = self.scale
        return best, np.clip(utility[best], low, high) if clip else utility[best]
