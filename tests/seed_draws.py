"""Per-seed draws for tests of rules that take one value per seed."""

import numpy as np


def seeds(center, spread=0.02, n=5, seed=0):
    """``n`` seeds' values of a quantity around ``center``: what a sweep's trials would log."""
    return center + spread * np.random.default_rng(seed).standard_normal(n)
