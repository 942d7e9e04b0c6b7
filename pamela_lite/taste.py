"""Discover the directions of image content along which people's tastes differ, from ratings.

The user model scores an image by ``w_u · z(x)``: a user's taste vector times the image's taste
coordinates. Which coordinates ``z`` to use decides what any user can learn. The principal
components of the embedding are the directions in which *images* vary most; people need not
differ there (CLIP-like embeddings spend most of their variance on content nobody's liking
depends on). This module learns ``z`` from everyone's ratings instead — the image factors of
a factorization ``r_ui ≈ w_u · (Bᵀ x_i)`` whose map ``B`` is shared by all users.

Method (a moment estimator and a few eigendecompositions; no fitting loop):

1. Whiten the embedding (PCA to every direction with non-negligible variance, scaled to unit
   variance), so no direction is favoured for having more image variance.
2. The scorer keeps the top principal components (where images differ most; on embeddings
   whose variance follows taste they are the best-estimated directions) and searches their
   orthogonal complement. Taste along the kept components is noise to that search, so it is
   removed first: each user's residuals lose the taste their ratings show along the kept
   components (a posterior mean whose prior is the kept components' own moment, step 4).
3. Per user, correlate the standardised residual ratings with the whitened complement:
   ``g_u = X_uᵀ r_u / n_u``. With ``r_u = X_u w_u + noise``, ``E[g_u] ≈ w_u``.
4. Split each user's ratings into two random halves and form the symmetrised cross-moment
   ``C = mean_u (g_uA g_uBᵀ + g_uB g_uAᵀ) / 2``. The noise of the two halves is independent
   before cleaning; each half is cleaned with the estimate from the other, which carries that
   half's noise into the product only through the sample correlation of the kept and the
   searched coordinates over a user's images — zero on average because whitening makes the
   two blocks uncorrelated over the catalogue, so ``E[C] ≈ E[w wᵀ]`` when people's images are
   not chosen along those coordinates. (Cleaning each half with its own estimate would keep
   the halves strictly independent; a review found the two give nearly the same directions,
   and the figures below are for the cross-half version.)
5. Eigen-directions of ``C`` with the largest eigenvalues are where people differ most. How
   large an eigenvalue noise alone gives is measured, not assumed: the same moment with each
   user's second-half correlations multiplied by a random sign has no taste in expectation
   and the same noise, so its largest eigenvalue is the noise edge (sign-flip null). A strong
   taste brings noise along its own direction, so each next direction is tested against the
   null's edge outside the directions already kept. The edge grows with the number of
   coordinates searched, so nested leading bands (the next principal directions first) are
   searched too and the band where taste stands furthest above its own edge is used: taste a
   little below the top components is found without drowning in hundreds of empty ones.
6. Hard bands suit taste confined to a band; taste spread thinly over hundreds of directions
   (a CLIP-like power-law spectrum) is mostly outside any band narrow enough to stand above
   its noise. So before the search every coordinate is weighted by a signal-to-noise gain,
   ``taste / (taste + noise)``, where *taste* is the moment's mean diagonal over the
   coordinate's bin of consecutive coordinates (32 by default) and *noise* the spread of the
   nulls' diagonals; the moment and its nulls are weighted alike, so the noise edge follows.
   The eigen-directions of the weighted moment lean on the coordinates that hold taste and
   take from the rest in proportion: the rest is where an unweighted eigenvector would carry
   most of its noise.

Measured on the zoo (test_seen SROCC, benchmarks/results/zoo.md of 2026-11-27 04:54 UTC):
steps 2 and 5 took heteroscedastic raters from 0.703 to 0.735 (the true basis gives 0.745),
nonlinear taste from 0.574 to 0.591 (0.591), sparse raters from 0.675 to 0.687 (0.730), and
taste in a 768-d embedding's lowest-variance third to 0.742 (0.819); no world went down.
Step 6 (zoo.md of 2026-11-27 19:25 UTC against 18:05, seed 0): powerlaw 0.671 -> 0.690 (the
true basis gives 0.782), lowest 0.741 -> 0.759, sparse 0.697 -> 0.700; taste confined to one
band lost a little (lowvar 0.773 -> 0.767, mixture 0.637 -> 0.633).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .user_solver import user_normal_equations

DENSE_EIGEN_MAX = 256  # wider blocks: the top eigenvalue by Lanczos, not a full decomposition
MIN_BAND_WIDTH = 16  # a review measured 20% spurious directions in taste-free blocks of 8
N_NULL_DRAWS = 3  # sign-flip nulls whose top eigenvalues are averaged into the noise edge
WHITEN_MAX_IMAGES = 20_000  # the whitening is a covariance estimate: a sample of images suffices


@dataclass
class Whitening:
    """``(x - mean) @ matrix`` has unit variance in every kept direction."""

    mean: np.ndarray  # (D,)
    matrix: np.ndarray  # (D, p)


def fit_whitening(x: np.ndarray, max_dim: int | None = None, seed: int = 0, tol: float = 1e-6) -> Whitening:
    """PCA whitening of the rows of `x` to at most `max_dim` directions (None: no cap).

    Directions whose variance is below `tol` times the largest are dropped: they are numerical
    dust, and whitening would blow them up.
    """
    x = x[image_sample(len(x), seed)]
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    eigvals, eigvecs = np.linalg.eigh(np.atleast_2d(cov))
    order = np.argsort(eigvals)[::-1]
    eigvals, eigvecs = eigvals[order], eigvecs[:, order]
    keep = int(np.sum(eigvals > tol * eigvals[0]))
    keep = keep if max_dim is None else min(keep, max_dim)
    return Whitening(mean, eigvecs[:, :keep] / np.sqrt(eigvals[:keep]))


def image_sample(n_images: int, seed: int = 0) -> np.ndarray | slice:
    """Rows of at most `WHITEN_MAX_IMAGES` images, seeded: what the whitening (and any regression
    in its coordinates) is estimated on; every row when there are no more."""
    if n_images <= WHITEN_MAX_IMAGES:
        return slice(None)
    return np.random.default_rng(seed).choice(n_images, WHITEN_MAX_IMAGES, replace=False)


@dataclass
class TasteMoment:
    """The second moment of users' tastes in whitened coordinates, estimated without a noise floor.

    Units are those of per-user standardised residuals. Coordinates are ordered by image
    variance (the whitening's order), so a leading block is a band of principal directions.
    """

    cross: np.ndarray  # (p, p) symmetrised split-half cross-moment, E[w wᵀ]
    nulls: np.ndarray  # (n_null, p, p) the same moment with each user's second half sign-flipped

    def directions(self, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvectors (strongest first) and eigenvalues of the leading `width` block."""
        eigvals, eigvecs = np.linalg.eigh(self.cross[:width, :width])
        order = np.argsort(eigvals)[::-1]
        return eigvecs[:, order], eigvals[order]

    def edge(self, width: int | None = None, found: np.ndarray | None = None) -> float:
        """The largest eigenvalue noise alone gives in the leading `width` block, outside `found`.

        It is the top eigenvalue of the sign-flip nulls' block (mean over draws). Flipping the
        sign of a user's second-half correlations removes their taste from the product and
        keeps its noise, including the noise strong tastes bring with them; that part lies in
        the taste directions, so the nulls are searched outside the directions already `found`
        (width, r) — otherwise one strong direction would hide weaker ones. The nulls also
        hold the tastes themselves with random signs (``Σ s_u w_u w_uᵀ``); where taste is spread
        over dozens of directions that raises the edge everywhere (a review measured 0.012 →
        0.021-0.028 with 30-60 planted directions): the edge is then conservative, one reason
        thinly spread taste (the powerlaw world) is only partly found.
        """
        if not len(self.nulls):
            raise ValueError("this moment was built without sign-flip nulls (n_nulls=0): it has no noise edge")
        found = np.zeros((self.cross[:width].shape[0], 0)) if found is None else found
        tops = [_top_eigenvalue(null[:width, :width], found) for null in self.nulls]
        return max(float(np.mean(tops)), 0.0)

    def band(self, width: int | None = None, threshold: float = 1.3, max_rank: int = 32
             ) -> tuple[np.ndarray, np.ndarray, float]:
        """The directions of the leading `width` block that stand above its noise edge.

        A direction is kept when its eigenvalue exceeds `threshold` times the edge outside the
        directions kept before it; kept directions lower the edge, which may let the next in,
        so the count is grown until it stops changing. Returns the kept directions (width, r),
        their eigenvalues and the final edge.

        Why 1.3: the edge is ~10% below where taste-free eigenvalues end (averaging four splits
        skews the moment's noise upward, the sign-flipped nulls stay symmetric; with one split
        the two match, 0.98-1.03x, but the moment is noisier): over 12 taste-free
        draws the top eigenvalue was 1.03-1.17x the edge in a block of 100 and 1.09-1.20x in
        one of 400 (0.81-1.34x in a block of 20: narrow blocks vary more) — no drift with the
        width, which the old yardstick (the moment's most negative eigenvalue) had: 1.1-1.4x in
        32 directions, ~2x in 480. On the zoo 1.3 beat 1.4, 1.5 and 1.75 (hetero 0.735
        vs 0.729 / 0.723 / 0.722) and let no direction into the demo world, whose strongest
        candidate stands at 1.22x.
        """
        vectors, strengths = self.directions(width)
        rank, edge = 0, self.edge(width)
        if edge <= 0:  # a block too small for the nulls to show any noise: nothing can be told apart
            return vectors[:, :0], strengths[:0], edge
        for _ in range(max_rank):
            grown = min(int(np.sum(strengths > threshold * edge)), max_rank)
            if grown <= rank:
                break
            rank, deflated = grown, self.edge(width, vectors[:, :grown])
            if deflated <= 0:  # no noise left to measure outside the kept directions: stop growing
                break
            edge = deflated
        return vectors[:, :rank], strengths[:rank], edge

    def weighted(self, bin_width: int = 32) -> "TasteMoment":
        """The moment (and its nulls) with every coordinate scaled by its gain (:meth:`gains`).

        The eigen-directions of the scaled moment lean on the coordinates where taste stands
        above the noise and take from the others in proportion to the taste they hold, instead
        of all of a band or none of it. They are used as directions of the unscaled coordinates:
        shrunk along the weak coordinates, which is where an eigenvector's noise would sit.
        """
        gains = self.gains(bin_width)
        scale = gains[:, None] * gains[None, :]
        return TasteMoment(self.cross * scale, self.nulls * scale[None])

    def gains(self, bin_width: int = 32) -> np.ndarray:
        """Per coordinate, the signal-to-noise gain ``taste / (taste + noise)`` of its bin, largest 1.

        *taste* is the moment's mean diagonal over the coordinate's bin of `bin_width`
        consecutive coordinates (a short last bin joins the one before): one coordinate's own
        diagonal is too noisy, and neighbours in image variance hold similar taste in every world
        of the zoo. *noise* is the spread of a single diagonal entry where there is no taste
        (the standard deviation of the sign-flip nulls' diagonals): the gain weighs a
        coordinate's taste against the noise of its own entries, which is what its share of an
        eigenvector carries; the bin only steadies the taste estimate. Bins must be wide
        (`MIN_BAND_WIDTH` or more): gains picked from a few entries of the diagonal favour that
        diagonal's own noise, and taste-free ratings then yield directions. Every gain is 1
        when no bin shows taste.
        """
        if not len(self.nulls):
            raise ValueError("this moment was built without sign-flip nulls (n_nulls=0): its noise is unknown")
        diagonal = np.diag(self.cross)
        noise = float(np.mean([np.std(np.diag(null)) for null in self.nulls]))
        starts = list(range(0, len(diagonal), bin_width))
        if len(starts) > 1 and len(diagonal) - starts[-1] < bin_width:
            starts.pop()  # the short last bin joins the one before
        taste = np.zeros_like(diagonal)
        for start, stop in zip(starts, starts[1:] + [len(diagonal)]):
            taste[start:stop] = max(float(diagonal[start:stop].mean()), 0.0)
        gains = taste / np.maximum(taste + noise, 1e-300)
        return gains / gains.max() if gains.max() > 0 else np.ones_like(diagonal)

    def strongest_band(self, widths: list[int], threshold: float = 1.3, max_rank: int = 32) -> np.ndarray:
        """Directions from the leading block in which taste stands furthest above the noise.

        The noise edge grows with the number of coordinates searched, so taste confined to the
        first few hundred directions can sit below the edge of the whole space and above that
        of its own band. Each of the nested leading blocks of `widths` coordinates is searched
        (`band`), and the block whose kept eigenvalues rise furthest, in total, above its own
        noise edge is used: a wider band wins when the taste it adds outweighs its higher edge
        (measured from the edge, not from `threshold` times it: with the old yardstick, which
        sat ever further below the noise in wider blocks, that let a wide block's near-noise
        directions win; with the sign-flip edge it picks the band that holds all of the taste —
        mixture 0.635 vs 0.621 when measured from 1.3x the edge, trial runs). Blocks narrower
        than `MIN_BAND_WIDTH` are not searched: three nulls give too unsteady an edge there.
        Returns (width, r): the directions within that block, or an empty (0, 0) array when
        none stands out.
        """
        best, chosen = 0.0, np.zeros((0, 0))
        for width in (w for w in widths if w >= MIN_BAND_WIDTH):
            vectors, strengths, edge = self.band(width, threshold, max_rank)
            excess = float(np.sum(strengths - edge))
            if len(strengths) and excess > best:
                best, chosen = excess, vectors
        return chosen


def _top_eigenvalue(matrix: np.ndarray, outside: np.ndarray) -> float:
    """Largest eigenvalue of `matrix` restricted to the orthogonal complement of `outside`'s columns
    (the complement's zero eigenvalues aside, which only matter when every other is negative)."""
    return _lanczos_top(matrix, outside) if len(matrix) > DENSE_EIGEN_MAX else _dense_top(matrix, outside)


def _dense_top(matrix, outside) -> float:
    projector = np.eye(len(matrix)) - outside @ outside.T
    return float(np.linalg.eigvalsh(projector @ matrix @ projector)[-1])


def _lanczos_top(matrix, outside) -> float:
    def project(v):
        return v - outside @ (outside.T @ v)
    operator = spla.LinearOperator(matrix.shape, matvec=lambda v: project(matrix @ project(v.ravel())), dtype=float)
    start = project(np.ones(len(matrix)))
    try:
        return float(spla.eigsh(operator, k=1, which="LA", v0=start, tol=1e-4)[0][0])
    except spla.ArpackError:  # rare (no convergence, a degenerate start); the full decomposition always answers
        return _dense_top(matrix, outside)


def taste_moment(white_images: np.ndarray, resid: np.ndarray, user_index: np.ndarray,
                 image_index: np.ndarray, n_users: int, seed: int = 0, n_splits: int = 4,
                 known: int = 0, n_nulls: int = N_NULL_DRAWS) -> TasteMoment:
    """The users' taste second moment from their residual ratings (see the module docstring).

    Parameters
    ----------
    white_images : (n_images, p) whitened embeddings of the images rated.
    resid : (n,) residual ratings (after the population head and user bias).
    user_index, image_index : (n,) the user and image of each rating.
    n_splits : random half-splits averaged, to steady the estimate.
    known : leading coordinates whose taste the scorer models anyway (the principal
        components). Their taste is noise to a search elsewhere, so each half's residuals are
        cleaned of the taste a per-user posterior mean on those coordinates finds in the
        *other* half (the prior is those coordinates' own moment; see step 4 of the module
        docstring for what that does to the halves' independence), and the moment covers the
        remaining ``p - known`` coordinates only.
    n_nulls : sign-flip nulls drawn for the noise edge (none when only the directions are needed).
    """
    rng = np.random.default_rng(seed)
    counts = np.bincount(user_index, minlength=n_users).astype(np.float64)
    # Standardise each user's residuals, so people who use the scale widely do not dominate.
    mean = np.bincount(user_index, resid, n_users) / np.maximum(counts, 1)
    var = np.bincount(user_index, (resid - mean[user_index]) ** 2, n_users) / np.maximum(counts - 1, 1)
    scaled = (resid - mean[user_index]) / np.sqrt(np.maximum(var, 1e-12))[user_index]
    usable = counts >= 4
    halves = [rng.random(len(resid)) < 0.5 for _ in range(n_splits)]
    cleaned = [(scaled, scaled)] * n_splits
    if known:
        # Prior of the known block's tastes: its own noise-free moment, made positive
        # semi-definite. Where those coordinates carry no taste the prior holds only the noise's
        # small positive eigenvalues and the cleaning
        # subtracts ~nothing (a plain ridge would subtract its fit to noise).
        known_rows = white_images[image_index, :known]
        eigvals, eigvecs = np.linalg.eigh(_cross_moment(white_images[:, :known], cleaned, user_index, image_index,
                                                        n_users, halves, usable)[0])
        prior = (eigvecs * np.maximum(eigvals, 0.0)) @ eigvecs.T
        cleaned = []
        for half in halves:
            taste_a = _posterior_taste(known_rows, scaled, user_index, n_users, half, prior)
            taste_b = _posterior_taste(known_rows, scaled, user_index, n_users, ~half, prior)
            cleaned.append((scaled - np.einsum("ij,ij->i", known_rows, taste_b[user_index]),
                            scaled - np.einsum("ij,ij->i", known_rows, taste_a[user_index])))
    signs = rng.choice([-1.0, 1.0], size=(n_nulls, int(usable.sum())))
    cross, nulls = _cross_moment(white_images[:, known:], cleaned, user_index, image_index, n_users, halves, usable,
                                 signs)
    return TasteMoment(cross, nulls)


def _cross_moment(coords, residuals, user_index, image_index, n_users, halves, usable, signs=None):
    """The symmetrised split-half cross-moment of the users' correlations with `coords`, and its
    sign-flip nulls (one per row of `signs`, a sign per usable user, the same in every split);
    `residuals` holds, per split, the residuals (first half's, second half's) to correlate."""
    p = coords.shape[1]
    signs = np.zeros((0, int(usable.sum()))) if signs is None else signs
    cross, nulls = np.zeros((p, p)), np.zeros((len(signs), p, p))
    scale = 2 * max(int(usable.sum()), 1) * len(halves)
    for (a, b), half in zip(residuals, halves):
        ga = _user_correlations(coords, a, user_index, image_index, n_users, half)[usable]
        gb = _user_correlations(coords, b, user_index, image_index, n_users, ~half)[usable]
        ab = ga.T @ gb
        cross += (ab + ab.T) / scale
        for null, sign in zip(nulls, signs):
            ab = ga.T @ (gb * sign[:, None])
            null += (ab + ab.T) / scale
    return cross, nulls


def _posterior_taste(Z, r, user_index, n_users, rows, prior) -> np.ndarray:
    """Per user, the posterior mean taste on `Z` from the chosen rows (unit noise, prior
    covariance `prior`, which may be singular: ``(S Z'Z + I)⁻¹ S Z'r``)."""
    grams, moments = user_normal_equations(Z[rows], user_index[rows], n_users, r[rows])
    lhs = prior[None] @ grams + np.eye(Z.shape[1])[None]
    return np.linalg.solve(lhs, (moments @ prior.T)[..., None])[..., 0]


def _user_correlations(white_images, scaled, user_index, image_index, n_users, rows) -> np.ndarray:
    """Per user, the mean of (residual x whitened embedding) over the chosen rating rows."""
    n = np.bincount(user_index[rows], minlength=n_users).astype(np.float64)
    weights = scaled[rows] / np.maximum(n, 1)[user_index[rows]]
    matrix = sp.csr_matrix((weights, (user_index[rows], image_index[rows])), shape=(n_users, len(white_images)))
    return np.asarray(matrix @ white_images)
