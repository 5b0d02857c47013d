"""The exact sign-flip test (rayexp.stats.sign_flip_p) against brute-force enumeration of sign patterns, and
the paired mean against the paired bootstrap's point estimate."""

import itertools
import math

import numpy as np
import pytest

from rayexp.stats import paired_bootstrap_ci, paired_mean, sign_flip_p


def _brute(x: np.ndarray) -> float:
    obs = abs(x.mean())
    flips = [abs((x * np.array(s)).mean()) for s in itertools.product((-1.0, 1.0), repeat=len(x))]
    return sum(f >= obs - 1e-12 for f in flips) / len(flips)


@pytest.mark.parametrize("n", [2, 3, 5, 7])
def test_sign_flip_p_is_the_share_of_sign_patterns_at_least_as_extreme(n):
    rng = np.random.default_rng(n)
    for shift in (0.0, 0.5, 2.0):
        x = rng.normal(shift, 1.0, size=n)
        assert sign_flip_p(x) == pytest.approx(_brute(x))


def test_sign_flip_p_floor_and_edges():
    # every log ratio above 0: the floor 2 / 2^n, which 3 seeds cannot take below 0.25
    assert sign_flip_p([0.3, 0.5, 0.4]) == pytest.approx(0.25)
    assert sign_flip_p([0.3, 0.5, 0.4, 0.2, 0.6]) == pytest.approx(0.0625)
    assert sign_flip_p([0.3, -0.5, math.nan, 0.4]) == pytest.approx(_brute(np.array([0.3, -0.5, 0.4])))
    assert math.isnan(sign_flip_p([math.nan]))


def test_paired_mean_is_the_paired_bootstraps_point_without_resampling():
    rng = np.random.default_rng(3)
    before, after = rng.normal(size=40), rng.normal(size=40) + 0.3
    before[[2, 7]], after[11] = np.nan, np.inf  # pairs with a non-finite member drop out together
    assert paired_mean(before, after) == paired_bootstrap_ci(before, after)[0]
    assert paired_mean(before, after) == np.mean(np.delete(after - before, [2, 7, 11]))
    assert np.isnan(paired_mean([np.nan], [1.0]))
