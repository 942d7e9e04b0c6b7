"""Per-image corrections for images rated at fit time: the classic collaborative signal.

Everything else in the scorer sees an image only through its embedding, so two images with the
same embedding score alike. When an image was rated by several people in training, those
ratings say more: how it lands beyond what its embedding predicts (a bias ``c_i``), and with
whom (image factors ``v_i`` against user factors ``a_u``). This module fits

    e_ui ≈ c_i + a_u · v_i

on the residuals ``e`` the fitted embedding-based model leaves on its training rows (the
correction is added to that same model's predictions), by ridge-regularised alternating least
squares — every term shrunk toward zero, i.e. toward what the embedding predicts. Images never rated in
training get no correction; a new person's factors ``a_u`` are solved from their context
ratings on catalogue images (only ``c_i`` without such ratings).

Whether the correction is used at all, and its size, is chosen on validation ratings of known
users on catalogue images; without such ratings it stays off (PAMELA does not document
whether its seen-user test images also occur in training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # scipy is imported where it is used: the device reads Catalogue without it
    import scipy.sparse as sp

# (factors, ridge penalty) tried on validation; the penalty is in pseudo-ratings. How many
# collaborative factors the ratings support depends on raters per image and on how much taste
# the embedding misses, so the grid spans bias-only to 12 factors.
CANDIDATES = ((0, 5.0), (0, 20.0), (2, 5.0), (4, 5.0), (4, 10.0), (6, 5.0), (6, 10.0), (8, 10.0), (8, 30.0),
              (12, 10.0), (12, 30.0))
MIN_VALIDATION_ROWS = 100
# The correction's size, also chosen on validation: it is fitted on residuals of ratings the model
# was fitted to, which understate what the model leaves on other pairs (leave_one_out corrects
# the user solves' share, not the population head's or the trees'). A new person's factors are
# solved at the fitted size and scaled with the rest, as a known person's are.
SCALES = (1.0, 2.0)


@dataclass
class Catalogue:
    """Fitted corrections: rows of `bias`/`factors` follow `image_ids`, of `user_factors` the model's users."""

    image_ids: np.ndarray  # (n_images,) ids as given (int or str)
    bias: np.ndarray  # (n_images,)
    factors: np.ndarray  # (n_images, f)
    user_factors: np.ndarray  # (n_users, f)
    penalty: float
    scale: float = 1.0  # the correction is scale x (c_i + a_u . v_i); chosen on validation (SCALES)

    def correction(self, image_rows: np.ndarray, user_rows: np.ndarray,
                   user_factors: np.ndarray | None = None) -> np.ndarray:
        """scale x (c_i + a_u·v_i) per pair; -1 in `image_rows` (not in the catalogue) drops the pair, a user
        row past `user_factors` (default: the fitted users') drops the factor term."""
        user_factors = self.user_factors if user_factors is None else user_factors
        out = np.zeros(len(image_rows))
        known = image_rows >= 0
        out[known] = self.bias[image_rows[known]]
        both = known & (user_rows >= 0) & (user_rows < len(user_factors))
        if self.factors.shape[1] and both.any():
            out[both] += np.einsum("ij,ij->i", user_factors[user_rows[both]], self.factors[image_rows[both]])
        return self.scale * out


