"""A simulated text-to-image generator for the world zoo, built so it cannot decide the result.

Steering (:mod:`pamela_lite.steer`) needs a generator; a real one (a diffusers pipeline) is
neither downloadable here nor needed by the package. This module stands in for one on any
world of :mod:`pamela_lite.worlds`, with the world's ground truth kept aside for judging.

How a prompt becomes an embedding
---------------------------------
A prompt is ``"<base prompt>, <phrase>, <phrase>, ..."``. The base prompt picks a catalogue
image of the world (the image whose ``prompt`` it is; any other text is hashed to an image).
Each phrase moves the image's embedding ``x_base``::

    y = x_base + sum_phrases d_phrase + e_seed,      embedding = y / |y|

* ``d_phrase = step * r_phrase + c_phrase * g_pop``: ``r_phrase`` is a random unit direction
  drawn from a hash of the phrase alone, **independently of the world's taste basis, of its
  principal components and of any model**, with its component along ``g_pop`` removed;
  ``g_pop`` is the population-appeal direction: the one in which the *average* person's
  true utility rises with the least disagreement between people, and ``c_phrase ~ N(0,
  tau^2)`` is the phrase's effect on population appeal. ``tau`` is set so that a share ``shared_share`` (default 0.25, the zoo's
  population share of utility variance, PAMELA-like) of the variance that edits cause in
  people's true utilities is shared by everyone and the rest is personal.
* ``base_dependence`` (``b``, default 0): how much of what a phrase does depends on the image it
  is applied to ("golden hour light" does one thing to a portrait, another to a street). The
  random part becomes ``step * (sqrt(1 - b) r_phrase + sqrt(b) r_phrase,base)``, where
  ``r_phrase,base`` is drawn from a hash of the phrase and the base image; the population part
  stays the phrase's own. With ``b = 0`` edits are additive and the same on every base — what a
  prompt-side model that learns one shift per phrase (:class:`pamela_lite.steer.PhraseEffects`)
  assumes, so ``b > 0`` is the test that it does not win by construction.
* ``e_seed``: seed noise, an isotropic Gaussian direction, part shared by every prompt drawn
  with the same seed (``seed_common``: the same seed gives a similar layout) and part
  particular to the (prompt, seed) pair. Its size makes the seed-to-seed spread of a
  person's true utility ``seed_ratio`` times the spread one edit causes (default 1: a lucky
  seed matters as much as a good edit, so a search that trusts one seed is fooled).
* ``step`` is set so that one edit moves a person's true utility by ``edit_sd`` of that
  person's spread over the catalogue (default 0.35).

How a generated image is judged
-------------------------------
By the world's TRUE utility, never by a scorer: ``U_u(x) = U_u(base) + (x - x_base) . g_u``
where ``U_u(base) = appeal_coef * appeal_base + w_u . F_base`` is the world's own utility of
the catalogue image and ``g_u`` is person u's true utility gradient in embedding space: the
least-squares linear map from the world's embeddings to its true ``[appeal, taste features]``
(exact for worlds whose taste is linear in the embedding, the best linear approximation
otherwise), contracted with u's true weights. Gains are reported in units of each person's
standard deviation of true utility over the world's catalogue (:meth:`TrueUtility.sd`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .worlds import World


LOG_SEEDS = 1_000_000   # seeds of the simulated past-generation log: disjoint from choosing and judging seeds


def _rng(*keys) -> np.random.Generator:
    """A generator seeded by a stable hash of `keys` (strings and ints), the same on every run."""
    digest = hashlib.blake2b("\x1f".join(map(str, keys)).encode("utf-8"), digest_size=16).digest()
    return np.random.default_rng(list(np.frombuffer(digest, dtype=np.uint32)))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


class TrueUtility:
    """The world's true utility of any embedding, for any of its people (the judge).

    Parameters
    ----------
    world : World
        A world from :func:`pamela_lite.worlds.make`.
    ridge : float
        Ridge penalty (relative to the mean eigenvalue) of the embedding → truth map.

    Attributes
    ----------
    gradients : numpy.ndarray
        (n_users, D) each person's true utility gradient in embedding space.
    base_utility : numpy.ndarray
        (n_users, n_images) each person's true utility of each catalogue image.
    r2 : float
        Share of the catalogue's per-person utility variance the linear map reproduces.
    """

    def __init__(self, world: World, ridge: float = 1e-3):
        x = world.embeddings.astype(np.float64)
        self.mean = x.mean(0)
        xc = x - self.mean
        coef = float(world.info.get("appeal_coef", 1.0))
        target = np.column_stack([coef * world.appeal, world.taste_features])
        tc = target - target.mean(0)
        gram = xc.T @ xc
        lam = ridge * np.trace(gram) / gram.shape[0]
        M = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ tc)       # (D, 1 + t)
        weights = np.column_stack([np.ones(len(world.user_weights)), world.user_weights])  # (U, 1 + t)
        self.gradients = weights @ M.T                                           # (U, D)
        self.base_utility = weights @ target.T                                   # (U, n_images)
        fitted = (xc @ self.gradients.T).T
        centred = self.base_utility - self.base_utility.mean(1, keepdims=True)
        self.r2 = float(1 - ((centred - fitted) ** 2).sum() / (centred ** 2).sum())
        self._sd = self.base_utility.std(axis=1)
        self.embeddings = x
        self.user_ids = world.users["participant_id"].to_list()
        self._row = {u: k for k, u in enumerate(self.user_ids)}

    def row(self, user) -> int:
        """Row of participant `user` in the world."""
        return self._row[user]

    def sd(self, user) -> float:
        """Person `user`'s standard deviation of true utility over the catalogue (the gain unit)."""
        return float(self._sd[self.row(user)])

    def __call__(self, user, base_image: int, embeddings: np.ndarray) -> np.ndarray:
        """True utility for `user` of generated `embeddings` whose base is catalogue image `base_image`."""
        u = self.row(user)
        delta = np.asarray(embeddings, dtype=np.float64) - self.embeddings[base_image]
        return self.base_utility[u, base_image] + delta @ self.gradients[u]


