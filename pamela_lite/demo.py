"""A deterministic, PAMELA-shaped demo world, written in PAMELA's own on-disk layout.

The real PAMELA release cannot be downloaded everywhere, so the toolkit ships a generator that
mimics its published statistics (see ``shared/reference/pamela.md``): 199 participants, about 5k
images rated by about 14 people each, 21 visual groups, 26 art styles, Art/Photorealism,
demographics, and the five splits in PAMELA's proportions.

Taste in the demo has the structure a personalized model should find:

* a population appeal that the image embedding carries (some images are simply better);
* shared low-rank taste (people differ along a few common directions of image content);
* categorical likes and dislikes (a person loves food photos, hates abstract art);
* demographic effects (age and gender shift the liking of some groups);
* per-user use of the rating scale (ordinal thresholds with a personal shift and spread);
* rating noise.

The noise-free utilities and the expected rating of every pair are written to
``demo_truth.parquet``, so evaluation can print the noise ceiling: what a model that knew the
true utility would score.

Usage::

    python -m pamela_lite.demo --out DIR [--seed N] [--scale 5]
    python -m pamela_lite.demo --world NAME [--dim D] [--scale LOW-HIGH] [--users N] [--string-ids] --out DIR
    python -m pamela_lite.demo --world list     # the world families (pamela_lite.worlds)
    python -m pamela_lite.demo --world NAME --events session|feed|nosignal --out DIR   # + events.parquet
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from scipy.special import ndtr

from ._atomic import atomic_dir
from .cli import Parser, output_path, prog, run, seed_arg
from .data import SCALE_PATTERN

GROUPS = (
    "abstract", "animal", "architecture", "automotive", "cinematic", "cityscape", "fashion",
    "flower painting", "food", "landscape art", "landscape photo", "lifestyle", "portrait art",
    "portrait photo", "product", "scene", "special", "sports", "still life", "street", "travel",
)
ART_GROUPS = ("abstract", "flower painting", "landscape art", "portrait art", "still life", "special")
STYLES = tuple(f"style_{k:02d}" for k in range(26))
NATIONALITIES = tuple(f"country_{k:02d}" for k in range(23))
GENDERS = ("male", "female", "prefer not to say")
GENDER_SHARE = (40525, 29086, 293)  # PAMELA's ratings by gender

# PAMELA's ratings per split (pamela.md); the demo keeps these proportions.
SPLIT_RATINGS = {
    "train": 50222, "val_seen": 6551, "test_seen": 9735, "val_unseen": 926, "test_unseen": 2470,
}
TRUTH_FILE = "demo_truth.parquet"
EMBEDDINGS_FILE = "embeddings.parquet"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo world; the defaults are PAMELA's."""

    n_users: int = 199
    n_images: int = 5077
    n_ratings: int = 69904
    dim: int = 512
    scale: int = 5
    latent: int = 24
    taste_rank: int = 6
    noise: float = 0.55
    seed: int = 0


