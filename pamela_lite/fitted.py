"""A fitted scorer as one numpy-only object, and the one reader/writer of its files.

:class:`FittedScorer` holds every parameter a fit produces: the image side (population head,
taste map, prototypes, item factors), the user solver, the demographic prior, the blend, the
LightGBM head (as LightGBM's model text), the catalogue corrections, the rating scale, the
vocabularies and the hyperparameters; the state layout is derived from it
(:func:`pamela_lite.user_solver.state_layout`). ``PersonalScorer.fit`` makes one; the model
folder, the ONNX builder (:mod:`pamela_lite.onnx_scorer`) and the device runtime
(:mod:`pamela_lite.edge`) all read it. It imports numpy only, so a device can read it too.

Files (a folder; written atomically, read without executing code — nothing is pickled):

* ``model.json``: format and version, hyperparameters, scalars, vocabularies, the state layout,
  the fit's digest (``fit_sha256``) and the checksums of the two files below;
* ``arrays.npz``: the numeric arrays;
* ``head.txt``: the LightGBM head in LightGBM's text format (empty without a head).

Per-user data is kept apart, in a **users file** (``users.npz``: ids, states and the digest of
the fit they belong to, nothing else; :func:`write_users` / :func:`read_users`). A state means
something only for the fit that made it, so a users file whose digest differs from its
scorer's is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from ._atomic import atomic_dir, atomic_file
from .catalogue import Catalogue
from .errors import InputError, preview
from .event_channel import EventChannel, EventRows
from .features import ImageFeatures, ImageSide, l2_normalise
from .user_solver import DemographicPrior, UserSolver, state_layout

FORMAT = "pamela_lite.PersonalScorer"
# 3: one FittedScorer; known users' states in users.npz, the ratings they come from in ratings.parquet
FORMAT_VERSION = 3
USERS_FORMAT = "pamela_lite.users"
USERS_FORMAT_VERSION = 3  # 3: ids, states and the fit's digest only (2 also carried the parameters)
PARAMETER_FILES = ("model.json", "arrays.npz", "head.txt")
USERS_FILE = "users.npz"
RATINGS_FILE = "ratings.parquet"  # in a model folder: the ratings every known user's state was solved from
EVENTS_FILE = "events.parquet"  # and the events of people added later from their events (only when there are any)
# and the catalogue factors of people added later (only when there are any: a fit with catalogue corrections)
CATALOGUE_USERS_FILE = "catalogue_users.npz"
MODEL_FILES = (*PARAMETER_FILES, USERS_FILE, RATINGS_FILE, EVENTS_FILE, CATALOGUE_USERS_FILE)  # PersonalScorer.save

_SOLVER_SCALARS = ("mean", "residual_scale", "alpha", "regularization", "bias_shrinkage", "use_bias",
                   "use_population", "use_taste", "use_mf")


@dataclass
class FittedScorer:
    """Everything a fit produces except the users (see the module docstring)."""

    scale: tuple[int, int]  # the rating scale low..high; scores are clipped to it
    image_side: ImageSide
    solver: UserSolver
    prior: DemographicPrior
    blend: np.ndarray  # (2,) weights of the taste and factor scores in the base score
    head: str = ""  # LightGBM model text of the residual head ("" without a head)
    catalogue: Catalogue | None = None  # per-image corrections; rows of its user factors follow the fit's users
    params: dict = field(default_factory=dict)  # the hyperparameters it was fitted with (PersonalScorer's)
    events: EventChannel | None = None  # the implicit-feedback channel, when fitted with events
    tuning: dict | None = None  # what the fit chose on validation, and the scores it chose by
    # How many of the taste coordinates are principal components, learned directions and metadata
    # blocks (informative: `params` holds the constructor's n_components, the fit may use fewer).
    taste_coordinates: dict | None = None

    @property
    def events_only(self) -> bool:
        """Whether it was fitted on events alone: its scores are preferences (-1..1), not ratings."""
        return self.events is not None and self.events.report.get("mode") == "events only"

    # ------------------------------------------------------------------ shape

    @property
    def layout(self) -> dict[str, slice]:
        """Where bias, taste w, factors u and demographics sit in a user state vector."""
        return state_layout(self.image_side.pca_components.shape[1], self.image_side.item_factors.shape[1],
                            1 + len(self.prior.genders))

    @property
    def state_dim(self) -> int:
        return self.layout["demographics"].stop

    @property
    def embedding_dim(self) -> int:
        return self.image_side.pca_mean.shape[0]

    # ------------------------------------------------------------------ arithmetic shared by every runtime

    def check_dimension(self, dim: int, source=None) -> None:
        """Embeddings of another dimension than the fit's come from another encoder: one InputError."""
        if dim != self.embedding_dim:
            raise InputError(source, f"embeddings have dimension {dim}; the model was fitted on dimension "
                                     f"{self.embedding_dim} (use the same encoder)")

    def image_features(self, embeddings: np.ndarray) -> ImageFeatures:
        """The features of raw embedding rows (n, D)."""
        self.check_dimension(embeddings.shape[-1])
        return self.image_side.features(l2_normalise(embeddings))

    def fold_in(self, user_index: np.ndarray, n_users: int, ratings: np.ndarray, embeddings: np.ndarray,
                ages, genders, nationalities, events: EventRows | None = None) -> np.ndarray:
        """States (n_users, state_dim), float32, of new users from rating rows, events and demographics.

        Rating row k is user ``user_index[k]``'s rating of the image with embedding row k;
        `events` (aggregated, :mod:`pamela_lite.event_channel`) join the ratings in the linear
        taste's equations. Users with neither get their demographic prior. Ratings are checked
        by the caller.
        """
        head, prior_x = self.prior.vectors(ages, genders, nationalities)
        states = self.prior.states(prior_x)
        extra = None
        if events is not None and len(events.evidence):
            if self.events is None:
                raise InputError(None, "this model was fitted without events, so it has no event weights: "
                                       "refit it with --events to fold people in from their events")
            feats = events.features if events.features is not None else self.image_features(events.embeddings)
            extra = self.events.normal_equations(feats, events, n_users, self.solver.use_population)
        if len(ratings) or extra is not None:
            feats = self.image_features(np.asarray(embeddings).reshape(len(ratings), self.embedding_dim))
            states, _ = self.solver.states(np.asarray(user_index, dtype=np.int64), n_users,
                                           np.asarray(ratings, dtype=np.float64), feats, states, extra)
        # float32: the type the exported scorer takes states in, so both runtimes score alike
        return np.column_stack([states, head]).astype(np.float32)

    # ------------------------------------------------------------------ files

    def _encode(self) -> tuple[dict, dict[str, np.ndarray], str]:
        side, solver, prior, catalogue = self.image_side, self.solver, self.prior, self.catalogue
        arrays = {"pop_coef": side.pop_coef, "pca_mean": side.pca_mean, "pca_components": side.pca_components,
                  "pca_scale": side.pca_scale, "prototypes": side.prototypes, "item_factors": side.item_factors,
                  "taste_precision": solver.taste_precision, "prior_coef": prior.coef,
                  "prior_intercept": prior.intercept}
        if catalogue is not None:
            arrays.update(catalogue_image_ids=np.array([str(i) for i in catalogue.image_ids]),
                          catalogue_bias=catalogue.bias, catalogue_factors=catalogue.factors,
                          catalogue_user_factors=catalogue.user_factors)
        arrays = {name: np.asarray(value, dtype=None if name == "catalogue_image_ids" else np.float64)
                  for name, value in arrays.items()}
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "params": self.params,
            "scale": [int(self.scale[0]), int(self.scale[1])],
            "pop_intercept": float(side.pop_intercept), "assign_width": float(side.assign_width),
            "solver": {name: json_scalar(getattr(solver, name)) for name in _SOLVER_SCALARS},
            "blend": [float(v) for v in self.blend],
            "demographics": {"age_mean": float(prior.age_mean), "age_std": float(prior.age_std),
                             "genders": list(prior.genders), "nationalities": list(prior.nationalities)},
            "catalogue": None if catalogue is None else {
                "penalty": float(catalogue.penalty),
                # written only when not 1: files from before the option keep their JSON and digest
                **({"scale": float(catalogue.scale)} if catalogue.scale != 1.0 else {}),
                "image_id_type": "int" if np.issubdtype(np.asarray(catalogue.image_ids).dtype, np.integer) else "str"},
            "state_layout": {k: [s.start, s.stop] for k, s in self.layout.items()},
        }
        if self.events is not None:  # only then: the digest of a fit without events is what it always was
            meta["events"] = self.events.to_json()
        if self.tuning is not None:
            meta["tuning"] = self.tuning
        if self.taste_coordinates is not None:
            meta["taste_coordinates"] = self.taste_coordinates
        return meta, arrays, self.head

    @classmethod
    def _decode(cls, meta: dict, arrays, head: str) -> "FittedScorer":
        solver_meta, demo = meta["solver"], meta["demographics"]
        side = ImageSide(arrays["pop_coef"], meta["pop_intercept"], arrays["pca_mean"], arrays["pca_components"],
                         arrays["pca_scale"], arrays["prototypes"], meta["assign_width"], arrays["item_factors"])
        solver = UserSolver(solver_meta["mean"], arrays["item_factors"], solver_meta["residual_scale"],
                            solver_meta["alpha"], solver_meta["regularization"], solver_meta["bias_shrinkage"],
                            arrays["taste_precision"], *(solver_meta[k] for k in _SOLVER_SCALARS[5:]))
        prior = DemographicPrior(demo["age_mean"], demo["age_std"], list(demo["genders"]),
                                 list(demo["nationalities"]), arrays["prior_coef"], arrays["prior_intercept"])
        catalogue = None
        if meta["catalogue"] is not None:
            ids = arrays["catalogue_image_ids"]
            catalogue = Catalogue(ids.astype(np.int64) if meta["catalogue"]["image_id_type"] == "int" else ids,
                                  arrays["catalogue_bias"], arrays["catalogue_factors"],
                                  arrays["catalogue_user_factors"], meta["catalogue"]["penalty"],
                                  float(meta["catalogue"].get("scale", 1.0)))
        events = EventChannel.from_json(meta["events"]) if meta.get("events") is not None else None
        return cls((int(meta["scale"][0]), int(meta["scale"][1])), side, solver, prior,
                   np.array(meta["blend"], dtype=np.float64), head, catalogue, dict(meta["params"]), events,
                   meta.get("tuning"), meta.get("taste_coordinates"))

    def digest(self) -> str:
        """sha256 of the fit's content (not of its files' bytes): what a users file is tied to."""
        return _digest(*self._encode())

    def write(self, folder: Path) -> None:
        """Write the three parameter files into `folder` (a fresh temporary folder; see :meth:`save`)."""
        meta, arrays, head = self._encode()
        np.savez(folder / "arrays.npz", **arrays)
        (folder / "head.txt").write_text(head)
        meta.update(fit_sha256=_digest(meta, arrays, head), pamela_lite_version=__version__,
                    checksums={name: file_sha256(folder / name) for name in ("arrays.npz", "head.txt")})
        (folder / "model.json").write_text(json.dumps(meta, indent=1))

    def save(self, path: str | Path) -> Path:
        """Write the parameter files to folder `path` atomically (an existing one is replaced only on success)."""
        path = Path(path)
        with atomic_dir(path, "model.json", "model") as tmp:
            self.write(tmp)
        return path

    @classmethod
    def read(cls, folder: str | Path) -> "FittedScorer":
        """Read the parameter files of `folder`; a missing, damaged or old-format file raises one InputError."""
        folder = Path(folder)
        meta_path = folder / "model.json"
        if not meta_path.exists():
            raise InputError(folder, "not a pamela_lite model folder (no model.json)")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(meta_path, "corrupted (not valid JSON)") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise InputError(meta_path, f"not a pamela_lite model (format {_get(meta, 'format')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise InputError(meta_path, f"model format version {meta.get('format_version')} was written by "
                                        f"pamela_lite {meta.get('pamela_lite_version')}; this version "
                                        f"({__version__}) reads version {FORMAT_VERSION} only: refit the model")
        try:
            for name, digest in meta["checksums"].items():
                if not (folder / name).exists():
                    raise InputError(folder / name, "missing from the model folder")
                if file_sha256(folder / name) != digest:
                    raise InputError(folder / name, "corrupted (checksum does not match model.json)")
            with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            return cls._decode(meta, arrays, (folder / "head.txt").read_text())
        except (KeyError, TypeError, ValueError, AttributeError) as err:  # a hand-edited or truncated model.json
            raise InputError(meta_path, f"corrupted ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------------- the users file


def write_users(path: str | Path, ids: list, states: np.ndarray, fit_sha256: str,
                kept: dict[str, str] | None = None) -> Path:
    """Write a users file atomically: ids (as text, with their type), states (float32), the fit's digest
    and, in a model folder, the digests of the files the states were solved from (`kept`: file name ->
    sha256; :func:`changed_kept_files`)."""
    path = Path(path)
    meta = {"format": USERS_FORMAT, "format_version": USERS_FORMAT_VERSION, "fit_sha256": fit_sha256,
            "id_type": "int" if ids and all(isinstance(u, (int, np.integer)) for u in ids) else "str",
            **({"kept_sha256": kept} if kept else {})}
    with atomic_file(path, ".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, user_ids=np.array([str(u) for u in ids], dtype=str),
                     user_states=np.asarray(states, dtype=np.float32).reshape(len(ids), -1),
                     meta=np.array(json.dumps(meta)))
    return path


def changed_kept_files(folder: str | Path) -> list[Path]:
    """The kept files of a model folder (ratings, events, added people's catalogue factors) that are
    not the ones its users file was written with: copied in from another fit, or edited by hand.
    Missing files are left to their readers (which say what they held); folders written before the
    digests were kept have none to compare."""
    folder = Path(folder)
    with np.load(folder / USERS_FILE, allow_pickle=False) as npz:
        kept = json.loads(str(npz["meta"])).get("kept_sha256", {})
    return [folder / name for name, digest in kept.items()
            if (folder / name).exists() and file_sha256(folder / name) != digest]


def write_arrays(path: str | Path, **arrays: np.ndarray) -> Path:
    """Write plain arrays to a ``.npz`` atomically (other parameter files: steering's phrase effects).

    Object arrays are refused, so every file written here loads with ``allow_pickle=False``.
    """
    path = Path(path)
    plain = {k: np.asarray(v) for k, v in arrays.items()}
    odd = [k for k, v in plain.items() if v.dtype == object]
    if odd:
        raise ValueError(f"object arrays would need pickle: {', '.join(odd)}")
    with atomic_file(path, ".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **plain)
    return path


def read_users(path: str | Path, fit_sha256: str, scorer: str, remedy: str, state_dim: int) -> tuple[list, np.ndarray]:
    """(ids, states) of a users file that belongs to the fit with digest `fit_sha256`.

    A users file of another fit is refused: its states mean nothing to this scorer (`scorer`
    names it in the message, `remedy` says what to do).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, f"missing: no users file beside {scorer}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            ids, states = npz["user_ids"].tolist(), npz["user_states"]
    except Exception as err:  # zip, numpy and JSON errors alike: the file is damaged or not ours
        raise InputError(path, f"not a readable users file ({type(err).__name__})") from None
    if meta.get("format") != USERS_FORMAT or meta.get("format_version") != USERS_FORMAT_VERSION:
        raise InputError(path, f"users file format {meta.get('format_version')}; this pamela_lite reads "
                               f"{USERS_FORMAT_VERSION} only: {remedy}")
    if meta.get("fit_sha256") != fit_sha256:
        raise InputError(path, f"this users file was written for another scorer than {scorer}, or that scorer's "
                               f"parameters were edited since (a refit changes what every state means): {remedy}")
    _check_users(path, ids, states, state_dim)
    return ([int(u) for u in ids] if meta["id_type"] == "int" else ids), states.astype(np.float32)


def _check_users(path: Path, ids: list, states: np.ndarray, state_dim: int) -> None:
    """A users file edited or assembled by hand: states of the scorer's width, one per distinct id, finite."""
    again = "a damaged or hand-edited users file; write it again (fit, or export)"
    if states.ndim != 2 or states.shape[1] != state_dim:
        raise InputError(path, f"states of shape {states.shape}, this scorer's have {state_dim} values: {again}")
    if len(ids) != len(states):
        raise InputError(path, f"{len(ids)} participant ids but {len(states)} states: {again}")
    distinct, counts = np.unique(np.array([str(u) for u in ids]), return_counts=True)  # numpy only: devices read this
    if (counts > 1).any():
        raise InputError(path, f"participant id(s) listed more than once: {preview(distinct[counts > 1].tolist())}: "
                               f"{again}")
    broken = ~np.isfinite(states).all(axis=1)
    if broken.any():
        raise InputError(path, f"NaN or infinite states of {int(broken.sum())} participant(s) "
                               f"({preview([ids[k] for k in np.flatnonzero(broken)])}): {again}")


def _digest(meta: dict, arrays: dict[str, np.ndarray], head: str) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        h.update(value.tobytes())
    h.update(head.encode())
    return h.hexdigest()


def json_scalar(value):
    """A numpy scalar as the Python number or bool JSON writes (and reads back) exactly."""
    return value.item() if isinstance(value, np.generic) else value


def _get(meta, key):
    return meta.get(key) if isinstance(meta, dict) else None


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes: model.json's checksums of its parameter files, and the users
    file's of the files its states were solved from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