def fit_catalogue(resid: np.ndarray, user_index: np.ndarray, image_index: np.ndarray, n_users: int,
                  n_images: int, factors: int, penalty: float, iterations: int = 25,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bias (n_images,), image factors (n_images, f), user factors (n_users, f)) by ridge ALS."""
    rng = np.random.default_rng(seed)
    # Both sides start small and random: from zeros, ALS would stay at zero.
    V = rng.normal(0, 0.1, (n_images, factors))
    A = rng.normal(0, 0.1, (n_users, factors))
    bias = np.zeros(n_images)
    by_image = _indicator(image_index, n_images)
    by_user = _indicator(user_index, n_users)
    image_counts = np.asarray(by_image.sum(axis=1)).ravel()
    for _ in range(iterations if factors else 1):
        inter = np.einsum("ij,ij->i", A[user_index], V[image_index]) if factors else 0.0
        bias = (by_image @ (resid - inter)) / (image_counts + penalty)
        if not factors:
            break
        target = resid - bias[image_index]
        V = ridge_rows(by_image, A[user_index], target, penalty)
        A = ridge_rows(by_user, V[image_index], target, penalty)
    return bias, V, A


def leave_one_out(resid: np.ndarray, targets: np.ndarray, Z: np.ndarray, user_index: np.ndarray, n_users: int,
                  precision: np.ndarray, bias_shrinkage: float, taste_weight: float,
                  chunk: int = 2048) -> np.ndarray:
    """Each training residual as it would be had its rating been left out of its user's solve.

    A user's state is solved from their own ratings as ``UserSolver.states`` does: a bias
    ``b = S/(n + s)`` (S the sum of the `targets`, rating minus mean and population score), then a
    ridge ``w = (Z'Z + P)^-1 Z'(t - b)`` on what the bias leaves. The model's residual `resid` on a
    rating it was fitted to is shrunk by that rating's pull on the solve; this returns
    ``resid + (b + g z'w) - (b_k + g z'w_k)`` with ``b_k, w_k`` solved without the rating (g: the
    taste score's blend weight), exactly, by Sherman-Morrison: one (d x d) inverse per user. The
    factor model's user vector is not re-solved: where the factor model has weight in the blend,
    its share of the shrinkage stays (the validation-chosen size takes up what remains).
    ``bias_shrinkage=inf`` means no bias; a zero-width `Z`, no taste.
    """
    n = np.bincount(user_index, minlength=n_users).astype(np.float64)
    sums = np.bincount(user_index, targets, minlength=n_users)
    bias = sums / (n + bias_shrinkage)
    bias_out = (sums[user_index] - targets) / np.maximum(n[user_index] - 1 + bias_shrinkage, 1e-12)
    shift = bias[user_index] - bias_out
    if Z.shape[1]:
        from .user_solver import user_normal_equations

        order = np.argsort(user_index, kind="stable")
        bounds = np.searchsorted(user_index[order], np.arange(n_users + 1))
        for start in range(0, n_users, chunk):  # (users x d x d) inverses, one chunk of users at a time
            stop = min(start + chunk, n_users)
            rows = order[bounds[start]:bounds[stop]]
            local = user_index[rows] - start
            grams, moments = user_normal_equations(Z[rows], local, stop - start, targets[rows])
            sums_z = np.zeros((stop - start, Z.shape[1]))
            np.add.at(sums_z, local, Z[rows])
            M = np.linalg.inv(grams + precision[None])
            Mz = np.einsum("ijk,ik->ij", M[local], Z[rows])
            h = np.einsum("ij,ij->i", Mz, Z[rows])
            q, sz = moments[local], sums_z[local]
            fitted = np.einsum("ij,ij->i", Mz, q - bias[user_index[rows], None] * sz)
            b_k = bias_out[rows]
            left_out = (np.einsum("ij,ij->i", Mz, q) - h * targets[rows]
                        - b_k * (np.einsum("ij,ij->i", Mz, sz) - h)) / np.maximum(1.0 - h, 1e-12)
            shift[rows] += taste_weight * (fitted - left_out)
    return resid + shift


def _indicator(index: np.ndarray, n: int) -> sp.csr_matrix:
    """Rows: groups; columns: ratings; 1 where the rating belongs to the group."""
    import scipy.sparse as sp

    return sp.csr_matrix((np.ones(len(index)), (index, np.arange(len(index)))), shape=(n, len(index)))


def ridge_rows(groups: sp.csr_matrix, X: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """Per group g: argmin ||y_g - X_g b||² + penalty ||b||², all groups in one batched solve."""
    f = X.shape[1]
    gram = (groups @ (X[:, :, None] * X[:, None, :]).reshape(len(X), f * f)).reshape(-1, f, f)
    rhs = groups @ (X * y[:, None])
    return np.linalg.solve(gram + penalty * np.eye(f), rhs[..., None])[..., 0]
