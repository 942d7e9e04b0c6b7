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
   how large an eigenvalue noise alone produces; directions well above it are kept (the rank
   is chosen by the data, capped by the caller).

The scorer keeps the top principal components (where images differ most; on embeddings whose
variance follows taste they are the best-estimated directions) and adds the learned directions
of their orthogonal complement, so taste that lives in low-variance directions is found too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

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
    """The second moment of users' tastes in whitened coordinates, estimated without a noise floor.

    Units are those of per-user standardised residuals.
    """

    cross: np.ndarray  # (p, p) symmetrised split-half cross-moment, E[w wᵀ]
    noise_level: float  # the largest eigenvalue noise alone gives (|most negative eigenvalue|)

    def directions(self, block: slice) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvectors (strongest first) and eigenvalues of one diagonal block of the moment."""
        eigvals, eigvecs = np.linalg.eigh(self.cross[block, block])
        order = np.argsort(eigvals)[::-1]
        return eigvecs[:, order], eigvals[order]

    def rank(self, strengths: np.ndarray, threshold: float = 2.0) -> int:
        """How many of the given eigenvalues stand clearly above the noise.

        An eigenvalue just above the noise edge has an eigenvector made mostly of noise; at
        about twice the edge the direction itself becomes informative (on validation worlds,
        1.5x let in noise directions and cost accuracy; 3x missed real ones).
        """
        return int(np.sum(strengths > threshold * self.noise_level))


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
    lowest = float(np.linalg.eigvalsh(cross)[0])
    return TasteMoment(cross, max(-lowest, 0.0))


def _user_correlations(white_images, scaled, user_index, image_index, n_users, rows) -> np.ndarray:
    """Per user, the mean of (residual x whitened embedding) over the chosen rating rows."""
    n = np.bincount(user_index[rows], minlength=n_users).astype(np.float64)
    weights = scaled[rows] / np.maximum(n, 1)[user_index[rows]]
    matrix = sp.csr_matrix((weights, (user_index[rows], image_index[rows])), shape=(n_users, len(white_images)))
    return np.asarray(matrix @ white_images)
