"""Rules every reader of ratings shares, in numpy alone (pamela_lite.edge uses them on devices).

One rule for a rating, wherever it comes from (a ratings file, a --context file, the Python
fold-in or a device): a whole number, within the model's integer scale low..high.
"""

from __future__ import annotations

import numpy as np

# Larger magnitudes are not ratings; refusing them keeps every accepted value exact as an int64.
LARGEST_RATING = 2**31


def not_whole(values) -> np.ndarray:
    """Mask of ratings that are not whole numbers (NaN, inf, 3.5, or beyond +-2**31)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(v) | (v != np.round(v)) | (np.abs(v) > LARGEST_RATING)


def outside_scale(values, low: int, high: int) -> np.ndarray:
    """Mask of ratings below `low` or above `high` (NaN counts as outside)."""
    v = np.asarray(values, dtype=np.float64)
    return ~((v >= low) & (v <= high))


def check_ratings(values, low: int, high: int) -> np.ndarray:
    """The ratings as float64 if each is a whole number within low..high; else ValueError."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = not_whole(v)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} rating(s) are not whole numbers, e.g. {v[bad][0]!r}; "
                         f"ratings are integers on the scale {low}-{high}")
    bad = outside_scale(v, low, high)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} rating(s) outside the scale {low}-{high}, e.g. {v[bad][0]:g}")
    return v
