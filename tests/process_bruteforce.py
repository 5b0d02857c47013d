"""Brute-force Bayes over hidden paths: the independent reference the fast kernels are tested against.

Every hidden path s_0..s_L is enumerated on its own (no merging, no normalization until the end);
paths whose probability hits exactly zero are dropped, which leaves the sum unchanged.
"""

from __future__ import annotations

import numpy as np


def path_sums(T: np.ndarray, init: np.ndarray, tokens) -> list[np.ndarray]:
    """Entry t: the vector P(tokens[:t+1], state after token t = j) summed over all paths, (S,)."""
    paths = [(p, (s,)) for s, p in enumerate(init) if p > 0]
    out = []
    for x in tokens:
        paths = [
            (p * T[x, path[-1], j], path + (j,))
            for p, path in paths
            for j in range(T.shape[1])
            if T[x, path[-1], j] > 0
        ]
        joint = np.zeros(T.shape[1])
        for p, path in paths:
            joint[path[-1]] += p
        out.append(joint)
    return out


def brute_beliefs(T: np.ndarray, init: np.ndarray, tokens) -> np.ndarray:
    """(L, S) beliefs P(state after token t | tokens[:t+1]); NaN rows where the prefix is impossible."""
    sums = path_sums(T, init, tokens)
    return np.array([s / s.sum() if s.sum() > 0 else np.full_like(s, np.nan) for s in sums]).reshape(
        len(sums), T.shape[1]
    )


def brute_prob(T: np.ndarray, init: np.ndarray, tokens) -> float:
    """P(tokens) by summing over all hidden paths."""
    if len(tokens) == 0:
        return 1.0
    return float(path_sums(T, init, tokens)[-1].sum())
