"""Per-unit values of a ratio statistic, so a (paired) bootstrap over units covers it.

A ratio of means ``r = mean(num) / mean(den)`` (the composition margin, the interaction share)
is not a mean of per-unit values, so :func:`rayexp.stats.paired_bootstrap_ci` cannot resample it
directly. Its linearisation (the delta method, i.e. the influence function of a ratio)

    u_i = r + (num_i - r * den_i) / mean(den)

has ``mean(u) = r`` exactly and the same first-order sampling variance as ``r``, including the
denominator's. Paired differences of two such ratios on the same units are then ``u_post - u_pre``.
"""

from __future__ import annotations

import numpy as np


def ratio_values(num: np.ndarray, den: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """(n,) per-unit linearised values of ``mean(num) / mean(den)``; NaNs when ``|mean(den)| < eps``."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    d = den.mean()
    if not np.isfinite(d) or abs(d) < eps:
        return np.full(num.shape, np.nan)
    r = num.mean() / d
    return r + (num - r * den) / d
