"""Images → embeddings with an ONNX image encoder; its command-line front end is pamela_lite.embed.

The encoder runs with onnxruntime on the CPU, in batches. Preprocessing is declared, not
guessed: a JSON sidecar next to the encoder (``<encoder>.preprocess.json``) states the input
size, resize mode, centre crop, mean/std, channel order and whether to L2-normalise; without
one, CLIP's values apply and the input size is read from the encoder's input shape.

Runs are resumable: images already in ``--out`` are skipped and new embeddings are appended
atomically every ``--checkpoint`` images, so an interrupted run loses at most one checkpoint.
Unreadable or non-image files are listed in a report (``<out>.skipped.csv``) and skipped.

Image ids: with ``--pamela ROOT`` each file's path relative to ROOT is looked up in PAMELA's
annotations (``image_path`` → ``image_id``); otherwise the id is the path relative to
``--images`` (a folder) or the path as listed (a list file).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from ._atomic import atomic_file
from .data import SPLITS, read_table
from .errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    """How an encoder wants its pixels. Defaults are OpenAI CLIP's."""

    input_size: int = 224
    resize: str = "shortest"  # "shortest": shorter side to input_size, then crop; "squash": both sides
    center_crop: bool = True
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    channel_order: str = "RGB"  # or "BGR"
    layout: str = "NCHW"  # or "NHWC"
    l2_normalize: bool = True
    interpolation: str = "bicubic"  # or "bilinear"

    @classmethod
    def load(cls, path: Path, input_size: int | None = None) -> "Preprocess":
        """The sidecar at `path`; a missing ``input_size`` is `input_size` (the encoder's own, from its
        input shape) when given."""
        try:
            values = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(path, "preprocessing sidecar is not valid JSON") from None
        if not isinstance(values, dict):
            raise InputError(path, 'a preprocessing sidecar is a JSON object such as {"input_size": 224}')
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(path, f"unknown preprocessing key(s) {', '.join(sorted(unknown))}; "
                                   f"known: {', '.join(cls.__dataclass_fields__)}")
        if "input_size" not in values:
            if input_size is None:
                raise InputError(path, "no input_size, and the encoder's input shape does not fix the image size: "
                                       "add input_size")
            values["input_size"] = input_size
        for key in ("mean", "std"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        config = cls(**values)
        config.check(path)
        return config

    def check(self, source) -> None:
        """One InputError naming `source` for a value of the wrong kind (JSON sidecars are hand-written)."""
        def number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)

        expected = {  # name: (is the value of the right kind, what it must be)
            "input_size": (isinstance(self.input_size, int) and not isinstance(self.input_size, bool)
                           and self.input_size >= 8, "a whole number >= 8"),
            "resize": (self.resize in ("shortest", "squash"), '"shortest" or "squash"'),
            "center_crop": (isinstance(self.center_crop, bool), "true or false"),
            "mean": (isinstance(self.mean, tuple) and len(self.mean) == 3 and all(map(number, self.mean)), "3 numbers"),
            "std": (isinstance(self.std, tuple) and len(self.std) == 3 and all(number(v) and v > 0 for v in self.std),
                    "3 numbers above 0"),
            "channel_order": (self.channel_order in ("RGB", "BGR"), '"RGB" or "BGR"'),
            "layout": (self.layout in ("NCHW", "NHWC"), '"NCHW" or "NHWC"'),
            "l2_normalize": (isinstance(self.l2_normalize, bool), "true or false"),
            "interpolation": (self.interpolation in ("bicubic", "bilinear"), '"bicubic" or "bilinear"'),
        }
        wrong = [f"{name} must be {rule}, not {getattr(self, name)!r}" for name, (fine, rule) in expected.items()
                 if not fine]
        if wrong:
            raise InputError(source, "; ".join(wrong))


def sidecar_path(encoder: Path) -> Path:
    return encoder.with_name(encoder.stem + ".preprocess.json")


def load_pixels(path: Path, config: Preprocess) -> np.ndarray:
    """One image file as float32 HxWx3 in [0, 1], resized and cropped as `config` says."""
    with Image.open(path) as img:
        return image_pixels(img, config)


