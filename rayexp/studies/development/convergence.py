"""Did the chains of one estimate converge? Split R-hat across chains (numpy only).

R-hat compares the spread between chains with the spread within them: chains that have forgotten
their start and sample the same distribution give R-hat near 1; chains still drifting, or stuck in
different places, give more. The split form (Gelman et al., BDA3 §11.4) cuts every chain in half
first, so one chain drifting the same way in all chains (the common failure of SGLD: the loss still
climbing from the starting point) shows up as a difference between halves.

:func:`rhat` is the rank-normalised split R-hat of Vehtari, Gelman, Simpson, Carpenter & Bürkner
(2021, "Rank-normalization, folding, and localization: an improved R-hat"): the larger of the split
R-hat of the rank-normalised draws (bulk) and of the rank-normalised distances from the median
(tails). Ranks make it indifferent to heavy tails, such as the loss spikes of a step size at the
edge of stability, which would otherwise dominate the variances. Their threshold for use is 1.01
with many draws; with the few hundred draws an LLC estimate affords, 1.1 (the classic threshold) is
what this project states (:data:`RHAT_MAX`).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

RHAT_MAX = 1.1  # an estimate whose chains' R-hat exceeds this is unsettled


def split_rhat(traces: np.ndarray) -> float:
    """Classic split R-hat of (C, D) draws: C chains cut into 2C halves of floor(D / 2).

    With B the variance of the half-chain means times their length n and W the mean within-half
    variance, var+ = (n - 1) / n * W + B / n and R-hat = sqrt(var+ / W). NaN when fewer than 4
    draws per chain or the draws are all equal; +inf when the halves are constant but differ.
    """
    x = np.asarray(traces, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"traces must be (chains, draws), got shape {x.shape}")
    n = x.shape[1] // 2
    if n < 2 or not np.isfinite(x).all():
        return math.nan
    halves = np.concatenate([x[:, :n], x[:, x.shape[1] - n :]])  # (2C, n): drops the middle draw if D is odd
    w = float(halves.var(axis=1, ddof=1).mean())
    b = n * float(halves.mean(axis=1).var(ddof=1))
    if w == 0:  # every draw equal: chains that never moved have not shown they mix, so no R-hat
        return math.nan if b == 0 else math.inf
    return math.sqrt(((n - 1) / n * w + b / n) / w)


def _rank_normal(x: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled ranks (Blom's offset 3/8), ties given their average rank."""
    flat = x.ravel()
    order = np.argsort(flat, kind="mergesort")
    ranks = np.empty(flat.size)
    ranks[order] = np.arange(1, flat.size + 1)
    # average ranks over ties, so equal draws get equal scores
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    inv = NormalDist().inv_cdf
    z = np.array([inv(p) for p in (ranks - 0.375) / (flat.size + 0.25)])
    return z.reshape(x.shape)


def rhat(traces: np.ndarray) -> float:
    """Rank-normalised split R-hat of (C, D) draws: max(bulk, tail) as in Vehtari et al. (2021).

    NaN when it cannot be computed (non-finite draws, fewer than 4 draws per chain, every draw
    equal); a caller treats NaN as not converged.
    """
    x = np.asarray(traces, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 4 or not np.isfinite(x).all():
        return math.nan
    bulk = split_rhat(_rank_normal(x))
    tail = split_rhat(_rank_normal(np.abs(x - np.median(x))))
    # Python's max drops a NaN in second place: either one undefined leaves the R-hat undefined
    return math.nan if math.isnan(bulk) or math.isnan(tail) else max(bulk, tail)


def settled(value: float, threshold: float = RHAT_MAX) -> bool:
    """An estimate is settled when its R-hat is finite and at most ``threshold`` (NaN: not settled)."""
    return bool(np.isfinite(value) and value <= threshold)