@dataclass
class SimulatorShares:
    """How the simulator's variance splits (measured on random edits, see :meth:`SimulatedGenerator.shares`)."""

    shared_share: float       # share of the edit-caused variance of true utility common to everyone
    seed_to_edit: float       # seed-to-seed variance / variance caused by one edit
    edit_sd_units: float      # SD of one edit's effect, in per-person SD units
    linear_r2: float          # how much of the catalogue's utility the linear truth map reproduces

    def as_dict(self) -> dict:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


class SimulatedGenerator:
    """``generate(prompts, seeds) -> embeddings`` for a world, with its true utilities aside.

    Parameters
    ----------
    world : World
        The world whose images, embeddings and people the generator works in.
    edit_sd : float
        SD of one edit's effect on a person's true utility, in that person's SD units.
    shared_share : float
        Share of the edit-caused variance of true utility that everyone shares (0..1).
    seed_ratio : float
        Seed-to-seed variance of true utility relative to one edit's variance.
    seed_common : float
        Share of the seed noise that is the same for every prompt drawn with that seed.
    seed : int
        Salt of every hash (directions, appeal effects, noise), so worlds can be re-drawn.
    base_dependence : float
        Share (0..1) of a phrase's random move that depends on the base image it is applied to.

    Examples
    --------
    >>> from pamela_lite import worlds
    >>> w = worlds.make("lowvar", n_users=40, n_images=300, dim=64)
    >>> gen = SimulatedGenerator(w)
    >>> x = gen([w.images["prompt"][0] + ", golden hour light"], [0])
    >>> x.shape
    (1, 64)
    """

    def __init__(self, world: World, edit_sd: float = 0.35, shared_share: float = 0.25,
                 seed_ratio: float = 1.0, seed_common: float = 0.5, seed: int = 0, base_dependence: float = 0.0):
        if (not 0 <= shared_share < 1 or edit_sd <= 0 or seed_ratio < 0 or not 0 <= seed_common <= 1
                or not 0 <= base_dependence <= 1):
            raise ValueError("need 0 <= shared_share < 1, edit_sd > 0, seed_ratio >= 0, 0 <= seed_common <= 1, "
                             "0 <= base_dependence <= 1")
        self.base_dependence = float(base_dependence)
        self.world = world
        self.truth = TrueUtility(world)
        self.salt = f"{world.name}:{world.config.seed}:{seed}"
        self.seed_common = seed_common
        self.dim = world.embeddings.shape[1]
        prompts = world.images["prompt"].to_list()
        self.base_rows = {}
        for k, p in enumerate(prompts):
            self.base_rows.setdefault(p, k)
        self._directions: dict[tuple, np.ndarray] = {}

        g = self.truth.gradients
        sd = self.truth._sd[:, None]
        gn = g / sd                                 # gradients in per-person SD units
        g_mean = gn.mean(0)
        dev = gn - g_mean
        # The population-appeal direction: where the average person's utility rises with the
        # least disagreement between people, (C + lam I)^-1 g_mean with C the spread of the
        # people's gradients (by Woodbury: C is low rank, D may be large).
        U = len(dev)
        D = self.dim
        lam = 0.1 * float((dev ** 2).sum()) / U / D
        small = dev @ dev.T / U + lam * np.eye(U)
        self.g_pop = _unit(g_mean - dev.T @ np.linalg.solve(small, dev @ g_mean) / U)
        # Variance one edit causes, per unit step^2 (random part, orthogonal to g_pop: a random
        # unit direction in D-1 dimensions) and per unit tau^2 (population part):
        #   shared   = tau^2 a + step^2 b,   personal = tau^2 q + step^2 p.
        # Solve for the shared share `shared_share` of a total `edit_sd^2`.
        def perp(v):
            return v - np.multiply.outer(v @ self.g_pop, self.g_pop)

        a = float(g_mean @ self.g_pop) ** 2
        b = float(perp(g_mean) @ perp(g_mean)) / (D - 1)
        q = float(np.mean((dev @ self.g_pop) ** 2))
        p = float(np.mean((perp(dev) ** 2).sum(1))) / (D - 1)
        rho, e2 = shared_share, edit_sd ** 2
        tau2, step2 = np.linalg.solve(np.array([[a, b], [q, p]]), np.array([rho * e2, (1 - rho) * e2]))
        if tau2 < 0 or step2 <= 0:   # random directions alone are already this shared: no appeal part
            tau2, step2 = 0.0, e2 / (b + p)
        self.step = float(np.sqrt(step2))
        self.tau = float(np.sqrt(tau2))
        # seed noise: an isotropic direction of norm sigma moves person u by about sigma |g_u| / sqrt(D)
        per_noise2 = float(np.mean((gn ** 2).sum(1))) / D
        self.seed_sd = float(np.sqrt(seed_ratio * edit_sd ** 2 / per_noise2))
        self.edit_sd = edit_sd
        self.shared_share = shared_share
        self.seed_ratio = seed_ratio

    # ------------------------------------------------------------------ prompts

    def parse(self, prompt: str) -> tuple[int, list[str]]:
        """(catalogue row of the base image, the edit phrases) of a prompt string.

        The longest leading run of comma-separated parts that is a catalogue prompt is the
        base; without one, the first part is the base and is hashed to a catalogue image.
        """
        parts = [p.strip() for p in prompt.split(",")]
        for cut in range(len(parts), 0, -1):
            head = ", ".join(parts[:cut])
            if head in self.base_rows:
                return self.base_rows[head], sorted(set(p for p in parts[cut:] if p))
        row = int(_rng(self.salt, "base", parts[0]).integers(self.world.images.height))
        return row, sorted(set(p for p in parts[1:] if p))

    def direction(self, phrase: str, base: int | None = None) -> np.ndarray:
        """The embedding move of one edit phrase on catalogue image `base` (random direction +
        population-appeal effect); ``base=None``: the part that does not depend on the base (the
        expected move over bases, shorter than any one base's move when ``base_dependence > 0``)."""
        key = (phrase, None if self.base_dependence == 0 else base)
        if key not in self._directions:
            rng = _rng(self.salt, "phrase", phrase)
            r = self._perp_unit(rng.standard_normal(self.dim))
            appeal = rng.normal(0.0, self.tau) * self.g_pop
            own = np.zeros(self.dim)
            if key[1] is not None:
                own = np.sqrt(self.base_dependence) * self._perp_unit(
                    _rng(self.salt, "phrase-on-base", phrase, int(base)).standard_normal(self.dim))
            self._directions[key] = self.step * (np.sqrt(1 - self.base_dependence) * r + own) + appeal
        return self._directions[key]

    def _perp_unit(self, r: np.ndarray) -> np.ndarray:
        return _unit(r - (r @ self.g_pop) * self.g_pop)

    def raw_direction(self, phrase: str) -> np.ndarray:
        """The phrase's random unit direction before the population part (for the independence check)."""
        r = _rng(self.salt, "phrase", phrase).standard_normal(self.dim)
        return _unit(r)

    def _noise(self, prompt: str, seed: int) -> np.ndarray:
        common = _rng(self.salt, "seed", int(seed)).standard_normal(self.dim)
        own = _rng(self.salt, "seed", int(seed), prompt).standard_normal(self.dim)
        mix = np.sqrt(self.seed_common) * common + np.sqrt(1 - self.seed_common) * own
        return self.seed_sd * mix / np.sqrt(self.dim)

    # ------------------------------------------------------------------ the adapter

    def __call__(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        """Embeddings (n, D) float32, L2-normalised, of one image per (prompt, seed) pair."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        out = np.empty((len(prompts), self.dim), dtype=np.float32)
        for k, (prompt, seed) in enumerate(zip(prompts, seeds)):
            base, phrases = self.parse(prompt)
            y = self.truth.embeddings[base].copy()
            for phrase in phrases:
                y += self.direction(phrase, base)
            y += self._noise(prompt, seed)
            out[k] = y / np.linalg.norm(y)
        return out

    def base_row(self, prompt: str) -> int:
        """Catalogue row of a prompt's base image."""
        return self.parse(prompt)[0]

    def true_utility(self, user, prompts: list[str], seeds: list[int]) -> np.ndarray:
        """Person `user`'s TRUE utility of the image each (prompt, seed) generates."""
        x = self(prompts, seeds).astype(np.float64)
        rows = np.array([self.base_row(p) for p in prompts])
        u = self.truth.row(user)
        delta = x - self.truth.embeddings[rows]
        return self.truth.base_utility[u, rows] + np.einsum("ij,j->i", delta, self.truth.gradients[u])

    # ------------------------------------------------------------------ a past-generation log

    def past_generations(self, vocab, n_bases: int = 200, prompts_per_base: int = 8, edit_rate: float = 0.35,
                         exclude=(), first_seed: int = LOG_SEEDS, rng_seed: int = 0) -> tuple[list[str], np.ndarray]:
        """A log of earlier generations, as a T2I product (or PAMELA's prompt records) keeps one.

        Base prompts are catalogue prompts drawn at random (never one in `exclude`: the bases a
        benchmark steers and judges); each gets `prompts_per_base` prompts in which every
        attribute takes a random phrase with probability `edit_rate`; every image has its own
        seed from `first_seed` on, far from the choosing seeds (0..) and the judging seeds
        (10000..), so no seed noise is shared with a search or its judge. The phrase directions
        are the simulator's own, drawn independently of any taste: learning them from the log
        is what a real product can do, not a look at the truth.

        Parameters
        ----------
        vocab : pamela_lite.steer.Vocabulary
            The phrases to use.
        n_bases, prompts_per_base : int
            Size of the log (one image per prompt).
        edit_rate : float
            Chance that a logged prompt sets a given attribute.
        exclude : iterable of str
            Base prompts the log must not hold.
        first_seed : int
            The log's seeds are first_seed, first_seed + 1, ...
        rng_seed : int
            Seed of the draws of bases and phrases.

        Returns
        -------
        (list of str, numpy.ndarray)
            The prompts and the (n, D) embeddings of their images.
        """
        rng = np.random.default_rng([rng_seed, 7041])
        skip = set(exclude)
        pool = [p for p in self.base_rows if p not in skip]
        bases = [pool[k] for k in rng.choice(len(pool), min(n_bases, len(pool)), replace=False)]
        prompts = []
        for base in bases:
            for _ in range(prompts_per_base):
                choice = tuple(int(rng.integers(n)) if rng.random() < edit_rate else -1 for n in vocab.sizes)
                prompts.append(vocab.render(base, choice))
        seeds = list(range(first_seed, first_seed + len(prompts)))
        return prompts, self(prompts, seeds)

    # ------------------------------------------------------------------ checks

    def shares(self, n_phrases: int = 200, n_seeds: int = 8, users=None) -> SimulatorShares:
        """Measure the variance split on random phrases over the world's people.

        Effects are computed on the unnormalised move (what the calibration targets); the
        embedding's renormalisation changes them by a few percent.
        """
        g = self.truth.gradients / self.truth._sd[:, None]
        moves = np.stack([self.direction(f"__probe_{k}", k) for k in range(n_phrases)])   # (P, D)
        effect = moves @ g.T                                                          # (P, U)
        shared = effect.mean(1)
        total = effect.var()
        shared_share = float(shared.var() / total)
        noise = np.stack([self._noise("__probe", s) for s in range(n_seeds * 8)]) @ g.T
        return SimulatorShares(shared_share, float(noise.var() / total), float(np.sqrt((effect ** 2).mean())),
                               self.truth.r2)
