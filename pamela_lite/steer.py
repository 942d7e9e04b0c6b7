"""Steer a text-to-image generator toward one person: ``python -m pamela_lite.steer``.

Prompt edits from a vocabulary grouped by attribute (lighting, camera angle, viewpoint,
palette, medium, composition, ...; at most one phrase per attribute) are added to a base
prompt; each candidate prompt is rendered on several seeds by a generator, the images'
embeddings are scored for the person by a fitted scorer, and the prompt with the best mean
score wins. Several seeds per prompt make the search optimise the prompt, not a lucky seed.
The budget counts generator calls (images). Methods: ``best_of_n`` (random prompts, keep
the best), ``greedy`` (coordinate search: one attribute at a time, move when a phrase beats
the current prompt), ``thompson`` (a bandit: an additive model of each phrase's effect,
Thompson sampling over the effects' posterior and over the scorer's posterior of the
person's taste) and ``prompt_prior`` (start from the prompt-side model's proposal, made from
a log of past generations before any image is generated).
``--objective population`` drives the same search by the population head ("global
steering") for comparison.

The prompt-side model (:class:`PhraseEffects`) learns from a log of earlier generations what
each phrase does to the image embedding (per base prompt, so the bases cancel); a person's
predicted gain of a phrase is then their objective's score of the base plus that shift minus
the base's: it needs no generator call and is shrunk toward the population exactly as the
scorer shrinks their taste. ``prompt_prior`` starts the search from its proposal and spends
the budget checking and improving it, best-predicted attributes first.

Library use::

    from pamela_lite import steer
    vocab = steer.Vocabulary.load()                       # the default, or a JSON file
    objective = steer.PersonalObjective(model, state)     # model: a fitted PersonalScorer
    result = steer.search("greedy", generate, objective, vocab, "a portrait of a fisherman", budget=64)
    result.prompt, result.predicted, result.spread_taste, result.trajectory
    effects = steer.PhraseEffects.fit(log_prompts, log_embeddings, vocab)   # once; .save / .load (.npz)
    effects.propose(objective, vocab, "a portrait of a fisherman").ranking  # no generator call
    result = steer.search("prompt_prior", generate, objective, vocab, base, budget=16, effects=effects)

A generator is any callable ``generate(prompts: list[str], seeds: list[int]) -> (n, D)``
embeddings (one image per pair). :class:`DiffusersAdapter` wraps a text-to-image pipeline and
an ONNX image encoder; :func:`stub_adapter` is a runnable stand-in that needs no download;
:class:`pamela_lite.steer_sim.SimulatedGenerator` simulates one on a world of the zoo.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import polars as pl

from ._atomic import atomic_dir, carry_over
from .cli import Stopwatch, output_path, parser_for, run, seed_arg
from .data import Embeddings
from .errors import InputError

METHODS = ("best_of_n", "greedy", "thompson", "prompt_prior")
PHRASE_EFFECTS_FORMAT = "pamela_lite.phrase_effects"
VOCABULARY_FORMAT, VOCABULARY_VERSION = "pamela_lite.steer_vocabulary", 1  # the packaged file's header
NONE = -1  # no phrase for this attribute


def _is_version(value, version: int) -> bool:
    """Whether a file's ``version`` is `version` as a JSON number (1 or 1.0; not true, not "1")."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == version


class Generator(Protocol):
    """The adapter shape: one image embedding per (prompt, seed) pair."""

    def __call__(self, prompts: list[str], seeds: list[int]) -> np.ndarray: ...


# ----------------------------------------------------------------------------- vocabulary


def _unique_keys(pairs: list) -> dict:
    """json object_pairs_hook: a key given twice in one object is an error, not 'the last one wins'."""
    keys = [key for key, _ in pairs]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ValueError(f"key(s) given twice in one object: {twice}")
    return dict(pairs)


def phrase_key(text: str) -> str:
    """How phrases are compared: without case or runs of spaces ("Close-up" is "close-up")."""
    return " ".join(str(text).split()).casefold()


@dataclass(frozen=True)
class Vocabulary:
    """Prompt edits grouped by attribute; a prompt takes at most one phrase per attribute.

    Parameters
    ----------
    attributes : tuple of (name, phrases)
        Attribute names and their phrases, in the order they are appended to a prompt.
    source : str
        Where the vocabulary came from (for messages).
    """

    attributes: tuple[tuple[str, tuple[str, ...]], ...]
    source: str = "<memory>"

    @classmethod
    def default_path(cls) -> Path:
        """The vocabulary that ships with the package (copy it to edit it)."""
        return Path(str(resources.files("pamela_lite") / "steer_vocabulary.json"))

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Vocabulary":
        """Read and check a vocabulary JSON file (default: the packaged one).

        The file is ``{"attributes": {"lighting": ["golden hour light", ...], ...}}``; ``format``
        and ``version``, when given, must be those of the packaged file (other top-level keys are
        ignored). Problems raise one :class:`InputError` naming the file.

        Parameters
        ----------
        path : path, optional
            A vocabulary JSON file.

        Returns
        -------
        Vocabulary
        """
        path = cls.default_path() if path is None else Path(path)
        if not path.is_file():
            raise InputError(path, "no such vocabulary file")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(path, f"vocabulary is not valid JSON ({str(err).splitlines()[0]})") from None
        except ValueError as err:  # a key given twice: JSON keeps the last, and the first one's phrases vanish
            raise InputError(path, str(err)) from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw, source: str = "<memory>") -> "Vocabulary":
        """A checked vocabulary from ``{"attributes": {name: [phrases]}}``."""
        if isinstance(raw, dict) and raw.get("format", VOCABULARY_FORMAT) != VOCABULARY_FORMAT:
            raise InputError(source, f"format is {raw['format']!r}, not {VOCABULARY_FORMAT!r}: not a steering "
                                     f"vocabulary")
        if isinstance(raw, dict) and "version" in raw and not _is_version(raw["version"], VOCABULARY_VERSION):
            raise InputError(source, f"vocabulary version {raw['version']!r}: this pamela_lite reads version "
                                     f"{VOCABULARY_VERSION} (the number)")
        if not isinstance(raw, dict) or not isinstance(raw.get("attributes"), dict) or not raw["attributes"]:
            raise InputError(source, 'vocabulary must be a JSON object with a non-empty "attributes" object '
                                     '{"attribute": ["phrase", ...]}')
        attributes, seen = [], {}
        for name, phrases in raw["attributes"].items():
            if not isinstance(phrases, list) or not phrases or not all(isinstance(p, str) for p in phrases):
                raise InputError(source, f"attribute {name!r} must list at least one phrase (strings)")
            clean = tuple(p.strip() for p in phrases)
            for phrase in clean:
                if not phrase or "," in phrase or any(unicodedata.category(c) == "Cc" for c in phrase):
                    raise InputError(source, f"attribute {name!r}: phrase {phrase!r} is empty or contains a comma "
                                             f"or a control character (a line break, a tab)")
                key = phrase_key(phrase)  # "Golden Hour light" is "golden hour light" to a prompt reader
                if key in seen:
                    first, where = seen[key]
                    raise InputError(source, f"phrase {phrase!r} appears twice ({first!r} in {where!r}, and in "
                                             f"{name!r}; case and spacing do not make another phrase)")
                seen[key] = (phrase, name)
            attributes.append((str(name), clean))
        return cls(tuple(attributes), source)

    @property
    def phrases(self) -> list[str]:
        """Every phrase, attribute by attribute."""
        return [p for _, ps in self.attributes for p in ps]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.attributes]

    @property
    def sizes(self) -> list[int]:
        return [len(phrases) for _, phrases in self.attributes]

    def render(self, base: str, choice: tuple[int, ...]) -> str:
        """The prompt text: `base`, then the chosen phrase of each attribute, comma-separated."""
        parts = [base.strip()] + [phrases[c] for (_, phrases), c in zip(self.attributes, choice) if c != NONE]
        return ", ".join(parts)

    def edits(self, choice: tuple[int, ...]) -> dict[str, str]:
        """{attribute: phrase} of a choice (attributes left as in the base are omitted)."""
        return {name: phrases[c] for (name, phrases), c in zip(self.attributes, choice) if c != NONE}

    def base_choice(self) -> tuple[int, ...]:
        return (NONE,) * len(self.attributes)

    def set_by(self, prompt: str) -> tuple["Vocabulary", dict[str, str]]:
        """The vocabulary without the attributes `prompt` already sets, and {attribute: its phrase}.

        A base prompt that says "close-up" has chosen its viewpoint: searching that attribute
        would append a second viewpoint ("close-up, aerial view"), so it is kept as written and
        the search edits the others. Phrases are matched as whole comma-separated parts of the
        prompt, ignoring case and runs of spaces (:func:`phrase_key`).
        """
        parts = {phrase_key(part) for part in str(prompt).split(",")}
        fixed = {name: next(p for p in phrases if phrase_key(p) in parts)
                 for name, phrases in self.attributes if any(phrase_key(p) in parts for p in phrases)}
        if not fixed:
            return self, {}
        if len(fixed) == len(self.attributes):
            raise InputError(self.source, f"the base prompt already sets every attribute of the vocabulary "
                                          f"({', '.join(fixed)}): nothing is left to steer; drop some of those "
                                          f"phrases from --prompt")
        kept = tuple((name, phrases) for name, phrases in self.attributes if name not in fixed)
        return Vocabulary(kept, self.source), fixed

    def random_choice(self, rng: np.random.Generator) -> tuple[int, ...]:
        """Each attribute: no phrase or one of its phrases, uniformly."""
        return tuple(int(rng.integers(-1, n)) for n in self.sizes)

    def one_hot(self, choice: tuple[int, ...]) -> np.ndarray:
        """Indicator of each (attribute, phrase) in `choice` (length: all phrases)."""
        out = np.zeros(sum(self.sizes))
        offset = 0
        for n, c in zip(self.sizes, choice):
            if c != NONE:
                out[offset + c] = 1.0
            offset += n
        return out


