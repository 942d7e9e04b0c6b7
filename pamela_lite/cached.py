"""Cached catalogues and two-stage scoring, with numpy and onnxruntime alone (as ``edge``).

An image's features — population score, taste coordinates, image factors — do not depend on
the user. ``python -m pamela_lite.export`` writes, beside the one-file scorer, the image-feature
graph (embedding → features) and the user-scoring graph (features + user state → score), made
from the scorer (:mod:`pamela_lite.stages`). A catalogue's features are computed
once and stored in a **feature cache**; ranking it for a user then costs a few dot products and
the trees per image, or — in the retrieval mode — one dot product per image and the trees on the
best ``candidates`` only.

The cache file (``.npz``, uncompressed, no pickle, written atomically):

* ``features.npy`` [N, 1 + d + f], float64 for an exact scorer: ``[p(x), z(x), q(x)]``, stored
  first and aligned so that it is **memory-mapped** on load (a catalogue larger than RAM, or
  shared by the processes of one machine, is paged in as it is read);
* ``image_ids.npy`` [N], integers or text, as given;
* ``meta.npy``: JSON text: format version, the digest of the fit it was computed with
  (``fit_sha256``, as in the users file and the scorer's metadata: a cache is refused by a
  scorer of any other fit, since a refit changes what every feature means), the feature layout
  and dtype (float64 for an exact export, float32 for a fast one; a cache is refused by a scorer
  of the other precision).
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ._atomic import atomic_file

CACHE_MEMBERS = {"features.npy", "image_ids.npy", "meta.npy"}
CACHE_FORMAT_VERSION = 2  # 2: tied to the fit digest (1, on the scale branch: to the ONNX file's sha256)
IMAGE_STAGE, USER_STAGE = "image_features", "user_score"
CHUNK = 16_384  # rows per onnxruntime call when a whole catalogue is scored
_ALIGN = 64  # byte alignment of the memory-mapped feature matrix inside the file


class CacheError(ValueError):
    """A cache or stage file that cannot be used; the message is one line naming the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):  # picklable (Dask sends errors between processes)
        return type(self), (self.path, self.problem)


def stage_paths(scorer_path: str | Path) -> tuple[Path, Path]:
    """Where the image-feature graph and the user-scoring graph live beside a scorer file."""
    scorer_path = Path(scorer_path)
    return (scorer_path.with_name(f"{scorer_path.stem}.{IMAGE_STAGE}.onnx"),
            scorer_path.with_name(f"{scorer_path.stem}.{USER_STAGE}.onnx"))


@dataclass
class FeatureCache:
    """A catalogue's cached image features, tied to one fit by its digest (``fit_sha256``)."""

    image_ids: np.ndarray  # (N,) ints or text, as given
    features: np.ndarray  # (N, F) [population, taste coordinates, image factors]; a memmap when read from a file
    fit_sha256: str
    layout: dict  # name -> [start, stop) columns of features
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.image_ids)


# --------------------------------------------------------------------------- the file format


def write_cache(path: str | Path, cache: FeatureCache) -> Path:
    """Write `cache` to `path` atomically (see the module docstring for the format)."""
    path = Path(path)
    meta = {"format_version": CACHE_FORMAT_VERSION, "fit_sha256": cache.fit_sha256, "layout": cache.layout,
            "dtype": str(cache.features.dtype), "n_images": len(cache)}
    ids = np.asarray(cache.image_ids)
    if ids.dtype.kind not in "iuU":
        ids = ids.astype(str)
    members = {"features": np.ascontiguousarray(cache.features), "image_ids": ids,
               "meta": np.array(json.dumps(meta))}
    with atomic_file(path, ".npz") as tmp, open(tmp, "wb") as fh:
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, array in members.items():
                _write_member(zf, fh, f"{name}.npy", array)
    return path


