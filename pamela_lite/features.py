"""Encodings shared by the scorer, its ONNX export and the edge runtime (numpy only).

Keeping them in one numpy-only module is what lets ``pamela_lite.edge`` fold in a new user and
score an image with exactly the arithmetic the fitted model used.
"""

from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (CLIP-style embeddings are compared by direction)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def soft_assign(x_unit: np.ndarray, prototypes: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax over cosine similarity to each prototype: an image's share in each image group."""
    logits = (x_unit @ prototypes.T) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def als_fold_in(item_factors: np.ndarray, signed_row: np.ndarray, alpha: float, regularization: float,
                prior: np.ndarray | None = None) -> np.ndarray:
    """One user's factors against fixed item factors, by implicit's least-squares rule.

    `signed_row` holds, per item (here: per prototype), the signed evidence ``m``: positive
    means liked with confidence ``1 + alpha*m``, negative means disliked with confidence
    ``1 + alpha*|m|``, zero means unobserved (preference 0, confidence 1). This is the exact
    solve ``implicit`` runs in ``recalculate_user`` for rows encoded by :func:`als_row_values`;
    `prior` shrinks toward a given vector instead of toward zero.
    """
    V = item_factors.astype(np.float64)
    m = signed_row.astype(np.float64)
    conf = alpha * np.abs(m)  # the extra confidence over an unobserved entry
    A = V.T @ V + regularization * np.eye(V.shape[1]) + (V * conf[:, None]).T @ V
    b = ((m > 0) * (1.0 + conf)) @ V
    if prior is not None:
        b = b + regularization * prior
    return np.linalg.solve(A, b)


def als_row_values(signed_row: np.ndarray, alpha: float) -> np.ndarray:
    """What to store in implicit's CSR matrix so its confidence is ``1 + alpha*|m|`` (sign kept).

    implicit multiplies stored values by alpha and treats the result as the confidence, so a
    raw small value would get a confidence below an unobserved entry's 1.
    """
    return np.sign(signed_row) * (1.0 / alpha + np.abs(signed_row))