def image_pixels(img: Image.Image, config: Preprocess) -> np.ndarray:
    """One PIL image as float32 HxWx3 in [0, 1], resized and cropped as `config` says (the one
    preprocessing of embed and of a generator adapter). A photo's EXIF orientation is applied first,
    so the encoder sees the picture upright, as a viewer shows it."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - damaged EXIF (some Pillow versions raise on it): use the image as stored
        pass
    img = _rgb(img)
    size = config.input_size
    resample = Image.Resampling.BICUBIC if config.interpolation == "bicubic" else Image.Resampling.BILINEAR
    if config.resize == "squash":
        img = img.resize((size, size), resample)
    else:
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), resample)
    if config.center_crop or config.resize == "shortest":
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.float32) / 255.0


def _rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit and float grayscale are scaled to 8 bits first: PIL's own conversion clips
    16-bit values at 255 (near-white) and float ones to black."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = float(values.max()) if values.size else 0.0
        if img.mode == "F" and top <= 1.0:
            values = values * 255.0  # floats in [0, 1]
        elif top > 255.0:
            values = values * (255.0 / (65535.0 if top <= 65535.0 else top))  # 16-bit (or wider) integers
        img = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def to_tensor(batch: np.ndarray, config: Preprocess) -> np.ndarray:
    """(N, H, W, 3) in [0, 1] → the encoder's input, normalised, vectorised over the batch."""
    if config.channel_order == "BGR":
        batch = batch[..., ::-1]
        mean, std = np.array(config.mean[::-1]), np.array(config.std[::-1])
    else:
        mean, std = np.array(config.mean), np.array(config.std)
    batch = (batch - mean.astype(np.float32)) / std.astype(np.float32)
    if config.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32)


class Encoder:
    """An ONNX image encoder with its preprocessing."""

    def __init__(self, path: Path, threads: int = 0):
        if not path.exists():
            raise InputError(path, "no such encoder file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: all cores; encoders are compute-bound
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise InputError(path, f"cannot load the encoder: {str(err).splitlines()[0]}") from None
        self.input = self.session.get_inputs()[0]
        sidecar, side = sidecar_path(path), self._side_from_shape()
        if sidecar.exists():
            self.config = Preprocess.load(sidecar, side)  # checked there
        elif side is None:
            raise InputError(path, f"input shape {self.input.shape} does not fix the image size; write "
                                   f"{sidecar.name} with input_size")
        else:
            self.config = Preprocess(input_size=side)
            self.config.check(path)
        self._check_shape(path, sidecar)
        # What made an embedding: the graph and its preprocessing (an embeddings file records it,
        # so a resumed run with another encoder of the same width is refused, not mixed in).
        digest = hashlib.sha256()
        with open(path, "rb") as fh:  # in chunks: a large encoder is a gigabyte
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(json.dumps(asdict(self.config), sort_keys=True).encode())
        self.identity = digest.hexdigest()

    def _side_from_shape(self) -> int | None:
        """The image side the encoder's input shape fixes (None when it is dynamic)."""
        shape = self.input.shape
        side = shape[2] if len(shape) == 4 and shape[1] == 3 else (shape[1] if len(shape) == 4 else None)
        return side if isinstance(side, int) else None

    def _check_shape(self, path: Path, sidecar: Path) -> None:
        """The declared size and layout fit the input shape wherever it is fixed (else onnxruntime
        fails on the first batch, naming neither file)."""
        shape, size, config = self.input.shape, self.config.input_size, self.config
        want = [None, 3, size, size] if config.layout == "NCHW" else [None, size, size, 3]
        if len(shape) != 4 or any(isinstance(got, int) and w is not None and got != w for got, w in zip(shape, want)):
            raise InputError(sidecar if sidecar.exists() else path,
                             f"the encoder takes input of shape {shape}, not {config.layout} images of side {size}"
                             f"{'' if sidecar.exists() else f'; write {sidecar.name} with input_size and layout'}")

    @property
    def dim(self) -> int:
        """Length of the embeddings this encoder gives (from its output shape, or one blank image)."""
        if not hasattr(self, "_dim"):
            last = self.session.get_outputs()[0].shape[-1]
            if isinstance(last, int) and len(self.session.get_outputs()[0].shape) == 2:
                self._dim = last
            else:
                size = self.config.input_size
                self._dim = int(self(np.zeros((1, size, size, 3), dtype=np.float32)).shape[1])
        return self._dim

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input.name: to_tensor(pixels, self.config)})[0]
        out = out.reshape(out.shape[0], -1).astype(np.float32)
        if self.config.l2_normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


