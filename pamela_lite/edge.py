"""Scoring on a device with numpy and onnxruntime alone.

This module imports nothing heavier than numpy and onnxruntime (a test checks it), so it runs on
a phone, a laptop or a T2I server that has neither LightGBM, implicit, scikit-learn nor polars.
It needs the two files ``python -m pamela_lite.export`` writes: ``scorer.onnx`` and
``scorer.users.npz`` (known users' states and the arrays that fold in a new user).

Example::

    from pamela_lite.edge import EdgeScorer
    scorer = EdgeScorer("scorer.onnx")
    scores = scorer.score_user("p0007", gallery)             # (n,) predicted ratings
    best, best_scores = scorer.top_k("p0007", gallery, k=10)  # indices into gallery
    me = scorer.fold_in(my_embeddings, my_ratings, age=34, gender="female")
    scorer.score_user(me, gallery)                            # a new person, no re-export

Session settings are chosen for latency on small calls: one intra-op thread (scoring is a few
small matrix products and a tree walk; threads cost more to wake than they save) and no busy
spinning, so an idle scorer does not burn a core between calls.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .cached import CachedScoring, FeatureCache
from .features import ImageSide, UserSolver, demographic_vectors, l2_normalise
from .rules import check_ratings

EDGE_FORMAT_VERSION = 2  # 2: the users file records its scorer's sha256


class UnknownUsers(KeyError):
    """Users the scorer has no state for; ``.users`` lists them all."""

    def __init__(self, users: list[str]):
        self.users = users
        shown = ", ".join(repr(u) for u in users[:5]) + (" ..." if len(users) > 5 else "")
        super().__init__(f"{len(users)} user(s) not known to this scorer: {shown}; fold them in from their ratings")


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
    """Where the known users' states and fold-in arrays live beside a scorer file."""
    scorer_path = Path(scorer_path)
    return scorer_path.with_name(scorer_path.stem + ".users.npz")


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
        self.scorer_path, self.session_options = scorer_path, session_options(threads)
        self.session = ort.InferenceSession(str(scorer_path), self.session_options,
                                            providers=["CPUExecutionProvider"])
        sidecar = Path(users) if users else users_path(scorer_path)
        if not sidecar.exists():
            raise FileNotFoundError(f"{sidecar}: no users file beside the scorer (written by pamela_lite.export)")
        with np.load(sidecar, allow_pickle=False) as arrays:
            a = {k: arrays[k] for k in arrays.files}
        scalars = json.loads(str(a["scalars"]))
        if scalars.get("format_version") != EDGE_FORMAT_VERSION:
            raise ValueError(f"{sidecar}: users file format {scalars.get('format_version')}, "
                             f"this pamela_lite reads {EDGE_FORMAT_VERSION}; export again")
        self.scorer_sha256 = hashlib.sha256(scorer_path.read_bytes()).hexdigest()
        if scalars.get("scorer_sha256") != self.scorer_sha256:
            raise ValueError(f"{sidecar}: this users file was written for another scorer than {scorer_path.name} "
                             "(a refit changes what every state means); export the model again")
        self.user_ids = a["user_ids"].tolist()
        self._row = {u: k for k, u in enumerate(self.user_ids)}
        self.states = a["user_states"].astype(np.float32)
        self.scale = (scalars["scale_low"], scalars["scale_high"])
        self._demographics = (scalars["age_mean"], scalars["age_std"], a["genders"].tolist(),
                              a["nationalities"].tolist())
        self._prior = (a["prior_coef"], a["prior_intercept"])
        self.image_side = ImageSide(a["pop_coef"], scalars["pop_intercept"], a["pca_mean"], a["pca_components"],
                                    a["pca_scale"], a["prototypes"], scalars["assign_width"], a["item_factors"])
        self.solver = UserSolver(scalars["mean"], a["item_factors"], scalars["residual_scale"], scalars["alpha"],
                                 scalars["regularization"], scalars["bias_shrinkage"], a["taste_precision"],
                                 scalars["use_bias"], scalars["use_population"], scalars["use_taste"],
                                 scalars["use_mf"])

    @property
    def embedding_dim(self) -> int:
        return self.image_side.pca_mean.shape[0]

    @property
    def state_dim(self) -> int:
        return self.states.shape[1]

    @property
    def demographic_values(self) -> dict[str, list[str]]:
        """The gender and nationality values the model was fitted with; others count as unknown."""
        return {"gender": list(self._demographics[2]), "nationality": list(self._demographics[3])}

    # ------------------------------------------------------------------ users

    def state(self, user: str | np.ndarray) -> np.ndarray:
        """The state vector of a known user id, or `user` itself when it is already a state."""
        if isinstance(user, np.ndarray):
            if user.shape != (self.state_dim,):
                raise ValueError(f"a user state has shape ({self.state_dim},), not {user.shape}")
            return user.astype(np.float32)
        return self.states_of([user])[0]

    def states_of(self, user_ids) -> np.ndarray:
        """States (n, S) of known users, in order; KeyError lists every unknown id."""
        ids = [str(u) for u in user_ids]
        unknown = list(dict.fromkeys(u for u in ids if u not in self._row))
        if unknown:
            raise UnknownUsers(unknown)
        return self.states[[self._row[u] for u in ids]]

    def fold_in(self, embeddings: np.ndarray, ratings: np.ndarray, age: float | None = None,
                gender: str | None = None, nationality: str | None = None) -> np.ndarray:
        """A new person's state from k (embedding, rating) pairs and optional demographics.

        k = 0 (empty arrays) gives the demographic prior. Same arithmetic as
        ``PersonalScorer.fold_in``; no refit, no re-export.
        """
        embeddings = np.asarray(embeddings, dtype=np.float32).reshape(-1, self.embedding_dim)
        ratings = check_ratings(ratings, *self.scale)  # the rule the command-line tools apply too
        if len(ratings) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(ratings)} ratings")
        head, prior_x = demographic_vectors([age], [gender], [nationality], *self._demographics)
        prior = prior_x @ self._prior[0] + self._prior[1]
        state = prior
        if len(ratings):
            feats = self.image_side.features(l2_normalise(embeddings))
            state, _ = self.solver.states(np.zeros(len(ratings), dtype=np.int64), 1, ratings, feats, prior)
        return np.concatenate([state[0], head[0]]).astype(np.float32)

    def add_user(self, user_id: str, state: np.ndarray) -> None:
        """Remember a folded-in user under an id (in memory)."""
        state = self.state(np.asarray(state))
        self._row[str(user_id)] = len(self.user_ids)
        self.user_ids.append(str(user_id))
        self.states = np.vstack([self.states, state[None, :]])

    # ------------------------------------------------------------------ scoring

    def score(self, embeddings: np.ndarray, states: np.ndarray, clip: bool = True) -> np.ndarray:
        """Scores of N (embedding, user state) pairs: arrays (N, D) and (N, S) → (N,).

        ``clip=False`` gives the utility before clipping to the rating scale (for ranking).
        """
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        states = np.ascontiguousarray(states, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"embeddings must have shape (N, {self.embedding_dim}), not {embeddings.shape}")
        if states.shape != (embeddings.shape[0], self.state_dim):
            raise ValueError(f"states must have shape ({embeddings.shape[0]}, {self.state_dim}), not {states.shape}")
        return self.session.run(["score" if clip else "utility"], {"embedding": embeddings, "user_state": states})[0]

    def score_user(self, user: str | np.ndarray, embeddings: np.ndarray, clip: bool = True) -> np.ndarray:
        """Scores of one user (id or state) for each embedding row (or each image of a feature cache)."""
        if isinstance(embeddings, FeatureCache):
            return self.score_cached(embeddings, self.state(user), clip)
        embeddings = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        states = np.broadcast_to(self.state(user), (embeddings.shape[0], self.state_dim))
        return self.score(embeddings, states, clip)

    def top_k(self, user: str | np.ndarray, embeddings: np.ndarray | FeatureCache, k: int = 10,
              candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the user's k best images in a gallery, best first, and their scores.

        Ranked by the unclipped utility: images the model rates above the top of the scale
        still come out in order instead of as a tie. A feature cache is ranked with the
        two-stage graphs; with it, `candidates` M turns on the retrieval mode (linear part over
        the whole catalogue, trees on its best M only).
        """
        if isinstance(embeddings, FeatureCache):
            return self.top_k_cached(user, embeddings, k, candidates)
        utility = self.score_user(user, embeddings, clip=False)
        k = min(k, len(utility))
        best = np.argpartition(-utility, k - 1)[:k]
        best = best[np.argsort(-utility[best], kind="stable")]
        low, high = self.scale
        return best, np.clip(utility[best], low, high)
