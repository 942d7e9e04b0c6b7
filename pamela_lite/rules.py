"""Rules every reader of ratings shares, in numpy alone (pamela_lite.edge uses them on devices).

One rule for a rating, wherever it comes from (a ratings file, a --context file, the Python
fold-in or a device): a whole number, within the model's integer scale low..high.
"""

from __future__ import annotations

import math
import re

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
    if any(isinstance(value, (bool, np.bool_)) for value in np.asarray(values, dtype=object).reshape(-1)):
        raise ValueError(f"ratings must be numbers on the scale {low}-{high}, not True/False")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = not_whole(v)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} rating(s) are not whole numbers, e.g. {float(v[bad][0])!r}; "
                         f"ratings are integers on the scale {low}-{high}")
    bad = outside_scale(v, low, high)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} rating(s) outside the scale {low}-{high}, e.g. {v[bad][0]:g}")
    return v


# Ages: a number, "34", a range such as "25-34" (its midpoint) or "65+" (65); data.py applies the
# same patterns to a table's columns.
AGE_RANGE = r"^\s*(\d+(?:\.\d+)?)\s*(?:-|–|to)\s*(\d+(?:\.\d+)?)\s*$"
AGE_OPEN = r"^\s*(\d+(?:\.\d+)?)\s*\+\s*$"
MAX_AGE = 120  # an age beyond it is a typo or a unit mix-up, and would extrapolate the demographic prior


def age_years(value) -> float | None:
    """One person's age in years by the rule above; None when unknown (None, NaN, empty text).

    ValueError for text that is no age, and for ages outside 0..MAX_AGE.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:  # a 0-d array, e.g. from np.load
        value = value.item()
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        text = value.strip()
        bounds, open_end = re.match(AGE_RANGE, text), re.match(AGE_OPEN, text)
        try:
            years = float(text)
        except ValueError:
            if bounds is None and open_end is None:
                raise ValueError(f"age {value!r} is neither a number nor a range such as 25-34") from None
            years = (float(bounds[1]) + float(bounds[2])) / 2 if bounds else float(open_end[1])
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"age must be a number of years, not {value!r}")
    else:
        years = float(value)
    if math.isnan(years):
        return None
    if not 0 <= years <= MAX_AGE:
        raise ValueError(f"age must be between 0 and {MAX_AGE} years, not {years:g}")
    return years
