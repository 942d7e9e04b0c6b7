"""A zoo of PAMELA-format synthetic worlds with ground truth (issue 8 §1).

The demo world (``demo.py``) is one way taste could work; a model tuned on it can look better
than it is. The zoo holds *families* of worlds, each built around one mechanism of taste or of
rating behaviour, written independently of how any model works. Every world:

* has PAMELA's shape by default (about 5k images, 200 users, 14 raters per image, the five
  splits with about 5% unseen users, demographics age/gender/nationality, image metadata
  group/style/type/prompt) and lets its config set the embedding dimension, the rating scale
  (``low..high``, which may start at 0), int or string ids, users, images and ratings;
* is deterministic per seed and takes a few seconds to build at the default size;
* carries its ground truth: per rating the noise-free ``utility`` and the ``expected_rating``
  (``demo_truth.parquet``, the noise ceiling); per image the population ``appeal`` and the
  TRUE taste features (``taste_features``, images x t) every person's utility is linear in;
  per user the true weights on those features; and, where one exists, ``taste_basis``: a
  D x b matrix in embedding space whose columns span the directions taste depends on.

Utility of user u for image i is ``sqrt(s) z(appeal_i) + sqrt(1 - s) z(sum_b w_ub . F_b,i)``
(standardised over ratings, s = ``population_share``), seen through per-user ordinal
thresholds with rating noise. Per image the TRUE taste features ``F`` and ``appeal`` make
the utility exactly linear per user — what the ``TasteRidge`` reference uses. By default a
quarter of the noise-free utility's variance is population appeal and three quarters personal
taste; rating noise (sd 0.55 on that unit-variance utility) adds about 23% of the latent
variance, which puts the noise ceiling near PAMELA-like 0.8 per-user SROCC.

Families (``FAMILIES``; ``python -m pamela_lite.demo --world list``):

========== ====================================================================================
demo       the original demo world (low-rank content, shared taste, categories, demographics)
lowvar     taste along directions of LOW embedding variance (outside the top 64 components)
categorical likes/dislikes of groups, styles and Art vs Photorealism dominate
nonlinear  thresholds and interactions of taste with image type and demographics; nonlinear appeal
hetero     heteroscedastic raters: per-user noise, shifted/spread/compressed/extreme scale use
sparse     about 4 raters per image and about 100 ratings per user
shared     seen users' val/test images are also rated by others in train; collaborative taste
           factors that the embedding does not show
powerlaw   CLIP-like power-law spectrum, taste along random directions spread over all of it
mixture    all of the above mechanisms at once
========== ====================================================================================

Files a written world adds to PAMELA's layout: ``world_truth.npz`` (arrays, no pickle) and
``world_truth.json`` (family, config, feature names, variance shares, diagnostics); see
:class:`WorldTruth`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import scipy.fft
import scipy.linalg

from . import demo
from ._atomic import atomic_dir
from .data import Dataset, Scale, person_demographics

TRUTH_NPZ = "world_truth.npz"
TRUTH_JSON = "world_truth.json"
FORMAT = 1


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and options of a world; each family has its own defaults (:func:`default_config`).

    ``n_ratings`` wins over ``ratings_per_user``, which wins over ``raters_per_image``.
    ``string_ids`` None keeps the family's default id types.
    """

    n_users: int = 200
    n_images: int = 5000
    raters_per_image: float = 14.0
    ratings_per_user: int | None = None
    n_ratings: int | None = None
    dim: int = 768
    low: int = 1
    high: int = 5
    string_ids: bool | None = False
    population_share: float = 0.25
    noise: float = 0.55
    seed: int = 0

    @property
    def total_ratings(self) -> int:
        if self.n_ratings is not None:
            n = self.n_ratings
        elif self.ratings_per_user is not None:
            n = self.ratings_per_user * self.n_users
        else:
            n = round(self.n_images * self.raters_per_image)
        return int(min(n, self.n_users * self.n_images))

    @property
    def scale(self) -> Scale:
        return Scale(self.low, self.high)


@dataclass
class World:
    """A generated world: PAMELA-shaped data plus its ground truth."""

    name: str
    config: WorldConfig
    images: pl.DataFrame
    users: pl.DataFrame
    ratings: pl.DataFrame          # participant_id, image_id, original_score, split
    truth: pl.DataFrame            # participant_id, image_id, utility, expected_rating
    embeddings: np.ndarray         # (n_images, D) float32, L2-normalised, rows as images
    appeal: np.ndarray             # (n_images,) population appeal
    taste_features: np.ndarray     # (n_images, t) true per-image taste features
    feature_names: list[str]
    user_weights: np.ndarray       # (n_users, t) true weights, rows as users
    user_noise: np.ndarray         # (n_users,) sd of each user's rating noise (latent units)
    taste_basis: np.ndarray        # (D, b) embedding-space taste directions (b may be 0)
    basis_exact: bool              # True: taste features are exactly linear in the basis
    info: dict = field(default_factory=dict)

    @property
    def scale(self) -> Scale:
        return self.config.scale


# ----------------------------------------------------------------------------- building blocks


def _ids(n_users: int, n_images: int, string_ids: bool):
    if string_ids:
        return ([f"rater_{k:05d}" for k in range(n_users)], [f"img_{k:06d}" for k in range(n_images)])
    return (np.arange(1, n_users + 1, dtype=np.int64) * 7 + 1000,
            np.arange(n_images, dtype=np.int64) + 200000)


def _catalogue(n: int, rng: np.random.Generator):
    """Group, style (-1 for none) and Art flag of each image, PAMELA's vocabulary."""
    group = rng.integers(0, len(demo.GROUPS), n)
    is_art = np.isin(np.array(demo.GROUPS)[group], demo.ART_GROUPS) | (rng.random(n) < 0.12)
    style = np.where(is_art, rng.integers(0, len(demo.STYLES), n), -1)
    return group, style, is_art


