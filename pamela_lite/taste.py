"""Discover the directions of image content along which people's tastes differ, from ratings.

The user model scores an image by ``w_u · z(x)``: a user's taste vector times the image's taste
coordinates. Which coordinates ``z`` to use decides what any user can learn. The principal
components of the embedding are the directions in which *images* vary most; people need not
differ there (CLIP-like embeddings spend most of their variance on content nobody's liking
depends on). This module learns ``z`` from everyone's ratings instead — the image factors of
a factorization ``r_ui ≈ w_u · (Bᵀ x_i)`` whose map ``B`` is shared by all users.

Method (a moment estimator, one eigendecomposition, no iterations):

1. Whiten the embedding (PCA to every direction with non-negligible variance, scaled to unit
   variance), so no direction is favoured for having more image variance.
2. Per user, correlate the standardised residual ratings with the whitened embedding:
   ``g_u = X_uᵀ r_u / n_u``. With ``r_u = X_u w_u + noise``, ``E[g_u] ≈ w_u``.
3. Split each user's ratings into two random halves and form the symmetrised cross-moment
   ``C = mean_u (g_uA g_uBᵀ + g_uB g_uAᵀ) / 2``. Noise in the two halves is independent, so
   ``E[C] = E[w wᵀ]``: the second moment of tastes, with no noise floor.
4. Eigen-directions of ``C`` with the largest eigenvalues are where people differ most. The
   noise in ``C`` is symmetric around zero, so the size of its most negative eigenvalue says
   how large an eigenvalue noise alone produces; directions above it are kept (the rank is
   chosen by the data, capped by the caller).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

import os
DIRS_FROM_FULL = bool(os.environ.get("DIRS_FULL"))
WHITEN_MAX_IMAGES = 20_000  # the whitening is a covariance estimate: a sample of images suffices


@dataclass
class Whitening:
    """``(x - mean) @ matrix`` has unit variance in every kept direction."""

    mean: np.ndarray  # (D,)
    matrix: np.ndarray  # (D, p)


def fit_whitening(x: np.ndarray, max_dim: int, seed: int = 0, tol: float = 1e-6) -> Whitening:
    """PCA whitening of the rows of `x` to at most `max_dim` directions.

    Directions whose variance is below `tol` times the largest are dropped: they are numerical
    dust, and whitening would blow them up.
    """
    if len(x) > WHITEN_MAX_IMAGES:
        x = x[np.random.default_rng(seed).choice(len(x), WHITEN_MAX_IMAGES, replace=False)]
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    eigvals, eigvecs = np.linalg.eigh(np.atleast_2d(cov))
    order = np.argsort(eigvals)[::-1]
    eigvals, eigvecs = eigvals[order], eigvecs[:, order]
    keep = min(int(np.sum(eigvals > tol * eigvals[0])), max_dim)
    return Whitening(mean, eigvecs[:, :keep] / np.sqrt(eigvals[:keep]))


@dataclass
class TasteMoment:
    """The second moment of users' tastes in whitened coordinates, estimated without noise floor.

    Units are those of per-user standardised residuals: ``noise`` is the share of a typical
    user's residual variance that no taste explains.
    """

    cross: np.ndarray  # (p, p) symmetrised split-half cross-moment, E[w wᵀ]
    full: np.ndarray  # (p, p) moment of all-ratings correlations: E[w wᵀ] + a noise floor
    noise_level: float  # the largest eigenvalue noise alone gives (|most negative eigenvalue|)
    noise: float  # residual variance share left after taste

    def directions(self, block: slice) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvectors (strongest first) and eigenvalues of one diagonal block of the moment."""
        eigvals, eigvecs = np.linalg.eigh(self.cross[block, block])
        order = np.argsort(eigvals)[::-1]
        if DIRS_FROM_FULL:
            _, fvecs = np.linalg.eigh(self.full[block, block])
            return fvecs[:, ::-1], eigvals[order]
        return eigvecs[:, order], eigvals[order]

    def rank(self, strengths: np.ndarray, threshold: float = 2.0) -> int:
        """How many of the given eigenvalues stand clearly above the noise.

        An eigenvalue just above the noise edge has an eigenvector mostly made of noise; at
        about twice the edge the direction itself becomes informative.
        """
        return int(np.sum(strengths > threshold * self.noise_level))

    def prior_precision(self, basis: np.ndarray, floor: float) -> np.ndarray:
        """Precision of the taste prior on coordinates ``z = x_white @ basis``, in ridge form.

        Bayesian linear regression with prior ``w ~ N(0, S)`` and noise variance ``s2`` solves
        ``(ZᵀZ + s2 S⁻¹) w = Zᵀr``: this returns ``s2 S⁻¹`` with ``S = basisᵀ C basis`` made
        positive definite by lifting eigenvalues below ``floor · noise_level`` to that level
        (directions the data cannot tell from noise keep a tight prior).
        """
        moment = basis.T @ self.cross @ basis
        eigvals, eigvecs = np.linalg.eigh((moment + moment.T) / 2)
        eigvals = np.maximum(eigvals, max(floor * self.noise_level, 1e-9))
        return self.noise * (eigvecs / eigvals) @ eigvecs.T