def _age_bin(age: np.ndarray) -> list[str]:
    lower = (age // 10) * 10
    return [f"{lo}-{lo + 9}" for lo in lower]


def _split_counts(total: int, weights: dict[str, int]) -> dict[str, int]:
    share = np.array(list(weights.values()), dtype=float)
    counts = np.floor(share / share.sum() * total).astype(int)
    counts[0] += total - counts.sum()
    return dict(zip(weights, counts.tolist()))


def _make_images(cfg: DemoConfig, rng: np.random.Generator):
    n, L = cfg.n_images, cfg.latent
    group = rng.integers(0, len(GROUPS), n)
    is_art = np.isin(np.array(GROUPS)[group], ART_GROUPS) | (rng.random(n) < 0.12)
    style = np.where(is_art, rng.integers(0, len(STYLES), n), -1)

    group_centre = rng.normal(0, 1.0, (len(GROUPS), L))
    style_offset = rng.normal(0, 0.6, (len(STYLES), L))
    type_offset = rng.normal(0, 0.5, (2, L))
    content = (
        group_centre[group]
        + np.where(style[:, None] >= 0, style_offset[np.maximum(style, 0)], 0.0)
        + type_offset[is_art.astype(int)]
        + rng.normal(0, 0.7, (n, L))
    )
    # A CLIP-like embedding: a shared direction, content seen through a random linear map,
    # and nuisance dimensions the encoder sees but taste ignores.
    mixing = rng.normal(0, 1.0 / np.sqrt(L), (L, cfg.dim))
    common = rng.normal(0, 1.0, cfg.dim)
    emb = 1.5 * common / np.linalg.norm(common) * np.sqrt(cfg.dim) / 8
    emb = (emb + content @ mixing).astype(np.float32)
    emb += 0.35 * rng.standard_normal((n, cfg.dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)

    types = np.where(is_art, "Art", "Photorealism")
    names = np.array(GROUPS)[group]
    images = pl.DataFrame({
        "image_id": np.arange(100000, 100000 + n, dtype=np.int64),
        "image_path": [f"images/{g.replace(' ', '_')}/{100000 + i}.png" for i, g in enumerate(names)],
        "group": names,
        "style": [STYLES[s] if s >= 0 else None for s in style],
        "type": types,
        "prompt": [f"a {t.lower()} {g} image, variation {i % 97}" for i, (t, g) in enumerate(zip(types, names))],
    })
    return images, content, group, style, is_art, emb.astype(np.float32)


def _make_users(cfg: DemoConfig, rng: np.random.Generator) -> pl.DataFrame:
    n = cfg.n_users
    age = rng.integers(19, 61, n)
    p = np.array(GENDER_SHARE, dtype=float)
    gender = rng.choice(len(GENDERS), n, p=p / p.sum())
    nat_weights = rng.dirichlet(np.full(len(NATIONALITIES), 0.7))
    nationality = rng.choice(len(NATIONALITIES), n, p=nat_weights)
    return pl.DataFrame({
        "participant_id": [f"p{k:04d}" for k in range(n)],
        "age": age.astype(np.int64),
        "age_binned": _age_bin(age),
        "gender": np.array(GENDERS)[gender],
        "nationality": np.array(NATIONALITIES)[nationality],
    })


def _utilities(cfg, rng, users, content, group, style, is_art, ru, ri, parts=None):
    """Noise-free utility of each sampled (user ru, image ri) pair: the demo's ground truth.

    Computed pair by pair rather than as a users x images matrix, so worlds of 20k users or
    500k images (the scaling benchmarks) fit in memory.
    """
    n_users, L = cfg.n_users, cfg.latent
    appeal_dir = rng.normal(0, 1.0, L) / np.sqrt(L)
    population = 0.9 * (content @ appeal_dir)

    taste_basis = rng.normal(0, 1.0, (cfg.taste_rank, L)) / np.sqrt(L)
    user_taste = rng.normal(0, 0.75, (n_users, cfg.taste_rank))
    image_taste = content @ taste_basis.T  # images x rank

    group_like = np.zeros((n_users, len(GROUPS)))
    for u in range(n_users):
        liked, disliked = rng.choice(len(GROUPS), 2, replace=False), rng.choice(len(GROUPS), 2, replace=False)
        group_like[u, liked] += 0.7
        group_like[u, disliked] -= 0.7
    style_like = rng.normal(0, 0.35, (n_users, len(STYLES)))
    art_like = rng.normal(0, 0.3, n_users)

    age = users["age"].to_numpy().astype(float)
    age_z = (age - 40) / 12
    female = (users["gender"] == "female").to_numpy().astype(float)
    age_effect = rng.normal(0, 0.35, len(GROUPS))
    gender_effect = rng.normal(0, 0.35, len(GROUPS))
    demographic = np.outer(age_z, age_effect) + np.outer(female, gender_effect)

    utility = population[ri] + np.einsum("ij,ij->i", user_taste[ru], image_taste[ri])
    utility += (group_like + demographic)[ru, group[ri]]
    utility += np.where(style[ri] >= 0, style_like[ru, np.maximum(style[ri], 0)], 0.0)
    utility += art_like[ru] * is_art[ri]
    if parts is not None:  # the true model, for the world zoo's references
        parts.update(population=population, image_taste=image_taste, user_taste=user_taste,
                     group_like=group_like + demographic, style_like=style_like, art_like=art_like)
    return utility


def _thresholds(cfg: DemoConfig, rng: np.random.Generator, utility: np.ndarray) -> np.ndarray:
    """Per-user ordinal thresholds: a personal shift and spread of the population's cut points."""
    qs = np.linspace(0, 1, cfg.scale + 1)[1:-1] ** 1.15  # lean a little toward the top of the scale
    noisy = utility + rng.normal(0, cfg.noise, utility.size)
    base = np.quantile(noisy, qs)
    shift = rng.normal(0, 0.45, (cfg.n_users, 1))
    spread = np.exp(rng.normal(0, 0.2, (cfg.n_users, 1)))
    return shift + spread * (base - base.mean()) + base.mean()


def sample_pairs(n_users: int, n_images: int, n_ratings: int, rng: np.random.Generator,
                 by: str = "image"):
    """Who rates what, and in which split: PAMELA's five splits in PAMELA's proportions.

    Unseen users (about 5% of users, PAMELA's share of unseen ratings) rate only in
    ``val_unseen``/``test_unseen``. For seen users the split is drawn per image (``by="image"``,
    PAMELA's protocol: a val/test image is rated by nobody in train) or per rating
    (``by="pair"``: val/test images are also rated by other people in train).
    Each user rates a uniform draw of images without replacement, about the same number each.

    Returns
    -------
    ru, ri : numpy.ndarray
        User and image index of each rating.
    split : numpy.ndarray
        Split name of each rating.
    """
    counts = _split_counts(n_ratings, SPLIT_RATINGS)
    seen_total = counts["train"] + counts["val_seen"] + counts["test_seen"]
    n_unseen = max(2, round(n_users * (n_ratings - seen_total) / n_ratings))
    n_val_unseen = max(1, round(n_unseen * counts["val_unseen"] / (counts["val_unseen"] + counts["test_unseen"])))
    user_split = np.array(["seen"] * (n_users - n_unseen) + ["val_unseen"] * n_val_unseen
                          + ["test_unseen"] * (n_unseen - n_val_unseen))
    rng.shuffle(user_split)

    image_share = np.array([counts["train"], counts["val_seen"], counts["test_seen"]], float)
    image_split = rng.choice(["train", "val_seen", "test_seen"], n_images, p=image_share / image_share.sum())

    per_user = rng.normal(1.0, 0.15, n_users).clip(0.6, 1.4)
    per_user = np.floor(per_user / per_user.sum() * n_ratings).astype(int)
    per_user[: n_ratings - per_user.sum()] += 1
    per_user = np.minimum(per_user, n_images)

    rows_u, rows_i = [], []
    for u in range(n_users):
        rows_u.append(np.full(per_user[u], u))
        rows_i.append(rng.choice(n_images, per_user[u], replace=False))
    ru, ri = np.concatenate(rows_u), np.concatenate(rows_i)
    if by == "image":
        seen_split = image_split[ri]
    elif by == "pair":
        seen_split = rng.choice(["train", "val_seen", "test_seen"], len(ri), p=image_share / image_share.sum())
    else:
        raise ValueError(f"by must be 'image' or 'pair', not {by!r}")
    split = np.where(user_split[ru] == "seen", seen_split, user_split[ru])
    return ru, ri, split


def ordinal_ratings(true_u: np.ndarray, latent: np.ndarray, thr: np.ndarray, noise, low: int = 1):
    """Ratings ``low + #(latent > threshold)`` and their expectation given the true utility.

    `thr` holds each rating's ordered thresholds (pairs x levels-1); `noise` is the standard
    deviation of ``latent - true_u`` (a number, or one per rating).
    """
    score = low + (latent[:, None] > thr).sum(axis=1)
    noise = np.asarray(noise, dtype=float)
    noise = noise[:, None] if noise.ndim else noise
    expected = low + ndtr((true_u[:, None] - thr) / noise).sum(axis=1)
    return score, expected


def make_world(cfg: DemoConfig = DemoConfig()):
    """Build the demo world in memory.

    Returns
    -------
    images, users, ratings, truth : polars.DataFrame
        Image metadata, participants, rating records (with ``split``) and ground truth.
    embeddings : numpy.ndarray
        (n_images, dim) float32, L2-normalised, row k belongs to ``images[k]``.
    """
    world, _ = _build(cfg)
    return world


def _build(cfg: DemoConfig):
    """The demo world and its internals (the true taste features, for the world zoo)."""
    rng = np.random.default_rng(cfg.seed)
    images, content, group, style, is_art, emb = _make_images(cfg, rng)
    users = _make_users(cfg, rng)
    ru, ri, split = sample_pairs(cfg.n_users, cfg.n_images, cfg.n_ratings, rng)

    parts = {}
    true_u = _utilities(cfg, rng, users, content, group, style, is_art, ru, ri, parts)
    true_u = (true_u - true_u.mean()) / true_u.std()
    thresholds = _thresholds(cfg, rng, true_u)
    latent = true_u + rng.normal(0, cfg.noise, len(ru))
    score, expected = ordinal_ratings(true_u, latent, thresholds[ru], cfg.noise)

    pid = users["participant_id"].to_numpy()[ru]
    iid = images["image_id"].to_numpy()[ri]
    ratings = pl.DataFrame({
        "participant_id": pid, "image_id": iid, "original_score": score.astype(np.int64), "split": split,
    })
    truth = pl.DataFrame({
        "participant_id": pid, "image_id": iid,
        "utility": true_u.astype(np.float64), "expected_rating": expected.astype(np.float64),
    })
    parts.update(content=content, group=group, style=style, is_art=is_art)
    return (images, users, ratings, truth, emb), parts


def dataset_from(images, users, ratings, truth, emb, scale, source: str = "demo world"):
    """A validated in-memory Dataset from a generated world (no files)."""
    from .data import Dataset, Embeddings, validate_ratings

    frame = (ratings.rename({"original_score": "rating"})
             .join(users.select("participant_id", "age", "gender", "nationality"), on="participant_id", how="left",
                   maintain_order="left")
             .join(images.select("image_id", "group", "style", "type"), on="image_id", how="left", maintain_order="left")
             .with_columns(pl.col("age").cast(pl.Float64)))
    frame, _ = validate_ratings(frame, source, scale)
    return Dataset(frame, Embeddings(images["image_id"], emb, source), scale, source, truth)


def world_dataset(cfg: DemoConfig = DemoConfig()):
    """The demo world as a validated in-memory Dataset (no files): for benchmarks at any scale."""
    from .data import Scale

    return dataset_from(*make_world(cfg), Scale(1, cfg.scale))


def write_pamela(tmp: str | Path, images, users, ratings, truth, emb) -> Path:
    """Write a generated world into the (empty) folder `tmp` in PAMELA's layout.

    Layout: ``annotations/pamela_<split>.json``, ``embeddings.parquet`` and ``demo_truth.parquet``.
    """
    tmp = Path(tmp)
    (tmp / "annotations").mkdir()
    records = (
        ratings.join(images, on="image_id", how="left")
        .join(users, on="participant_id", how="left")
        .select(
            "participant_id", "image_id", "image_path", "original_score", "split",
            pl.struct("prompt", "group", "style", "type").alias("image_metadata"),
            pl.struct("age", "age_binned", "gender", "nationality").alias("user_demographics"),
        )
    )
    for split in SPLIT_RATINGS:
        part = records.filter(pl.col("split") == split).drop("split")
        part.write_json(tmp / "annotations" / f"pamela_{split}.json")
    pl.DataFrame({
        "image_id": images["image_id"],
        "embedding": pl.Series(emb, dtype=pl.Array(pl.Float32, emb.shape[1])),
    }).write_parquet(tmp / EMBEDDINGS_FILE)
    truth.write_parquet(tmp / TRUTH_FILE)
    return tmp


def write_world(out: str | Path, cfg: DemoConfig = DemoConfig()) -> Path:
    """Write the demo world to `out` in PAMELA's layout (atomically) and return `out`.

    Layout: ``annotations/pamela_<split>.json``, ``embeddings.parquet`` and ``demo_truth.parquet``.
    """
    world = make_world(cfg)
    out = Path(out)
    with atomic_dir(out, "annotations", "PAMELA-format world") as tmp:
        write_pamela(tmp, *world)
    return out


def _parse_scale(text: str) -> tuple[int, int]:
    """``N`` (1..N, as before) or ``LOW-HIGH`` (0-10 starts at 0; --scale=-3-3 for a negative low end)."""
    match = SCALE_PATTERN.fullmatch(text.strip())
    if match is not None:
        low, high = int(match[1]), int(match[2])
    elif text.strip().isdigit():
        low, high = 1, max(int(text), 1)  # N < 2 has fewer than two levels, not a reversed scale
    else:
        raise argparse.ArgumentTypeError(f"--scale takes N or LOW-HIGH such as 1-7 or 0-10, not {text!r}")
    if high < low:
        raise argparse.ArgumentTypeError(f"--scale {text}: the low end comes first, e.g. {high}-{low}")
    if high - low < 1:
        raise argparse.ArgumentTypeError(f"--scale {text}: needs at least two levels")
    return low, high


def main(argv: list[str] | None = None) -> int:
    from . import worlds

    families = "\n".join(f"  {name:<12} {fam.summary}" for name, fam in worlds.FAMILIES.items())
    parser = Parser(
        prog=prog("demo"),
        description="Write a deterministic PAMELA-shaped world (annotations JSON, embeddings "
                    "Parquet, ground-truth utilities and world_truth.npz/.json) in PAMELA's "
                    "on-disk layout. Unset sizes take the world family's defaults.",
        epilog=f"example:\n  {prog('demo')} --out runs/demo_world --seed 0\n\n"
               "worlds (--world NAME; --world list prints them):\n" + families,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--world", default="demo", help="world family (default demo); 'list' lists them")
    parser.add_argument("--out", type=output_path, help="folder to write (replaced atomically)")
    parser.add_argument("--seed", type=seed_arg, default=0, help="random seed (default 0)")
    parser.add_argument("--scale", type=_parse_scale, default=None,
                        help="rating scale: N for 1..N or LOW-HIGH such as 0-10, --scale=-3-3 for a negative "
                             "low end (demo default 5)")
    parser.add_argument("--users", type=int, help="participants (demo default 199, as PAMELA)")
    parser.add_argument("--images", type=int, help="images (demo default 5077, as PAMELA)")
    parser.add_argument("--ratings", type=int, help="ratings (demo default 69904, as PAMELA; with --users or "
                                                     "--images and no --ratings, about 14 per image)")
    parser.add_argument("--ratings-per-user", type=int, help="ratings per user (instead of --ratings)")
    parser.add_argument("--dim", type=int, help="embedding dimension (demo default 512, as CLIP ViT-B)")
    parser.add_argument("--string-ids", action="store_true", help="string participant and image ids")
    parser.add_argument("--int-ids", action="store_true", help="integer participant and image ids")
    parser.add_argument("--events", choices=("session", "feed", "nosignal"),
                        help="also write events.parquet: a simulated behaviour log of everyone under this event "
                             "model (pamela_lite.event_sim)")
    parser.add_argument("--impressions", type=int, default=400, help="images shown to each person in the log")
    parser.add_argument("--events-only-users", type=int, default=0, metavar="N",
                        help="drop every rating of N seeded people (they keep their events): users with events "
                             "and no ratings")
    args = parser.parse_args(argv)
    if args.world == "list":
        print(families)
        return 0
    if args.world not in worlds.FAMILIES:
        parser.error(f"unknown --world {args.world!r}; known: {', '.join(worlds.FAMILIES)} (or list)")
    if args.out is None:
        parser.error("--out is required")
    if args.string_ids and args.int_ids:
        parser.error("--string-ids and --int-ids exclude each other")
    overrides = {"seed": args.seed}
    for flag, key in (("users", "n_users"), ("images", "n_images"), ("dim", "dim")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.ratings is not None:
        overrides["n_ratings"] = args.ratings
    elif args.ratings_per_user is not None:
        overrides.update(n_ratings=None, ratings_per_user=args.ratings_per_user)
    elif args.users is not None or args.images is not None:
        overrides["n_ratings"] = None  # the demo's 69,904 fits its own size only: about 14 raters per image
    if args.scale is not None:
        overrides["low"], overrides["high"] = args.scale
    if args.string_ids or args.int_ids:
        overrides["string_ids"] = bool(args.string_ids)
    cfg = worlds.default_config(args.world, **overrides)
    if min(cfg.n_users, cfg.n_images, cfg.total_ratings) < 20 or cfg.dim < 8:
        parser.error("--users/--images/--ratings must be >= 20 and --dim >= 8")
    if (cfg.n_ratings or 0) > cfg.n_users * cfg.n_images:
        parser.error("--ratings cannot exceed --users x --images")
    if args.impressions < 1 or not 0 <= args.events_only_users < cfg.n_users:
        parser.error("--impressions must be >= 1 and --events-only-users between 0 and the number of users - 1")
    world = worlds.make(args.world, cfg)
    events = None
    if args.events:
        from dataclasses import replace

        from . import event_sim

        events = event_sim.simulate(world, args.events, impressions=args.impressions, seed=args.seed)
        if args.events_only_users:
            ids = world.users["participant_id"]
            dropped = ids.gather(np.random.default_rng([args.seed, 31]).choice(len(ids), args.events_only_users,
                                                                                 replace=False))
            keep = ~pl.col("participant_id").is_in(dropped.implode())
            world = replace(world, ratings=world.ratings.filter(keep), truth=world.truth.filter(keep))
    worlds.write(world, args.out)
    if events is not None:
        from ._atomic import atomic_file

        with atomic_file(Path(args.out) / event_sim.EVENTS_FILE, ".parquet") as tmp:
            events.write_parquet(tmp)
    print(f"wrote a {args.world} world ({cfg.n_users} users, {cfg.n_images} images, {world.ratings.height} "
          f"ratings, scale {cfg.low}-{cfg.high}, dim {cfg.dim}) to {args.out}"
          + (f", and {events.height} {args.events} events in {event_sim.EVENTS_FILE}" if events is not None else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