def _images_frame(ids, group, style, is_art) -> pl.DataFrame:
    names = np.array(demo.GROUPS)[group]
    types = np.where(is_art, "Art", "Photorealism")
    return pl.DataFrame({
        "image_id": ids,
        "image_path": [f"images/{g.replace(' ', '_')}/{i}.png" for i, g in zip(ids, names)],
        "group": names,
        "style": [demo.STYLES[s] if s >= 0 else None for s in style],
        "type": types,
        "prompt": [f"a {t.lower()} {g} image, variation {k % 97}" for k, (t, g) in enumerate(zip(types, names))],
    })


@dataclass
class _Users:
    n_users: int


def _users_frame(ids, rng: np.random.Generator) -> pl.DataFrame:
    users = demo._make_users(_Users(len(ids)), rng)
    return users.with_columns(participant_id=pl.Series(ids))


def _demographics(users: pl.DataFrame) -> dict[str, np.ndarray]:
    age = users["age"].to_numpy().astype(float)
    return {"age_z": (age - 40) / 12, "age": age,
            "female": (users["gender"] == "female").to_numpy().astype(float),
            "male": (users["gender"] == "male").to_numpy().astype(float)}


@dataclass
class _Space:
    """Embeddings and their empirical principal axes (descending variance)."""

    x: np.ndarray        # (n, D) float32 normalised
    mean: np.ndarray     # (D,)
    axes: np.ndarray     # (D, D) columns: principal directions
    var: np.ndarray      # (D,) variance along each

    def project(self, basis: np.ndarray) -> np.ndarray:
        """Standardised projections of the centred embeddings on the columns of `basis`."""
        f = (self.x - self.mean) @ basis
        return (f - f.mean(0)) / f.std(0)

    def directions(self, rng, lo: int, hi: int, t: int) -> np.ndarray:
        """`t` random unit directions in the span of principal axes lo..hi (0-based, hi excl.)."""
        hi = min(hi, self.axes.shape[1])
        lo = min(lo, hi - 1)
        mix = rng.normal(0, 1, (hi - lo, t))
        b = self.axes[:, lo:hi] @ mix
        return b / np.linalg.norm(b, axis=0)


def _embed(rng, dim: int, group, style, is_art, alpha: float, strengths=(1.2, 0.7, 0.8, 1.0),
           flat_after: int | None = None) -> _Space:
    """CLIP-like embeddings: a shared mean direction plus group, style, type and image parts,
    each drawn with a power-law spectrum ``k^-alpha`` over a random orthonormal basis
    (``flat_after``: the spectrum stops falling after that many directions)."""
    n = len(group)
    k = np.arange(1, dim + 1, dtype=float)
    if flat_after is not None:
        k = np.minimum(k, flat_after)
    sd = k ** (-alpha / 2)
    g, s, t, idio = strengths

    def draw(m):
        return rng.standard_normal((m, dim)) * sd

    coords = g * draw(len(demo.GROUPS))[group]
    coords += s * np.where(style[:, None] >= 0, draw(len(demo.STYLES))[np.maximum(style, 0)], 0.0)
    coords += t * draw(2)[is_art.astype(int)]
    coords += idio * draw(n)
    x = _rotate(coords, rng)
    common = rng.standard_normal(dim)
    x += 0.8 * np.sqrt((sd ** 2).sum() * (g * g + s * s + t * t + idio * idio)) * common / np.linalg.norm(common)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = x.astype(np.float32)
    return _space(x)


def _space(x: np.ndarray) -> _Space:
    mean = x.mean(0, dtype=np.float64)
    xc = x - mean
    var, axes = scipy.linalg.eigh((xc.T @ xc) / len(x), driver="evd")
    return _Space(x, mean, axes[:, ::-1].copy(), var[::-1].copy())