@dataclass
class EmbedReport:
    """What a run did: counts, throughput and the files it skipped (with reasons)."""

    embedded: int = 0
    already_present: int = 0
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def list_images(images: Path) -> list[tuple[Path, str]]:
    """(file, id) pairs: a folder is searched recursively; a list file names one path per line.

    In a folder, hidden files and folders (names starting with ".": thumbnails, checkpoints,
    version control) are left out, and linked subfolders are followed (each real folder once)."""
    if images.is_dir():
        return [(images / name, name) for name in _folder_images(images)]
    if not images.exists():
        raise InputError(images, "no such folder or list file")
    try:
        text = images.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors write one) is not a path
    except UnicodeDecodeError:
        what = ("an image, not a folder or a list file of image paths: pass its folder"
                if images.suffix.lower() in IMAGE_SUFFIXES else "not a list file of image paths (not UTF-8 text)")
        raise InputError(images, what) from None
    # one path per line; blank lines and lines starting with "#" (comments) are not paths
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not lines:
        raise InputError(images, "the list file is empty")
    base, pairs = images.parent, {}
    for line in lines:  # one id per image: "a/./b.png" is "a/b.png", and a line given twice counts once
        image_id = posixpath.normpath(line) if not Path(line).is_absolute() else line
        pairs.setdefault(image_id, (base / image_id) if not Path(line).is_absolute() else Path(line))
    return [(path, image_id) for image_id, path in pairs.items()]


def _folder_images(root: Path) -> list[str]:
    """Sorted relative paths (posix) of the visible files under `root`, following linked folders."""
    names, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or a second link to one folder
            subfolders[:] = []
            continue
        seen.add(real)
        # Sorted, real folders before links: which path a linked folder's images get does not
        # depend on the file system's listing order.
        subfolders[:] = sorted((d for d in subfolders if not d.startswith(".")),
                               key=lambda d: (os.path.islink(os.path.join(folder, d)), d))
        relative = Path(folder).relative_to(root)
        # a link to a file that is gone is listed too: it is reported as skipped, not lost silently
        names += [(relative / f).as_posix() for f in files if not f.startswith(".") and (
            os.path.isfile(os.path.join(folder, f)) or not os.path.exists(os.path.join(folder, f)))]
    return sorted(names)


def pamela_ids(root: Path) -> dict[str, object]:
    """PAMELA's image_path → image_id over all annotation files (paths normalised: "./a.png" is
    "a.png"). A path given two ids is refused: one of them would get no embedding."""
    pairs = []
    for split in SPLITS:
        path = root / "annotations" / f"pamela_{split}.json"
        if path.exists():
            frame = read_table(path)
            if {"image_path", "image_id"} <= set(frame.columns):
                pairs.append(frame.select(pl.col("image_path").cast(pl.String), pl.col("image_id").cast(pl.String)
                                          .alias("_key"), "image_id").drop_nulls())
    table = (pl.concat(pairs, how="vertical_relaxed").unique(["image_path", "_key"], maintain_order=True)
             if pairs else pl.DataFrame())
    if table.height == 0:
        raise InputError(root, "no annotations with image_path and image_id under annotations/")
    table = table.with_columns(pl.col("image_path").map_elements(posixpath.normpath, return_dtype=pl.String)
                               ).unique(["image_path", "_key"], maintain_order=True)
    clash = table.filter(pl.len().over("image_path") > 1)
    if clash.height:
        first = clash.filter(pl.col("image_path") == clash["image_path"][0])
        raise InputError(root / "annotations", f"{clash['image_path'].n_unique()} image_path(s) carry more than one "
                                               f"image_id, e.g. {first['image_path'][0]} is "
                                               f"{' and '.join(sorted(first['_key'].to_list())[:3])}")
    return dict(table.select("image_path", "image_id").iter_rows())


def relative_to_root(path: Path, root: Path) -> str | None:
    """`path` relative to `root` as PAMELA's image_path writes it, or None when it is outside.

    Symbolic links are not followed first (an images/ folder linked from elsewhere is still the
    root's images/); a path that is outside only as written is tried once more with links followed.
    """
    for mine, theirs in ((os.path.abspath(path), os.path.abspath(root)), (path.resolve(), root.resolve())):
        try:
            rel = os.path.relpath(mine, theirs)
        except ValueError:  # Windows: another drive than the root's
            continue
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return Path(rel).as_posix()
    return None