def _write_member(zf: zipfile.ZipFile, fh, name: str, array: np.ndarray) -> None:
    """One .npy member, stored (not compressed), its data aligned to 64 bytes within the file."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    header = header.getvalue()
    # local file header (30) + name + our padding record (4 + pad) + zip64 record (20) + .npy header
    used = fh.tell() + 30 + len(name.encode()) + 4 + 20 + len(header)
    pad = -used % _ALIGN
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.extra = struct.pack("<HH", 0xD935, pad) + b"\0" * pad  # 0xD935: the zipalign padding record
    with zf.open(info, "w", force_zip64=True) as out:
        out.write(header)
        flat = array.reshape(-1)
        step = max(1, (1 << 24) // max(array.itemsize, 1))
        for at in range(0, len(flat), step):
            out.write(memoryview(np.ascontiguousarray(flat[at:at + step])).cast("B"))


def check_k(k) -> None:
    """How many images a top-k returns: a whole number of at least 1 (a device has no CLI to check it)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, not {k!r}")


def check_candidates(candidates) -> None:
    """The retrieval mode's M: None (exact ranking) or a whole number of at least 1."""
    if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer))
                                   or candidates < 1):
        raise ValueError(f"candidates must be None or a whole number >= 1, not {candidates!r}")


def is_feature_cache(path: str | Path) -> bool:
    """Whether `path` holds a feature cache's members (any version): what cache --out may replace."""
    try:
        with zipfile.ZipFile(path) as zf:
            return CACHE_MEMBERS <= set(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_cache(path: str | Path) -> FeatureCache:
    """Open a cache file; its feature matrix is memory-mapped, not read (no pickle, no code)."""
    path = Path(path)
    if not path.exists():
        raise CacheError(path, "no such feature cache (write it with python -m pamela_lite.cache)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if not CACHE_MEMBERS <= names:
                raise CacheError(path, "not a feature cache (features, image_ids and meta expected inside)")
            info = zf.getinfo("features.npy")
        with np.load(path, allow_pickle=False) as members:
            meta = json.loads(str(members["meta"]))
            ids = members["image_ids"]
        features = _memmap_member(path, info)
    except CacheError:
        raise
    except Exception as err:  # a truncated or foreign file
        raise CacheError(path, f"cannot read as a feature cache: {str(err).splitlines()[0]}") from None
    if meta.get("format_version") != CACHE_FORMAT_VERSION:
        raise CacheError(path, f"feature cache format {meta.get('format_version')}, this pamela_lite reads "
                               f"{CACHE_FORMAT_VERSION}; write the cache again")
    if features.ndim != 2 or len(features) != len(ids):
        raise CacheError(path, f"{len(ids)} image ids but features of shape {features.shape}")
    return FeatureCache(ids, features, meta["fit_sha256"], meta["layout"], str(path))


def _memmap_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray:
    """The stored .npy member `info` of the zip at `path` as a read-only memory map."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise CacheError(path, "the feature matrix is compressed; write the cache again with pamela_lite")
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise CacheError(path, "damaged zip member header")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, fortran, dtype = read_header[version](fh)
        offset = fh.tell()
    if dtype.hasobject:
        raise CacheError(path, "the feature matrix holds Python objects; refused")
    if not shape or np.prod(shape) == 0:
        return np.zeros(shape, dtype)
    mapped = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    return mapped if mapped.flags.aligned else np.array(mapped)


# --------------------------------------------------------------------------- two-stage scoring


class TwoStage:
    """The two stage graphs beside a scorer, loaded and checked against its fit digest and precision."""

    def __init__(self, scorer_path: str | Path, fit_sha256: str, session_options: ort.SessionOptions,
                 precision: str = "exact"):
        self.fit_sha256 = fit_sha256
        self.paths = stage_paths(scorer_path)
        sessions = []
        for path, stage in zip(self.paths, (IMAGE_STAGE, USER_STAGE)):
            if not path.exists():
                raise CacheError(path, "no such file: the two-stage graphs are written beside the scorer by "
                                       "python -m pamela_lite.export (export again)")
            try:
                session = ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
            except Exception as err:
                raise CacheError(path, f"cannot load the graph: {str(err).splitlines()[0]}") from None
            meta = session.get_modelmeta().custom_metadata_map
            if meta.get("pamela_lite.stage") != stage:
                raise CacheError(path, f"not a pamela_lite {stage} graph")
            if (meta.get("pamela_lite.fit_sha256") != fit_sha256
                    or meta.get("pamela_lite.precision", "exact") != precision):
                raise CacheError(path, f"was exported with another scorer than {Path(scorer_path).name}; export again")
            sessions.append(session)
        self.image_session, self.user_session = sessions
        self.layout = json.loads(meta["pamela_lite.feature_layout"])
        self.state_layout = json.loads(meta["pamela_lite.state_layout"])
        self.linear = json.loads(meta["pamela_lite.linear"])
        self.dtype = np.dtype(meta["pamela_lite.feature_dtype"])
        self.n_features = max(stop for _, stop in self.layout.values())

    def features(self, embeddings: np.ndarray) -> np.ndarray:
        """Image features (N, F) of raw embeddings (N, D), by the image-feature graph."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        out = np.empty((len(embeddings), self.n_features), dtype=self.dtype)
        for at in range(0, len(embeddings), CHUNK):
            chunk = np.ascontiguousarray(embeddings[at:at + CHUNK])
            out[at:at + CHUNK] = self.image_session.run(["features"], {"embedding": chunk})[0]
        return out

    def check(self, cache: FeatureCache) -> None:
        """Refuse a cache made for another scorer or of another shape, in one line."""
        if cache.fit_sha256 != self.fit_sha256:
            raise CacheError(cache.source, "this feature cache was written for another scorer (a refit changes "
                                           "what every feature means); write it again with this scorer")
        if cache.features.shape[1:] != (self.n_features,) or cache.features.dtype != self.dtype:
            raise CacheError(cache.source, f"features of shape {cache.features.shape} ({cache.features.dtype}); "
                                           f"this scorer's are (N, {self.n_features}) {self.dtype}: write "
                                           f"the cache again with this scorer (python -m pamela_lite.cache)")

    def score(self, features: np.ndarray, states: np.ndarray, clip: bool = True) -> np.ndarray:
        """Scores of N cached images for states (N, S), or for one state (1, S) broadcast to all."""
        states = np.ascontiguousarray(states, dtype=np.float32)
        out = np.empty(len(features), dtype=np.float32)
        name = "score" if clip else "utility"
        for at in range(0, len(features), CHUNK):
            part = states if len(states) == 1 else states[at:at + CHUNK]
            out[at:at + CHUNK] = self.user_session.run(
                [name], {"features": np.ascontiguousarray(features[at:at + CHUNK], dtype=self.dtype),
                         "user_state": part})[0]
        return out

    def linear_scores(self, state: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The base (linear) utility ``mean + bias + [1, w, u] · [p, z, q]`` (blend-weighted) of every row.

        No trees: one matrix-vector product over the cached features, used by the retrieval
        mode to choose which images the trees score.
        """
        state = np.asarray(state, dtype=np.float64).ravel()
        at, lin = self.state_layout, self.linear
        coef = np.zeros(self.n_features)
        coef[slice(*self.layout["population"])] = lin["population"]
        coef[slice(*self.layout["taste"])] = lin["taste"] * state[slice(*at["taste"])]
        coef[slice(*self.layout["factors"])] = lin["factors"] * state[slice(*at["factors"])]
        constant = lin["mean"] + lin["bias"] * state[at["bias"][0]]
        return features @ coef.astype(features.dtype) + constant

    def top_k(self, state: np.ndarray, cache: FeatureCache, k: int,
              candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the k best images for one user state, best first, and their utilities.

        Exact by default (every image through the user-scoring graph). With `candidates` M, the
        retrieval mode: the linear part ranks the whole catalogue, the trees score its best M.
        """
        self.check(cache)
        state = np.asarray(state, dtype=np.float32).reshape(1, -1)
        n = len(cache)
        if candidates is not None and candidates < n:
            linear = self.linear_scores(state[0], cache.features)
            rows = np.sort(np.argpartition(-linear, max(candidates, k) - 1)[:max(candidates, k)])
            utility = self.score(cache.features[rows], state, clip=False)
        else:
            rows, utility = None, self.score(cache.features, state, clip=False)
        k = min(k, len(utility))
        best = np.argpartition(-utility, k - 1)[:k]
        best = best[np.argsort(-utility[best], kind="stable")]
        return (best if rows is None else rows[best]), utility[best]


class CachedScoring:
    """Two-stage scoring for :class:`pamela_lite.edge.EdgeScorer` (mixed in; numpy + onnxruntime).

    Needs ``scorer_path``, ``fit_sha256``, ``precision``, ``session_options``, ``state()``,
    ``_embedding_rows()``, ``embedding_dim``, ``state_dim`` and ``scale`` from the scorer it is
    mixed into.
    """

    _two_stage: TwoStage | None = None

    @property
    def stages(self) -> TwoStage:
        """The image-feature and user-scoring graphs beside the scorer (loaded on first use)."""
        if self._two_stage is None:
            self._two_stage = TwoStage(self.scorer_path, self.fit_sha256, self.session_options, self.precision)
        return self._two_stage

    def cache_features(self, embeddings: np.ndarray, image_ids=None) -> FeatureCache:
        """A catalogue's features, computed once (ids default to row numbers)."""
        # the device's own check of embedding rows: a NaN one would make a NaN feature row, cached for good
        embeddings = self._embedding_rows(embeddings, "embeddings")
        ids = np.arange(len(embeddings)) if image_ids is None else np.asarray(image_ids)
        if len(ids) != len(embeddings):
            raise ValueError(f"{len(ids)} image ids for {len(embeddings)} embeddings")
        stages = self.stages
        return FeatureCache(ids, stages.features(embeddings), self.fit_sha256, stages.layout)

    def load_cache(self, path: str | Path) -> FeatureCache:
        """A cache file (memory-mapped), checked against this scorer; CacheError names the problem."""
        cache = read_cache(path)
        self.stages.check(cache)
        return cache

    def score_cached(self, cache: FeatureCache | np.ndarray, states: np.ndarray, clip: bool = True) -> np.ndarray:
        """Scores of cached images for states (N, S), or one state (S,) / (1, S) for all of them."""
        if isinstance(cache, FeatureCache):
            self.stages.check(cache)
            features = cache.features
        else:  # raw feature rows, as cache_features computes them: checked here, the cache's were when written
            features = np.asarray(cache)
            n_features = self.stages.n_features
            if features.ndim != 2 or features.shape[1] != n_features:
                raise ValueError(f"features must have shape (N, {n_features}) (rows of a feature cache), "
                                 f"not {features.shape}")
        states = np.atleast_2d(np.asarray(states, dtype=np.float32))
        if states.shape[1] != self.state_dim or len(states) not in (1, len(features)):
            raise ValueError(f"states must have shape (1 or {len(features)}, {self.state_dim}), not {states.shape}")
        check_finite(states, "the user state(s)")  # 1 or N rows of S values, checked before clipping hides them
        out = self.stages.score(features, states, clip)
        if not np.isfinite(out).all():  # a raw feature row is looked at only then (a cache's were checked when written)
            check_finite(features, "features")
        return out

    def top_k_cached(self, user, cache: FeatureCache, k: int = 10, candidates: int | None = None,
                     clip: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the user's k best cached images, best first, and their scores (the unclipped
        utility with ``clip=False``; see TwoStage.top_k)."""
        check_k(k)
        check_candidates(candidates)
        best, utility = self.stages.top_k(self.state(user), cache, k, candidates)  # state() refuses NaN/inf
        return best, np.clip(utility, *self.scale) if clip else utility


def check_not_zero(rows: np.ndarray, what: str) -> np.ndarray:
    """`rows` (k, D) unchanged, or ValueError naming the all-zero ones: an embedding of nothing,
    which the scorer would silently treat as an image (the files' reader refuses it too)."""
    zero = np.flatnonzero(~rows.any(axis=1)) if rows.size else []
    if len(zero):
        raise ValueError(f"{what}: {len(zero)} row(s) are all zeros ({', '.join(map(str, zero[:5]))}"
                         + (" ..." if len(zero) > 5 else "") + "); an embedding of an image is never all zeros")
    return rows


def check_finite(values: np.ndarray, what: str) -> np.ndarray:
    """`values` unchanged, or ValueError naming the rows with NaN or inf (onnxruntime would score
    them silently: a NaN embedding gives a NaN score, or whatever the trees make of a missing value)."""
    if values.size and not np.isfinite(values).all():
        bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1)) if values.ndim > 1 else []
        rows = ("" if values.ndim < 2 else f" in {len(bad)} row(s) ({', '.join(map(str, bad[:5]))}"
                + (" ..." if len(bad) > 5 else "") + ")")
        raise ValueError(f"{what}: NaN or infinite values{rows}; only finite vectors can be scored")
    return values