# ----------------------------------------------------------------------------- objectives


class Objective(Protocol):
    """What a search maximises: scores of image embeddings, (n, 1 + K).

    Column 0 is the point estimate; columns 1..K are draws from the scorer's posterior of the
    person (none for objectives without uncertainty).
    """

    name: str

    def __call__(self, embeddings: np.ndarray) -> np.ndarray: ...


@dataclass
class StatePosterior:
    """A Gaussian posterior of one person's state vector (bias and linear taste).

    Attributes
    ----------
    mean : numpy.ndarray
        (S,) the state the scorer uses.
    cov : numpy.ndarray
        (S, S) posterior covariance; zero outside the bias and taste block.
    noise_var : float
        Rating noise variance it was computed with.
    n_ratings : int
        Ratings it rests on.
    """

    mean: np.ndarray
    cov: np.ndarray
    noise_var: float
    n_ratings: int

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` draws (n, S) of the state."""
        idx = np.flatnonzero(np.diag(self.cov) > 0)
        out = np.repeat(self.mean[None, :].astype(np.float64), n, axis=0)
        if len(idx):
            block = self.cov[np.ix_(idx, idx)]
            chol = np.linalg.cholesky(block + 1e-12 * np.eye(len(idx)))
            out[:, idx] += rng.standard_normal((n, len(idx))) @ chol.T
        return out


def state_posterior(model, state: np.ndarray, rated_embeddings: np.ndarray | None,
                    ratings: np.ndarray | None = None, noise_var: float | None = None) -> StatePosterior:
    """The empirical-Bayes posterior of a person's bias and linear taste given their ratings.

    The scorer solves a person's taste ``w`` as the posterior mean of Bayesian linear
    regression: ``(Z'Z + P) w = Z'r + P w0`` with ``P`` its prior precision in rating units
    (``model.fitted_.solver.taste_precision``, ``s2`` times the inverse prior covariance). The posterior
    covariance is then ``s2 (Z'Z + P)^-1``; the bias's is ``s2 / (n + bias_shrinkage)``.
    ``s2`` is the rating noise: given, or the mean squared residual of `ratings` under the
    scorer, corrected for the parameters fitted on them. No ratings (k = 0): the prior alone.

    Parameters
    ----------
    model : PersonalScorer
        A fitted scorer.
    state : numpy.ndarray
        (S,) the person's state (stored, or from ``fold_in``).
    rated_embeddings : numpy.ndarray or None
        (n, D) embeddings of the images the person rated.
    ratings : numpy.ndarray, optional
        (n,) their ratings, to estimate ``s2`` when `noise_var` is not given.
    noise_var : float, optional
        The rating noise variance ``s2``.

    Returns
    -------
    StatePosterior
    """
    at = model.state_slices
    P = np.asarray(model.fitted_.solver.taste_precision, dtype=np.float64)
    d = P.shape[0]
    n = 0 if rated_embeddings is None else len(rated_embeddings)
    gram = np.zeros((d, d))
    if n:
        Z = model.image_features(np.asarray(rated_embeddings)).pca
        gram = Z.T @ Z
    inv = np.linalg.inv(gram + P)
    if noise_var is None:
        if not n or ratings is None:
            raise InputError(None, "the posterior needs the rating noise: give noise_var or the person's ratings")
        ids = ["__posterior"] * n
        frame = pl.DataFrame({"participant_id": ids, "image_id": np.arange(n)})
        pred = model.utility(frame, Embeddings(pl.Series(np.arange(n)), np.asarray(rated_embeddings, np.float32)),
                             (["__posterior"], np.asarray(state, np.float32)[None, :]))
        resid = np.asarray(ratings, dtype=np.float64) - np.clip(pred, *model.fitted_.scale)
        fitted = 1.0 + float(np.trace(gram @ inv))      # effective parameters: bias + taste
        noise_var = float(resid @ resid) / max(n - fitted, 1.0)
    cov = np.zeros((len(state), len(state)))
    cov[at["taste"], at["taste"]] = noise_var * inv
    cov[0, 0] = noise_var / (n + model.bias_shrinkage)
    return StatePosterior(np.asarray(state, dtype=np.float64), cov, float(noise_var), n)


class PersonalObjective:
    """A person's predicted utility (unclipped) under a fitted :class:`PersonalScorer`.

    Parameters
    ----------
    model : PersonalScorer
        The fitted scorer (Python); see :class:`EdgeObjective` for the ONNX one.
    state : numpy.ndarray
        (S,) the person's state.
    posterior : StatePosterior, optional
        Draws from it fill columns 1..K (the bandit samples them; the spread reports them).
    n_samples : int
        K, the number of posterior draws (fixed once, so every image is scored under the same K).
    seed : int
        Seed of the draws.
    """

    name = "personal"

    def __init__(self, model, state: np.ndarray, posterior: StatePosterior | None = None, n_samples: int = 16,
                 seed: int = 0):
        self.model = model
        states = [np.asarray(state, dtype=np.float64)]
        if posterior is not None and n_samples > 0:
            states += list(posterior.sample(n_samples, np.random.default_rng(seed)))
        self.states = np.stack(states).astype(np.float32)
        self.ids = [f"__steer_{k}" for k in range(len(self.states))]

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        n, k = len(embeddings), len(self.states)
        emb = Embeddings(pl.Series(np.arange(n)), np.asarray(embeddings, dtype=np.float32))
        pairs = pl.DataFrame({"participant_id": np.repeat(self.ids, n), "image_id": np.tile(np.arange(n), k)})
        return self.model.utility(pairs, emb, (self.ids, self.states)).reshape(k, n).T


class PopulationObjective:
    """The population head ``mean + p(x)``: what everyone likes on average ("global steering")."""

    name = "population"

    def __init__(self, model):
        self.model = model
        self.state = np.zeros((1, model.state_dim), dtype=np.float32)

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        n = len(embeddings)
        emb = Embeddings(pl.Series(np.arange(n)), np.asarray(embeddings, dtype=np.float32))
        pairs = pl.DataFrame({"participant_id": ["__population"] * n, "image_id": np.arange(n)})
        cols = self.model.components(pairs, emb, (["__population"], self.state))
        return (cols["mean"] + cols["population"])[:, None]


class EdgeObjective:
    """A person's predicted utility under an exported ONNX scorer (:class:`pamela_lite.edge.EdgeScorer`).

    ``states`` rows: the point state first, then any posterior draws. (The population head is
    scored by :class:`PopulationObjective` on the model itself: a zero state in the graph would
    still pass through the residual trees, so it only approximates the head.)
    """

    def __init__(self, scorer, states: np.ndarray, name: str = "personal"):
        self.scorer = scorer
        self.states = np.atleast_2d(np.asarray(states, dtype=np.float32))
        self.name = name

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        n, k = len(embeddings), len(self.states)
        emb = np.repeat(np.asarray(embeddings, dtype=np.float32)[None], k, axis=0).reshape(k * n, -1)
        st = np.repeat(self.states, n, axis=0)
        return self.scorer.score(emb, st, clip=False).reshape(k, n).T


# ----------------------------------------------------------------------------- prompt-side model


def split_prompt(prompt: str, phrases) -> tuple[str, list[str]]:
    """(base, edit phrases) of a prompt: its comma-separated parts that are vocabulary phrases
    (compared by :func:`phrase_key`, returned as the vocabulary spells them) are the edits, the
    others (in order) the base. `phrases` is a set of known phrases."""
    canonical = {phrase_key(p): p for p in phrases}  # "Warm  Light" in a log is the phrase "warm light"
    parts = [p.strip() for p in str(prompt).split(",")]
    edits = [canonical[phrase_key(p)] for p in parts if phrase_key(p) in canonical]
    return ", ".join(p for p in parts if p and phrase_key(p) not in canonical), edits


@dataclass
class PhraseEffects:
    """What each prompt phrase does to the image embedding, learnt from past generations.

    For every phrase, the mean shift of the embedding of images whose prompt holds it against
    images of the same base prompt without it: a ridge regression of the embeddings on phrase
    indicators with one intercept per base prompt (so the base's own content cancels). Phrase
    effects are properties of the generator, not of anyone's taste: fitted once on a log of
    prompts and images, they serve every person (see :meth:`propose`).

    Attributes
    ----------
    phrases : tuple of str
        The phrases of the vocabulary it was fitted with.
    shifts : numpy.ndarray
        (P, D) the embedding shift of each phrase.
    counts : numpy.ndarray
        (P,) log images whose prompt holds the phrase (0: its shift is unknown, kept at 0).
    bases : tuple of str
        Base prompts of the log.
    base_means : numpy.ndarray
        (B, D) each base's embedding without edits (its intercept).
    ridge : float
        Ridge penalty the shifts were fitted with.
    source : str
        Where it came from (for messages).
    """

    phrases: tuple[str, ...]
    shifts: np.ndarray
    counts: np.ndarray
    bases: tuple[str, ...]
    base_means: np.ndarray
    ridge: float = 1.0
    source: str = "<memory>"

    @classmethod
    def fit(cls, prompts: list[str], embeddings: np.ndarray, vocab: Vocabulary, ridge: float = 1.0,
            source: str = "<memory>") -> "PhraseEffects":
        """Fit the shifts on a log of generations (one prompt per embedding row).

        Parameters
        ----------
        prompts : list of str
            The prompt of each logged image (``"<base>, <phrase>, ..."``).
        embeddings : numpy.ndarray
            (n, D) the logged images' embeddings, as the scorer's encoder makes them.
        vocab : Vocabulary
            The phrases to learn.
        ridge : float
            Ridge penalty (in images): phrases seen rarely shrink toward no effect.
        source : str
            Named in error messages.

        Returns
        -------
        PhraseEffects
        """
        y = np.asarray(embeddings, dtype=np.float64)
        if y.ndim != 2 or len(y) != len(prompts) or not len(y):
            raise InputError(source, f"{len(prompts)} prompts but embeddings of shape {y.shape}: need one row each")
        if not np.isfinite(y).all():
            raise InputError(source, "the logged embeddings contain NaN or inf")
        phrases = vocab.phrases
        column = {p: k for k, p in enumerate(phrases)}
        split = [split_prompt(p, column) for p in prompts]
        x = np.zeros((len(y), len(phrases)))
        for row, (_, edits) in enumerate(split):
            x[row, [column[e] for e in edits]] = 1.0
        if not x.any():
            raise InputError(source, f"no prompt of the log holds a phrase of the vocabulary {vocab.source}")
        bases, group = np.unique([b for b, _ in split], return_inverse=True)
        # Within-base centring = one intercept per base prompt: what is left is what the phrases do.
        size = np.bincount(group).astype(np.float64)[:, None]
        x_mean, y_mean = _group_sums(x, group) / size, _group_sums(y, group) / size
        xc, yc = x - x_mean[group], y - y_mean[group]
        shifts = np.linalg.solve(xc.T @ xc + ridge * np.eye(len(phrases)), xc.T @ yc)
        base_means = y_mean - x_mean @ shifts
        return cls(tuple(phrases), shifts, x.sum(0), tuple(str(b) for b in bases), base_means, float(ridge), source)

    # ------------------------------------------------------------------ file

    def save(self, path: str | Path) -> Path:
        """Write a ``.npz`` (plain arrays, no pickle; through the package's one writer of parameter files)."""
        from .fitted import write_arrays

        return write_arrays(path, format=np.array(PHRASE_EFFECTS_FORMAT), phrases=np.array(self.phrases, dtype=str),
                            shifts=self.shifts, counts=self.counts, bases=np.array(self.bases, dtype=str),
                            base_means=self.base_means, ridge=np.array(self.ridge))

    @classmethod
    def load(cls, path: str | Path) -> "PhraseEffects":
        """Read a file written by :meth:`save`; problems raise one :class:`InputError` naming it."""
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "no such phrase-effects file")
        try:
            with np.load(path, allow_pickle=False) as f:
                if "format" not in f or str(f["format"]) != PHRASE_EFFECTS_FORMAT:
                    raise InputError(path, f"not a phrase-effects file (no format {PHRASE_EFFECTS_FORMAT!r})")
                out = cls(tuple(str(p) for p in f["phrases"]), f["shifts"].astype(np.float64),
                          f["counts"].astype(np.float64), tuple(str(b) for b in f["bases"]),
                          f["base_means"].astype(np.float64), float(f["ridge"]), str(path))
        except InputError:
            raise
        except Exception:   # not a zip, a missing array, a pickled object, ...
            raise InputError(path, "not a phrase-effects .npz file (write one with steer --history ... "
                                   "--out DIR: DIR/phrase_effects.npz)") from None
        if out.shifts.shape != (len(out.phrases), out.base_means.shape[1]) or not len(out.bases):
            raise InputError(path, "phrase effects are inconsistent (shifts, phrases and bases do not match)")
        return out

    @property
    def dim(self) -> int:
        return self.shifts.shape[1]

    # ------------------------------------------------------------------ use

    def anchors(self, base: str, limit: int = 32) -> tuple[np.ndarray, bool]:
        """(embeddings to add shifts to, whether `base` itself is in the log).

        A logged base prompt is its own anchor; an unknown one is stood in for by up to
        `limit` logged bases (gains averaged over them: what a phrase does to a typical image).
        Phrases of the log that the prompt already holds add their shifts to the anchors.
        """
        if base.strip() in self.bases:
            return self.base_means[[self.bases.index(base.strip())]], True
        # A base that holds phrases of the log ("X, close-up") is X moved by their shifts: the log
        # keeps bases without their phrases, so X is what to look up.
        text, phrases = split_prompt(base, self.phrases)
        held = [self.phrases.index(p) for p in phrases]
        shift = self.shifts[held].sum(0) if held else np.zeros(self.dim)
        if held and text in self.bases:
            return self.base_means[[self.bases.index(text)]] + shift, True
        step = max(1, len(self.bases) // limit)
        return self.base_means[::step][:limit] + shift, False

    def shift_of(self, vocab: Vocabulary, choice: tuple[int, ...]) -> np.ndarray:
        """Summed shift of a choice's phrases (phrases unknown to the log add nothing)."""
        index = {p: k for k, p in enumerate(self.phrases)}
        rows = [index[p] for p in vocab.edits(choice).values() if p in index]
        return self.shifts[rows].sum(0) if rows else np.zeros(self.dim)

    def known(self, phrase: str) -> bool:
        """Whether the log saw the phrase (its shift is estimated, not assumed zero)."""
        return phrase in self.phrases and self.counts[self.phrases.index(phrase)] > 0

    def propose(self, objective: Objective, vocab: Vocabulary, base: str, sweeps: int = 3) -> "Proposal":
        """Rank the vocabulary's phrases for `objective` and propose a prompt: no generator call.

        A phrase's predicted gain is the objective's score of (base + its shift) minus that of
        the base, on the same anchors. With a person's :class:`PersonalObjective` this is their
        taste applied to the phrase's effect, shrunk toward the population exactly as the
        scorer shrinks their taste. The proposed prompt is a coordinate ascent on the predicted
        score of ``base + sum of shifts`` (scored jointly, so the scorer's nonlinearity counts).

        Parameters
        ----------
        objective : Objective
        vocab : Vocabulary
        base : str
            The base prompt.
        sweeps : int
            Passes of the coordinate ascent over the attributes.

        Returns
        -------
        Proposal
        """
        anchors, known_base = self.anchors(base)
        if anchors.shape[1] != self.dim or self.dim == 0:
            raise InputError(self.source, "phrase effects have no dimension")
        singles = [(a, o) for a, n in enumerate(vocab.sizes) for o in range(n)]
        base_choice = vocab.base_choice()
        choices = [base_choice] + [tuple(o if k == a else NONE for k in range(len(vocab.sizes))) for a, o in singles]
        scores = self._score(objective, vocab, anchors, choices)
        gains = scores[1:] - scores[0]
        ranking = []
        for (a, o), g in zip(singles, gains):
            name, phrase = vocab.attributes[a][0], vocab.attributes[a][1][o]
            ok = self.known(phrase)
            ranking.append({"attribute": name, "phrase": phrase, "predicted_gain": float(g[0]) if ok else None,
                            "gain_sd": float(g[1:].std(ddof=1)) if ok and len(g) > 2 else None,
                            "log_images": int(self.counts[self.phrases.index(phrase)])
                            if phrase in self.phrases else 0})
        ranking.sort(key=lambda row: -np.inf if row["predicted_gain"] is None else row["predicted_gain"], reverse=True)
        choice, predicted = self._ascend(objective, vocab, anchors, sweeps)
        return Proposal(choice, vocab.render(base, choice), predicted, float(scores[0, 0]), ranking, known_base)

    def _score(self, objective: Objective, vocab: Vocabulary, anchors: np.ndarray, choices) -> np.ndarray:
        """Scores (len(choices), 1 + K) of each choice's predicted embedding, averaged over anchors."""
        moves = np.stack([self.shift_of(vocab, c) for c in choices])             # (c, D)
        x = (anchors[:, None, :] + moves[None, :, :]).reshape(-1, self.dim)
        s = np.asarray(objective(x), dtype=np.float64)
        return s.reshape(len(anchors), len(choices), -1).mean(0)

    def _ascend(self, objective: Objective, vocab: Vocabulary, anchors: np.ndarray,
                sweeps: int) -> tuple[tuple[int, ...], float]:
        """Coordinate ascent on the predicted score, one attribute at a time (phrases the log never saw are skipped)."""
        current = vocab.base_choice()
        value = float(self._score(objective, vocab, anchors, [current])[0, 0])
        for _ in range(sweeps):
            moved = False
            for a, (_, phrases) in enumerate(vocab.attributes):
                options = [NONE] + [o for o, p in enumerate(phrases) if self.known(p)]
                cands = [tuple(o if k == a else c for k, c in enumerate(current)) for o in options]
                s = self._score(objective, vocab, anchors, cands)[:, 0]
                best = int(np.argmax(s))
                if s[best] > value + 1e-12 and cands[best] != current:
                    current, value, moved = cands[best], float(s[best]), True
            if not moved:
                break
        return current, value


def _group_sums(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    out = np.zeros((int(group.max()) + 1, values.shape[1]))
    np.add.at(out, group, values)
    return out


@dataclass
class Proposal:
    """The prompt-side model's answer, before any image is generated.

    Attributes
    ----------
    choice : tuple of int
        The proposed phrase of each attribute (``NONE``: keep the base).
    prompt : str
        Its text.
    predicted, base_predicted : float
        The objective's point score of the proposed and the base prompt's predicted embedding.
    ranking : list of dict
        Every phrase with its predicted gain over the base (and its SD over the scorer's
        posterior draws), best first; phrases the log never saw come last with no gain.
    known_base : bool
        Whether the base prompt was in the log (else gains are averaged over logged bases).
    """

    choice: tuple[int, ...]
    prompt: str
    predicted: float
    base_predicted: float
    ranking: list
    known_base: bool

    def as_dict(self, vocab: Vocabulary) -> dict:
        return {"prompt": self.prompt, "edits": vocab.edits(self.choice), "predicted": self.predicted,
                "base_predicted": self.base_predicted, "known_base": self.known_base, "ranking": self.ranking}


def read_log(path: str | Path, embeddings: Embeddings) -> tuple[list[str], np.ndarray]:
    """(prompts, embeddings) of a past-generation log table (``prompt``, ``image_id``).

    Parameters
    ----------
    path : path
        A CSV/Parquet/JSON table with one row per generated image.
    embeddings : Embeddings
        Embeddings of its images (every ``image_id`` must have one).

    Returns
    -------
    (list of str, numpy.ndarray)
    """
    from .data import read_table

    frame = read_table(path)
    missing = [c for c in ("prompt", "image_id") if c not in frame.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)} (a log needs prompt, image_id; found "
                               f"{', '.join(frame.columns)})")
    if frame.height == 0:
        raise InputError(path, "the log has no rows")
    if frame["image_id"].null_count():
        raise InputError(path, f"{frame['image_id'].null_count()} row(s) have no image_id")
    if frame.schema["prompt"] != pl.String:
        raise InputError(path, f"column prompt must be text, not {frame.schema['prompt']}")
    empty = frame.filter(pl.col("prompt").is_null() | (pl.col("prompt").str.strip_chars() == ""))
    if empty.height:
        raise InputError(path, f"{empty.height} row(s) have an empty prompt")
    return frame["prompt"].to_list(), embeddings.take(frame["image_id"], path)


# ----------------------------------------------------------------------------- search


@dataclass
class Evaluation:
    """One prompt rendered on some seeds and scored (a row of the trajectory)."""

    step: int
    choice: tuple[int, ...]
    prompt: str
    seeds: list[int]
    scores: np.ndarray          # (m, 1 + K)
    calls_after: int
    embeddings: np.ndarray | None = None  # (m, D) the images scored (not in the trajectory's JSON)

    def as_dict(self, vocab: Vocabulary) -> dict:
        return {"step": self.step, "prompt": self.prompt, "edits": vocab.edits(self.choice),
                "seeds": [int(s) for s in self.seeds], "scores": [round(float(v), 5) for v in self.scores[:, 0]],
                "mean": round(float(self.scores[:, 0].mean()), 5), "calls": self.calls_after}


@dataclass
class SteerResult:
    """What a search returns.

    Attributes
    ----------
    method, objective : str
    base, prompt : str
        The base prompt and the chosen prompt.
    edits : dict
        {attribute: phrase} of the chosen prompt.
    predicted, base_predicted : float
        Mean score (objective's point estimate) of the chosen and the base prompt over their seeds.
    spread_taste : float
        SD over the scorer's posterior draws of the chosen prompt's mean score (NaN without draws).
    spread_seed : float
        SD of the chosen prompt's score from seed to seed.
    calls : int
        Generator calls spent.
    trajectory : list of dict
        Every evaluation, in order, with the best prompt so far.
    picks : dict
        {budget: (prompt choice, predicted)} at the checkpoints asked for.
    proposal : Proposal or None
        The prompt-side model's proposal and phrase ranking, made before any generator call
        (when phrase effects were given).
    chosen_images : numpy.ndarray
        (n, D) the embeddings of the chosen prompt's images, as scored (so another objective can
        score the same images: the person's score of the population's pick, with no new call).
    predicted_for_user : float or None
        Set by ``steer`` for the population's result beside a person's: that person's mean
        point score of the chosen prompt's images.
    """

    method: str
    objective: str
    base: str
    prompt: str
    choice: tuple[int, ...]
    edits: dict
    predicted: float
    base_predicted: float
    spread_taste: float
    spread_seed: float
    calls: int
    trajectory: list = field(default_factory=list)
    picks: dict = field(default_factory=dict)
    proposal: Proposal | None = None
    proposed: dict | None = None     # the proposal as JSON (filled by search)
    chosen_images: np.ndarray | None = None
    predicted_for_user: float | None = None

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("picks", "choice", "proposal", "chosen_images")
               and not (k == "predicted_for_user" and v is None)}
        out["gain"] = self.predicted - self.base_predicted
        return _finite(json.loads(json.dumps(out, default=float)))


def _finite(value):
    """NaN and infinities become None, so the JSON written is strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class _Runner:
    """Budget, seeds and scores shared by the methods.

    Every prompt's first visit uses the same `m` choosing seeds (common random numbers: two
    prompts are compared on the same seeds); a repeated visit (the bandit) takes the next `m`.
    """

    def __init__(self, generate: Generator, objective: Objective, vocab: Vocabulary, base: str, budget: int,
                 seeds_per_prompt: int, seeds: list[int] | None, checkpoints, pick: Callable):
        if budget < 1:
            raise InputError(None, f"budget must be at least 1 generator call, not {budget}")
        if seeds_per_prompt < 1:
            raise InputError(None, f"seeds per prompt must be at least 1, not {seeds_per_prompt}")
        self.generate, self.objective, self.vocab, self.base = generate, objective, vocab, base
        self.budget = int(budget)
        self.m = min(int(seeds_per_prompt), self.budget)
        self.seeds = list(seeds) if seeds is not None else list(range(self.budget))
        self.calls = 0
        self.log: list[Evaluation] = []
        self.visits: dict[tuple, list[int]] = {}      # choice -> rows of self.log
        self.checkpoints = sorted(set(int(c) for c in (checkpoints or ()) if c >= 1))
        self.picks: dict[int, tuple] = {}
        self.pick = pick
        self.proposal: Proposal | None = None
        self.blend: Callable | None = None            # prompt_prior's value of a prompt

    def can(self) -> bool:
        return self.calls + self.m <= self.budget

    def evaluate(self, choice: tuple[int, ...]) -> np.ndarray:
        visit = len(self.visits.get(choice, []))
        seeds = [self.seeds[(visit * self.m + j) % len(self.seeds)] for j in range(self.m)]
        prompt = self.vocab.render(self.base, choice)
        try:
            x = np.array(self.generate([prompt] * self.m, seeds))  # a copy: kept, and a generator may reuse its buffer
        except InputError:
            raise
        except Exception as err:  # the user's generator: its failure is theirs to read, in one line
            raise InputError(None, f"the generator failed on {prompt!r}: {type(err).__name__}: {err}") from None
        if x.ndim != 2 or len(x) != self.m:
            raise InputError(None, f"the generator returned shape {getattr(x, 'shape', '?')} for {self.m} images "
                                   f"(needs an (n, D) array, one row per (prompt, seed))")
        if not np.isfinite(x).all():
            raise InputError(None, f"the generator returned {int(np.sum(~np.isfinite(x).all(axis=1)))} of {self.m} "
                                   f"embeddings with NaN or infinite values for {prompt!r}")
        scores = np.asarray(self.objective(x), dtype=np.float64)
        self.calls += self.m
        self.visits.setdefault(choice, []).append(len(self.log))
        self.log.append(Evaluation(len(self.log), choice, prompt, seeds, scores, self.calls, x))
        for c in self.checkpoints:   # the pick at budget c: once no further evaluation fits within c
            if c not in self.picks and self.calls + self.m > c:
                self.picks[c] = self.pick(self)
        return scores

    def scores_of(self, choice: tuple[int, ...]) -> np.ndarray:
        return np.vstack([self.log[r].scores for r in self.visits[choice]])

    def mean(self, choice: tuple[int, ...]) -> float:
        return float(self.scores_of(choice)[:, 0].mean())

    def best_by_mean(self) -> tuple[tuple[int, ...], float]:
        """The evaluated prompt with the best mean point score (first evaluated wins ties)."""
        best = max(self.visits, key=lambda c: (self.mean(c), -self.visits[c][0]))
        return best, self.mean(best)

    def finish(self, method: str, choice: tuple[int, ...]) -> SteerResult:
        for c in self.checkpoints:   # budgets beyond what was spent keep the final pick
            self.picks.setdefault(c, self.pick(self))
        s = self.scores_of(choice)
        draws = s[:, 1:].mean(0) if s.shape[1] > 1 else np.array([])
        base = self.vocab.base_choice()
        trajectory, best, best_mean = [], None, -np.inf
        for ev in self.log:
            row = ev.as_dict(self.vocab)
            if self.proposal is not None and ev.choice == self.proposal.choice:
                row["proposed"] = True      # the prompt-side model's proposal
            if row["mean"] > best_mean:
                best, best_mean = ev.prompt, row["mean"]
            row.update(best_prompt=best, best_mean=round(best_mean, 5))
            trajectory.append(row)
        return SteerResult(method, getattr(self.objective, "name", "objective"), self.base,
                           self.vocab.render(self.base, choice), choice, self.vocab.edits(choice),
                           float(s[:, 0].mean()), self.mean(base) if base in self.visits else float("nan"),
                           float(draws.std(ddof=1)) if len(draws) > 1 else float("nan"),
                           float(s[:, 0].std(ddof=1)) if len(s) > 1 else float("nan"),
                           self.calls, trajectory, dict(self.picks), self.proposal,
                           None if self.proposal is None else self.proposal.as_dict(self.vocab),
                           np.vstack([self.log[r].embeddings for r in self.visits[choice]]))


def _best_of_n(r: _Runner, rng: np.random.Generator) -> tuple[int, ...]:
    """Random prompts (the base first), each on the same seeds; keep the best mean."""
    r.evaluate(r.vocab.base_choice())
    space = int(np.prod([n + 1 for n in r.vocab.sizes]))
    tries = 0
    while r.can() and len(r.visits) < space and tries < 100 * r.budget:
        tries += 1
        choice = r.vocab.random_choice(rng)
        if choice not in r.visits:
            r.evaluate(choice)
    return r.best_by_mean()[0]


def _greedy(r: _Runner, rng: np.random.Generator) -> tuple[int, ...]:
    """Coordinate search: for one attribute at a time (order shuffled once), try each of its
    phrases on the current prompt and move to the best when it beats the current one on the
    same seeds; sweep until a sweep changes nothing or the budget is spent."""
    current = r.vocab.base_choice()
    r.evaluate(current)
    order = [int(a) for a in rng.permutation(len(r.vocab.sizes))]
    return _coordinate(r, current, order, lambda a: list(range(-1, r.vocab.sizes[a])))


def _coordinate(r: _Runner, current: tuple[int, ...], order: list[int], options_of: Callable,
                value: Callable | None = None) -> tuple[int, ...]:
    """The sweeps of coordinate search from `current` (evaluated): attributes in `order`, each
    attribute's options in the order ``options_of(a)`` gives (the first are tried when the
    budget runs short); prompts are compared by ``value(choice)`` (default: their mean score)."""
    value = value or r.mean
    while r.can():
        moved = False
        for a in order:
            options = [o for o in options_of(a) if o != current[a]]
            for o in options:
                cand = tuple(o if k == a else c for k, c in enumerate(current))
                if cand not in r.visits:
                    if not r.can():
                        break
                    r.evaluate(cand)
            tried = [tuple(o if k == a else c for k, c in enumerate(current)) for o in range(-1, r.vocab.sizes[a])]
            tried = [c for c in tried if c in r.visits]
            best = max(tried, key=lambda c: (value(c), c == current))
            if value(best) > value(current):
                current, moved = best, True
            if not r.can():
                break
        if not moved:
            break
    top = max(r.visits, key=lambda c: (value(c), -r.visits[c][0]))
    return current if value(current) >= value(top) else top


class _PriorBlend:
    """What a prompt is worth given the prompt-side model's prediction and its rendered images.

    Differences to the proposal (evaluated first, on the same seeds as every other prompt) are
    blended empirical-Bayes style: ``d = d_pred + k (d_obs - d_pred)`` with ``k = t2 / (t2 +
    s2)``, where ``s2`` is the seed noise of an observed difference (from the per-seed
    differences) and ``t2`` how far observations stray from predictions beyond that noise (the
    prompt-side model's error, estimated from every prompt rendered so far). A log that
    predicts well is trusted, so a lucky seed cannot pull the search off a good proposal; one
    that predicts badly (another generator, base-specific effects) gives way to the images.
    """

    def __init__(self, r: _Runner, effects: PhraseEffects):
        self.r, self.effects = r, effects
        self.anchors = effects.anchors(r.base)[0]
        self.ref = r.proposal.choice
        self._pred: dict[tuple, float] = {}
        self._k: tuple[int, float] = (-1, 0.0)

    def predicted(self, choice: tuple[int, ...]) -> float:
        if choice not in self._pred:
            self._pred[choice] = float(self.effects._score(self.r.objective, self.r.vocab, self.anchors,
                                                           [choice])[0, 0])
        return self._pred[choice]

    def _diff(self, choice: tuple[int, ...]) -> np.ndarray:
        """Per-seed observed score differences to the proposal (first visits share their seeds)."""
        log = self.r.log
        return log[self.r.visits[choice][0]].scores[:, 0] - log[self.r.visits[self.ref][0]].scores[:, 0]

    def weight(self) -> float:
        """k: the weight of the images against the prediction (re-estimated as evaluations come)."""
        if self._k[0] == len(self.r.log):
            return self._k[1]
        others = [c for c in self.r.visits if c != self.ref]
        if not others:
            return 0.0
        diffs = [self._diff(c) for c in others]
        m = len(diffs[0])
        s2 = float(np.mean([d.var(ddof=1) for d in diffs])) / m if m > 1 else 0.0
        miss = np.array([d.mean() - (self.predicted(c) - self.predicted(self.ref)) for c, d in zip(others, diffs)])
        t2 = max(float(np.mean(miss ** 2)) - s2, 0.0)
        k = 1.0 if s2 <= 1e-12 else t2 / (t2 + s2)
        self._k = (len(self.r.log), k)
        return k

    def __call__(self, choice: tuple[int, ...]) -> float:
        pred = self.predicted(choice) - self.predicted(self.ref)
        if choice == self.ref:
            return self.predicted(self.ref)
        return self.predicted(self.ref) + pred + self.weight() * (float(self._diff(choice).mean()) - pred)


def _prompt_prior(r: _Runner, rng: np.random.Generator) -> tuple[int, ...]:
    """Start from the prompt-side model's proposal, check it against the base on the same
    seeds, then coordinate search from the better of the two with the attributes and their
    phrases in the order of predicted gain (the budget goes first where the model expects
    most); prompts are compared by :class:`_PriorBlend`. A budget of one evaluation renders
    the proposal alone."""
    proposal = r.proposal
    r.evaluate(proposal.choice)
    base = r.vocab.base_choice()
    if base not in r.visits and r.can():
        r.evaluate(base)
    value = r.blend
    current = max(r.visits, key=lambda c: (value(c), -r.visits[c][0]))
    gain: dict[tuple[int, int], float] = {}
    for row in proposal.ranking:
        a = r.vocab.names.index(row["attribute"])
        o = r.vocab.attributes[a][1].index(row["phrase"])
        # unseen phrases: no prediction, tried after the ones predicted to gain
        gain[a, o] = -np.inf if row["predicted_gain"] is None else row["predicted_gain"]
    gain.update({(a, NONE): 0.0 for a in range(len(r.vocab.sizes))})
    order = sorted(range(len(r.vocab.sizes)), key=lambda a: -max(gain[a, o] for o in range(-1, r.vocab.sizes[a])))
    return _coordinate(r, current, order,
                       lambda a: sorted(range(-1, r.vocab.sizes[a]), key=lambda o: -gain[a, o]), value)


def _prompt_prior_pick(r: _Runner) -> tuple[tuple[int, ...], float]:
    """The evaluated prompt of best blended value (its mean score is what is reported)."""
    best = max(r.visits, key=lambda c: (r.blend(c), -r.visits[c][0]))
    return best, r.mean(best)


class _Additive:
    """Bayesian additive model of a prompt's score: ``b0 + sum of its phrases' effects`` + seed noise.

    Effects have a N(0, tau^2) prior; tau^2 and the seed variance are estimated from the
    scores so far (empirical Bayes). Fitted for every objective column at once.
    """

    def __init__(self, r: _Runner):
        rows = [(ev.choice, ev.scores) for ev in r.log]
        X = np.vstack([np.tile(np.r_[1.0, r.vocab.one_hot(c)], (len(s), 1)) for c, s in rows])
        Y = np.vstack([s for _, s in rows])
        within = [r.scores_of(c)[:, 0] for c in r.visits]
        within = [w for w in within if len(w) > 1]
        seed_var = float(np.mean([w.var(ddof=1) for w in within])) if within else 1.0
        seed_var = max(seed_var, 1e-6)
        means = np.array([r.mean(c) for c in r.visits])
        m = max(r.m, 1)
        tau2 = max(float(means.var(ddof=1)) - seed_var / m, seed_var / m) if len(means) >= 3 else seed_var
        prior = np.r_[1e-6, np.full(X.shape[1] - 1, 1.0 / tau2)]
        A = X.T @ X / seed_var + np.diag(prior)
        self.cov = np.linalg.inv(A)
        self.mean = self.cov @ X.T @ Y / seed_var       # (1 + phrases, 1 + K)
        self.vocab = r.vocab

    def value(self, choice: tuple[int, ...], column: int = 0) -> float:
        return float(np.r_[1.0, self.vocab.one_hot(choice)] @ self.mean[:, column])

    def thompson(self, rng: np.random.Generator) -> tuple[int, ...]:
        k = int(rng.integers(1, self.mean.shape[1])) if self.mean.shape[1] > 1 else 0
        theta = rng.multivariate_normal(self.mean[:, k], self.cov, method="cholesky")[1:]
        choice, offset = [], 0
        for n in self.vocab.sizes:
            effects = theta[offset:offset + n]
            best = int(np.argmax(effects))
            choice.append(best if effects[best] > 0 else NONE)
            offset += n
        return tuple(choice)


def _thompson_pick(r: _Runner) -> tuple[tuple[int, ...], float]:
    model = _Additive(r)
    best = max(r.visits, key=lambda c: (model.value(c), -r.visits[c][0]))
    return best, r.mean(best)


def _thompson(r: _Runner, rng: np.random.Generator) -> tuple[int, ...]:
    """Thompson sampling: draw a taste from the scorer's posterior and phrase effects from the
    additive model's posterior, render the prompt that is best under the draw (repeat visits
    take fresh seeds); the answer is the evaluated prompt with the best posterior mean."""
    r.evaluate(r.vocab.base_choice())
    while r.can():
        r.evaluate(_Additive(r).thompson(rng))
    return _thompson_pick(r)[0]


def search(method: str, generate: Generator, objective: Objective, vocab: Vocabulary, base: str, budget: int,
           seeds_per_prompt: int = 4, seeds: list[int] | None = None, rng_seed: int = 0,
           checkpoints=(), effects: PhraseEffects | None = None) -> SteerResult:
    """Steer `base` toward what `objective` likes, spending at most `budget` generator calls.

    Parameters
    ----------
    method : {"best_of_n", "greedy", "thompson", "prompt_prior"}
    generate : callable
        ``generate(prompts, seeds) -> (n, D)`` embeddings.
    objective : callable
        Scores of embeddings, (n, 1 + K) (:class:`PersonalObjective`, :class:`PopulationObjective`, ...).
    vocab : Vocabulary
    base : str
        The base prompt.
    budget : int
        Generator calls (images) to spend, at least 1.
    seeds_per_prompt : int
        Images per prompt evaluation (capped at `budget`).
    seeds : list of int, optional
        The choosing seeds (default 0, 1, 2, ...). Judge the result on other, fresh seeds.
    rng_seed : int
        Seed of the method's own randomness.
    checkpoints : iterable of int
        Budgets at which to record the pick so far (one run serves several budgets).
    effects : PhraseEffects, optional
        The prompt-side model: with it, every method first ranks the phrases for `objective`
        and proposes a prompt without generating anything (``result.proposal``);
        ``"prompt_prior"`` needs it and starts its search there.

    Returns
    -------
    SteerResult
    """
    if method not in METHODS:
        raise InputError(None, f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if not isinstance(base, str) or not base.strip():
        raise InputError(None, "the base prompt is empty")
    if method == "prompt_prior" and effects is None:
        raise InputError(None, "method prompt_prior needs phrase effects (a log of past generations)")
    pick = {"thompson": _thompson_pick, "prompt_prior": _prompt_prior_pick}.get(method, lambda r: r.best_by_mean())
    runner = _Runner(generate, objective, vocab, base, budget, seeds_per_prompt, seeds, checkpoints, pick)
    if effects is not None:     # before the first generator call: the proposal costs none
        runner.proposal = effects.propose(objective, vocab, base)
        runner.blend = _PriorBlend(runner, effects)
    rng = np.random.default_rng(rng_seed)
    choice = {"best_of_n": _best_of_n, "greedy": _greedy, "thompson": _thompson,
              "prompt_prior": _prompt_prior}[method](runner, rng)
    return runner.finish(method, choice)


def fresh_seeds(n: int, used) -> list[int]:
    """`n` seeds that are not among `used` (the choosing seeds): judge a chosen prompt on these.

    A prompt chosen for its score on some seeds looks better on them than it is (the winner's
    curse); its real worth shows on seeds the search never saw.
    """
    used = set(int(s) for s in used)
    start = max(used, default=-1) + 1
    return list(range(start, start + int(n)))


# ----------------------------------------------------------------------------- generators


class DiffusersAdapter:
    """A real generator: a text-to-image pipeline plus an ONNX image encoder.

    Parameters
    ----------
    pipeline : callable
        ``pipeline(prompt, seed) -> PIL.Image``. For diffusers (not a dependency of this
        package; install it and torch yourself)::

            import torch
            from diffusers import AutoPipelineForText2Image
            pipe = AutoPipelineForText2Image.from_pretrained("stabilityai/sdxl-turbo")
            def pipeline(prompt, seed):
                g = torch.Generator().manual_seed(seed)
                return pipe(prompt, generator=g, num_inference_steps=1, guidance_scale=0.0).images[0]

    encoder : pamela_lite.embed.Encoder or path
        The same ONNX image encoder the scorer's training embeddings came from
        (``embeddings/README.md``).
    batch : int
        Images encoded per encoder call.
    """

    def __init__(self, pipeline: Callable, encoder, batch: int = 8):
        from .embed import Encoder

        self.pipeline = pipeline
        self.encoder = encoder if isinstance(encoder, Encoder) else Encoder(Path(encoder), threads=1)
        self.batch = batch

    def _pixels(self, image) -> np.ndarray:
        from .encoder import image_pixels

        return image_pixels(image, self.encoder.config)  # as embed prepares images: the same resize and crop

    def __call__(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        pixels = np.stack([self._pixels(self.pipeline(p, int(s))) for p, s in zip(prompts, seeds)])
        return np.vstack([self.encoder(pixels[k:k + self.batch]) for k in range(0, len(pixels), self.batch)])


def stub_pipeline(size: int = 32) -> Callable:
    """A stand-in for a text-to-image pipeline: a deterministic image from (prompt, seed).

    Every phrase of the prompt tints and patterns the picture its own way and the seed adds
    noise, so edits move the embedding and seeds scatter it, as with a real model; it draws
    nothing meaningful and downloads nothing.
    """
    from PIL import Image

    from .steer_sim import _rng

    def pipeline(prompt: str, seed: int):
        canvas = _rng("stub", "seed", int(seed)).random((size, size, 3)) * 0.3
        yy, xx = np.mgrid[0:size, 0:size] / size
        for part in (p.strip() for p in prompt.split(",")):
            g = _rng("stub", "phrase", part)
            colour = g.random(3)
            freq, phase = g.uniform(1, 6, 2), g.uniform(0, 2 * np.pi)
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy) + phase)
            canvas += 0.4 * wave[..., None] * colour
        canvas = np.clip(canvas / canvas.max(), 0, 1)
        return Image.fromarray((canvas * 255).astype(np.uint8))

    return pipeline


def stub_adapter(dim: int, folder: str | Path, size: int = 32) -> DiffusersAdapter:
    """A runnable :class:`DiffusersAdapter`: :func:`stub_pipeline` + the tiny ONNX encoder.

    Writes the tiny encoder (``pamela_lite.tiny_encoder``, seeded random weights) of dimension
    `dim` into `folder`. For trying the loop end to end; its images mean nothing to a scorer.
    """
    from . import tiny_encoder

    path = tiny_encoder.write(Path(folder) / f"tiny_encoder_{dim}.onnx", size=size, dim=dim)
    return DiffusersAdapter(stub_pipeline(size), path)


# ----------------------------------------------------------------------------- plot


def plot(results: list[SteerResult], path: str | Path, title: str = "") -> Path:
    """Best mean score so far against generator calls, one line per result (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(None, "the plot needs matplotlib: pip install 'pamela_lite[bench]' (or pass --no-plot)") \
            from None
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for res in results:
        calls = [row["calls"] for row in res.trajectory]
        best = [row["best_mean"] for row in res.trajectory]
        ax.step(calls, best, where="post", label=f"{res.objective} / {res.method}")
        ax.scatter(calls, [row["mean"] for row in res.trajectory], s=8, alpha=0.4)
    ax.set_xlabel("generator calls (images)")
    ax.set_ylabel("predicted score (mean over seeds)")
    ax.set_title(title or "steering trajectory", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from ._atomic import atomic_file

    with atomic_file(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for("steer", __doc__.split("\n\n")[1],
                        "{prog} --model runs/model --user p0007 --prompt 'a photorealism food image, variation 3' "
                        "--generator sim:demo --budget 64 --out runs/steer", defaults=True)
    parser.add_argument("--model", type=Path, required=True, help="model folder written by pamela_lite.fit")
    parser.add_argument("--scorer", type=Path, help="score with this exported ONNX scorer instead of the model "
                                                     "(its users file beside it)")
    parser.add_argument("--user", help="participant id: known to the model, or one in --context or "
                                       "--context-events (not needed with --objective population)")
    parser.add_argument("--context", type=Path, help="ratings of a new person (participant_id, image_id, rating "
                                                      "[, age, gender, nationality]), folded in")
    parser.add_argument("--context-events", type=Path,
                        help="events of a new person (an events table, as for predict --context-events), folded "
                             "in alone or with --context; they move the person's taste, but only ratings give "
                             "the spread over it")
    parser.add_argument("--embeddings", type=Path, help="embeddings of the images in --context or "
                                                        "--context-events, or for a known "
                                                        "person of the images the model was fitted on (their "
                                                        "kept ratings give the spread over their taste; "
                                                        "default: the simulated world's, with --generator sim:WORLD)")
    parser.add_argument("--prompt", required=True, help="the base prompt")
    parser.add_argument("--vocabulary", type=Path, help="prompt edits JSON (default: the packaged one, "
                                                        "pamela_lite/steer_vocabulary.json)")
    parser.add_argument("--generator", default="sim:demo",
                        help="sim:WORLD (simulated generator on a zoo world at its default sizes and seed: the "
                             "model must be fitted on that world, python -m pamela_lite.demo --world WORLD), stub "
                             "(a runnable stand-in for a diffusers pipeline + ONNX encoder) or module:factory (a "
                             "function called with no arguments that returns a generate(prompts, seeds) adapter; "
                             "the module must be importable: on PYTHONPATH, or in the current folder with "
                             "python -m)")
    parser.add_argument("--budget", type=int, default=64, help="generator calls (images) to spend")
    parser.add_argument("--seeds-per-prompt", type=int, default=4, help="images per prompt evaluation")
    parser.add_argument("--method", choices=METHODS, default="greedy",
                        help="prompt_prior: start from the prompt-side model's proposal (needs --phrase-effects "
                             "or --history)")
    parser.add_argument("--phrase-effects", type=Path,
                        help="the prompt-side model: phrase effects (.npz) written by an earlier run with --history; "
                             "the proposal and phrase ranking go into steer.json for any --method")
    parser.add_argument("--history", help="fit phrase effects on a log of earlier generations: a table (prompt, "
                                          "image_id) with --history-embeddings, or 'sim' (the simulated "
                                          "generator's own log); writes phrase_effects.npz to --out")
    parser.add_argument("--history-embeddings", type=Path, help="embeddings of the --history table's images")
    parser.add_argument("--objective", choices=("personal", "population", "both"), default="both",
                        help="steer for the person, by the population head, or both (for comparison)")
    parser.add_argument("--samples", type=int, default=16, help="posterior draws of the person's taste")
    parser.add_argument("--seed", type=seed_arg, default=0, help="seed of the search's randomness")
    parser.add_argument("--out", type=output_path, required=True, help="output folder: steer.json (+ steer.png)")
    parser.add_argument("--no-plot", action="store_true", help="write no plot")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    return parser


def _generator(spec: str, dim: int, workdir: Path):
    """(generate, world or None) from the --generator text."""
    if spec.startswith("sim:"):
        from . import worlds
        from .steer_sim import SimulatedGenerator

        name = spec[4:]
        if name not in worlds.FAMILIES:
            raise InputError(None, f"--generator {spec}: unknown world {name!r}; known: {', '.join(worlds.FAMILIES)}")
        world = worlds.make(name)
        if world.embeddings.shape[1] != dim:
            raise InputError(None, f"--generator {spec}: the world's embeddings have dimension "
                                   f"{world.embeddings.shape[1]}, the model {dim}: fit the model on that world")
        return SimulatedGenerator(world), world
    if spec == "stub":
        return stub_adapter(dim, workdir), None
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise InputError(None, f"--generator {spec}: cannot import it ({err})") from None
        if not callable(factory):
            raise InputError(None, f"--generator {spec}: {attr} is not callable (it is {type(factory).__name__!r}); "
                                   f"name a factory that returns a generate(prompts, seeds) callable")
        try:
            generate = factory()
        except Exception as err:  # the user's code: its failure is theirs to read, in one line
            raise InputError(None, f"--generator {spec}: the factory failed: {type(err).__name__}: {err}") from None
        if not callable(generate):
            raise InputError(None, f"--generator {spec}: the factory returned {type(generate).__name__!r}, not a "
                                   f"generate(prompts, seeds) callable")
        return generate, None
    raise InputError(None, f"--generator {spec!r}: use sim:WORLD, stub or module:factory")


def _check_fitted_on(world, model, args) -> str | None:
    """Refuse a model fitted on another world than the simulated generator's: the world's images
    would stand for the model's (a context file's image ids, the population head's catalogue) while
    being other images under the same ids (a smaller demo world reuses the default world's ids).
    The model's kept training ratings must all be ratings of that world; an events-only model keeps
    none: the warning to print (after every input check) is returned."""
    kept = model.ratings_.filter((pl.col("origin") == "train") & pl.col("image_id").is_not_null())
    if not kept.height:
        return f"warning: {args.model} keeps no training ratings (fitted on events alone), so nothing tells " \
               f"whether it was fitted on the world of --generator {args.generator}; that world's images stand in " \
               f"for the ones it was fitted on"
    theirs = world.ratings.select(pl.col("participant_id").cast(pl.String), pl.col("image_id").cast(pl.String))
    foreign = kept.select("participant_id", "image_id").join(theirs, on=["participant_id", "image_id"], how="anti")
    if foreign.height:
        raise InputError(args.model, f"was not fitted on the world of --generator {args.generator} "
                                     f"({foreign.height} of its {kept.height} training ratings are not that "
                                     f"world's); fit it on python -m pamela_lite.demo --world {world.name} "
                                     f"(default sizes, seed and id types), or use another generator")
    return None


def _phrase_effects(args, vocab: Vocabulary, generate, dim: int, searched: Vocabulary | None = None
                    ) -> PhraseEffects | None:
    """The prompt-side model from --phrase-effects or --history (None without either), fitted on
    every phrase of `vocab`; it must know a phrase of `searched` (the attributes left to steer)."""
    if args.phrase_effects is not None and args.history is not None:
        raise InputError(None, "give --phrase-effects or --history, not both")
    if args.history_embeddings is not None and args.history in (None, "sim"):
        raise InputError(args.history_embeddings, "--history-embeddings goes with --history LOG (a table)")
    if args.phrase_effects is not None:
        effects = PhraseEffects.load(args.phrase_effects)
    elif args.history == "sim":
        from .steer_sim import SimulatedGenerator

        if not isinstance(generate, SimulatedGenerator):
            raise InputError(None, "--history sim needs --generator sim:WORLD")
        # The log never holds the base prompt steered here, and its seeds are its own.
        base_text, _ = split_prompt(args.prompt, set(vocab.phrases))
        prompts, emb = generate.past_generations(vocab, exclude={args.prompt.strip(), base_text})
        effects = PhraseEffects.fit(prompts, emb, vocab, source="the simulated log")
    elif args.history is not None:
        from .data import read_embeddings

        if args.history_embeddings is None:
            raise InputError(args.history, "needs --history-embeddings (the embeddings of its images)")
        prompts, emb = read_log(Path(args.history), read_embeddings(args.history_embeddings))
        effects = PhraseEffects.fit(prompts, emb, vocab, source=args.history)
    else:
        if args.method == "prompt_prior":
            raise InputError(None, "--method prompt_prior needs the prompt-side model: --phrase-effects FILE, or "
                                   "--history LOG with --history-embeddings (or --history sim)")
        return None
    if effects.dim != dim:
        raise InputError(effects.source, f"phrase effects of dimension {effects.dim}, the model's embeddings {dim}")
    if not any(effects.known(p) for p in vocab.phrases):
        raise InputError(effects.source, f"shares no phrase with the vocabulary {vocab.source}")
    if searched is not None and not any(effects.known(p) for p in searched.phrases):
        raise InputError(effects.source, "knows no phrase of the attributes left to steer (the base prompt sets "
                                         "the others): drop those phrases from --prompt, or log more generations")
    return effects


def _resolve_user(args, model, world):
    """(label, state, rated embeddings, ratings) of the person to steer for."""
    from .data import read_embeddings
    from .events import no_ratings
    from .predict import load_context, load_context_events, warn_idle_events

    if args.context is not None or args.context_events is not None:
        source = args.context if args.context is not None else args.context_events
        remedy = "to steer for a known person give --user ID without a context file, or rename them in the file"
        if args.embeddings is not None:
            emb = read_embeddings(args.embeddings)
        elif world is not None:
            emb = Embeddings(world.images["image_id"], world.embeddings, f"world {world.name}")
        else:
            raise InputError(source, "needs --embeddings for its images")
        events = None
        if args.context_events is not None:
            events = load_context_events(args.context_events, model, args.model, emb, remedy=remedy)
        context = load_context(args.context, model, remedy=remedy) if args.context is not None else no_ratings(events)
        given = [flag for flag, path in (("--context", args.context), ("--context-events", args.context_events)) if path]
        where = " and ".join(given)
        people = pl.concat([context["participant_id"].cast(pl.String)]
                           + ([] if events is None else [events["participant_id"].cast(pl.String)])
                           ).unique(maintain_order=True).to_list()
        if args.user is None and len(people) > 1:
            raise InputError(source, f"{where} hold{'' if len(given) > 1 else 's'} {len(people)} people"
                                     f"{' between them' if len(given) > 1 else ''}; choose one with --user")
        user = people[0] if args.user is None else str(args.user)
        if user not in people:
            known = user in {str(u) for u in model.users_}
            raise InputError(source, f"participant {user!r} is not in {where}"
                             + (f" (they are known to the model: drop {where} to steer for them)" if known else ""))
        mine = pl.col("participant_id").cast(pl.String) == user
        context = context.filter(mine)
        if events is not None:  # warned about once they are the person's own
            events = events.filter(mine)
            warn_idle_events(events, model, args.model, args.context_events)
        rated = emb.take(context["image_id"], args.context) if context.height else None
        ids, states = model.fold_in(context, emb, events=events)
        return user, states[0], rated, context["rating"].to_numpy() if context.height else None
    if args.user is None:
        raise InputError(None, "name the person: --user ID (known to the model) or --context FILE")
    known = {str(u): k for k, u in enumerate(model.users_)}
    if str(args.user) not in known:
        raise InputError(args.model, f"participant {args.user!r} is not known to the model; pass their ratings "
                                     f"as --context" + (" or their events as --context-events"
                                                        if model.fitted_.events is not None else ""))
    row = known[str(args.user)]
    rated, ratings = None, None
    # the ratings the model folder keeps of the person (rows without an image mark people known without ratings)
    rows = model.ratings_.filter((pl.col("participant_id") == str(args.user)) & pl.col("image_id").is_not_null())
    if world is not None:  # the simulated world has the images (_check_fitted_on: the model is that world's)
        if rows.height:
            emb = Embeddings(world.images["image_id"], world.embeddings)
            rated = emb.take(rows["image_id"].cast(world.images["image_id"].dtype, strict=False))
            ratings = rows["rating"].to_numpy()
    elif args.embeddings is not None:
        if rows.height:
            emb = read_embeddings(args.embeddings)
            rated = emb.take(rows["image_id"], args.embeddings)  # ids kept as text compare as text
            ratings = rows["rating"].to_numpy()
    return str(args.user), model.user_states_[row], rated, ratings


def _unspent(calls: int, args) -> str:
    """Why a search spent fewer calls than its budget allows (prompts are rendered whole)."""
    usable = args.budget - args.budget % args.seeds_per_prompt
    if calls >= usable:
        return ""
    why = {"greedy": "converged (a sweep over every attribute moved nothing)",
           "prompt_prior": "converged (a sweep over every attribute moved nothing)",
           "best_of_n": "every prompt the vocabulary makes was scored"}.get(args.method, "nothing left to try")
    return f" of {usable}: {why}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.budget < 1:
        raise InputError(None, f"--budget must be at least 1 generator call, not {args.budget}")
    if args.samples < 0:
        raise InputError(None, f"--samples (posterior draws) must be 0 or more, not {args.samples}")
    if args.seeds_per_prompt < 1:
        raise InputError(None, f"--seeds-per-prompt must be at least 1, not {args.seeds_per_prompt}")
    if args.budget < 2 * args.seeds_per_prompt:
        rendered = "no prompt" if args.budget < args.seeds_per_prompt else "only one prompt"
        raise InputError(None, f"--budget {args.budget} renders {rendered} on {args.seeds_per_prompt} "
                               f"seed{'s' if args.seeds_per_prompt > 1 else ''} and a "
                               f"search compares at least two: give at least {2 * args.seeds_per_prompt} calls (or "
                               f"fewer --seeds-per-prompt)")
    if args.budget % args.seeds_per_prompt:
        print(f"warning: --budget {args.budget} is not a multiple of --seeds-per-prompt {args.seeds_per_prompt}: "
              f"prompts are rendered whole, so at most {args.budget - args.budget % args.seeds_per_prompt} calls "
              f"are spent", file=sys.stderr)
    if not args.prompt.strip():
        raise InputError(None, "--prompt is empty")
    watch = Stopwatch(args.quiet)
    full_vocab = Vocabulary.load(args.vocabulary)
    vocab, fixed = full_vocab.set_by(args.prompt)
    if not (args.model / "model.json").is_file():
        raise InputError(args.model, "no model here (model.json missing); fit one with pamela_lite.fit")
    from .model import PersonalScorer

    model = PersonalScorer.load(args.model)
    out = args.out
    with atomic_dir(out, "steer.json", "steering") as tmp:
        generate, world = _generator(args.generator, model.fitted_.embedding_dim, tmp)
        unchecked = _check_fitted_on(world, model, args) if world is not None else None
        person = args.user is not None or args.context is not None or args.context_events is not None
        if args.objective == "population" and person:
            print("warning: --objective population steers by the population head alone: the person given "
                  "(--user, --context, --context-events) is checked but not used", file=sys.stderr)
        if args.objective == "population" and not person:
            label, state, rated, ratings = "population", None, None, None  # the head steers for no one person
        else:
            label, state, rated, ratings = _resolve_user(args, model, world)
        effects = _phrase_effects(args, full_vocab, generate, model.fitted_.embedding_dim, vocab)
        if effects is not None and args.history is not None:
            effects.save(tmp / "phrase_effects.npz")
        posterior = None
        if rated is not None and len(rated):
            posterior = state_posterior(model, state, rated, ratings)
        if args.scorer is not None:
            from .edge import EdgeScorer

            try:
                edge = EdgeScorer(args.scorer)
            except (FileNotFoundError, ValueError) as err:
                raise InputError(None, str(err)) from None
            if edge.fit_sha256 != model.fitted_.digest():
                raise InputError(args.scorer, f"is the export of another fit than {args.model}: export that model "
                                              "(pamela_lite.export) and pass its scorer")
        # The population head is the model's own (exact) term, whichever scorer scores people.
        objectives = [PopulationObjective(model)] if args.objective != "personal" else []
        if args.objective != "population":
            if args.scorer is not None:
                draws = (posterior.sample(args.samples, np.random.default_rng(args.seed)) if posterior
                         else np.empty((0, len(state))))
                personal = EdgeObjective(edge, np.vstack([state, draws]))
            else:
                personal = PersonalObjective(model, state, posterior, args.samples, args.seed)
            objectives.insert(0, personal)
        if posterior is None and args.objective != "population":  # after every input check: errors stay one line
            print(f"warning: no ratings of {label!r} at hand, so no spread over their taste"
                  + (" (events move a taste but do not measure its spread)" if args.context_events else "")
                  + (": the bandit samples only seed noise" if args.method == "thompson" else "")
                  + ("" if world is not None or args.embeddings is not None else
                     " (give --embeddings with the embeddings of the images the model was fitted on "
                     "to use the ratings the model folder keeps)"), file=sys.stderr)
        if posterior is not None and args.samples < 2 and args.method == "thompson" and args.objective != "population":
            print(f"warning: --samples {args.samples} draws no spread over {label!r}'s taste: the bandit samples "
                  f"only seed noise", file=sys.stderr)
        if unchecked:  # after every input check: errors stay one line
            print(unchecked, file=sys.stderr)
        if fixed and not args.quiet:
            print("note: the base prompt already sets " + ", ".join(f"{name} ({phrase!r})" for name, phrase in fixed.items())
                  + ": kept as written; the search edits the other attributes", file=sys.stderr)
        results = []
        for objective in objectives:
            res = search(args.method, generate, objective, vocab, args.prompt, args.budget, args.seeds_per_prompt,
                         rng_seed=args.seed, effects=effects)
            results.append(res)
            if res.proposal is not None:
                top = ", ".join(f"{row['phrase']} {row['predicted_gain']:+.3f}" for row in res.proposal.ranking[:3]
                                if row["predicted_gain"] is not None)
                watch.step(f"{objective.name}: proposed before generating {res.proposal.prompt!r} (top edits: {top})")
            watch.step(f"{objective.name}: {res.prompt!r} predicted {res.predicted:.3f} "
                       f"(base {res.base_predicted:.3f}, "
                       + (f"taste sd {res.spread_taste:.3f}, " if np.isfinite(res.spread_taste) else
                          "" if objective.name == "population" else  # the population head has no taste spread
                          f"taste sd not drawn (--samples {args.samples}: it needs 2 or more), "
                          if posterior is not None else
                          "taste sd unknown: no ratings of this person at hand, ")
                       + (f"seed sd {res.spread_seed:.3f}" if np.isfinite(res.spread_seed) else
                          "seed sd n/a: one seed per prompt")
                       + f") after {res.calls} calls" + _unspent(res.calls, args))
        if len(results) == 2:  # the person's score of the population's pick: the comparison that matters
            results[1].predicted_for_user = float(np.asarray(objectives[0](results[1].chosen_images))[:, 0].mean())
            watch.step(f"population: its prompt scores {results[1].predicted_for_user:.3f} for {label!r} (their own "
                       f"pick {results[0].predicted:.3f}; {results[1].predicted:.3f} is the population head's score)")
        payload = {"user": label, "base_prompt": args.prompt, "kept_from_prompt": fixed, "method": args.method,
                   "budget": args.budget,
                   "seeds_per_prompt": args.seeds_per_prompt, "generator": args.generator,
                   "vocabulary": vocab.source,
                   "phrase_effects": None if effects is None else effects.source, "posterior_ratings": 0 if posterior is None else posterior.n_ratings,
                   "results": [r.as_dict() for r in results],
                   "note": "predicted = mean score over the choosing seeds: judge on fresh seeds (winner's curse)"}
        for f in tmp.glob("tiny_encoder_*"):
            f.unlink()
        (tmp / "steer.json").write_text(json.dumps(_finite(payload), indent=1, default=float))
        if not args.no_plot:
            try:
                plot(results, tmp / "steer.png", f"{label}: {args.prompt}")
            except InputError as err:  # no matplotlib (the bench extra): the results still count
                print(f"warning: no steer.png: {err}", file=sys.stderr)
        # the folder may hold the phrase effects this run read, or the user's notes: they stay
        carry_over(out, tmp, exclude=("steer.json", "steer.png"))
    for res in results:
        print(json.dumps(_finite({"objective": res.objective, "prompt": res.prompt, "predicted": round(res.predicted, 4),
                                  **({} if res.predicted_for_user is None else
                                     {"predicted_for_user": round(res.predicted_for_user, 4)}),
                                  "spread_taste": round(res.spread_taste, 4), "spread_seed": round(res.spread_seed, 4)})))
    watch.step(f"wrote {out}/steer.json" + ("" if args.no_plot or not (out / "steer.png").is_file() else
                                             " and steer.png"))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
