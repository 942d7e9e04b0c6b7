"""The user side of the scorer: user states and how they are solved from ratings (numpy only).

A user is one **state vector** ``[bias, w (d), u (f), demographics]`` (:func:`state_layout`, the
one definition of that layout). :class:`UserSolver` solves the first three parts from ratings,
shrunk toward prior states; :func:`demographic_vectors` encodes the demographics that form the
last part and feed the demographic prior. Fitting (known users), ``PersonalScorer.fold_in`` and
``pamela_lite.edge`` on a device all run this same arithmetic, so a state means the same
thing wherever it was computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import ImageFeatures


def state_layout(taste_dim: int, factors: int, demographics: int = 0) -> dict[str, slice]:
    """Where bias, linear taste w, factors u and demographics sit in a user state vector.

    The one definition of the layout ``[bias, w (taste_dim), u (factors), demographics]``: the
    solver, the scorer, the ONNX graph and its metadata all read it from here.
    """
    d, f, g = taste_dim, factors, demographics
    return {"bias": slice(0, 1), "taste": slice(1, 1 + d), "factors": slice(1 + d, 1 + d + f),
            "demographics": slice(1 + d + f, 1 + d + f + g)}


def als_fold_in(item_factors: np.ndarray, signed_rows: np.ndarray, alpha: float, regularization: float,
                priors: np.ndarray | None = None) -> np.ndarray:
    """Users' factors against fixed item factors, by implicit's least-squares rule.

    `signed_rows` holds, per user (rows) and item (here: prototype), the signed evidence ``m``:
    positive means liked with confidence ``1 + alpha*m``, negative means disliked with
    confidence ``1 + alpha*|m|``, zero means unobserved (preference 0, confidence 1). This is
    the exact solve ``implicit`` runs in ``recalculate_user`` for rows encoded by
    :func:`als_row_values`, batched over users; `priors` shrink toward given vectors instead of
    toward zero. A single row (1-d) gives a single vector.
    """
    single = np.ndim(signed_rows) == 1
    m = np.atleast_2d(np.asarray(signed_rows, dtype=np.float64))
    V = item_factors.astype(np.float64)
    conf = alpha * np.abs(m)  # the extra confidence over an unobserved entry
    f = V.shape[1]
    outer = (V[:, :, None] * V[:, None, :]).reshape(len(V), f * f)  # one BLAS product for all users
    A = (V.T @ V + regularization * np.eye(f))[None] + (conf @ outer).reshape(-1, f, f)
    b = ((m > 0) * (1.0 + conf)) @ V
    if priors is not None:
        b = b + regularization * np.atleast_2d(priors)
    out = np.linalg.solve(A, b[..., None])[..., 0]
    return out[0] if single else out


def als_row_values(signed_row: np.ndarray, alpha: float) -> np.ndarray:
    """What to store in implicit's CSR matrix so its confidence is ``1 + alpha*|m|`` (sign kept).

    implicit multiplies stored values by alpha and treats the result as the confidence, so a
    raw small value would get a confidence below an unobserved entry's 1.
    """
    return np.sign(signed_row) * (1.0 / alpha + np.abs(signed_row))


@dataclass
class UserSolver:
    """Solves user states ``[bias, w (d), u (f)]`` from ratings, shrunk toward prior states.

    The same arithmetic serves fitting (known users), ``fold_in`` (new users) and the edge
    runtime, so a state means the same thing wherever it was computed.
    """

    mean: float
    item_factors: np.ndarray
    residual_scale: float
    alpha: float
    regularization: float
    bias_shrinkage: float
    taste_precision: np.ndarray  # (d, d) prior precision of the linear taste, in rating units
    use_bias: bool = True
    use_population: bool = True
    use_taste: bool = True
    use_mf: bool = True

    def states(self, user_index: np.ndarray, n_users: int, ratings: np.ndarray, feats: ImageFeatures,
               priors: np.ndarray, taste_extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """States of `n_users` users (rows of `priors`) from rating rows tagged by `user_index`.

        `taste_extra` ``(A, b, informed)`` adds further terms to each user's linear-taste equations
        (the events' least squares, :mod:`pamela_lite.event_channel`); the taste of an `informed`
        user without ratings comes from them, everything else of theirs is the prior.

        Returns the states and each user's signed residual mass per prototype (the row of the
        feedback matrix the factor model sees).
        """
        at = state_layout(feats.pca.shape[1], self.item_factors.shape[1])
        resid = ratings - self.mean - (feats.population if self.use_population else 0.0)
        counts = np.bincount(user_index, minlength=n_users).astype(np.float64)
        states = np.zeros_like(priors, dtype=np.float64)
        if self.use_bias:
            sums = np.bincount(user_index, weights=resid, minlength=n_users)
            states[:, 0] = (sums + self.bias_shrinkage * priors[:, 0]) / (counts + self.bias_shrinkage)
        resid = resid - states[user_index, 0]

        sort = np.argsort(user_index, kind="stable")
        bounds = np.searchsorted(user_index[sort], np.arange(n_users + 1))
        if self.use_taste:
            # Per-user Gram matrices, then one batched solve for everyone.
            A = self.taste_precision[None] + user_normal_equations(feats.pca, user_index, n_users)[0]
            b = (_segment_sums(feats.pca[sort] * resid[sort, None], bounds, counts)
                 + priors[:, at["taste"]] @ self.taste_precision.T)
            if taste_extra is not None:
                A, b = A + taste_extra[0], b + taste_extra[1]
            states[:, at["taste"]] = np.linalg.solve(A, b[..., None])[..., 0]
        masses = np.zeros((n_users, self.item_factors.shape[0]))
        if self.use_mf:
            masses = _segment_sums(feats.assign[sort] * resid[sort, None], bounds, counts) / self.residual_scale
            states[:, at["factors"]] = als_fold_in(self.item_factors, masses, self.alpha, self.regularization,
                                                   priors[:, at["factors"]])
        # A user without ratings is their prior, exactly (ALS alone would pull the factors toward
        # zero), so a state never depends on who else is folded in with it.
        taste = states[:, at["taste"]].copy()
        states[counts == 0] = priors[counts == 0]
        if taste_extra is not None and self.use_taste:
            informed = taste_extra[2] & (counts == 0)
            states[informed, at["taste"]] = taste[informed]
        return states, masses


def user_normal_equations(Z: np.ndarray, user_index: np.ndarray, n_users: int, r: np.ndarray | None = None,
                          weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per user, ``sum w z z'`` and (given `r`) ``sum w r z`` over the user's rows of `Z`; zeros
    for users without rows. One BLAS call per user. The rating solve, the events' equations
    (:mod:`pamela_lite.event_channel`) and the EM taste prior all build their equations here."""
    order = np.argsort(user_index, kind="stable")
    bounds = np.searchsorted(user_index[order], np.arange(n_users + 1))
    grams = np.zeros((n_users, Z.shape[1], Z.shape[1]))
    moments = None if r is None else np.zeros((n_users, Z.shape[1]))
    for k in np.flatnonzero(np.diff(bounds)):
        rows = order[bounds[k]:bounds[k + 1]]
        block = Z[rows]
        if weights is None:
            grams[k] = block.T @ block
            if r is not None:
                moments[k] = block.T @ r[rows]
        else:
            grams[k] = (block * weights[rows, None]).T @ block
            if r is not None:
                moments[k] = (weights[rows] * r[rows]) @ block
    return grams, moments


