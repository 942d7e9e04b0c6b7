"""Encodings shared by the scorer, its ONNX export and the edge runtime (numpy only).

Keeping them in one numpy-only module is what lets ``pamela_lite.edge`` fold in a new user and
score an image with exactly the arithmetic the fitted model used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (CLIP-style embeddings are compared by direction).

    Image features are computed in float64 from here on, in Python and in the exported graph
    alike, and rounded to float32 only where the trees read them: the two sides then see the
    same float32 values and take the same branch at every split.
    """
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def soft_assign(coords: np.ndarray, prototypes: np.ndarray, width: float) -> np.ndarray:
    """Soft assignment of images to prototypes: softmax of ``-||y - c_k||^2 / (2 width)``.

    `coords` are PCA coordinates; the logits are linear in them (the ``||y||^2`` term cancels in
    the softmax), so the exported graph computes them with one small matrix product.
    """
    logits = (coords @ prototypes.T - 0.5 * (prototypes**2).sum(axis=1)) / width
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def als_fold_in(item_factors: np.ndarray, signed_row: np.ndarray, alpha: float, regularization: float,
                prior: np.ndarray | None = None) -> np.ndarray:
    """One user's factors against fixed item factors, by implicit's least-squares rule.

    `signed_row` holds, per item (here: per prototype), the signed evidence ``m``: positive
    means liked with confidence ``1 + alpha*m``, negative means disliked with confidence
    ``1 + alpha*|m|``, zero means unobserved (preference 0, confidence 1). This is the exact
    solve ``implicit`` runs in ``recalculate_user`` for rows encoded by :func:`als_row_values`;
    `prior` shrinks toward a given vector instead of toward zero.
    """
    V = item_factors.astype(np.float64)
    m = signed_row.astype(np.float64)
    conf = alpha * np.abs(m)  # the extra confidence over an unobserved entry
    A = V.T @ V + regularization * np.eye(V.shape[1]) + (V * conf[:, None]).T @ V
    b = ((m > 0) * (1.0 + conf)) @ V
    if prior is not None:
        b = b + regularization * prior
    return np.linalg.solve(A, b)


def als_row_values(signed_row: np.ndarray, alpha: float) -> np.ndarray:
    """What to store in implicit's CSR matrix so its confidence is ``1 + alpha*|m|`` (sign kept).

    implicit multiplies stored values by alpha and treats the result as the confidence, so a
    raw small value would get a confidence below an unobserved entry's 1.
    """
    return np.sign(signed_row) * (1.0 / alpha + np.abs(signed_row))


@dataclass
class ImageFeatures:
    """What the scorer computes from an embedding, once per image."""

    population: np.ndarray  # (n,) p(x), without the global mean
    pca: np.ndarray  # (n, d) whitened PCA coordinates z(x)
    assign: np.ndarray  # (n, K) soft assignment to prototypes
    factors: np.ndarray  # (n, f) image factors q(x) = assign @ item_factors

    def take(self, rows: np.ndarray) -> "ImageFeatures":
        """The features of the given rows (e.g. each rating's image), in that order."""
        return ImageFeatures(self.population[rows], self.pca[rows], self.assign[rows], self.factors[rows])


@dataclass
class ImageSide:
    """The fitted maps from an (L2-normalised) embedding to the image's features."""

    pop_coef: np.ndarray  # (D,) population head
    pop_intercept: float
    pca_mean: np.ndarray  # (D,)
    pca_components: np.ndarray  # (D, d) orthonormal columns
    pca_scale: np.ndarray  # (d,) 1/sqrt(explained variance): whitening
    prototypes: np.ndarray  # (K, d) k-means centres in PCA coordinates
    assign_width: float  # softness of the assignment, in squared PCA distance
    item_factors: np.ndarray  # (K, f) prototype factors from implicit ALS

    def features(self, x_unit: np.ndarray) -> ImageFeatures:
        coords = (x_unit - self.pca_mean) @ self.pca_components
        assign = soft_assign(coords, self.prototypes, self.assign_width)
        population = x_unit @ self.pop_coef + self.pop_intercept
        return ImageFeatures(population, coords * self.pca_scale, assign, assign @ self.item_factors)


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
               priors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """States of `n_users` users (rows of `priors`) from rating rows tagged by `user_index`.

        Returns the states and each user's signed residual mass per prototype (the row of the
        feedback matrix the factor model sees).
        """
        d, f = feats.pca.shape[1], self.item_factors.shape[1]
        resid = ratings - self.mean - (feats.population if self.use_population else 0.0)
        counts = np.bincount(user_index, minlength=n_users).astype(np.float64)
        states = np.zeros_like(priors, dtype=np.float64)
        if self.use_bias:
            sums = np.bincount(user_index, weights=resid, minlength=n_users)
            states[:, 0] = (sums + self.bias_shrinkage * priors[:, 0]) / (counts + self.bias_shrinkage)
        resid = resid - states[user_index, 0]

        sort = np.argsort(user_index, kind="stable")
        bounds = np.searchsorted(user_index[sort], np.arange(n_users + 1))
        masses = np.zeros((n_users, self.item_factors.shape[0]))
        for k in range(n_users):
            rows = sort[bounds[k]:bounds[k + 1]]
            if self.use_taste:
                Z = feats.pca[rows]
                A = Z.T @ Z + self.taste_precision
                states[k, 1:1 + d] = np.linalg.solve(A, Z.T @ resid[rows] + self.taste_precision @ priors[k, 1:1 + d])
            if self.use_mf:
                masses[k] = feats.assign[rows].T @ resid[rows] / self.residual_scale
                states[k, 1 + d:] = als_fold_in(self.item_factors, masses[k], self.alpha, self.regularization,
                                                priors[k, 1 + d:1 + d + f])
        return states, masses


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
