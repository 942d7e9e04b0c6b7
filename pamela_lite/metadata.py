"""Image metadata as taste directions of the embedding: the directions that predict it.

PAMELA records each image's visual group (21), art style (26, Art only) and type (Art or
Photorealism), and people's likes often follow them: one person loves landscapes and dislikes
cartoons, another the other way round. Such taste is spread over as many directions as there
are groups, each weak, so the rating-driven search of :mod:`pamela_lite.taste` (which keeps a
direction only when it stands clear of the noise on its own) finds few of them. The metadata
says where to look instead.

The scorer reads an image through its embedding alone (one graph; a freshly generated image
has no metadata), so a field enters as the embedding's prediction of it: a ridge map from the
embedding to the field's one-hot indicators, its penalty chosen by generalised
cross-validation (metadata is mostly carried by high-variance directions; reading every
low-variance one at full weight would add noise). Each field's map
spans one block of taste coordinates; the user model gives each block one prior variance,
learned by EM with the rest of the taste prior (``model._taste_prior_em``). One
variance per block, not a covariance, because a block has as many coordinates as a field has
values and people's likes of groups are, to a first approximation, independent draws.

With the EM prior, a block is kept only if the people's ratings say it carries taste: the
final fit compares the exact log marginal likelihood of all users' ratings with and without
the block (``model._TastePrior.block_evidence``) and drops a block whose gain is below the
BIC's price of its one variance, ½·log(users). EM alone would not do this: a variance whose
maximum is at zero approaches it only slowly, so after EM's iterations a useless block keeps
enough variance to let the users' noise in — and it costs the user model d³ arithmetic and
the scorer 20-odd columns for nothing. The kept blocks are then rebuilt without the dropped
ones, so the model is the one a fit without the dropped fields gives (when that fit keeps the
same fields). ``model.metadata_evidence_`` records every field's gain (in the fitting
process; it is not saved with the model); ``fit`` prints it.

Measured on the zoo (test_seen SROCC, benchmarks/results/zoo.md of 2026-11-27 13:25 UTC, against
the 08:27 run without metadata): the world whose taste is likes of groups, styles and type
0.688 → 0.697 at every fit seed (its true basis gives 0.700), few ratings per person 0.687 →
0.692; the demo world unchanged (0.751; all three blocks dropped), no world down by more than
0.003 (nonlinear, one seed).
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from .data import IMAGE_METADATA

log = logging.getLogger("pamela_lite")

RIDGE_GRID = np.logspace(-5, 2, 29)  # penalties, relative to the top direction's variance x images
MAX_LEVELS = 64  # PAMELA's fields have 2, 21 and 26 values; a column with hundreds is no such field


def metadata_indicators(ratings: pl.DataFrame, image_ids: pl.Series) -> dict[str, np.ndarray]:
    """Per metadata field the ratings carry: its one-hot indicators over `image_ids` (n, levels).

    An image takes the first value its ratings give it (missing values aside). A field with
    fewer than two values (one value and no missing ones) tells nothing and is left out; so,
    with a warning, is one with more than :data:`MAX_LEVELS` values or one whose value differs
    between the ratings of one image (a column of that name that describes people, not images). Missing values (a
    photorealistic image has no style) are a level of their own, the reference; without
    missing values the last level is (centred indicators of every level are collinear).
    """
    fields = [c for c in IMAGE_METADATA if c in ratings.columns]
    if not fields:
        return {}
    values = ratings.select("image_id", *(pl.col(c).cast(pl.String) for c in fields))
    per_image = values.group_by("image_id").agg(
        *(pl.col(c).drop_nulls().first() for c in fields),
        *(pl.col(c).drop_nulls().n_unique().alias(f"{c} values") for c in fields))
    table = pl.DataFrame({"image_id": image_ids}).join(per_image, on="image_id", how="left", maintain_order="left")
    out = {}
    for name in fields:
        if table[f"{name} values"].max() > 1:
            log.warning(f"warning: column {name!r} has different values for one image: it does not describe images, "
                        f"so it is not used as image metadata")
            continue
        values = table[name]
        levels = sorted(values.drop_nulls().unique().to_list())
        if len(levels) > MAX_LEVELS:
            log.warning(f"warning: image metadata column {name!r} has {len(levels)} values (more than {MAX_LEVELS}): "
                        f"not used as taste directions")
            continue
        if not values.null_count():
            levels = levels[:-1]
        if levels:
            out[name] = np.column_stack([(values == level).fill_null(False).to_numpy() for level in levels]
                                        ).astype(np.float64)
    return out


def metadata_map(white: np.ndarray, variances: np.ndarray, indicators: np.ndarray) -> np.ndarray:
    """Whitened directions (p, levels) whose coordinates best predict the centred `indicators`.

    A ridge regression of the indicators on the embedding, as the population head is one of the
    rating, written in the whitened coordinates `white` (n, p), whose image `variances` (p,) it
    needs: a ridge penalty on the embedding's weights is, per whitened coordinate, a penalty
    that grows as that direction's variance falls, so the map reads low-variance directions
    only as far as they pay. The penalty is chosen by generalised cross-validation (the
    residual sum of squares over (1 - effective coefficients / n)^2) over a grid; penalties that
    leave more than n/2 effective coefficients are not tried (with about as many coefficients as
    images the fit matches any labels, and GCV would choose it). None left: a zero map.
    """
    n = len(white)
    target = indicators - indicators.mean(axis=0)
    gram = np.einsum("ij,ij->j", white, white)  # whitened coordinates: about n each, uncorrelated
    moments = white.T @ target / gram[:, None]
    best_score, best = np.inf, np.zeros_like(moments)
    for strength in RIDGE_GRID:
        shrink = gram / (gram + strength * n * variances[0] / variances)
        if shrink.sum() > n / 2:  # about as many coefficients as images: it would fit any labels
            continue
        coef = moments * shrink[:, None]
        score = float(np.sum((target - white @ coef) ** 2)) / (1 - shrink.sum() / n) ** 2
        if score < best_score:
            best_score, best = score, coef
    return best


def orthogonal_blocks(maps: dict[str, np.ndarray], known: np.ndarray, sizes: dict[str, int] | None = None
                      ) -> dict[str, np.ndarray]:
    """Orthonormal whitened bases of the fields' maps, each outside `known` and the blocks before it.

    `known` (p, c) is the orthonormal basis of the taste coordinates the scorer has already:
    what a field's map adds is only its part outside them. A block keeps the directions whose
    singular value is not numerical dust, or `sizes[field]` columns (the out-of-fold fits must
    hand the head the final fit's columns).
    """
    blocks, basis = {}, known
    for name, candidate in maps.items():
        rest = candidate - basis @ (basis.T @ candidate)
        vectors, values, _ = np.linalg.svd(rest, full_matrices=False)
        scale = np.linalg.norm(candidate, 2) if candidate.size else 0.0
        found = int(np.sum(values > 1e-6 * scale))
        size = found if sizes is None else sizes.get(name, 0)
        if size:
            # An out-of-fold fit keeps the final fit's sizes. Its rest has the same rank but in a
            # degenerate case, where the missing columns are zeros (a coordinate that reads
            # nothing), never dust directions, which could lie inside the known coordinates.
            kept = vectors[:, :min(found, size)]
            blocks[name] = np.column_stack([kept, np.zeros((len(kept), size - kept.shape[1]))])
            basis = np.column_stack([basis, kept])
    return blocks