def _segment_sums(values: np.ndarray, bounds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sums of consecutive row segments ``values[bounds[k]:bounds[k+1]]`` (zero for empty ones)."""
    if len(counts) == 1:  # one user: the device's fold-in, which must not need scipy
        return values.sum(axis=0, keepdims=True)
    # Fitting many users: a sparse segment-indicator product is ~15x faster than np.add.reduceat.
    from scipy.sparse import csr_matrix

    indicator = csr_matrix((np.ones(len(values)), np.arange(len(values)), bounds), shape=(len(counts), len(values)))
    return np.asarray(indicator @ values)


def demographic_vectors(ages, genders, nationalities, age_mean: float, age_std: float,
                        gender_vocabulary, nationality_vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """(head features, prior features) of users from their demographics (None where unknown).

    Head features are ``[age z-score, gender one-hot]`` (the tail of a user state); prior
    features add a nationality one-hot and feed the demographic prior of a new user's state.
    """
    age = np.array([np.nan if a is None else float(a) for a in ages], dtype=np.float64)
    age_z = np.nan_to_num((age - age_mean) / age_std, nan=0.0)
    gender = _one_hot(genders, gender_vocabulary)
    nationality = _one_hot(nationalities, nationality_vocabulary)
    head = np.column_stack([age_z, gender])
    return head, np.column_stack([head, nationality])


def _one_hot(values, vocabulary) -> np.ndarray:
    index = {v: k for k, v in enumerate(vocabulary)}
    out = np.zeros((len(values), len(vocabulary)))
    for row, value in enumerate(values):
        if value is not None and str(value) in index:
            out[row, index[str(value)]] = 1.0
    return out


@dataclass
class DemographicPrior:
    """Demographics → a prior user state ``[bias, w, u]``: a new person's k = 0 state, and the
    state their ratings are shrunk toward. Unknown values (None, or not in a vocabulary) count as
    unknown, never as an error."""

    age_mean: float
    age_std: float
    genders: list[str]
    nationalities: list[str]
    coef: np.ndarray | None = None  # (1 + genders + nationalities, 1 + d + f), fitted after the states
    intercept: np.ndarray | None = None  # (1 + d + f,)

    @property
    def knows_ages(self) -> bool:
        """Whether it was fitted with ages: without any, the fit sets mean 0 and spread 1 (no real
        set of ages has mean 0), and an age given later changes no score."""
        return not (self.age_mean == 0.0 and self.age_std == 1.0)

    def vectors(self, ages, genders, nationalities) -> tuple[np.ndarray, np.ndarray]:
        """(head features: the state's demographic tail, prior features) of users (see demographic_vectors)."""
        return demographic_vectors(ages, genders, nationalities, self.age_mean, self.age_std, self.genders,
                                   self.nationalities)

    def states(self, prior_features: np.ndarray) -> np.ndarray:
        """Prior states ``[bias, w, u]`` of users from their prior features."""
        return prior_features @ self.coef + self.intercept