def taste_moment(white_images: np.ndarray, resid: np.ndarray, user_index: np.ndarray,
                 image_index: np.ndarray, n_users: int, seed: int = 0, n_splits: int = 4) -> TasteMoment:
    """The users' taste second moment from their residual ratings (see the module docstring).

    Parameters
    ----------
    white_images : (n_images, p) whitened embeddings of the images rated.
    resid : (n,) residual ratings (after the population head and user bias).
    user_index, image_index : (n,) the user and image of each rating.
    n_splits : random half-splits averaged, to steady the estimate.
    """
    rng = np.random.default_rng(seed)
    counts = np.bincount(user_index, minlength=n_users).astype(np.float64)
    # Standardise each user's residuals, so people who use the scale widely do not dominate.
    mean = np.bincount(user_index, resid, n_users) / np.maximum(counts, 1)
    var = np.bincount(user_index, (resid - mean[user_index]) ** 2, n_users) / np.maximum(counts - 1, 1)
    scaled = (resid - mean[user_index]) / np.sqrt(np.maximum(var, 1e-12))[user_index]
    usable = counts >= 4
    p = white_images.shape[1]
    cross = np.zeros((p, p))
    for _ in range(n_splits):
        half = rng.random(len(resid)) < 0.5
        ga = _user_correlations(white_images, scaled, user_index, image_index, n_users, half)[usable]
        gb = _user_correlations(white_images, scaled, user_index, image_index, n_users, ~half)[usable]
        ab = ga.T @ gb
        cross += (ab + ab.T) / (2 * max(int(usable.sum()), 1))
    cross /= n_splits
    g = _user_correlations(white_images, scaled, user_index, image_index, n_users, np.ones(len(resid), bool))[usable]
    full = g.T @ g / max(int(usable.sum()), 1)
    eigvals = np.linalg.eigvalsh(cross)
    # The trace is unbiased for the taste variance share (noise eigenvalues cancel in the sum).
    noise = float(np.clip(1.0 - np.trace(cross), 0.2, 1.0))
    return TasteMoment(cross, full, float(max(-eigvals.min(), 0.0)), noise)


def _user_correlations(white_images, scaled, user_index, image_index, n_users, rows) -> np.ndarray:
    """Per user, the mean of (residual x whitened embedding) over the chosen rating rows."""
    n = np.bincount(user_index[rows], minlength=n_users).astype(np.float64)
    weights = scaled[rows] / np.maximum(n, 1)[user_index[rows]]
    matrix = sp.csr_matrix((weights, (user_index[rows], image_index[rows])), shape=(n_users, len(white_images)))
    return np.asarray(matrix @ white_images)
