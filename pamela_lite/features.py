"""The image side of the scorer: embedding -> image features (numpy only).

Population score, taste coordinates, soft prototype assignment and image factors, computed
with the same arithmetic by the fitted model, its ONNX export and the edge runtime. The user
side (user states and how they are solved from ratings) is :mod:`pamela_lite.user_solver`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (CLIP-style embeddings are compared by direction).

    Image features are computed in float64 from here on, in Python and in the exported graph
    alike, and rounded to float32 only where the trees read them: the two sides then see the
    same float32 values and take the same branch at every split.
    """
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def soft_assign(coords: np.ndarray, prototypes: np.ndarray, width: float) -> np.ndarray:
    """Soft assignment of images to prototypes: softmax of ``-||y - c_k||^2 / (2 width)``.

    `coords` are PCA coordinates; the logits are linear in them (the ``||y||^2`` term cancels in
    the softmax), so the exported graph computes them with one small matrix product.
    """
    logits = (coords @ prototypes.T - 0.5 * (prototypes**2).sum(axis=1)) / width
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


@dataclass
class ImageFeatures:
    """What the scorer computes from an embedding, once per image."""

    population: np.ndarray  # (n,) p(x), without the global mean
    pca: np.ndarray  # (n, d) taste coordinates z(x) (the name is historical: PCA + learned directions)
    assign: np.ndarray  # (n, K) soft assignment to prototypes
    factors: np.ndarray  # (n, f) image factors q(x) = assign @ item_factors

    def take(self, rows: np.ndarray) -> "ImageFeatures":
        """The features of the given rows (e.g. each rating's image), in that order."""
        return ImageFeatures(self.population[rows], self.pca[rows], self.assign[rows], self.factors[rows])


@dataclass
class ImageSide:
    """The fitted maps from an (L2-normalised) embedding to the image's features."""

    pop_coef: np.ndarray  # (D,) population head
    pop_intercept: float
    pca_mean: np.ndarray  # (D,) centre of the taste map
    pca_components: np.ndarray  # (D, d) taste map: whitened principal components + learned and metadata directions
    pca_scale: np.ndarray  # (d,) per-coordinate scale applied after the map (ones for fitted models)
    prototypes: np.ndarray  # (K, d) k-means centres in taste coordinates
    assign_width: float  # softness of the assignment, in squared PCA distance
    item_factors: np.ndarray  # (K, f) prototype factors from implicit ALS

    def features(self, x_unit: np.ndarray) -> ImageFeatures:
        coords = (x_unit - self.pca_mean) @ self.pca_components
        assign = soft_assign(coords, self.prototypes, self.assign_width)
        population = x_unit @ self.pop_coef + self.pop_intercept
        return ImageFeatures(population, coords * self.pca_scale, assign, assign @ self.item_factors)