SOURCE_KEY = "pamela_lite.embedding_source"  # Parquet key-value metadata: {"encoder": sha256, "roots": [...]}


def embeddings_source(out: Path) -> dict | None:
    """What made an embeddings file (encoder identity, image roots), or None for a file that does
    not say (written elsewhere, or before files recorded it)."""
    try:
        raw = pl.read_parquet_metadata(out).get(SOURCE_KEY)
        return json.loads(raw) if raw else None
    except Exception:  # not Parquet or unreadable: read_table names the problem
        return None


def _check_source(out: Path, existing: pl.DataFrame | None, encoder: "Encoder", root: str | None,
                  files: list, have: set[str]) -> dict | None:
    """The source record to write (None: the file does not say its encoder, and is not stamped),
    after refusing a resumed file another encoder made and warning about ids already there
    (`have`) that come from another image folder (they keep that folder's vectors)."""
    if existing is None or not existing.height:
        return {"encoder": encoder.identity, "roots": [root] if root else []}
    source = embeddings_source(out)
    if source is None:  # rows of an unknown encoder: not stamped as this one's, which nothing could check
        print(f"warning: {out} does not say which encoder made it (written elsewhere, or by an earlier version): "
              f"its rows are taken to be this encoder's", file=sys.stderr)
        return None
    if source.get("encoder") != encoder.identity:
        raise InputError(out, "was made by another encoder (or other preprocessing) than this one: its embeddings "
                              "and this encoder's do not mix; use another --out, or the encoder that made it")
    roots = list(source.get("roots") or [])
    if root:
        _warn_second_ids(out, root, roots, files, have)
    if root and roots and root not in roots:
        # Relative ids from another folder: the same images moved, or other images under the same
        # names; only the person who moved them knows, so they are told (absolute ids say which file).
        clash = [str(i) for _, i in files if str(i) in have and not os.path.isabs(str(i))]
        if clash:
            print(f"warning: {out}: {len(clash)} image id(s) of {root} are already there from "
                  f"{' or '.join(roots)}, e.g. {clash[0]!r}: they keep the embeddings made there (right if the "
                  f"folder moved; if they are other images, embed into another --out)", file=sys.stderr)
    return {"encoder": encoder.identity, "roots": roots + ([root] if root and root not in roots else [])}


def _warn_second_ids(out: Path, root: str, roots: list[str], files: list, have: set[str]) -> None:
    """Warn when images of `root` are already in `out` under ids relative to a folder that holds
    it, or that it holds (``cats/c0.png`` embedded from ``photos/``, now ``c0.png`` from
    ``photos/cats/``): they would be embedded again under a second id, and a ratings file can
    name only one of the two."""
    # ids embedded already (a second run of the same folder) were warned about when they were new
    ids = [str(i) for _, i in files if not os.path.isabs(str(i)) and str(i) not in have]
    for other in roots:
        here, there = Path(root), Path(other)
        if here == there:
            continue
        if here.is_relative_to(there):  # a subfolder of a folder embedded before
            prefix = here.relative_to(there).as_posix()
            twice = [(i, f"{prefix}/{i}") for i in ids if f"{prefix}/{i}" in have]
        elif there.is_relative_to(here):  # the parent of a folder embedded before
            prefix = there.relative_to(here).as_posix() + "/"
            twice = [(i, i[len(prefix):]) for i in ids if i.startswith(prefix) and i[len(prefix):] in have]
        else:
            continue
        if twice:
            print(f"warning: {out}: {len(twice)} image(s) of {root} are already there under ids relative to "
                  f"{other}, e.g. {twice[0][1]!r}, and get a second id now ({twice[0][0]!r}); ratings should "
                  f"name one of the two, or embed into another --out to keep one id per image", file=sys.stderr)


def _existing(out: Path) -> pl.DataFrame | None:
    if not out.exists():
        return None
    frame = read_table(out)
    if not {"image_id", "embedding"} <= set(frame.columns):
        raise InputError(out, "exists but is not an embeddings file (image_id, embedding); choose another --out")
    return frame.select("image_id", "embedding")