def _rotate(coords: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal map of the rows (sign flips, permutations and two orthonormal DCTs:
    well mixed, and far cheaper than a dense random rotation at D = 1152)."""
    dim = coords.shape[1]
    x = coords
    for _ in range(2):
        x = x[:, rng.permutation(dim)] * rng.choice([-1.0, 1.0], dim)
        x = scipy.fft.dct(x, axis=1, norm="ortho")
    return x


def _one_hot(index: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((len(index), n))
    rows = np.flatnonzero(index >= 0)
    out[rows, index[rows]] = 1.0
    return out


def _ls_basis(space: _Space, feats: np.ndarray, ridge: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Embedding directions that best reproduce `feats` linearly, and the R^2 of each feature."""
    xc = space.x - space.mean
    keep = space.var > space.var[0] * 1e-8
    scores = xc @ space.axes[:, keep]
    fc = feats - feats.mean(0)
    coef = (scores.T @ fc) / (len(xc) * space.var[keep] + ridge)[:, None]
    fit = scores @ coef
    r2 = 1 - ((fc - fit) ** 2).sum(0) / np.maximum((fc ** 2).sum(0), 1e-12)
    basis = space.axes[:, keep] @ coef
    return basis / np.maximum(np.linalg.norm(basis, axis=0), 1e-12), r2


def _scale_use(rng, latent_sample, levels: int, n_users: int, shift_sd=0.45, spread_sd=0.2,
               compressed=0.0, extreme=0.0, lean=1.15) -> np.ndarray:
    """Per-user ordered thresholds (users x levels-1): a personal shift and spread of the
    population's cut points; `compressed` users stretch them (they use the middle of the
    scale), `extreme` users squeeze them (they use the ends)."""
    qs = np.linspace(0, 1, levels + 1)[1:-1] ** lean
    base = np.quantile(latent_sample, qs)
    shift = rng.normal(0, shift_sd, (n_users, 1))
    spread = np.exp(rng.normal(0, spread_sd, (n_users, 1)))
    kind = rng.random((n_users, 1))
    spread = np.where(kind < compressed, rng.uniform(2.0, 3.5, (n_users, 1)), spread)
    spread = np.where((kind >= compressed) & (kind < compressed + extreme), rng.uniform(0.2, 0.45, (n_users, 1)), spread)
    return shift + spread * (base - base.mean()) + base.mean()


@dataclass
class _Taste:
    """What a family decides; `_finish` turns it into ratings and truth."""

    appeal: np.ndarray                      # (n_images,)
    blocks: list                            # [(names, F (n_images x t), W (n_users x t), share)]
    basis: np.ndarray | None = None         # exact embedding basis, if the family has one
    basis_features: list | None = None      # feature names the basis covers (None: all)
    basis_exact: bool = True                # those features are linear in the basis
    user_noise: np.ndarray | None = None    # (n_users,), default cfg.noise
    scale_use: dict = field(default_factory=dict)
    by: str = "image"
    notes: str = ""


def _zscore(v: np.ndarray) -> tuple[np.ndarray, float, float]:
    m, s = float(v.mean()), float(v.std())
    return (v - m) / (s if s > 0 else 1.0), m, (s if s > 0 else 1.0)


def _finish(name: str, cfg: WorldConfig, rng, space: _Space, images: pl.DataFrame,
            users: pl.DataFrame, taste: _Taste, ru, ri, split, t0: float) -> World:
    n_users = users.height
    pop_a, am, asd = _zscore(taste.appeal[ri])
    personal = np.zeros(len(ri))
    feats, weights, names = [], [], []
    raw = []
    for block_names, f, w, share in taste.blocks:
        contrib = np.einsum("ij,ij->i", w[ru], f[ri])
        raw.append((contrib, share))
        feats.append(f)
        names += list(block_names)
    for (contrib, share), (_, f, w, _) in zip(raw, taste.blocks):
        c = np.sqrt(share) / max(float(contrib.std()), 1e-12)
        personal += c * contrib
        weights.append(c * w)
    pers_z, pm, psd = _zscore(personal)
    s = cfg.population_share
    utility = np.sqrt(s) * pop_a + np.sqrt(1 - s) * pers_z
    utility, um, usd = _zscore(utility)
    # exact linear form: utility = const + a * appeal_i + W_u . F_i
    a_coef = np.sqrt(s) / asd / usd
    w_eff = np.hstack(weights) * (np.sqrt(1 - s) / psd / usd)

    noise = taste.user_noise if taste.user_noise is not None else np.full(n_users, cfg.noise)
    pair_noise = noise[ru]
    latent = utility + rng.normal(0, 1, len(ru)) * pair_noise
    levels = cfg.high - cfg.low + 1
    thr = _scale_use(rng, latent, levels, n_users, **taste.scale_use)
    score, expected = demo.ordinal_ratings(utility, latent, thr[ru], pair_noise, cfg.low)

    pid = users["participant_id"].to_numpy()[ru] if users["participant_id"].dtype != pl.String \
        else np.array(users["participant_id"].to_list(), dtype=object)[ru]
    iid_all = images["image_id"].to_list() if images["image_id"].dtype == pl.String else images["image_id"].to_numpy()
    iid = np.asarray(iid_all, dtype=object if images["image_id"].dtype == pl.String else np.int64)[ri]
    ratings = pl.DataFrame({
        "participant_id": pl.Series(pid, dtype=users["participant_id"].dtype),
        "image_id": pl.Series(iid, dtype=images["image_id"].dtype),
        "original_score": score.astype(np.int64), "split": split,
    })
    truth = pl.DataFrame({
        "participant_id": ratings["participant_id"], "image_id": ratings["image_id"],
        "utility": utility.astype(np.float64), "expected_rating": expected.astype(np.float64),
    })
    F = np.hstack(feats)
    if taste.basis is not None:
        basis, exact = taste.basis, taste.basis_exact
        r2 = None
    else:
        cover = F if taste.basis_features is None else F[:, [names.index(n) for n in taste.basis_features]]
        basis, r2 = _ls_basis(space, cover)
        exact = False
    info = {
        "family": name, "description": FAMILIES[name].summary if name in FAMILIES else "",
        "notes": taste.notes, "split_by": taste.by,
        "appeal_coef": float(a_coef), "utility_offset": float(-am * a_coef),
        "variance": _variance_shares(utility, expected, score, pair_noise, rng),
        "diagnostics": _diagnostics(space, F, w_eff, taste.appeal, rng),
        "taste_basis_features": taste.basis_features if taste.basis_features is not None else names,
        "taste_basis_r2": None if r2 is None else [float(v) for v in r2],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return World(name, cfg, images, users, ratings, truth, space.x, taste.appeal.astype(np.float64),
                 F.astype(np.float64), names, w_eff, noise.astype(np.float64),
                 np.asarray(basis, dtype=np.float64), exact, info)


def _variance_shares(utility, expected, score, pair_noise, rng) -> dict:
    return {
        "rating_sd": float(np.std(score)),
        "noise_sd_mean": float(np.mean(pair_noise)),
        "latent_signal_share": float(1 / (1 + np.mean(pair_noise ** 2))),  # utility has unit variance
        "corr_rating_expected": float(np.corrcoef(score, expected)[0, 1]),
    }


def _diagnostics(space: _Space, F, W, appeal, rng) -> dict:
    """How much of the people's taste is linear in the top principal components / the whole
    embedding (R^2 of each user's image-level personal utility, averaged over 64 users)."""
    xc = space.x - space.mean
    keep = space.var > space.var[0] * 1e-8
    scores = xc @ space.axes[:, keep]
    scores /= np.sqrt(len(xc) * space.var[keep])   # orthonormal columns
    users = rng.choice(len(W), min(64, len(W)), replace=False)
    p = F @ W[users].T
    p -= p.mean(0)
    tot = (p ** 2).sum(0)
    out = {}
    for k in (32, 64):
        proj = scores[:, :k].T @ p
        out[f"personal_r2_top{k}_pcs"] = float(np.mean((proj ** 2).sum(0) / tot))
    proj = scores.T @ p
    out["personal_r2_linear_embedding"] = float(np.mean((proj ** 2).sum(0) / tot))
    a = appeal - appeal.mean()
    out["appeal_r2_top32_pcs"] = float(((scores[:, :32].T @ a) ** 2).sum() / (a ** 2).sum())
    out["appeal_r2_linear_embedding"] = float(((scores.T @ a) ** 2).sum() / (a ** 2).sum())
    return out


def _start(cfg: WorldConfig, salt: int, alpha: float, strengths=(1.2, 0.7, 0.8, 1.0), flat_after=None,
           by: str = "image", string_default: bool = False):
    """Catalogue, users, embeddings and who-rates-what, shared by the families."""
    rng = np.random.default_rng([cfg.seed, salt])
    string_ids = string_default if cfg.string_ids is None else cfg.string_ids
    pids, iids = _ids(cfg.n_users, cfg.n_images, string_ids)
    group, style, is_art = _catalogue(cfg.n_images, rng)
    images = _images_frame(iids, group, style, is_art)
    users = _users_frame(pids, rng)
    space = _embed(rng, cfg.dim, group, style, is_art, alpha, strengths, flat_after)
    ru, ri, split = demo.sample_pairs(cfg.n_users, cfg.n_images, cfg.total_ratings, rng, by=by)
    return rng, images, users, space, (group, style, is_art), (ru, ri, split)


def _user_weights(rng, n_users: int, t: int, sd: float = 1.0) -> np.ndarray:
    return rng.normal(0, sd, (n_users, t))


def _names(prefix: str, t: int) -> list[str]:
    return [f"{prefix}{j}" for j in range(t)]


# ----------------------------------------------------------------------------- families


def _band_taste(cfg: WorldConfig, name: str, salt: int, lo: int, hi: int, where: str) -> World:
    """8 taste directions drawn in principal components lo..hi; appeal along one of the top 64."""
    t0 = time.perf_counter()
    rng, images, users, space, _, (ru, ri, split) = _start(cfg, salt, alpha=0.9)
    basis = space.directions(rng, lo, hi, 8)
    F = space.project(basis)
    appeal = space.project(space.directions(rng, 0, 64, 1))[:, 0]
    W = _user_weights(rng, cfg.n_users, 8)
    taste = _Taste(appeal, [(_names(f"{name}_", 8), F, W, 1.0)], basis=basis,
                   notes=f"8 taste directions in principal components {where}; appeal along one direction of the top 64")
    return _finish(name, cfg, rng, space, images, users, taste, ru, ri, split, t0)


def _lowvar(cfg: WorldConfig) -> World:
    lo = 64 if cfg.dim >= 256 else cfg.dim // 4
    return _band_taste(cfg, "lowvar", 11, lo, max(lo + 16, min(cfg.dim, 384)), f"{lo}..{min(cfg.dim, 384)}")


def _lowest(cfg: WorldConfig) -> World:
    lo, hi = (2 * cfg.dim) // 3, cfg.dim - 8  # the lowest-variance third, bar numerical dust
    return _band_taste(cfg, "lowest", 17, lo, hi, f"{lo}..{hi} of {cfg.dim}")


def _categorical_parts(rng, users, group, style, is_art, demo_strength=0.3):
    n_users = users.height
    G, S = len(demo.GROUPS), len(demo.STYLES)
    F = np.hstack([_one_hot(group, G), _one_hot(style, S), is_art[:, None].astype(float)])
    wg = rng.normal(0, 0.25, (n_users, G))
    for u in range(n_users):
        k = rng.integers(2, 5)
        picks = rng.choice(G, 2 * k, replace=False)
        wg[u, picks[:k]] += 1.0
        wg[u, picks[k:]] -= 1.0
    d = _demographics(users)
    wg += demo_strength * (np.outer(d["age_z"], rng.normal(0, 1, G)) + np.outer(d["female"], rng.normal(0, 1, G)))
    ws = rng.normal(0, 0.6, (n_users, S))
    wa = rng.normal(0, 1.2, (n_users, 1)) + 0.4 * d["age_z"][:, None]
    names = [f"group={g}" for g in demo.GROUPS] + [f"style={s}" for s in demo.STYLES] + ["type=Art"]
    return names, F, np.hstack([wg, ws, wa])


def _categorical(cfg: WorldConfig) -> World:
    t0 = time.perf_counter()
    rng, images, users, space, (group, style, is_art), (ru, ri, split) = _start(
        cfg, 12, alpha=0.7, strengths=(1.6, 0.9, 1.0, 1.0), string_default=True)
    names, F, W = _categorical_parts(rng, users, group, style, is_art)
    quality = space.project(space.directions(rng, 0, 64, 1))[:, 0]
    appeal = rng.normal(0, 0.6, len(demo.GROUPS))[group] + np.where(
        style >= 0, rng.normal(0, 0.4, len(demo.STYLES))[np.maximum(style, 0)], 0) + 0.5 * quality
    taste = _Taste(appeal, [(names, F, W, 1.0)],
                   notes="per-user likes of 21 groups (2-4 loved, 2-4 hated), 26 styles and Art; "
                         "group likes shift with age and gender")
    return _finish("categorical", cfg, rng, space, images, users, taste, ru, ri, split, t0)


def _nonlinear_parts(rng, space, users, is_art, group):
    zb = space.directions(rng, 0, 48, 8)
    z = space.project(zb)
    art = is_art.astype(float)
    sig = 1 / (1 + np.exp(-6 * (z[:, 2] - 0.4)))
    F = np.column_stack([
        np.maximum(z[:, 0] - 0.5, 0), np.maximum(-z[:, 1] - 0.3, 0), sig, z[:, 0] * z[:, 3],
        z[:, 4] * art, z[:, 5] * (1 - art), art, z[:, 3] ** 2, np.cos(2 * z[:, 1]),
    ])
    names = ["relu(z0-0.5)", "relu(-z1-0.3)", "sigmoid(6(z2-0.4))", "z0*z3", "z4*Art", "z5*Photo",
             "Art", "z3^2", "cos(2 z1)"]
    d = _demographics(users)
    W = rng.normal(0, 1, (users.height, F.shape[1]))
    W[:, 4] += 0.9 * d["age_z"]                       # older raters like z4 in Art
    W[:, 2] += 0.9 * (d["female"] - d["male"])        # the threshold liking splits by gender
    W[:, 6] += 0.6 * d["age_z"]
    W[:, 0] += 1.0 * (d["age"] > 45)                  # a threshold in age, too
    appeal = (np.tanh(1.5 * z[:, 6]) + 0.8 * z[:, 6] * z[:, 7] + 0.5 * np.maximum(z[:, 7], 0) ** 2
              - 0.6 * art * z[:, 6] + rng.normal(0, 0.3, len(demo.GROUPS))[group])
    return names, F, W, appeal, zb[:, :6]


def _nonlinear(cfg: WorldConfig) -> World:
    t0 = time.perf_counter()
    rng, images, users, space, (group, style, is_art), (ru, ri, split) = _start(cfg, 13, alpha=0.9)
    names, F, W, appeal, zb = _nonlinear_parts(rng, space, users, is_art, group)
    art_dir, _ = _ls_basis(space, is_art[:, None].astype(float))
    taste = _Taste(appeal, [(names, F, W, 1.0)], basis=np.hstack([zb, art_dir]), basis_exact=False,
                   notes="taste = thresholds, products and Art/Photo interactions of 6 directions "
                         "of the top 48 components; weights move with age and gender (one age "
                         "threshold); appeal = tanh/product/squared terms of 2 more directions. "
                         "taste_basis = the 6 directions + the least-squares Art direction "
                         "(taste is a nonlinear function of the embedding in that span)")
    return _finish("nonlinear", cfg, rng, space, images, users, taste, ru, ri, split, t0)


def _hetero(cfg: WorldConfig) -> World:
    t0 = time.perf_counter()
    rng, images, users, space, (group, style, is_art), (ru, ri, split) = _start(
        cfg, 14, alpha=0.8, string_default=True)
    basis = space.directions(rng, 0, 96, 8)
    F = space.project(basis)
    appeal = space.project(space.directions(rng, 0, 64, 1))[:, 0]
    W = _user_weights(rng, cfg.n_users, 8)
    noise = np.clip(np.exp(rng.normal(np.log(cfg.noise), 0.55, cfg.n_users)), 0.12, 1.8)
    taste = _Taste(appeal, [(_names("taste_", 8), F, W, 1.0)], basis=basis, user_noise=noise,
                   scale_use=dict(shift_sd=0.7, spread_sd=0.3, compressed=0.2, extreme=0.15),
                   notes="linear taste in the top 96 components; per-user noise sd lognormal "
                         f"around {cfg.noise} (0.12-1.8); scale use: shift sd 0.7, spread "
                         "lognormal, 20% compressed (middle of the scale), 15% extreme (the ends)")
    return _finish("hetero", cfg, rng, space, images, users, taste, ru, ri, split, t0)


def _sparse(cfg: WorldConfig) -> World:
    t0 = time.perf_counter()
    rng, images, users, space, (group, style, is_art), (ru, ri, split) = _start(cfg, 15, alpha=0.8)
    basis = space.directions(rng, 0, 128, 6)
    F = np.column_stack([space.project(basis), is_art.astype(float)])
    appeal = space.project(space.directions(rng, 0, 64, 1))[:, 0]
    W = _user_weights(rng, cfg.n_users, 7)
    taste = _Taste(appeal, [(_names("taste_", 6) + ["Art"], F, W, 1.0)],
                   basis=basis, basis_features=_names("taste_", 6),
                   notes="few raters per image and few ratings per user; linear taste in the top "
                         "128 components plus an Art/Photo liking")
    return _finish("sparse", cfg, rng, space, images, users, taste, ru, ri, split, t0)


def _shared(cfg: WorldConfig) -> World:
    t0 = time.perf_counter()
    rng, images, users, space, (group, style, is_art), (ru, ri, split) = _start(
        cfg, 16, alpha=0.9, by="pair", string_default=True)
    basis = space.directions(rng, 0, 64, 4)
    Fe = space.project(basis)
    Fc = rng.normal(0, 1, (cfg.n_images, 6))           # collaborative factors the embedding lacks
    appeal = 0.7 * space.project(space.directions(rng, 0, 64, 1))[:, 0] + 0.7 * rng.normal(0, 1, cfg.n_images)
    taste = _Taste(appeal, [(_names("emb_", 4), Fe, _user_weights(rng, cfg.n_users, 4), 0.4),
                            (_names("cf_", 6), Fc, _user_weights(rng, cfg.n_users, 6), 0.6)],
                   basis=basis, basis_features=_names("emb_", 4),
                   by="pair", notes="seen users' ratings split per rating, so val/test images are rated "
                                    "by others in train; 60% of personal taste and half of the appeal "
                                    "are per-image factors invisible in the embedding")
    return _finish("shared", cfg, rng, space, images, users, taste, ru, ri, split, t0)


def _powerlaw(cfg: WorldConfig) -> World:
    t0 = time.perf_counter()
    rng, images, users, space, (group, style, is_art), (ru, ri, split) = _start(
        cfg, 17, alpha=1.0, strengths=(0.5, 0.3, 0.4, 1.0))
    t = 16
    basis = rng.standard_normal((cfg.dim, t))
    basis /= np.linalg.norm(basis, axis=0)
    F = space.project(basis)
    appeal = space.project(rng.standard_normal((cfg.dim, 1)))[:, 0]
    taste = _Taste(appeal, [(_names("dir_", t), F, _user_weights(rng, cfg.n_users, t), 1.0)], basis=basis,
                   notes="spectrum k^-1 over all dimensions (weak groups); 16 taste directions and "
                         "the appeal drawn uniformly over the whole embedding space")
    return _finish("powerlaw", cfg, rng, space, images, users, taste, ru, ri, split, t0)


def _mixture(cfg: WorldConfig) -> World:
    t0 = time.perf_counter()
    rng, images, users, space, (group, style, is_art), (ru, ri, split) = _start(
        cfg, 18, alpha=0.9, strengths=(1.3, 0.7, 0.9, 1.0), string_default=True)
    lo = 64 if cfg.dim >= 256 else cfg.dim // 4
    low_b = space.directions(rng, lo, max(lo + 16, min(cfg.dim, 384)), 4)
    top_b = space.directions(rng, 0, 32, 4)
    cat_names, Fc, Wc = _categorical_parts(rng, users, group, style, is_art)
    keep = [j for j, n in enumerate(cat_names) if not n.startswith("style=")]
    nl_names, Fn, Wn, appeal_nl, _ = _nonlinear_parts(rng, space, users, is_art, group)
    sel = [0, 2, 4, 3]
    appeal = 0.6 * appeal_nl + 0.6 * rng.normal(0, 0.6, len(demo.GROUPS))[group]
    noise = np.clip(np.exp(rng.normal(np.log(cfg.noise), 0.45, cfg.n_users)), 0.15, 1.5)
    taste = _Taste(appeal, [
        (_names("lowvar_", 4), space.project(low_b), _user_weights(rng, cfg.n_users, 4), 0.25),
        (_names("top_", 4), space.project(top_b), _user_weights(rng, cfg.n_users, 4), 0.2),
        ([cat_names[j] for j in keep], Fc[:, keep], Wc[:, keep], 0.3),
        ([nl_names[j] for j in sel], Fn[:, sel], Wn[:, sel], 0.25),
    ], user_noise=noise, scale_use=dict(shift_sd=0.6, spread_sd=0.3, compressed=0.15, extreme=0.1),
        notes="low-variance (25%), top-component (20%), categorical (30%) and nonlinear (25%) taste; "
              "nonlinear appeal; heteroscedastic raters with varied scale use")
    return _finish("mixture", cfg, rng, space, images, users, taste, ru, ri, split, t0)


def _demo(cfg: WorldConfig) -> World:
    """The original demo world, with its internals exposed as truth."""
    t0 = time.perf_counter()
    dcfg = demo.DemoConfig(n_users=cfg.n_users, n_images=cfg.n_images, n_ratings=cfg.total_ratings,
                           dim=cfg.dim, scale=cfg.high - cfg.low + 1, noise=cfg.noise, seed=cfg.seed)
    (images, users, ratings, truth, emb), parts = demo._build(dcfg)
    if cfg.low != 1:
        ratings = ratings.with_columns(pl.col("original_score") + (cfg.low - 1))
        truth = truth.with_columns(pl.col("expected_rating") + (cfg.low - 1))
    if cfg.string_ids is not None:
        pmap = dict(zip(users["participant_id"].to_list(), _ids(users.height, 0, cfg.string_ids)[0]))
        imap = dict(zip(images["image_id"].to_list(), _ids(0, images.height, cfg.string_ids)[1]))
        pdt, idt = (pl.String, pl.String) if cfg.string_ids else (pl.Int64, pl.Int64)
        recode = [pl.col("participant_id").replace_strict(pmap, return_dtype=pdt),
                  pl.col("image_id").replace_strict(imap, return_dtype=idt)]
        ratings, truth = ratings.with_columns(recode), truth.with_columns(recode)
        users = users.with_columns(recode[0])
        images = images.with_columns(recode[1])
    group, style, is_art = parts["group"], parts["style"], parts["is_art"]
    G, S = len(demo.GROUPS), len(demo.STYLES)
    F = np.hstack([parts["image_taste"], _one_hot(group, G), _one_hot(style, S), is_art[:, None].astype(float)])
    W = np.hstack([parts["user_taste"], parts["group_like"], parts["style_like"], parts["art_like"][:, None]])
    names = (_names("taste_", parts["image_taste"].shape[1]) + [f"group={g}" for g in demo.GROUPS]
             + [f"style={s}" for s in demo.STYLES] + ["type=Art"])
    space = _space(emb)
    basis, r2 = _ls_basis(space, F)
    u = truth["utility"].to_numpy()
    rng = np.random.default_rng([cfg.seed, 10])
    info = {
        "family": "demo", "description": FAMILIES["demo"].summary, "split_by": "image",
        "notes": "pamela_lite.demo.make_world; the utility's standardisation is not folded into "
                 "user_weights (they are the raw demo weights; appeal_coef is 1)",
        "appeal_coef": 1.0, "utility_offset": 0.0,
        "variance": _variance_shares(u, truth["expected_rating"].to_numpy(), ratings["original_score"].to_numpy(),
                                     np.full(len(u), cfg.noise), rng),
        "diagnostics": _diagnostics(space, F, W, parts["population"], rng),
        "taste_basis_features": names, "taste_basis_r2": [float(v) for v in r2],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return World("demo", cfg, images, users, ratings, truth, emb, parts["population"].astype(np.float64),
                 F, names, W, np.full(users.height, cfg.noise), basis, False, info)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    build: Callable[[WorldConfig], World]
    defaults: WorldConfig


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("demo", "the original demo world: low-rank content, shared taste, categories, demographics",
           _demo, WorldConfig(n_users=199, n_images=5077, n_ratings=69904, dim=512, string_ids=None)),
    Family("lowvar", "taste along LOW-variance embedding directions (outside the top 64 components)",
           _lowvar, WorldConfig(dim=768, low=1, high=7, string_ids=False)),
    Family("lowest", "taste in the LOWEST-variance third of a 768-d embedding's directions",
           _lowest, WorldConfig(dim=768, low=1, high=7, string_ids=True)),
    Family("categorical", "likes/dislikes of groups, styles and Art vs Photorealism dominate",
           _categorical, WorldConfig(dim=512, low=1, high=5, string_ids=True, population_share=0.2)),
    Family("nonlinear", "thresholds/interactions of taste with type and demographics; nonlinear appeal",
           _nonlinear, WorldConfig(dim=1024, low=0, high=10, string_ids=False)),
    Family("hetero", "heteroscedastic raters: per-user noise and very different use of the scale",
           _hetero, WorldConfig(n_users=300, dim=768, low=1, high=7, string_ids=True)),
    Family("sparse", "about 4 raters per image and about 100 ratings per user",
           _sparse, WorldConfig(dim=384, raters_per_image=4.0, string_ids=False)),
    Family("shared", "val/test images also rated by others in train; taste the embedding does not show",
           _shared, WorldConfig(dim=512, string_ids=True)),
    Family("powerlaw", "CLIP-like power-law spectrum, taste spread over many directions",
           _powerlaw, WorldConfig(dim=1152, low=1, high=5, string_ids=False)),
    Family("mixture", "low-variance + categorical + nonlinear taste, heteroscedastic raters, 0-10 scale",
           _mixture, WorldConfig(n_users=250, dim=1024, low=0, high=10, raters_per_image=10.0, string_ids=True)),
)}


def default_config(name: str, **overrides) -> WorldConfig:
    """The family's defaults with `overrides` (any :class:`WorldConfig` field) applied."""
    if name not in FAMILIES:
        raise KeyError(f"unknown world {name!r}; known: {', '.join(FAMILIES)}")
    return replace(FAMILIES[name].defaults, **overrides)


def make(name: str, cfg: WorldConfig | None = None, **overrides) -> World:
    """Build world `name` (family defaults, then `cfg`, then `overrides`)."""
    cfg = default_config(name) if cfg is None else cfg
    cfg = replace(cfg, **overrides)
    if cfg.low >= cfg.high:
        raise ValueError(f"scale {cfg.low}-{cfg.high}: low must be below high")
    if cfg.dim < 8 or min(cfg.n_users, cfg.n_images) < 20:
        raise ValueError("dim must be >= 8 and users/images >= 20")
    return FAMILIES[name].build(cfg)


def dataset(world: World) -> Dataset:
    """The world as a validated in-memory Dataset (truth included)."""
    return demo.dataset_from(world.images, world.users, world.ratings, world.truth, world.embeddings,
                             world.scale, f"{world.name} world")


# ----------------------------------------------------------------------------- truth files


@dataclass
class WorldTruth:
    """The per-image and per-user truth of a world, as written to ``world_truth.npz/.json``.

    Arrays (npz, no pickle; ids keep their type: int64 or unicode):

    ``image_ids`` (n_images,), ``appeal`` (n_images,), ``taste_features`` (n_images, t),
    ``user_ids`` (n_users,), ``user_weights`` (n_users, t), ``user_noise`` (n_users,),
    ``taste_basis`` (D, b) — b = 0 when the world has none.

    JSON: ``format``, ``family``, ``config``, ``scale`` [low, high], ``feature_names`` (t),
    ``taste_basis_exact``, ``taste_basis_features``, ``taste_basis_r2``, ``appeal_coef``,
    ``utility_offset`` (utility = offset + appeal_coef * appeal + user_weights . taste_features
    up to a per-user constant, exactly for the zoo families), ``variance``, ``diagnostics``,
    ``notes``.
    """

    image_ids: np.ndarray
    appeal: np.ndarray
    taste_features: np.ndarray
    user_ids: np.ndarray
    user_weights: np.ndarray
    user_noise: np.ndarray
    taste_basis: np.ndarray
    info: dict

    @property
    def feature_names(self) -> list[str]:
        return self.info["feature_names"]

    @classmethod
    def from_world(cls, world: World) -> "WorldTruth":
        def ids(series):
            return np.array(series.to_list()) if series.dtype == pl.String else series.to_numpy().astype(np.int64)

        info = {"format": FORMAT, "family": world.name, "config": asdict(world.config),
                "scale": [world.scale.low, world.scale.high], "feature_names": world.feature_names,
                "taste_basis_exact": world.basis_exact,
                **{k: v for k, v in world.info.items() if k != "seconds"}}  # files stay deterministic
        return cls(ids(world.images["image_id"]), world.appeal, world.taste_features,
                   ids(world.users["participant_id"]), world.user_weights, world.user_noise,
                   world.taste_basis, info)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        np.savez_compressed(folder / TRUTH_NPZ, image_ids=self.image_ids, appeal=self.appeal,
                            taste_features=self.taste_features, user_ids=self.user_ids,
                            user_weights=self.user_weights, user_noise=self.user_noise,
                            taste_basis=self.taste_basis)
        (folder / TRUTH_JSON).write_text(json.dumps(self.info, indent=1, default=float))

    @classmethod
    def load(cls, folder: str | Path) -> "WorldTruth":
        folder = Path(folder)
        with np.load(folder / TRUTH_NPZ, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(**arrays, info=json.loads((folder / TRUTH_JSON).read_text()))

    def rows(self, image_ids: pl.Series) -> np.ndarray:
        """Row of each image id in the truth arrays (ids compared as given, or as strings)."""
        table = pl.DataFrame({"image_id": pl.Series(self.image_ids.tolist()),
                              "_row": np.arange(len(self.image_ids), dtype=np.int64)})
        ids = image_ids
        if ids.dtype != table["image_id"].dtype:
            ids, table = ids.cast(pl.String), table.with_columns(pl.col("image_id").cast(pl.String))
        found = pl.DataFrame({"image_id": ids}).join(table, on="image_id", how="left", maintain_order="left")
        if found["_row"].null_count():
            raise KeyError(f"{found['_row'].null_count()} image id(s) are not in the world truth")
        return found["_row"].to_numpy()


def write(world: World, out: str | Path) -> Path:
    """Write `world` to `out` atomically: PAMELA's layout plus ``world_truth.npz/.json``."""
    out = Path(out)
    with atomic_dir(out, "annotations", "PAMELA-format world") as tmp:
        demo.write_pamela(tmp, world.images, world.users, world.ratings, world.truth, world.embeddings)
        WorldTruth.from_world(world).save(tmp)
    return out


# ----------------------------------------------------------------------------- reference (b)


class TasteRidge:
    """Reference row: per-user ridge on the world's TRUE image features ``[appeal, taste]``.

    Each user's weights (with an intercept) are shrunk toward a prior mean that is a linear
    function of demographics (1, age, female, male), fitted on the training users' own
    estimates. ``prior="empirical"`` (default) shapes the penalty by the covariance of those
    estimates (empirical Bayes: ``lambda * inv(S)``, S shrunk 20% toward its diagonal),
    ``"isotropic"`` is plain ridge (``lambda * I``); lambda is chosen on `validation` by RMSE
    (seen users; the Bayes-optimal penalty does not depend on how many ratings a user has, so
    the same lambda serves k-shot users). A new user folds in from k
    context ratings the same way (k = 0: the demographic prior). It knows what a model can only
    hope to learn — which features matter — and still has to estimate each person's weights
    from their ratings, so it is the "oracle features" bar, not the noise ceiling.
    """

    def __init__(self, truth: WorldTruth, penalties=(0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0), intercept_penalty=1.0,
                 prior: str = "empirical"):
        if prior not in ("empirical", "isotropic"):
            raise ValueError(f"prior must be 'empirical' or 'isotropic', not {prior!r}")
        self.prior = prior
        self.truth = truth
        self.penalties = penalties
        self.intercept_penalty = intercept_penalty
        z = np.column_stack([truth.appeal, truth.taste_features]).astype(np.float64)
        sd = z.std(0)
        self.z_ = (z - z.mean(0)) / np.where(sd > 0, sd, 1.0)

    def _design(self, image_ids: pl.Series) -> np.ndarray:
        z = self.z_[self.truth.rows(image_ids)]
        return np.column_stack([np.ones(len(z)), z])

    @staticmethod
    def _demo_matrix(users: pl.DataFrame) -> np.ndarray:
        age = users["age"].cast(pl.Float64).fill_null(40.0).to_numpy() if "age" in users.columns else np.full(users.height, 40.0)
        gender = users["gender"].cast(pl.String).fill_null("").to_numpy() if "gender" in users.columns else np.full(users.height, "")
        return np.column_stack([np.ones(users.height), (age - 40) / 12, gender == "female", gender == "male"]).astype(float)

    def _stats(self, frame: pl.DataFrame):
        ids, stats = [], []
        x = self._design(frame["image_id"])
        y = frame["rating"].to_numpy().astype(np.float64)
        order = frame.with_row_index("_r").group_by("participant_id", maintain_order=True).agg(pl.col("_r"))
        for pid, rows in zip(order["participant_id"].to_list(), order["_r"].to_list()):
            xr, yr = x[rows], y[rows]
            ids.append(pid)
            stats.append((xr.T @ xr, xr.T @ yr))
        return ids, stats

    def _solve(self, stats, prior: np.ndarray, lam: float, shape: np.ndarray | None = None) -> np.ndarray:
        p = prior.shape[1]
        pen = np.zeros((p, p))
        pen[1:, 1:] = lam * (np.eye(p - 1) if shape is None else shape)
        pen[0, 0] = self.intercept_penalty
        out = np.empty_like(prior)
        for j, (xtx, xty) in enumerate(stats):
            out[j] = np.linalg.solve(xtx + pen, xty + pen @ prior[j])
        return out

    def fit(self, train: pl.DataFrame, validation: pl.DataFrame | None = None) -> "TasteRidge":
        ids, stats = self._stats(train)
        users = person_demographics(train)
        users = pl.DataFrame({"participant_id": ids}).join(users, on="participant_id", how="left", maintain_order="left")
        p = stats[0][0].shape[0]
        mean_y = float(train["rating"].mean())
        flat = np.zeros((len(ids), p))
        flat[:, 0] = mean_y
        theta0 = self._solve(stats, flat, 1.0)
        D = self._demo_matrix(users)
        self.prior_coef_ = np.linalg.lstsq(D.T @ D + 1e-3 * np.eye(D.shape[1]), D.T @ theta0, rcond=None)[0]
        prior = D @ self.prior_coef_
        self.shape_ = None
        if self.prior == "empirical" and len(ids) > 2:
            dev = theta0[:, 1:] - prior[:, 1:]
            cov = dev.T @ dev / len(ids)
            cov = 0.8 * cov + 0.2 * np.diag(np.diag(cov))
            cov /= max(float(np.mean(np.diag(cov))), 1e-12)
            self.shape_ = np.linalg.inv(cov + 1e-3 * np.eye(len(cov)))
        best = None
        for lam in self.penalties:
            theta = self._solve(stats, prior, lam, self.shape_)
            if validation is None or validation.height == 0:
                best = (0.0, lam, theta)
                break
            err = self._rmse(dict(zip(ids, theta)), validation)
            if best is None or err < best[0]:
                best = (err, lam, theta)
        self.penalty_ = best[1]
        self.states_ = dict(zip(ids, best[2]))
        return self

    def _rmse(self, states: dict, frame: pl.DataFrame) -> float:
        frame = frame.filter(pl.col("participant_id").is_in(list(states)))
        pred = self.predict(frame, states)
        return float(np.sqrt(np.mean((pred - frame["rating"].to_numpy()) ** 2)))

    def fold_in(self, context: pl.DataFrame, users: pl.DataFrame) -> dict:
        """Weights of new users from their context ratings (k-shot) or demographics (k = 0)."""
        table = person_demographics(users)
        prior = self._demo_matrix(table) @ self.prior_coef_
        states = dict(zip(table["participant_id"].to_list(), prior))
        if context.height:
            ids, stats = self._stats(context)
            pri = np.array([states[i] for i in ids])
            states.update(zip(ids, self._solve(stats, pri, self.penalty_, self.shape_)))
        return states

    def predict(self, rows: pl.DataFrame, states: dict | None = None) -> np.ndarray:
        known = getattr(self, "states_", {})
        states = known if states is None else {**known, **states}
        x = self._design(rows["image_id"])
        theta = np.array([states[p] for p in rows["participant_id"].to_list()])
        return np.einsum("ij,ij->i", x, theta)
