"""Small numerics shared by the process and its layouts (a leaf: imports numpy only)."""

from __future__ import annotations

import numpy as np


def entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats along the last axis, with 0 log 0 = 0."""
    logp = np.log(np.where(p > 0, p, 1.0))
    return -(p * logp).sum(axis=-1)