def _dimension(column: pl.Series) -> int | None:
    if isinstance(column.dtype, pl.Array):
        return column.dtype.size
    if isinstance(column.dtype, pl.List):
        lengths = column.list.len().unique()
        return int(lengths[0]) if len(lengths) == 1 else None
    return None


def _write(out: Path, existing: pl.DataFrame | None, ids: list, vectors: list[np.ndarray],
           source: dict | None = None) -> pl.DataFrame:
    matrix = np.vstack(vectors)
    new = pl.DataFrame({"image_id": ids, "embedding": pl.Series(matrix, dtype=pl.Array(pl.Float32, matrix.shape[1]))})
    if existing is not None:
        if existing["embedding"].dtype != new["embedding"].dtype:
            raise InputError(out, f"holds embeddings of type {existing['embedding'].dtype}; this encoder gives "
                                  f"{new['embedding'].dtype}: use another --out")
        new = pl.concat([existing, new.with_columns(pl.col("image_id").cast(existing["image_id"].dtype))])
    with atomic_file(out, ".parquet") as tmp:
        new.write_parquet(tmp, metadata=None if source is None else {SOURCE_KEY: json.dumps(source)})
    return new


def embed_images(encoder: Encoder, files: list[tuple[Path, object]], out: Path, batch_size: int = 32,
                 checkpoint: int = 1024, progress: bool = False, log_lines: bool = False,
                 root: str | Path | None = None) -> EmbedReport:
    """Embed `files` (path, id) into `out`, skipping ids already there; returns what happened.

    `progress` shows a bar (for a terminal); `log_lines` prints one plain line per checkpoint
    instead (for a log file). `root` is the folder (or list file) the ids are relative to: the
    file records it and the encoder; a resumed run with another encoder is refused (its vectors
    would not mix), and ids already there from another folder are warned about (they keep the
    vectors made there).
    """
    report = EmbedReport()
    existing = _existing(out)
    if existing is not None and existing.height:
        have = _dimension(existing["embedding"])
        if have is not None and have != encoder.dim:
            raise InputError(out, f"holds {have}-d embeddings; this encoder gives {encoder.dim}-d: "
                                  f"use another --out (or the encoder that made the file)")
    done = set(existing["image_id"].cast(pl.String).to_list()) if existing is not None else set()
    source = _check_source(out, existing, encoder, None if root is None else str(Path(root).resolve()), files, done)
    todo = [(p, i) for p, i in files if str(i) not in done]
    report.already_present = len(files) - len(todo)
    ids, vectors, pending = [], [], 0
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc="embed", unit="img", disable=not progress, file=sys.stderr)
    done = 0
    try:
        for at in range(0, len(todo), batch_size):
            pixels, batch_ids = [], []
            for path, image_id in todo[at:at + batch_size]:
                try:
                    pixels.append(load_pixels(path, encoder.config))
                    batch_ids.append(image_id)
                except UnidentifiedImageError:  # Pillow's name for "not an image", which says little to a reader
                    report.skipped.append((str(path), "not an image (or a format Pillow cannot read)"))
                except FileNotFoundError:
                    what = "a link to a file that does not exist" if os.path.islink(path) else "no such file"
                    report.skipped.append((str(path), what))
                except (OSError, ValueError, Image.DecompressionBombError) as err:
                    report.skipped.append((str(path),
                                           f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))
            if pixels:
                batch = encoder(np.stack(pixels))
                vectors, ids, pending = vectors + [batch], ids + batch_ids, pending + len(batch_ids)  # together
            bar.update(len(todo[at:at + batch_size]))
            done += len(todo[at:at + batch_size])
            if pending >= checkpoint:
                existing, ids, vectors, pending = _write(out, existing, ids, vectors, source), [], [], 0
                if log_lines:
                    print(f"embedded {done}/{len(todo)} image(s); saved to {out}", file=sys.stderr, flush=True)
        if ids:
            _write(out, existing, ids, vectors, source)
            ids = []
    except KeyboardInterrupt:  # keep what is embedded (minutes of a large encoder's work), then stop
        bar.close()
        if ids:
            _write(out, existing, ids, vectors, source)
            print(f"saved the {len(ids)} image(s) embedded since the last checkpoint to {out}; run the same "
                  f"command to go on", file=sys.stderr)
        raise
    bar.close()
    report.seconds = time.perf_counter() - start
    report.embedded = len(todo) - len(report.skipped)
    return report
