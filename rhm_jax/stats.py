"""Small statistics shared by every estimate the library reports.

* :func:`mean_se` — the mean of independent draws and its standard error;
* :func:`ratio_se` — a ratio estimate ``Σ sums / Σ counts`` over data, with its delta-method
  standard error;
* :func:`nan_mean` — the mean of the finite-or-not-NaN entries, ``None`` when there are none;
* :func:`json_float` — a float for a JSON row: ``None`` for NaN or missing (strict JSON has
  no NaN).

Examples:
  >>> mean_se([1.0, 2.0, 3.0])
  (2.0, 0.5773502691896258)
  >>> json_float(float("nan")) is None, json_float(2)
  (True, 2.0)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["mean_se", "ratio_se", "nan_mean", "json_float"]


def mean_se(x) -> tuple[float, float]:
    """Mean of ``x`` (host array, float64) and its standard error ``std(ddof=1)/sqrt(n)``.

    NaN for the mean of no draws, and for the error of fewer than two.
    """
    x = np.asarray(x, np.float64)
    if x.size == 0:
        return math.nan, math.nan
    se = x.std(ddof=1) / math.sqrt(x.size) if x.size > 1 else math.nan
    return float(x.mean()), float(se)


def ratio_se(sums, counts) -> tuple[float, float]:
    """Ratio estimate ``Σ sums / Σ counts`` over data and its standard error.

    The error is the delta method over the data that counted anything (``counts > 0``);
    NaN when nothing was counted, and the error NaN when one datum was.
    """
    sums, counts = np.asarray(sums, np.float64), np.asarray(counts, np.float64)
    used = counts > 0
    n = int(used.sum())
    if n == 0:
        return math.nan, math.nan
    sums, counts = sums[used], counts[used]
    mean = sums.sum() / counts.sum()
    if n == 1:
        return float(mean), math.nan
    resid = sums - mean * counts
    se = math.sqrt(np.sum(resid**2) / (n * (n - 1))) / counts.mean()
    return float(mean), float(se)


def nan_mean(x) -> float | None:
    """Mean of the non-NaN entries of ``x``; ``None`` when every entry is NaN."""
    x = np.asarray(x, np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else None


def json_float(x) -> float | None:
    """``float(x)`` for a JSON row, ``None`` for NaN or ``None``."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x
